"""modelfetch against curl and aria2c, from nginx on loopback: `make bench`.

    python benchmarks/bench_transfer.py [--runs 3] [--size-mib 1024] [--cases 1,2,3,4]
                                        [--markdown FILE]

Cases (each tool run `--runs` times, tools alternating, the order rotated every round):
  1. one 1 GiB file, unthrottled: modelfetch vs `curl -o`, `curl -o` + hashlib SHA-256 of the
     result ("curl+verify": modelfetch always verifies, curl never does), `aria2c -x1` and
     `aria2c -x8 -s8 -k1M`;
  2. the same file from a server that caps each connection (nginx `limit_rate 25m`):
     modelfetch vs `aria2c -x8 -s8 -k1M`;
  3. 200 files of 256 KiB: modelfetch (a DownloadManager with max_active 16: queue, SQLite
     store, events, SHA-256 of every file) vs `aria2c -j16 -i list` (no verification); also
     `modelfetch get --input-file list` (the command line, planner and display included);
  4. peak RSS of modelfetch during case 1, and of a manager working a queue of 1,000 items.

Every tool runs as its own process and is timed from spawn to exit (modelfetch therefore pays
its interpreter start and imports, as a command-line user would); modelfetch also reports the
time its work took inside the process. Before each run: destination deleted, `sync`, 0.3 s pause.
Source files are random bytes generated once under .bench/ (git-ignored) and served by nginx
(apt-get installs it when missing) from a scratch config: one worker, sendfile on.

Loopback numbers on a shared 2-CPU machine swing by +-30% between runs: read the medians, note
the load average printed with them, and distrust differences smaller than that.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"
OUT_DIR = BENCH_DIR / "transfer-out"  # this suite's scratch space (other suites share .bench/)
CHILD = Path(__file__).with_name("mf_child.py")
MiB = 1 << 20
KiB = 1 << 10
SMALL_FILES = 200
SMALL_SIZE = 256 * KiB
QUEUE_ITEMS = 1000
RATE_CAP = "25m"  # nginx limit_rate per connection (25 MiB/s)


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
    capped: str  # the same files, each connection limited to RATE_CAP


@contextmanager
def running_nginx(root: Path) -> Iterator[Servers]:
    """nginx in the foreground from a scratch config (one worker, sendfile on), with a second
    server block that caps every connection at RATE_CAP."""
    binary = nginx_binary()
    plain, capped = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as scratch:
        user = "user root root;" if os.geteuid() == 0 else ""
        temp_paths = "\n".join(
            f"  {kind}_temp_path {scratch}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf = Path(scratch) / "nginx.conf"
        conf.write_text(
            f"""{user}
worker_processes 1;
daemon off;
pid {scratch}/nginx.pid;
error_log {scratch}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
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
                deadline = time.monotonic() + 10
                while True:
                    if proc.poll() is not None:
                        sys.exit(f"nginx exited: {(Path(scratch) / 'error.log').read_text()}")
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
            yield Servers(f"http://127.0.0.1:{plain}", f"http://127.0.0.1:{capped}")
        finally:
            proc.terminate()
            try:
                proc.wait(5)
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


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# ---------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------


