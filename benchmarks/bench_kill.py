"""kill -9 three times during a 1 GiB download: how much does the server send in total?

    python benchmarks/bench_kill.py [--size-mib 1024] [--kills 3] [--runs 1]
                                    [--servers plain,capped] [--tools modelfetch,aria2c,hf]

Each tool downloads one file of random bytes from nginx on loopback (bench_transfer.py's files
and nginx binary; here with an access log of `$body_bytes_sent`), is SIGKILLed `--kills` times
and restarted with the same command, then left to finish; the final file's SHA-256 is checked.
The figure is the body bytes nginx sent for the file, over every life, divided by its size
(1.000x: nothing was sent twice). nginx counts a byte once its socket took it, so the bytes
sitting in socket buffers at a kill count, as they would against a real CDN.

Kill points: life k is killed once it has written 1/(kills+1) of the file (its own `wchar` in
/proc/PID/io, polled every 2 ms: the same for every tool, whatever its progress output), so the
kills fall at about 25%, 50% and 75% of the file. Nothing here is timed against a clock.

Tools:
  modelfetch   `benchmarks/mf_child.py manager`: a DownloadManager with the default settings
               (16 connections at most, SQLite store, the durable map every second, the
               volatile map every 2 MiB; transfer/checkpoints.py), the same home every life.
  aria2c       `aria2c -x8 -s8 -k1M --auto-save-interval=1` (its control file every second).
  hf           huggingface_hub's `http_get` resuming its `.incomplete` file from its length,
               as `hf_hub_download` does (one connection); skipped if not importable.
  modelfetch (no kill) is also run once per server: the uninterrupted time, for scale.

Servers: `plain` (unthrottled: the client's CPU is the limit, and its socket buffers fill) and
`capped` (nginx `limit_rate 25m`, which caps each request after its first second: a slower
server, not the per-connection cap of bench_transfer.py's case 2, whose server does not log
the bytes it sends; what this counts is resent bytes, which that difference does not change).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench_common import (
    BENCH_DIR,
    CHILD,
    ROOT,
    MiB,
    _sha256_of,
    load,
    running_nginx,
    source_file,
)

from modelfetch.testing.procio import bytes_written

OUT_DIR = BENCH_DIR / "kill-out"
POLL = 0.002
HF_CHILD = """
import os, sys
from huggingface_hub.file_download import http_get
url, path, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
part = path + ".incomplete"
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(part, "ab") as f:  # hf_hub_download resumes from the length of its .incomplete
    http_get(url, f, resume_size=f.tell(), expected_size=size)
