"""Run a DownloadManager in its own process, for the crash tests: `python manager_child.py HOME
PLAN.json`. It enqueues the plan (the duplicate guard makes that a no-op after a restart) and
works the queue until every group is settled, printing one line per event."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from modelfetch.core.events import to_dict
from modelfetch.core.policy import RetryPolicy
from modelfetch.manager import DownloadManager, ManagerSettings
from modelfetch.requests import FileRequest, GroupRequest


async def main(home: Path, plan_file: Path) -> None:
    plan = json.loads(plan_file.read_text())
    request = GroupRequest(
        name=plan["name"],
        dest_dir=Path(plan["dest_dir"]),
        files=tuple(FileRequest(**f) for f in plan["files"]),
    )
    settings = ManagerSettings(
        max_active=plan.get("max_active", 3),
        connections_per_file=plan.get("connections_per_file", ManagerSettings.connections_per_file),
        progress_interval=0.1,
        checkpoint_interval=1.0,
        policy=RetryPolicy(base_delay=0.05, max_delay=0.2),
    )
    async with DownloadManager(home=home, settings=settings) as manager:
        with manager.subscribe() as events:
            gid = await manager.enqueue(request)
            print(json.dumps({"type": "enqueued", "id": gid}), flush=True)
            waiter = asyncio.create_task(manager.wait([gid]))
            while not waiter.done():
                try:
                    async with asyncio.timeout(0.2):
                        event = await anext(events)
                except TimeoutError:
                    continue
                print(json.dumps(to_dict(event)), flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