def case_big(servers: Servers, size: int, capped: bool) -> Case:
    source, sha256 = source_file(size)
    base = servers.capped if capped else servers.plain
    url = f"{base}/{source.name}"
    out = OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    dest = out / "download.bin"

    fetch = [sys.executable, str(CHILD), "fetch", url, str(dest), sha256, str(size)]

    def modelfetch() -> Run:
        clean(dest)
        return timed(fetch)

    def modelfetch_one_stream() -> Run:
        clean(dest)
        return timed([*fetch, "--connections", "1"])

    def curl() -> Run:
        clean(dest)
        run = timed(["curl", "-s", "-o", str(dest), url])
        check_size(dest, size)
        return run

    def curl_verify(fsync: bool) -> Callable[[], Run]:
        # curl, then the checks modelfetch makes: the digest, and (with fsync) the bytes on disk
        # before the command returns.
        def go() -> Run:
            clean(dest)
            began = time.perf_counter()
            timed(["curl", "-s", "-o", str(dest), url])
            if _sha256_of(dest) != sha256:
                raise SystemExit("curl fetched a corrupt file")
            if fsync:
                fd = os.open(dest, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            return Run(time.perf_counter() - began)

        return go

    def hash_alone() -> Run:
        # A floor for any tool that verifies: SHA-256 is sequential, so one core hashes the
        # whole file however many connections fetched it. Hashes the (page-cached) source.
        began = time.perf_counter()
        if _sha256_of(source) != sha256:
            raise SystemExit("the source file changed")
        return Run(time.perf_counter() - began)

    def aria(*options: str) -> Callable[[], Run]:
        def go() -> Run:
            clean(dest)
            run = timed(aria2(*options, "-d", str(out), "-o", dest.name, url))
            check_size(dest, size)
            return run

        return go

    if capped:
        tools = {
            "modelfetch": modelfetch,
            "aria2c -x8 -s8 -k1M": aria("-x8", "-s8", "-k1M"),
            # Not asked for: aria2's own maximum, for a like-for-like connection count.
            "aria2c -x16 -s16 -k1M": aria("-x16", "-s16", "-k1M"),
        }
        title = f"2. one {size // MiB} MiB file, server capped at {RATE_CAP}/connection"
        baselines = ["aria2c -x8 -s8 -k1M", "aria2c -x16 -s16 -k1M"]
    else:
        tools = {
            "modelfetch": modelfetch,
            # Not asked for: the single stream (what segmentation costs where CPU is the limit).
            "modelfetch, 1 connection": modelfetch_one_stream,
            "curl -o": curl,
            "curl+verify": curl_verify(fsync=False),
            "curl+verify+fsync": curl_verify(fsync=True),
            # Not a download: the time SHA-256 alone takes over the file, on one core.
            "SHA-256 alone (hashlib)": hash_alone,
            "aria2c -x1": aria("-x1"),
            "aria2c -x8 -s8 -k1M": aria("-x8", "-s8", "-k1M"),
        }
        title = f"1. one {size // MiB} MiB file, unthrottled"
        baselines = [
            "curl -o",
            "curl+verify",
            "curl+verify+fsync",
            "aria2c -x1",
            "aria2c -x8 -s8 -k1M",
        ]
    floor = () if capped else ("curl -o", "SHA-256 alone (hashlib)")
    return Case(title, size, tools, baselines, floor_of=floor)


def check_size(path: Path, size: int) -> None:
    if path.stat().st_size != size:
        raise SystemExit(f"{path} has {path.stat().st_size} bytes, expected {size}")


def write_plan(path: Path, groups: Sequence[Mapping[str, object]]) -> None:
    path.write_text(json.dumps({"groups": groups}))


@dataclass
class SmallDaemon:
    """`modelfetch serve` for case 3's daemon row: its own home (and so its own config and
    queue) in a temporary directory, on a free loopback port."""

    home: Path
    url: str


@contextmanager
def small_daemon() -> Iterator[SmallDaemon]:
    """Started once before case 3's rounds (its start is not timed), stopped after them."""
    with tempfile.TemporaryDirectory(prefix="mf-bench-daemon-") as tmp:
        home = Path(tmp) / "home"
        env = {**os.environ, "MODELFETCH_HOME": str(home)}
        env.pop("MODELFETCH_TOKEN", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelfetch", "serve", "--host", "127.0.0.1", "--port", "0"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        info = home / "daemon.json"
        deadline = time.monotonic() + 20
        while not info.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                err = proc.communicate()[1].decode()[-2000:]
                raise SystemExit(f"modelfetch serve did not start: {err}")
            time.sleep(0.05)
        time.sleep(0.1)  # the file is written whole, but let the listener settle
        url = json.loads(info.read_text())["url"]
        try:
            yield SmallDaemon(home, url)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _forget_finished(daemon: SmallDaemon) -> None:
    """Each round starts from an empty queue, as the other rows do (not timed)."""
    import urllib.request

    request = urllib.request.Request(
        f"{daemon.url}/api/forget-finished",
        data=b"{}",
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


DAEMON_ROW = "modelfetch get -I list via daemon"


def case_small(servers: Servers, daemon: SmallDaemon | None = None) -> Case:
    files = small_files()
    out = OUT_DIR / "small"
    home = OUT_DIR / "home"
    plan = OUT_DIR / "small-plan.json"
    write_plan(
        plan,
        [
            {
                "name": "small",
                "dest_dir": str(out),
                "files": [
                    {
                        "url": f"{servers.plain}/{name}",
                        "path": Path(name).name,
                        "size": SMALL_SIZE,
                        "sha256": sha,
                    }
                    for name, sha in files
                ],
            }
        ],
    )
    url_list = OUT_DIR / "small-list.txt"
    url_list.write_text("".join(f"{servers.plain}/{name}\n" for name, _ in files))

    def modelfetch() -> Run:
        clean(out, home)
        return timed(
            [sys.executable, str(CHILD), "manager", str(home), str(plan), "--max-active", "16"]
        )

    cli_home = OUT_DIR / "home-cli"

    def command_line() -> Run:
        # What a user types: the CLI with its daemon check, planner, display and exit.
        clean(out, cli_home)
        run = timed(
            [
                sys.executable,
                "-m",
                "modelfetch",
                "--home",
                str(cli_home),
                "get",
                "--dir",
                str(out),
                "--jobs",
                "16",
                "--input-file",
                str(url_list),
            ]
        )
        if len(list(out.iterdir())) != SMALL_FILES:
            raise SystemExit("modelfetch get did not leave every file")
        return run

    def via_daemon() -> Run:
        # The same command with `modelfetch serve` running: one batch request, then the
        # event stream; only the `get` is timed.
        assert daemon is not None
        _forget_finished(daemon)
        clean(out)
        run = timed(
            [
                sys.executable,
                "-m",
                "modelfetch",
                "--home",
                str(daemon.home),
                "get",
                "--dir",
                str(out),
                "--jobs",
                "16",
                "--input-file",
                str(url_list),
            ]
        )
        if len(list(out.iterdir())) != SMALL_FILES:
            raise SystemExit("modelfetch get (daemon) did not leave every file")
        return run

    def transfers_only() -> Run:
        clean(out)
        return timed([sys.executable, str(CHILD), "files", str(plan), "--concurrency", "16"])

    def aria() -> Run:
        clean(out)
        return timed(aria2("-j16", "-d", str(out), "-i", str(url_list)))

    return Case(
        f"3. {SMALL_FILES} files of {SMALL_SIZE // KiB} KiB",
        SMALL_FILES * SMALL_SIZE,
        {
            "modelfetch": modelfetch,
            # Not asked for: the same through the command line (`get --input-file`).
            "modelfetch get -I list": command_line,
            # The daemon goal's row: the same command while `modelfetch serve` runs.
            **({DAEMON_ROW: via_daemon} if daemon is not None else {}),
            # Not asked for: the transfer layer alone (no queue, store or events), to show
            # where the time goes.
            "modelfetch fetch_file x16": transfers_only,
            "aria2c -j16 -i list": aria,
        },
        ["aria2c -j16 -i list"],
    )


def queue_rss(servers: Servers) -> Run:
    """A manager given 1,000 one-file downloads at once (16 at a time), lists them, works them."""
    files = small_files()
    out = OUT_DIR / "queue"
    home = OUT_DIR / "home-queue"
    plan = OUT_DIR / "queue-plan.json"
    groups = []
    for i in range(QUEUE_ITEMS):
        name, sha = files[i % len(files)]
        groups.append(
            {
                "name": f"item-{i}",
                "dest_dir": str(out / f"{i:04d}"),
                "files": [
                    {
                        "url": f"{servers.plain}/{name}",
                        "path": Path(name).name,
                        "size": SMALL_SIZE,
                        "sha256": sha,
                    }
                ],
            }
        )
    write_plan(plan, groups)
    clean(out, home)
    run = timed(
        [
            sys.executable,
            str(CHILD),
            "manager",
            str(home),
            str(plan),
            "--max-active",
            "16",
            "--hold-queue",
        ]
    )
    clean(out, home)
    return run


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    fs = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", str(BENCH_DIR)],
        capture_output=True,
        text=True,
    ).stdout
    fs = " ".join(fs.split())
    versions = []
    for argv in (["nginx", "-v"], ["curl", "--version"], ["aria2c", "--version"]):
        try:
            text = subprocess.run(argv, capture_output=True, text=True)
            first = (text.stdout or text.stderr).splitlines()[0]
            versions.append(" ".join(first.split()[:3]).replace("nginx version: ", ""))
        except (OSError, IndexError):
            versions.append(f"{argv[0]}: ?")
    return (
        f"{os.cpu_count()} vCPU {cpu}, {mem:.0f} GiB RAM, Linux {platform.release()},"
        f" output on {fs or '?'}; Python {platform.python_version()};"
        f" {'; '.join(versions)}"
    )


def median(runs: list[Run], pick: Callable[[Run], float | None]) -> float | None:
    values = [v for v in map(pick, runs) if v is not None]
    return statistics.median(values) if values else None


def report(cases: list[Case], rss: dict[str, int], loads: tuple[str, str]) -> str:
    """The markdown table: medians [min-max] of spawn-to-exit seconds, and modelfetch's speed
    as a multiple of each baseline's, from spawn to exit and from its in-process work time
    (what a running daemon pays: no interpreter start, no imports)."""
    lines = [
        f"Machine: {machine()}.",
        f"Load average (1/5/15 min) at start: {loads[0]}; at end: {loads[1]}.",
        "",
        "| case | tool | seconds, median [min-max] | MiB/s | modelfetch speed ÷ tool's:"
        " spawn to exit | ... in-process work |",
        "|---|---|---|---|---|---|",
    ]
    for case in cases:
        mf = median(case.runs["modelfetch"], lambda r: r.seconds)
        mf_work = median(case.runs["modelfetch"], lambda r: r.work)
        assert mf is not None
        for name, runs in case.runs.items():
            secs = median(runs, lambda r: r.seconds)
            assert secs is not None
            spread = f"{secs:.2f} [{min(r.seconds for r in runs):.2f}-"
            spread += f"{max(r.seconds for r in runs):.2f}]"
            speed = f"{case.size / MiB / secs:.0f}"
            work = median(runs, lambda r: r.work)
            if name in case.baseline_for_ratio:
                by_work = f"**{secs / mf_work:.2f}x**" if mf_work else ""
                cells = f"**{secs / mf:.2f}x** | {by_work}"
            else:
                cells = "| " + (f"work {work:.2f} s" if work is not None else "")
                connections = [r.connections for r in runs if r.connections]
                if connections:
                    cells += f", connections: up to {max(connections)}"
            tool = f"**{name}**" if name == "modelfetch" else name
            lines.append(f"| {case.title} | {tool} | {spread} | {speed} | {cells} |")
        floor = floor_of(case)
        if floor is not None:
            what = "floor: max(" + ", ".join(case.floor_of) + ")"
            ratio = f"modelfetch takes **{mf / floor:.2f}x** the floor"
            if mf_work:
                ratio += f" | in-process work: **{mf_work / floor:.2f}x**"
            lines.append(
                f"| {case.title} | {what} | {floor:.2f} | {case.size / MiB / floor:.0f} | {ratio} |"
            )
    lines += stage_table(cases)
    lines += ["", "| case 4: peak RSS of modelfetch | MiB |", "|---|---|"]
    for what, kib in rss.items():
        lines.append(f"| {what} | {kib / 1024:.0f} |")
    lines += goal_table(cases)
    return "\n".join(lines)


def floor_of(case: Case) -> float | None:
    medians = [median(case.runs[name], lambda r: r.seconds) for name in case.floor_of]
    found = [m for m in medians if m is not None]
    return max(found) if found and len(found) == len(case.floor_of) else None


STAGES = ("request", "receive", "pwrite", "hash", "hash_tail", "fsync", "rename")


def stage_table(cases: list[Case]) -> list[str]:
    """Where modelfetch's time went, per stage (medians over the rounds; transfer/stages.py):
    `receive` is first response head to last byte, `pwrite` the part of it inside pwrite
    (summed over connections), `hash` the digest thread's busy time alongside, `hash tail`
    what hashing added after the last byte, then the publish's fsync and rename."""
    rows = []
    for case in cases:
        for name, runs in case.runs.items():
            staged = [r.stages for r in runs if r.stages]
            if not staged:
                continue
            cells = [f"{statistics.median(s.get(k, 0.0) for s in staged):.3f}" for k in STAGES]
            rows.append(f"| {case.title} | {name} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    head = "| case | tool | " + " | ".join(k.replace("_", " ") for k in STAGES) + " |"
    return [
        "",
        "Where modelfetch's time went (seconds, medians):",
        "",
        head,
        "|---|---|" + "---|" * len(STAGES),
        *rows,
    ]


# (case number, tool row, the goal: our row's speed ÷ that row's at least this; or, for a
# floor, our row's time ÷ the floor at most this; our row)
GOALS: tuple[tuple[str, str, str, float, str], ...] = (
    ("1.", "floor", "time ÷ floor ≤", 1.05, "modelfetch"),
    ("2.", "aria2c -x8 -s8 -k1M", "speed ÷ tool's ≥", 1.0, "modelfetch"),
    ("2.", "aria2c -x16 -s16 -k1M", "speed ÷ tool's ≥", 1.2, "modelfetch"),
    ("3.", "aria2c -j16 -i list", "speed ÷ tool's ≥", 1.0, DAEMON_ROW),
    ("3.", "aria2c -j16 -i list", "speed ÷ tool's ≥", 0.7, "modelfetch"),
)


def goal_table(cases: list[Case]) -> list[str]:
    lines = ["", "| goal | result | met |", "|---|---|---|"]
    for prefix, row, rule, target, mine in GOALS:
        case = next((c for c in cases if c.title.startswith(prefix)), None)
        if case is None or mine not in case.runs:
            continue
        mf = median(case.runs[mine], lambda r: r.seconds)
        if row == "floor":
            floor = floor_of(case)
            if floor is None or mf is None:
                continue
            value, met = mf / floor, mf / floor <= target
        else:
            if row not in case.runs or mf is None:
                continue
            other = median(case.runs[row], lambda r: r.seconds)
            assert other is not None
            value, met = other / mf, other / mf >= target
        what = f"case {prefix} `{mine}` {rule} {target} (`{row}`)"
        lines.append(f"| {what} | {value:.2f}x | {'**met**' if met else '**missed**'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--cases", default="1,2,3,4")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    wanted = {int(c) for c in args.cases.split(",")}
    for tool in ("curl", "aria2c"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is required as a baseline (apt-get install curl aria2)")
    size = args.size_mib * MiB
    source_file(size)
    small_files()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    # An installed package carries its bytecode (pip compiles at install); this checkout is an
    # editable install, and where PYTHONDONTWRITEBYTECODE is set every modelfetch child would
    # otherwise compile the package from source on each spawn (~0.1 s).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src")], check=True)
    began = time.monotonic()
    start_load = load()
    cases: list[Case] = []
    rss: dict[str, int] = {}
    with running_nginx(BENCH_DIR) as servers:
        if 1 in wanted or 4 in wanted:
            case = case_big(servers, size, capped=False)
            if 1 not in wanted:  # case 4 alone: modelfetch only
                case.tools = {"modelfetch": case.tools["modelfetch"]}
                case.baseline_for_ratio = []
            run_case(case, args.runs)
            cases.append(case)
            peaks = [r.rss_kib for r in case.runs["modelfetch"] if r.rss_kib]
            if peaks:
                rss[f"during case 1 (one {size // MiB} MiB file)"] = max(peaks)
        if 2 in wanted:
            case = case_big(servers, size, capped=True)
            run_case(case, args.runs)
            cases.append(case)
        if 3 in wanted:
            with small_daemon() as daemon:
                case = case_small(servers, daemon)
                run_case(case, args.runs)
            cases.append(case)
        if 4 in wanted:
            print(f"\n== 4. a manager with {QUEUE_ITEMS} items queued  (load {load()})", flush=True)
            run = queue_rss(servers)
            print(f"  {QUEUE_ITEMS} items: {run.seconds:.1f} s, peak RSS {run.rss_kib} KiB")
            if run.rss_kib:
                what = f"a manager with {QUEUE_ITEMS} items queued (16 active), listing, working"
                rss[what] = run.rss_kib
    (OUT_DIR / "download.bin").unlink(missing_ok=True)
    table = report(cases, rss, (start_load, load()))
    print("\n" + table)
    print(f"\n(total {time.monotonic() - began:.0f} s)")
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
