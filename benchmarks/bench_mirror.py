"""The Hub mirror (issue 13): N huggingface_hub clients pull one file through one modelfetch
mirror, against each pulling it directly from the (throttled) fake Hub.

    python benchmarks/bench_mirror.py [--clients 1,4,8] [--size-mib 1024]
                                      [--connection-rate 50] [--client-rate 100] [--markdown FILE]

The fake hub runs in this process on 127.0.0.1 with a cap per connection and a cap per client
(MiB/s; a client is a token, or without one its address, so the direct clients here share one
bucket as a team behind one NAT would). The mirror is the real daemon, `modelfetch serve
--mirror`, a subprocess with a fresh home for each row, its HF_ENDPOINT the fake hub. Every
client is a separate `python -c "hf_hub_download(...)"` process with its own HF cache (as N
machines would be), HF_HUB_DISABLE_XET=1. Per row: wall seconds from the first client's spawn
to the last exit, what the hub's CDN sent against the file size, and the wall time against one
direct download. Every client's file is checked (SHA-256) after its row. `--modes warm` adds
rows through a mirror that already holds the file (one client pulled it first, untimed): N
clients on one machine cost that much whatever the mirror does, the floor of its row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelfetch.testing.fakehub import FakeHub, RepoFile  # noqa: E402

MiB = 1 << 20
REPO = "bench/Mirror-GGUF"
FILE = "Mirror-Q4_K_M.gguf"
CLIENT = (
    "import sys\n"
    "from huggingface_hub import hf_hub_download\n"
    "repo, name, endpoint, cache = sys.argv[1:5]\n"
    "print(hf_hub_download(repo, name, endpoint=endpoint, cache_dir=cache))\n"
)


@dataclass
class Row:
    mode: str
    clients: int
    wall: float
    upstream: int
    size: int
    server_cpu: float | None = None  # the mirror daemon's CPU seconds (user + system)
    clients_cpu: float = 0.0  # every client process's CPU seconds together


def _env(scratch: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODELFETCH_"))}
    return {
        **keep,
        "HF_HOME": str(scratch / "hf-home"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1,localhost",
    }


def _cdn_bytes(hub: FakeHub) -> int:
    return sum(r.bytes_sent for r in hub.requests("cdn", path_contains=FILE))


async def _clients(endpoint: str, n: int, scratch: Path) -> tuple[float, list[Path]]:
    env = _env(scratch)
    began = time.monotonic()
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CLIENT,
            REPO,
            FILE,
            endpoint,
            str(scratch / f"client-{i}"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for i in range(n)
    ]
    outs = await asyncio.gather(*(p.communicate() for p in procs))
    wall = time.monotonic() - began
    paths = []
    for proc, (out, err) in zip(procs, outs, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"a client failed: {err.decode()[-2000:]}")
        paths.append(Path(out.decode().strip().splitlines()[-1]))
    return wall, paths


def _check(paths: list[Path], sha256: str) -> None:
    for path in paths:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(8 * MiB):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            raise RuntimeError(f"{path} is not the file")


async def _mirror(hub: FakeHub, home: Path) -> tuple[asyncio.subprocess.Process, str]:
    env = {**_env(home), "HF_ENDPOINT": hub.endpoint, "MODELFETCH_HOME": str(home)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "modelfetch", "serve", "--port", "0", "--mirror",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    info = home / "daemon.json"
    async with asyncio.timeout(30):
        while True:
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(info.read_text())
                if data.get("pid") == proc.pid:
                    return proc, str(data["url"])
            await asyncio.sleep(0.05)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def _row(hub: FakeHub, mode: str, n: int, size: int, sha256: str, scratch: Path) -> Row:
    hub.log.clear()
    work = scratch / f"{mode}-{n}"
    work.mkdir()
    try:
        cpu: float | None = None
        if mode == "direct":
            before = _children_cpu()
            wall, paths = await _clients(hub.endpoint, n, work)
        else:
            proc, url = await _mirror(hub, work / "mirror-home")
            try:
                if mode == "warm":  # the file held already: what N clients cost on their own
                    await _clients(url, 1, work / "warm-up")
                    hub.log.clear()
                before = _children_cpu()  # (the daemon is counted when it is waited for)
                wall, paths = await _clients(url, n, work)
                cpu = _cpu_seconds(proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                clients_done = _children_cpu()
                await proc.wait()
        clients = (_children_cpu() if mode == "direct" else clients_done) - before
        _check(paths, sha256)
        return Row(mode, n, wall, _cdn_bytes(hub), size, cpu, clients)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process, from /proc (Linux); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _table(rows: list[Row]) -> str:
    one_direct = next((r.wall for r in rows if r.mode == "direct" and r.clients == 1), None)
    lines = [
        "| clients | via | wall s | upstream bytes / file | wall / one direct download "
        "| CPU s: mirror / clients |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r.wall / one_direct:.2f}x" if one_direct else "-"
        cpu = f"{r.server_cpu:.1f}" if r.server_cpu is not None else "-"
        cpu += f" / {r.clients_cpu:.1f}"
        lines.append(
            f"| {r.clients} | {r.mode} | {r.wall:.1f} | {r.upstream / r.size:.3f}x | {ratio} "
            f"| {cpu} |"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    counts = [int(x) for x in args.clients.split(",")]
    size = args.size_mib * MiB
    async with FakeHub(
        connection_rate=args.connection_rate * MiB, client_rate=args.client_rate * MiB
    ) as hub:
        hub.add_repo(REPO, [RepoFile(FILE, size=size, seed=13)])
        sha256 = hub.file(REPO, FILE).sha256
        assert sha256 is not None
        rows: list[Row] = []
        with tempfile.TemporaryDirectory(prefix="bench-mirror-") as tmp:
            scratch = Path(tmp)
            for n in counts:
                for mode in args.modes.split(","):
                    row = await _row(hub, mode, n, size, sha256, scratch)
                    rows.append(row)
                    print(
                        f"{mode:6} N={n}: {row.wall:6.1f} s, upstream "
                        f"{row.upstream / size:.3f}x the file",
                        flush=True,
                    )
    header = (
        f"{args.size_mib} MiB file; fake hub capped at {args.connection_rate} MiB/s per "
        f"connection and {args.client_rate} MiB/s per client; {os.cpu_count()} cores"
    )
    table = _table(rows)
    print(f"\n{header}\n\n{table}")
    if args.markdown:
        Path(args.markdown).write_text(f"{header}\n\n{table}\n", encoding="utf-8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--connection-rate", type=float, default=50.0)
    parser.add_argument("--client-rate", type=float, default=100.0)
    parser.add_argument("--markdown")
    parser.add_argument(
        "--modes",
        default="direct,mirror",
        help="which rows: direct, mirror, warm (through a mirror that holds the file already:"
        " the clients' own cost on this machine, the floor of a mirror row)",
    )
    asyncio.run(main(parser.parse_args()))
