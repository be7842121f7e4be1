"""Fleet mode (issue 14): 1, 2 and 4 workers drain one PostgreSQL queue from a capped hub.

    python benchmarks/bench_fleet.py [--workers 1,2,4] [--shards 4] [--shard-mib 128]
                                     [--connection-rate 40] [--client-rate 60]
                                     [--max-active 1] [--markdown FILE]

Starts the tests' throwaway PostgreSQL cluster (`tests/pg.py`) and the fake hub on 127.0.0.1
with a cap per connection and a cap per client (one bucket over all the connections of one
token, as the real Hub's CDN treats one user). The hub serves a sharded GGUF (`--shards` files
of `--shard-mib` MiB) plus an mmproj file, a config and a README. For each N: a fresh database,
a fresh shared models dir; the model is enqueued once (a Hub spec, through the planner); then N
worker processes (`fleet_worker.py`), each with its own MODELFETCH_HOME and its own HF token, so
the hub sees N clients, work the queue until it is empty, as `modelfetch run` does.

One row per N: wall seconds from the first spawn to the last exit, aggregate MiB/s over that,
speed-up against one worker, the ratio to the ideal (N x one worker's speed, capped by what the
hub sends N clients), the same speed on the wire (the hub's first body byte to its last), claim
latency p50/p99 over every claim of every worker (`FleetWorker.claim_seconds`), what the hub
sent against the model's size, and the load average. Every file is checked byte-exact (SHA-256)
after each row. Without PostgreSQL it prints a "skipped:" line and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the cluster helper lives in tests/

from bench_common import cpu_and_memory  # noqa: E402
from tests.pg import PgCluster, find_bin_dir, start_cluster  # noqa: E402

from modelfetch.hubconfig import HubConfig  # noqa: E402
from modelfetch.manager import DownloadManager  # noqa: E402
from modelfetch.testing.fakehub import FakeHub, RepoFile  # noqa: E402

WORKER = Path(__file__).with_name("fleet_worker.py")
OUT_DIR = ROOT / ".bench" / "fleet-out"  # this suite's scratch space (git-ignored)
MiB = 1 << 20
REPO = "bench/Fleet-GGUF"
QUANT = "Q4_K_M"
EXTRAS = ("mmproj-*", "config.json", "README.md")
ENQUEUER_TOKEN = "hf_bench_enqueuer"


def worker_token(i: int) -> str:
    return f"hf_bench_worker_{i}"


def add_model(hub: FakeHub, shards: int, shard_mib: int) -> list[str]:
    files = [
        RepoFile(
            f"{QUANT}/Fleet-{QUANT}-{i:05d}-of-{shards:05d}.gguf",
            size=shard_mib * MiB + 1_000 * i,
            seed=100 + i,
        )
        for i in range(1, shards + 1)
    ]
    files += [
        RepoFile("mmproj-Fleet-F16.gguf", size=6 * MiB + 777, seed=7),
        RepoFile("config.json", content=b'{"architectures": ["LlamaForCausalLM"]}\n'),
        RepoFile("README.md", content=b"# Fleet-GGUF\n\nGenerated for bench_fleet.py.\n"),
    ]
    hub.add_repo(REPO, files)
    return [f.path for f in files]


@dataclass
class Row:
    workers: int
    wall: float
    model_bytes: int
    wire: float  # the hub's first body request to its last body's end
    sent: int  # body bytes the hub sent (CDN and small files)
    claims: list[float]
    per_worker_mib: list[float]
    loads: tuple[str, str]
    cpu: tuple[float, float]  # CPU seconds during the row: this process (the hub), the workers
    statuses: list[str] = field(default_factory=list)

    def mib_s(self) -> float:
        return self.model_bytes / MiB / self.wall

    def wire_mib_s(self) -> float:
        return self.model_bytes / MiB / self.wire


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def cpu_seconds() -> tuple[float, float]:
    """User + system CPU seconds so far: of this process (the fake hub), of its reaped children."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def quantile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


async def enqueue(hub: FakeHub, url: str, scratch: Path, models: Path) -> int:
    """The model, queued once through the planner (as `modelfetch add` does), no transfers."""
    async with DownloadManager(
        home=scratch / "enqueuer",
        models_dir=models,
        store_url=url,
        workers=False,
        hub=HubConfig(hub.endpoint, ENQUEUER_TOKEN),
    ) as manager:
        return await manager.add(REPO, quant=QUANT, include=EXTRAS)


