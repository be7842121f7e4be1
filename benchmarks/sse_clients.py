"""N dashboard-like SSE clients of one daemon, in a process of their own (for benchmarks/load.py).

    python benchmarks/sse_clients.py URL N

Each client opens `URL/api/events`, counts the events, the `missed` counts and each event's lag
(now - its `ts`), and skips the start-up snapshot's payload (its `snapshot` and `snapshot_page`
messages) without keeping it. It runs until SIGTERM, then prints one JSON line:
{"events": [...per client], "missed": total, "lags": [...]}. Run apart from the daemon so that
the daemon's memory is measured alone: a client holding a multi-megabyte snapshot line is the
client's cost, not the daemon's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

import aiohttp
import reporter

# A snapshot's messages (its first page and the pages after it): counted, their items skipped.
_SNAPSHOT_KINDS = ("snapshot", "snapshot_page")


async def client(session: aiohttp.ClientSession, url: str, out: dict[str, list[float]]) -> None:
    events = 0
    lags = out["lags"]
    missed = out["missed"]
    try:
        async with session.get(f"{url}/api/events") as resp:
            line = bytearray()
            skipping = False  # inside a snapshot's data line: count it, keep nothing
            kind = ""
            async for chunk in resp.content.iter_any():
                start = 0
                while True:
                    end = chunk.find(b"\n", start)
                    piece = chunk[start:] if end < 0 else chunk[start:end]
                    if not skipping:
                        line += piece
                        if line.startswith(b"data:") and kind in _SNAPSHOT_KINDS:
                            skipping, line = True, bytearray()
                    if end < 0:
                        break
                    if not skipping:
                        if line.startswith(b"event:"):
                            kind = line[6:].strip().decode()
                            events += 1
                        elif line.startswith(b"data:"):
                            with contextlib.suppress(ValueError):
                                data = json.loads(line[5:])
                                if kind == "missed":
                                    missed.append(float(data.get("count", 0)))
                                elif data.get("ts"):
                                    lags.append(max(0.0, time.time() - float(data["ts"])))
                    skipping, line = False, bytearray()
                    start = end + 1
    finally:
        out["events"].append(float(events))


async def start(url: str, n: int) -> asyncio.subprocess.Process:
    """This script with `n` clients of `url`, in a process of its own, once they connect (for
    the benchmarks: what their own process's RSS shows is then the daemon, not fifty clients'
    copies of the snapshot)."""
    return await reporter.start(__file__, url, str(n))


async def finish(clients: asyncio.subprocess.Process) -> dict[str, Any]:
    """Stop the clients `start` started; their report (the JSON line of `main`)."""
    return await reporter.finish(clients)


async def main(url: str, n: int) -> None:
    out: dict[str, list[float]] = {"events": [], "missed": [], "lags": []}
    stop = reporter.until_sigterm()
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks = [asyncio.create_task(client(session, url, out)) for _ in range(n)]
        print("ready", flush=True)
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(
        json.dumps({"events": out["events"], "missed": sum(out["missed"]), "lags": out["lags"]}),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
