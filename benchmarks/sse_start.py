"""The daemon's first page of `GET /api/downloads` while 50 SSE clients start, on a queue of
10,000 that nothing else moves (no download, no churn: what the listing and the snapshots cost
alone; `load.py --http` measures the same beside a download).

    python benchmarks/sse_start.py [--items 10000] [--subscribers 50] [--gets 12]

Builds (once) a home with `--items` queued one-file downloads under .bench/, starts a manager
with no workers and the daemon on it, starts `sse_clients.py` (the clients, in a process of
their own), then times `--gets` listings 0.5 s apart, the first while the clients connect.
Prints each listing's time, their p50 and the process's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import aiohttp
import sse_clients

from modelfetch.manager import DownloadManager, ManagerSettings
from modelfetch.requests import FileRequest, GroupRequest
from modelfetch.server import daemon_file, serve

BENCH_DIR = Path(__file__).resolve().parent.parent / ".bench"


async def queued_home(items: int) -> Path:
    home = BENCH_DIR / f"sse-start-{items}"
    if (home / "ready").exists():
        return home
    async with DownloadManager(home=home, workers=False) as manager:
        for i in range(len(await manager.snapshot()), items):
            url = f"http://127.0.0.1:9/tiny.bin?i={i}"  # never fetched: no workers
            request = GroupRequest(
                name=f"item-{i}",
                files=(FileRequest(url=url, path=f"item-{i}.bin", size=1024),),
                dest_dir=BENCH_DIR / "sse-start-out",
            )
            await manager.enqueue(request)
    (home / "ready").touch()
    return home


async def main(args: argparse.Namespace) -> None:
    home = await queued_home(args.items)
    settings = ManagerSettings(max_active=2)
    async with DownloadManager(home=home, settings=settings, workers=False) as manager:
        server = asyncio.create_task(serve(manager, port=0))
        for _ in range(200):  # serve() writes daemon.json once it listens
            if daemon_file(manager.home).exists():
                break
            await asyncio.sleep(0.05)
        url = json.loads(daemon_file(manager.home).read_text())["url"]
        clients = await sse_clients.start(url, args.subscribers)
        took: list[float] = []
        async with aiohttp.ClientSession() as session:
            for _ in range(args.gets):
                began = time.perf_counter()
                async with session.get(f"{url}/api/downloads") as response:
                    await response.read()
                took.append(time.perf_counter() - began)
                await asyncio.sleep(0.5)
        report = await sse_clients.finish(clients)
        server.cancel()
    with open("/proc/self/status") as fh:
        peak = next(line.split()[1] for line in fh if line.startswith("VmHWM"))
    print("GET /api/downloads (ms):", " ".join(f"{t * 1e3:.0f}" for t in took))
    print(f"p50 {statistics.median(took) * 1e3:.0f} ms; first {took[0] * 1e3:.0f} ms")
    print(f"SSE messages per client (median): {statistics.median(report['events']):.0f}")
    print(f"peak RSS {int(peak) / 1024:.0f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--gets", type=int, default=12)
    asyncio.run(main(parser.parse_args()))
