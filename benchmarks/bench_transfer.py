"""Single-stream throughput of modelfetch's transfer against the curl CLI, from nginx on loopback.

    python benchmarks/bench_transfer.py [--size-mib 1024] [--runs 3]

A file of random bytes is generated once and cached under .bench/ (git-ignored). nginx (installed
with apt-get when missing) serves it from a scratch config on a free loopback port. The runs
alternate modelfetch (`fetch_file` with `expected_sha256`, i.e. verification on) and
`curl -s -o <file>`; before each: the destination is deleted, `sync`, a 0.3 s pause. Prints each
run's MiB/s, the medians, and the ratio modelfetch/curl. Loopback numbers on a shared 2-CPU box
vary by ±30% between runs: read the medians, and only trust differences well beyond that.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from modelfetch.transfer import TransferRequest, fetch_file, make_session

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"
MiB = 1 << 20


def source_file(size: int) -> tuple[Path, str]:
    """The cached random file of `size` bytes and its SHA-256 (both made once)."""
    BENCH_DIR.mkdir(exist_ok=True)
    path = BENCH_DIR / f"random-{size // MiB}MiB.bin"
    digest_path = path.with_suffix(".sha256")
    if not path.exists() or path.stat().st_size != size:
        print(f"generating {path} ...", flush=True)
        digest_path.unlink(missing_ok=True)
        with open(path.with_suffix(".tmp"), "wb") as out:
            left = size
            while left:
                block = os.urandom(min(16 * MiB, left))
                out.write(block)
                left -= len(block)
        os.replace(path.with_suffix(".tmp"), path)
    if not digest_path.exists():
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(8 * MiB):
                sha.update(block)
        digest_path.write_text(sha.hexdigest())
    return path, digest_path.read_text().strip()


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


@contextmanager
def running_nginx(root: Path) -> Iterator[str]:
    """nginx in the foreground from a scratch config (one worker, sendfile on); yields its URL."""
    binary = nginx_binary()
    port = free_port()
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
events {{ worker_connections 64; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
{temp_paths}
  server {{
    listen 127.0.0.1:{port};
    root {root};
  }}
}}
"""
        )
        proc = subprocess.Popen([binary, "-p", scratch, "-c", str(conf)])
        try:
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
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def prepare(dest: Path) -> None:
    for leftover in (dest, dest.with_name(dest.name + ".part")):
        leftover.unlink(missing_ok=True)
    subprocess.run(["sync"], check=True)
    time.sleep(0.3)


async def modelfetch_once(url: str, dest: Path, sha256: str) -> float:
    async with make_session() as session:
        began = time.perf_counter()
        result = await fetch_file(
            session, TransferRequest(url=url, dest=dest, expected_sha256=sha256)
        )
        elapsed = time.perf_counter() - began
    if not result.verified:
        raise SystemExit("modelfetch did not verify the file")
    return elapsed


def curl_once(url: str, dest: Path) -> float:
    began = time.perf_counter()
    subprocess.run(["curl", "-s", "-o", str(dest), url], check=True)
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    if shutil.which("curl") is None:
        sys.exit("curl is required as the baseline")
    size = args.size_mib * MiB
    source, sha256 = source_file(size)
    out_dir = BENCH_DIR / "out"
    out_dir.mkdir(exist_ok=True)
    dest = out_dir / "download.bin"
    speeds: dict[str, list[float]] = {"modelfetch": [], "curl": []}
    with running_nginx(BENCH_DIR) as base:
        url = f"{base}/{source.name}"
        for run in range(1, args.runs + 1):
            prepare(dest)
            seconds = asyncio.run(modelfetch_once(url, dest, sha256))
            speeds["modelfetch"].append(size / MiB / seconds)
            prepare(dest)
            seconds = curl_once(url, dest)
            if dest.stat().st_size != size:
                sys.exit("curl wrote the wrong number of bytes")
            speeds["curl"].append(size / MiB / seconds)
            print(
                f"run {run}: modelfetch {speeds['modelfetch'][-1]:7.0f} MiB/s   "
                f"curl {speeds['curl'][-1]:7.0f} MiB/s",
                flush=True,
            )
    dest.unlink(missing_ok=True)
    medians = {name: statistics.median(values) for name, values in speeds.items()}
    print(
        f"median ({args.size_mib} MiB, {args.runs} runs): "
        f"modelfetch {medians['modelfetch']:.0f} MiB/s (sha256 verified), "
        f"curl {medians['curl']:.0f} MiB/s"
    )
    print(f"ratio modelfetch/curl: {medians['modelfetch'] / medians['curl']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
