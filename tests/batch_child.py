"""Run a DownloadManager in its own process for the batching crash test: `python batch_child.py
HOME PLAN.json`. Enqueues the plan and works it 4 files at a time, printing every event the moment
it is published (so the parent may SIGKILL right after seeing one)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from modelfetch.core.events import to_dict
from modelfetch.manager import DownloadManager, ManagerSettings
from modelfetch.requests import FileRequest, GroupRequest


async def main(home: Path, plan_file: Path) -> None:
    plan = json.loads(plan_file.read_text())
    request = GroupRequest(
        name=plan["name"],
        dest_dir=Path(plan["dest_dir"]),
        files=tuple(FileRequest(**f) for f in plan["files"]),
    )
    settings = ManagerSettings(max_active=4, progress_interval=0.05, checkpoint_interval=0.1)
    async with DownloadManager(home=home, settings=settings) as manager:
        original = manager.bus.publish

        def publish(event):  # type: ignore[no-untyped-def]
            stamped = original(event)
            print(json.dumps(to_dict(stamped)), flush=True)
            return stamped

        manager.bus.publish = publish  # type: ignore[method-assign]
        gid = await manager.enqueue(request)
        await manager.wait([gid])


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