async def run_workers(
    hub: FakeHub, url: str, scratch: Path, models: Path, n: int, args: argparse.Namespace
) -> tuple[float, float, list[dict[str, Any]]]:
    """Spawn n workers, wait for every one to leave: when the first was spawned (epoch), the
    wall seconds from then to the last exit, and their reports."""
    env_base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODELFETCH_"))}
    env_base.update(
        HF_ENDPOINT=hub.endpoint,
        MODELFETCH_STORE=url,
        MODELFETCH_MODELS_DIR=str(models),
        FLEET_MAX_ACTIVE=str(args.max_active),
        FLEET_POLL=str(args.poll),
    )
    procs: list[asyncio.subprocess.Process] = []
    outs = [scratch / f"worker-{i}.json" for i in range(n)]
    logs = [scratch / f"worker-{i}.log" for i in range(n)]
    began, spawned = time.monotonic(), time.time()
    try:
        for i in range(n):
            env = dict(
                env_base, MODELFETCH_HOME=str(scratch / f"home-{i}"), HF_TOKEN=worker_token(i)
            )
            with logs[i].open("wb") as log:
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        str(WORKER),
                        str(outs[i]),
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        async with asyncio.timeout(args.timeout):
            codes = await asyncio.gather(*(p.wait() for p in procs))
        wall = time.monotonic() - began
    except TimeoutError:
        raise SystemExit(f"{n} workers did not finish within {args.timeout:.0f} s") from None
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    for i, code in enumerate(codes):
        if code != 0 or not outs[i].exists():
            tail = logs[i].read_text(errors="replace")[-3000:]
            raise SystemExit(f"worker {i} of {n} exited with {code}:\n{tail}")
    return spawned, wall, [json.loads(o.read_text()) for o in outs]


def verify(hub: FakeHub, paths: list[str], models: Path, n: int) -> int:
    """Every file of the model published byte-exact; the model's size."""
    total = 0
    for path in paths:
        info = hub.file(REPO, path)
        published = models / REPO / path
        if not published.is_file():
            raise SystemExit(f"{n} workers: {published} is missing")
        if sha256_of(published) != info.sha256:
            raise SystemExit(f"{n} workers: {published} differs from what the hub serves")
        total += info.size
    return total


async def run_row(
    hub: FakeHub,
    paths: list[str],
    cluster: PgCluster,
    n: int,
    args: argparse.Namespace,
    scratch_root: Path,
) -> Row:
    scratch = scratch_root / f"n{n}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    models = scratch / "models"
    with cluster.database() as url:
        await enqueue(hub, url, scratch, models)
        hub.log.clear()
        hub.client_bytes.clear()
        hub.client_buckets.buckets.clear()
        before = load()
        print(f"\n== {n} worker(s)  (load {before})", flush=True)
        cpu_before = cpu_seconds()
        spawned, wall, reports = await run_workers(hub, url, scratch, models, n, args)
        cpu = tuple(b - a for a, b in zip(cpu_before, cpu_seconds(), strict=True))
    bodies = [r for r in hub.log if r.method == "GET" and r.bytes_sent > 0 and r.client]
    wire = max(r.end for r in bodies) - min(r.time for r in bodies)
    clients = {hub.client_id(worker_token(i)) for i in range(n)}
    if set(hub.client_bytes) - clients:
        raise SystemExit(f"bytes went to clients that are not the workers: {hub.client_bytes}")
    model_bytes = verify(hub, paths, models, n)
    claims = [c for rep in reports for c in rep["claims"]]
    statuses = sorted({s for rep in reports for s in rep["statuses"]})
    if statuses != ["completed"]:
        raise SystemExit(f"{n} workers left files {statuses}, not all completed")
    row = Row(
        workers=n,
        wall=wall,
        model_bytes=model_bytes,
        wire=wire,
        sent=sum(r.bytes_sent for r in bodies),
        claims=claims,
        per_worker_mib=[hub.client_bytes[hub.client_id(worker_token(i))] / MiB for i in range(n)],
        loads=(before, load()),
        cpu=(cpu[0], cpu[1]),
        statuses=statuses,
    )
    opened = max(float(rep["started"]) for rep in reports) - spawned
    first_body = min(r.time for r in bodies) - spawned
    tail = spawned + wall - max(r.end for r in bodies)
    print(
        f"  {n} worker(s): {row.wall:6.2f} s  {row.mib_s():6.1f} MiB/s"
        f"  (wire {row.wire:.2f} s, {row.wire_mib_s():.1f} MiB/s)"
        f"  MiB per worker {'/'.join(f'{m:.0f}' for m in row.per_worker_mib)}"
        f"  claims {len(claims)}; last manager open +{opened:.2f} s, first body"
        f" +{first_body:.2f} s, last exit {tail:.2f} s after the last byte;"
        f"  CPU s: hub {row.cpu[0]:.1f}, workers {row.cpu[1]:.1f}",
        flush=True,
    )
    if not 0.99 <= row.sent / model_bytes <= 1.05:
        print(f"  ! the hub sent {row.sent / model_bytes:.3f}x the model's bytes", flush=True)
    shutil.rmtree(models, ignore_errors=True)
    return row


