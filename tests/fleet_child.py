"""One worker of a shared queue, in its own process, for the fleet tests:
`python fleet_child.py HOME STORE_URL MODELS_DIR [PLAN.json]`.

It enqueues the plan if one is given (the duplicate guard makes a second worker's enqueue of the
same plan a no-op), then works the shared queue until no file is queued, active or waiting to
retry anywhere, printing one JSON line per event. `FLEET_LEASE` sets the lease in seconds."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from modelfetch.core.events import to_dict
from modelfetch.core.policy import RetryPolicy
from modelfetch.manager import DownloadManager, ManagerSettings
from modelfetch.requests import FileRequest, GroupRequest

UNSETTLED = {"queued", "active", "waiting_retry"}


async def main(home: Path, url: str, models: Path, plan_file: Path | None) -> None:
    settings = ManagerSettings(
        max_active=2,
        progress_interval=0.1,
        checkpoint_interval=0.2,
        policy=RetryPolicy(base_delay=0.05, max_delay=0.2),
        lease_seconds=float(os.environ.get("FLEET_LEASE", "2")),
        fleet_poll_interval=0.2,
        stall_timeout=5.0,
    )
    async with DownloadManager(
        home=home, settings=settings, models_dir=models, store_url=url
    ) as manager:
        with manager.subscribe() as events:

            async def show() -> None:
                async for event in events:
                    print(json.dumps(to_dict(event)), flush=True)

            printer = asyncio.create_task(show())
            if plan_file is not None:
                plan = json.loads(plan_file.read_text())
                request = GroupRequest(
                    name=plan["name"],
                    dest_dir=Path(plan["dest_dir"]),
                    files=tuple(FileRequest(**f) for f in plan["files"]),
                )
                gid = await manager.enqueue(request)
                print(json.dumps({"type": "enqueued", "id": gid}), flush=True)
            quiet = 0
            while quiet < 3:  # three polls in a row with nothing left anywhere
                views = await manager.snapshot()
                unsettled = [v.id for v in views if any(f.status in UNSETTLED for f in v.files)]
                if unsettled:
                    quiet = 0
                    await manager.wait(unsettled)
                else:
                    quiet += 1
                    await asyncio.sleep(settings.fleet_poll_interval)
            await asyncio.sleep(0.2)
            printer.cancel()
    print(json.dumps({"type": "done"}), flush=True)


if __name__ == "__main__":
    plan = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), plan))