os.replace(part, path)
"""


@dataclass
class Outcome:
    sent: int  # body bytes nginx sent for the file, all lives
    kills: int  # kills that landed (a life may finish before its kill point)
    seconds: float  # the lives' wall time, added up
    requests: int


def sent_since(log: Path, offset: int, uri: str) -> tuple[int, int]:
    """(body bytes, requests) nginx logged for `uri` after byte `offset` of its log."""
    with open(log, "rb") as f:
        f.seek(offset)
        lines = f.read().decode().splitlines()
    total = requests = 0
    for line in lines:
        path, _, sent = line.split(" ")
        if path == uri:
            total += int(sent)
            requests += 1
    return total, requests


def life(argv: list[str], kill_after: int | None, env: dict[str, str]) -> tuple[bool, float]:
    """Run `argv` until it exits, or SIGKILL it once it has written `kill_after` bytes.
    (killed, seconds)."""
    began = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    if kill_after is not None:
        while proc.poll() is None and bytes_written(proc.pid) < kill_after:
            time.sleep(POLL)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True, time.perf_counter() - began
    err = proc.stderr.read()
    proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return False, time.perf_counter() - began


def run_tool(
    argv: list[str], dest: Path, size: int, sha256: str, kills: int, log: Path, uri: str
) -> Outcome:
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    offset = log.stat().st_size
    landed, seconds = 0, 0.0
    for _ in range(kills):
        killed, took = life(argv, size // (kills + 1), env)
        landed += killed
        seconds += took
    _, took = life(argv, None, env)
    seconds += took
    if _sha256_of(dest) != sha256:
        raise SystemExit(f"{argv[0]}: the downloaded file's SHA-256 is wrong")
    time.sleep(0.3)  # nginx logs a request when its connection ends
    sent, requests = sent_since(log, offset, uri)
    return Outcome(sent, landed, seconds, requests)


def fresh(directory: Path) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    subprocess.run(["sync"], check=True)
    time.sleep(0.3)
    return directory


def tools(
    url: str, size: int, sha256: str, scratch: Path, *, quiet: bool = False
) -> dict[str, tuple[list[str], Path]]:
    """name -> (the command every life runs, the file it leaves), for the tools found here."""
    scratch.mkdir(parents=True, exist_ok=True)
    found: dict[str, tuple[list[str], Path]] = {}
    home, out = scratch / "home", scratch / "out"
    plan = scratch / "plan.json"
    files = [{"url": url, "path": "download.bin", "size": size, "sha256": sha256}]
    plan.write_text(
        json.dumps({"groups": [{"name": "kill", "dest_dir": str(out), "files": files}]})
    )
    manager = [sys.executable, str(CHILD), "manager", str(home), str(plan), "--max-active", "1"]
    found["modelfetch"] = (manager, out / "download.bin")
    if shutil.which("aria2c"):
        aria2 = [
            "aria2c",
            *("-x8", "-s8", "-k1M", "--auto-save-interval=1"),
            *("--quiet=true", "--continue=true", "--auto-file-renaming=false"),
            "--file-allocation=falloc",
            *("-d", str(out), "-o", "download.bin", url),
        ]
        found["aria2c"] = (aria2, out / "download.bin")
    elif not quiet:
        print("skipped: aria2c is not installed (apt-get install aria2)")
    has_hf = subprocess.run(
        [sys.executable, "-c", "import huggingface_hub.file_download"], capture_output=True
    )
    if has_hf.returncode == 0:
        target = out / "download.bin"
        hf = [sys.executable, "-c", HF_CHILD, url, str(target), str(size)]
        found["hf"] = (hf, target)
    elif not quiet:
        print("skipped: huggingface_hub is not importable in this Python")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--servers", default="plain,capped")
    parser.add_argument("--tools", default="modelfetch,aria2c,hf")
    args = parser.parse_args(argv)
    if not Path("/proc/self/io").exists():
        print("skipped: kill benchmark: needs /proc/PID/io (Linux)")
        return 0
    size = args.size_mib * MiB
    source, sha256 = source_file(size)
    wanted = args.tools.split(",")
    # As bench_transfer.py: every spawn would otherwise compile the package from source.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src")], check=True)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, Outcome]] = []
    began = time.monotonic()
    start_load = load()
    with (
        tempfile.TemporaryDirectory(prefix="nginx-", dir=OUT_DIR) as ngx,
        running_nginx(BENCH_DIR, access_log=Path(ngx) / "access.log") as servers,
    ):
        log = Path(ngx) / "access.log"
        uri = f"/{source.name}"
        for server in args.servers.split(","):
            base = {"plain": servers.plain, "capped": servers.capped}[server]
            url = f"{base}{uri}"
            names = [n for n in wanted if n in tools(url, size, sha256, OUT_DIR / "run")]
            if "modelfetch" in names:
                names.insert(0, "modelfetch (no kill)")
            for r in range(args.runs):
                print(f"\n== {server}, round {r + 1}  (load {load()})", flush=True)
                for name in names:
                    if r and name.endswith("(no kill)"):
                        continue
                    scratch = fresh(OUT_DIR / "run")  # a fresh home and destination
                    found = tools(url, size, sha256, scratch, quiet=True)
                    command, dest = found[name.split(" ")[0]]
                    kills = 0 if name.endswith("(no kill)") else args.kills
                    outcome = run_tool(command, dest, size, sha256, kills, log, uri)
                    rows.append((server, name, outcome))
                    print(
                        f"  {name:<22} {outcome.sent / size:6.3f}x  {outcome.kills} kills"
                        f"  {outcome.requests:4d} requests  {outcome.seconds:6.2f} s",
                        flush=True,
                    )
    shutil.rmtree(OUT_DIR / "run", ignore_errors=True)
    print(f"\n{args.kills} x kill -9 during a {size // MiB} MiB download: body bytes sent by the")
    print(f"server / file size (load {start_load} -> {load()}, {time.monotonic() - began:.0f} s)\n")
    print("| server | tool | sent / size | kills | requests | seconds (all lives) |")
    print("|---|---|---:|---:|---:|---:|")
    for server, name, o in rows:
        print(
            f"| {server} | {name} | {o.sent / size:.3f}x | {o.kills} | {o.requests}"
            f" | {o.seconds:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
