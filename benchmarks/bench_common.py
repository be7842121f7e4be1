"""What the transfer benchmarks share: the source files, nginx on loopback, running a tool once
(spawn to exit, with what modelfetch reports about itself), a case of tools run in rounds.

bench_transfer.py runs the cases, bench_report.py prints them, bench_kill.py reuses the files and
nginx.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"
OUT_DIR = BENCH_DIR / "transfer-out"  # this suite's scratch space (other suites share .bench/)
CHILD = Path(__file__).with_name("mf_child.py")
MiB = 1 << 20
KiB = 1 << 10
SMALL_FILES = 200
SMALL_SIZE = 256 * KiB
QUEUE_ITEMS = 1000
RATE_CAP = "25m"  # 25 MiB/s: nginx `limit_rate`, per request (bench_kill.py's capped server)
RATE_CAP_BYTES = 25 * MiB  # the same for capped_server.py (case 2), which caps each connection


# ---------------------------------------------------------------------------------------------
# Fixtures: files, nginx
# ---------------------------------------------------------------------------------------------


def _write_random(path: Path, size: int) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        left = size
        while left:
            block = os.urandom(min(16 * MiB, left))
            out.write(block)
            left -= len(block)
    os.replace(tmp, path)


def _sha256_of(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * MiB):
            sha.update(block)
    return sha.hexdigest()


def source_file(size: int) -> tuple[Path, str]:
    """The cached random file of `size` bytes and its SHA-256 (both made once)."""
    BENCH_DIR.mkdir(exist_ok=True)
    path = BENCH_DIR / f"random-{size // MiB}MiB.bin"
    digest_path = path.with_suffix(".sha256")
    if not path.exists() or path.stat().st_size != size:
        print(f"generating {path} ...", flush=True)
        digest_path.unlink(missing_ok=True)
        _write_random(path, size)
    if not digest_path.exists():
        digest_path.write_text(_sha256_of(path))
    return path, digest_path.read_text().strip()


def small_files() -> list[tuple[str, str]]:
    """The cached 200 files of 256 KiB: (name relative to BENCH_DIR, sha256)."""
    folder = BENCH_DIR / "small"
    index = folder / "index.json"
    if index.exists():
        found = [(str(name), str(sha)) for name, sha in json.loads(index.read_text())]
        if len(found) == SMALL_FILES:
            return found
    folder.mkdir(parents=True, exist_ok=True)
    print(f"generating {SMALL_FILES} files of {SMALL_SIZE // KiB} KiB ...", flush=True)
    found = []
    for i in range(SMALL_FILES):
        path = folder / f"part-{i:04d}.bin"
        _write_random(path, SMALL_SIZE)
        found.append((f"small/{path.name}", _sha256_of(path)))
    index.write_text(json.dumps(found))
    return found


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if found:
        return found
    print("nginx not found: installing it with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        "apt-get update -qq && apt-get install -y -qq nginx", shell=True, check=True, env=env
    )
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if not found:
        sys.exit("nginx is still missing after apt-get install")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Servers:
    plain: str  # http://127.0.0.1:port
    capped: str  # the same files, each request limited to RATE_CAP after its first second


@contextmanager
def running_nginx(root: Path, access_log: Path | None = None) -> Iterator[Servers]:
    """nginx in the foreground from a scratch config (one worker, sendfile on), with a second
    server block that caps every request at RATE_CAP (`limit_rate`: after the request's first
    second, so requests smaller than that are never slowed; case 2 uses `running_capped`).
    With `access_log`, every request's URI, status and body bytes sent are logged there
    (bench_kill.py counts them)."""
    binary = nginx_binary()
    plain, capped = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as scratch:
        user = "user root root;" if os.geteuid() == 0 else ""
        temp_paths = "\n".join(
            f"  {kind}_temp_path {scratch}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf = Path(scratch) / "nginx.conf"
        logging = "  access_log off;"
        if access_log is not None:
            logging = "  log_format sent '$uri $status $body_bytes_sent';\n"
            logging += f"  access_log {access_log} sent;"
        conf.write_text(
            f"""{user}
