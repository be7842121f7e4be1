"""modelfetch's side of the benchmark, run as its own process (like a command-line tool would be).

    python benchmarks/mf_child.py fetch URL DEST SHA256 SIZE [--connections N]
    python benchmarks/mf_child.py manager HOME PLAN.json [--max-active N] [--hold-queue]
    python benchmarks/mf_child.py files PLAN.json [--concurrency N]

`fetch` is one file through `fetch_file` with the manager's defaults (SHA-256 verified);
`manager` is a whole plan through a DownloadManager with a fresh state directory (queue, store,
events, verification: everything). Each prints one JSON line: the seconds the work took inside
the process (`work`) and the peak RSS (KiB) of this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from pathlib import Path

from modelfetch.manager.settings import ManagerSettings
from modelfetch.transfer import ConnectionSlots, TransferRequest, fetch_file, make_session

DEFAULTS = ManagerSettings()


async def fetch(
    url: str, dest: Path, sha256: str, size: int, connections: int
) -> dict[str, object]:
    slots = ConnectionSlots(DEFAULTS.max_connections, DEFAULTS.max_connections_per_host)
    async with make_session() as session:
        began = time.perf_counter()
        result = await fetch_file(
            session,
            TransferRequest(
                url=url,
                dest=dest,
                expected_size=size,
                expected_sha256=sha256,
                connections=connections,
                segment_threshold=DEFAULTS.segment_threshold,
                min_segment_size=DEFAULTS.min_segment_size,
            ),
            slots=slots,
        )
        work = time.perf_counter() - began
    if not result.verified or result.size != size:
        raise SystemExit("modelfetch did not verify the file")
    out: dict[str, object] = {
        "work": work,
        "connections": result.connections,
        "steals": result.steals,
    }
    if result.stages is not None:
        out["stages"] = result.stages.as_dict()
    return out


async def files(plan_path: Path, concurrency: int) -> dict[str, float]:
    """Every file of a plan through `fetch_file` on one session, `concurrency` at a time: the
    transfer layer alone (verified, fsynced, published), without the queue and its store."""
    plan = json.loads(plan_path.read_text())
    requests = [
        TransferRequest(
            url=f["url"],
            dest=Path(group["dest_dir"]) / f["path"],
            expected_size=f["size"],
            expected_sha256=f["sha256"],
        )
        for group in plan["groups"]
        for f in group["files"]
    ]
    gate = asyncio.Semaphore(concurrency)
    async with make_session() as session:
        began = time.perf_counter()

        async def one(request: TransferRequest) -> bool:
            async with gate:
                return (await fetch_file(session, request)).verified

        verified = await asyncio.gather(*(one(r) for r in requests))
        work = time.perf_counter() - began
    if not all(verified):
        raise SystemExit("a file was not verified")
    return {"work": work, "verified_files": len(verified)}


async def manager(
    home: Path, plan_path: Path, max_active: int, hold_queue: bool
) -> dict[str, float]:
    # Imported here: `fetch` and `files` measure the transfer layer, which a process that
    # only transfers loads without the manager (its queue, store and events).
    from modelfetch.manager import DownloadManager
    from modelfetch.requests import FileRequest, GroupRequest

    plan = json.loads(plan_path.read_text())
    settings = ManagerSettings(max_active=max_active)
    async with DownloadManager(home=home, settings=settings) as mgr:
        began = time.perf_counter()
        gids = []
        for group in plan["groups"]:
            request = GroupRequest(
                name=group["name"],
                dest_dir=Path(group["dest_dir"]),
                files=tuple(FileRequest(**f) for f in group["files"]),
            )
            gids.append(await mgr.enqueue(request))
        queued = time.perf_counter() - began
        if hold_queue:  # what a front end does with a long queue: list it
            views = await mgr.snapshot()
            assert len(views) == len(gids)
        await mgr.wait(gids)
        work = time.perf_counter() - began
        views = await mgr.snapshot()
        bad = [v.name for v in views if v.status != "completed"]
        if bad:
            raise SystemExit(f"not completed: {bad[:5]}")
        verified = sum(1 for v in views for f in v.files if f.sha256)
    return {"work": work, "enqueue": queued, "verified_files": verified}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    f = sub.add_parser("fetch")
    f.add_argument("url")
    f.add_argument("dest", type=Path)
    f.add_argument("sha256")
    f.add_argument("size", type=int)
    f.add_argument("--connections", type=int, default=DEFAULTS.connections_per_file)
    m = sub.add_parser("manager")
    m.add_argument("home", type=Path)
    m.add_argument("plan", type=Path)
    m.add_argument("--max-active", type=int, default=16)
    m.add_argument("--hold-queue", action="store_true")
    g = sub.add_parser("files")
    g.add_argument("plan", type=Path)
    g.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if args.mode == "fetch":
        out = asyncio.run(fetch(args.url, args.dest, args.sha256, args.size, args.connections))
    elif args.mode == "files":
        out = asyncio.run(files(args.plan, args.concurrency))
    else:
        out = asyncio.run(manager(args.home, args.plan, args.max_active, args.hold_queue))
    out["rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