def machine() -> str:
    pg = find_bin_dir()
    version = "?"
    if pg is not None:
        out = subprocess.run([str(pg / "postgres"), "--version"], capture_output=True, text=True)
        version = out.stdout.strip() or "?"
    return f"{cpu_and_memory()}; Python {platform.python_version()}; {version}"


def report(rows: list[Row], args: argparse.Namespace, loads: tuple[str, str]) -> str:
    one = rows[0] if rows and rows[0].workers == 1 else None
    cap = args.client_rate
    lines = [
        f"Machine: {machine()}.",
        f"Load average (1/5/15 min) at start: {loads[0]}; at end: {loads[1]}.",
        f"Fake hub: {args.connection_rate} MiB/s per connection, {cap} MiB/s per client;"
        f" model: {args.shards} shards of {args.shard_mib} MiB + a 6 MiB mmproj + 2 small files;"
        f" each worker: max_active {args.max_active}, fleet_poll_interval {args.poll} s.",
        "",
        "| workers | wall s (spawn to last exit) | MiB/s | speed-up vs 1 | of ideal"
        " | on the wire: s, MiB/s, speed-up | claim latency p50 / p99 ms (claims)"
        " | MiB per worker | hub sent ÷ model | CPU s: hub / workers"
        " | load (1 min) before → after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        speed, wire = row.mib_s(), row.wire_mib_s()
        if one is not None:
            ideal = min(row.workers * one.mib_s(), row.workers * cap)
            up = f"{speed / one.mib_s():.2f}x"
            of_ideal = f"{speed / ideal:.2f}"
            wire_up = f", {wire / one.wire_mib_s():.2f}x"
        else:
            up = of_ideal = wire_up = "-"
        p50, p99 = (quantile(row.claims, 0.5), quantile(row.claims, 0.99)) if row.claims else (0, 0)
        lines.append(
            f"| {row.workers} | {row.wall:.2f} | {speed:.1f} | {up} | {of_ideal}"
            f" | {row.wire:.2f}, {wire:.1f}{wire_up}"
            f" | {p50 * 1e3:.2f} / {p99 * 1e3:.2f} ({len(row.claims)})"
            f" | {' / '.join(f'{m:.0f}' for m in row.per_worker_mib)}"
            f" | {row.sent / row.model_bytes:.3f}x"
            f" | {row.cpu[0]:.1f} / {row.cpu[1]:.1f}"
            f" | {row.loads[0].split()[0]} → {row.loads[1].split()[0]} |"
        )
    return "\n".join(lines)


async def bench(cluster: PgCluster, args: argparse.Namespace, scratch: Path) -> list[Row]:
    hub = FakeHub(connection_rate=args.connection_rate * MiB, client_rate=args.client_rate * MiB)
    paths = add_model(hub, args.shards, args.shard_mib)
    hub.tokens.update([ENQUEUER_TOKEN, *(worker_token(i) for i in range(max(args.workers)))])
    rows = []
    async with hub:
        for n in args.workers:
            rows.append(await run_row(hub, paths, cluster, n, args, scratch))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,2,4", help="worker counts, one row each")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--shard-mib", type=int, default=128)
    parser.add_argument("--connection-rate", type=float, default=40.0, help="MiB/s")
    parser.add_argument("--client-rate", type=float, default=60.0, help="MiB/s")
    parser.add_argument("--max-active", type=int, default=3, help="files at once per worker")
    parser.add_argument("--poll", type=float, default=0.25, help="fleet_poll_interval, s")
    parser.add_argument("--timeout", type=float, default=120.0, help="per row, seconds")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",")]
    bin_dir = find_bin_dir()
    if bin_dir is None:
        print("skipped: fleet benchmark: PostgreSQL is not installed (apt-get install postgresql)")
        return 0
    # As bench_transfer.py: every spawn would otherwise compile the package from source.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src")], check=True)
    began = time.monotonic()
    start_load = load()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="fleet-", dir=OUT_DIR))
    cluster: PgCluster | None = None
    try:
        cluster = start_cluster(bin_dir)
        rows = asyncio.run(bench(cluster, args, scratch))
    finally:
        if cluster is not None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                cluster.stop("immediate")
            shutil.rmtree(cluster.base, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    table = report(rows, args, (start_load, load()))
    print("\n" + table)
    print(f"\n(total {time.monotonic() - began:.0f} s)")
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
