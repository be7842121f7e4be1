"""A dashboard polling the daemon's API, in a process of its own (for benchmarks/load.py).

    python benchmarks/api_poller.py URL ITEMS [INTERVAL]

Every INTERVAL seconds (default 0.2) it asks for the first page of `GET /api/downloads` and
then `GET /api/downloads/{id}` of a random id below ITEMS, on one keep-alive connection as a
browser would, and times each from the request to the last byte of the answer. It runs until
SIGTERM, then prints one JSON line: {"listing": [[t, s]...], "one": [[t, s]...],
"listing_bytes": n}, each request as its start (time.time()) and its duration in seconds.
A wrong status ends it with that error in the report ("error").
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

import aiohttp
import reporter


async def main(url: str, items: int, interval: float) -> None:
    listing: list[tuple[float, float]] = []
    one: list[tuple[float, float]] = []
    size = 0
    error = ""
    stop = reporter.until_sigterm()
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    connector = aiohttp.TCPConnector(limit=1)  # one connection, as one dashboard tab
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def get(target: str, into: list[tuple[float, float]]) -> int:
            at, began = time.time(), time.perf_counter()
            async with session.get(target) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{target}: HTTP {resp.status}")
            into.append((at, time.perf_counter() - began))
            return len(body)

        async def poll() -> None:
            nonlocal size
            while True:
                size = await get(f"{url}/api/downloads", listing)
                await get(f"{url}/api/downloads/{random.randrange(1, items)}", one)
                await asyncio.sleep(interval)

        print("ready", flush=True)
        task = asyncio.create_task(poll())
        await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when="FIRST_COMPLETED")
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            error = str(exc)
    print(json.dumps({"listing": listing, "one": one, "listing_bytes": size, "error": error}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) if sys.argv[3:] else 0.2))