worker_processes 1;
daemon off;
pid {scratch}/nginx.pid;
error_log {scratch}/error.log warn;
events {{ worker_connections 256; }}
http {{
{logging}
  sendfile on;
  tcp_nopush on;
  keepalive_requests 10000;
  default_type application/octet-stream;
{temp_paths}
  server {{
    listen 127.0.0.1:{plain};
    root {root};
  }}
  server {{
    listen 127.0.0.1:{capped};
    root {root};
    limit_rate {RATE_CAP};
  }}
}}
"""
        )
        proc = subprocess.Popen([binary, "-p", scratch, "-c", str(conf)])
        try:
            for port in (plain, capped):
                try:
                    wait_listening(proc, port, "nginx", seconds=10)
                except RuntimeError:
                    sys.exit(f"nginx exited: {(Path(scratch) / 'error.log').read_text()}")
            yield Servers(f"http://127.0.0.1:{plain}", f"http://127.0.0.1:{capped}")
        finally:
            stop(proc)


@contextmanager
def running_capped(root: Path, rate: int = RATE_CAP_BYTES) -> Iterator[str]:
    """benchmarks/capped_server.py on a free loopback port: `root` served with every
    connection capped at `rate` bytes/s across all its requests (nginx caps each request, and
    not its first second: see that module). Yields its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("capped_server.py")),
            str(root),
            str(port),
            str(rate),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            sys.exit(f"capped_server.py did not start (exit status {proc.poll()})")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def wait_listening(proc: subprocess.Popen[Any], port: int, what: str, *, seconds: float) -> None:
    """Until the server `proc` started accepts on 127.0.0.1:`port`; RuntimeError if it exited
    first, the connect's OSError if it is not listening after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def stop(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """Terminate a server the benchmark started; kill it if it has not gone after `grace` s."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------
# Running one tool once
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float  # spawn to exit
    work: float | None = None  # modelfetch: the work inside the process
    rss_kib: int | None = None
    connections: int | None = None  # modelfetch: connections it opened
    stages: dict[str, float] | None = None  # modelfetch: where its time went (transfer/stages.py)


def clean(*paths: Path) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            for leftover in (path, path.with_name(path.name + ".part")):
                leftover.unlink(missing_ok=True)
    subprocess.run(["sync"], check=True)
    time.sleep(0.3)


def timed(argv: list[str]) -> Run:
    """Run a command; its wall time and peak RSS (from wait4), and any JSON line it printed."""
    began = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {err.decode()[-2000:]}")
    run = Run(seconds)
    # communicate() reaped the child; its rusage is folded into RUSAGE_CHILDREN only in total,
    # so modelfetch reports its own peak RSS instead.
    for line in out.decode().splitlines():
        if line.startswith("{"):
            info = json.loads(line)
            run.work = info.get("work")
            run.rss_kib = info.get("rss_kib")
            run.connections = info.get("connections")
            run.stages = info.get("stages")
    return run


def aria2(*options: str) -> list[str]:
    return [
        "aria2c",
        "--quiet=true",
        "--allow-overwrite=true",
        "--auto-file-renaming=false",
        "--file-allocation=falloc",  # the fastest choice on ext4 (a stronger baseline)
        *options,
    ]


@dataclass
class Case:
    title: str
    size: int  # bytes moved per run
    tools: dict[str, Callable[[], Run]]
    baseline_for_ratio: list[str]
    runs: dict[str, list[Run]] = field(default_factory=dict)
    # The least time any verifying tool can take: the slowest of these rows (case 1: the
    # transfer alone, `curl -o`, and SHA-256 alone over the file, on one core).
    floor_of: tuple[str, ...] = ()
    # ... and of any tool that also makes the file durable (the disk's write and fsync too).
    durable_floor_of: tuple[str, ...] = ()


def run_case(case: Case, rounds: int) -> None:
    names = list(case.tools)
    case.runs = {name: [] for name in names}
    print(f"\n== {case.title}  (load {load()})", flush=True)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            run = case.tools[name]()
            case.runs[name].append(run)
            extra = f"  (work {run.work:.2f} s)" if run.work is not None else ""
            if run.connections:
                extra += f" {run.connections} connections"
            print(
                f"  round {r + 1}  {name:<22} {run.seconds:6.2f} s"
                f"  {case.size / MiB / run.seconds:7.0f} MiB/s{extra}",
                flush=True,
            )


def cpu_and_memory() -> str:
    """`2 vCPU <model>, 24 GiB RAM, Linux <release>`: the start of each report's machine line."""
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return f"{os.cpu_count()} vCPU {cpu}, {mem:.0f} GiB RAM, Linux {platform.release()}"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"
