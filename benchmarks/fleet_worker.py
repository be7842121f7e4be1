"""One worker of `bench_fleet.py`: `python benchmarks/fleet_worker.py OUT.json`.

Configured as `modelfetch run` is, from the environment: `MODELFETCH_HOME` (its own),
`MODELFETCH_STORE` (the shared PostgreSQL queue), `MODELFETCH_MODELS_DIR` (shared), `HF_ENDPOINT`
and `HF_TOKEN` (its own, so the hub sees one client per worker); `FLEET_MAX_ACTIVE` and
`FLEET_POLL` set `max_active` and `fleet_poll_interval`. It works the queue as `run` does (until
no download is queued or active anywhere), then writes OUT.json: how long each claim on the
store took (`FleetWorker.claim_seconds`) and when it started, drained and left (epoch seconds).
"""

from __future__ import annotations

import time

BEGAN = time.time()

import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from modelfetch.manager import DownloadManager, ManagerSettings  # noqa: E402


async def main(out: Path) -> None:
    imported = time.time()
    settings = ManagerSettings(
        max_active=int(os.environ.get("FLEET_MAX_ACTIVE", "3")),
        fleet_poll_interval=float(os.environ.get("FLEET_POLL", "1.0")),
    )
    async with DownloadManager(
        home=Path(os.environ["MODELFETCH_HOME"]),
        settings=settings,
        models_dir=Path(os.environ["MODELFETCH_MODELS_DIR"]),
        store_url=os.environ["MODELFETCH_STORE"],
    ) as manager:
        started = time.time()
        fleet = manager._fleet
        if fleet is None:
            raise SystemExit("the store is not shared: MODELFETCH_STORE must be postgresql://")
        # `modelfetch run`'s loop: until nothing is queued or active on the whole queue.
        while True:
            views = await manager.snapshot()
            live = [v.id for v in views if v.status in ("queued", "active")]
            if not live:
                break
            await manager.wait(live)
        drained = time.time()
        statuses = sorted({f.status for v in views for f in v.files})
        claims = list(fleet.claim_seconds)
    result = {
        "began": BEGAN,
        "imported": imported,
        "started": started,
        "drained": drained,
        "left": time.time(),
        "claims": claims,
        "statuses": statuses,
    }
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
