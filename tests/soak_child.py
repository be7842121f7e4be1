"""A manager process for the soak test: `python soak_child.py HOME PLAN.json`.

It adds every spec of the plan through the (chaotic) Hub endpoint and enqueues its plain-URL
downloads; after a restart the duplicate guard makes that a no-op. Then it works the queue until
every group has settled. A group that failed (a retry budget spent on injected faults) is retried,
as a person would, up to `retry_rounds` times. One JSON line per notable thing goes to stdout.
Exit status: 0 when everything completed, 3 when something is still not complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from modelfetch.core import events as ev
from modelfetch.core.errors import HTTPStatusError, NetworkError
from modelfetch.core.policy import RetryPolicy
from modelfetch.hub import HubConfig
from modelfetch.manager import DownloadManager, ManagerSettings
from modelfetch.requests import FileRequest, GroupRequest


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def add_until_planned(manager: DownloadManager, spec: dict[str, Any]) -> int:
    """Planning goes through the chaotic Hub too: a flaky answer is tried again, like a user
    running the command again would."""
    for attempt in range(40):
        try:
            return await manager.add(spec["spec"], include=spec.get("include", ()))
        except (NetworkError, TimeoutError) as exc:
            say(type="add_retry", spec=spec["spec"], attempt=attempt, error=str(exc)[:200])
        except HTTPStatusError as exc:
            if exc.status < 500 and exc.status != 429:
                raise
            say(type="add_retry", spec=spec["spec"], attempt=attempt, error=str(exc)[:200])
        await asyncio.sleep(0.1)
    raise RuntimeError(f"could not plan {spec['spec']}")


async def log_events(manager: DownloadManager) -> None:
    with manager.subscribe(maxsize=4096) as events:
        async for event in events:
            if isinstance(event, ev.StatusChanged) and event.error_kind:
                say(
                    type="error",
                    ref=event.ref,
                    status=event.status,
                    kind=event.error_kind,
                    message=(event.error_message or "")[:200],
                )
            elif isinstance(event, ev.FileCompleted):
                say(type="completed", ref=event.ref, name=event.name)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def main(home: Path, plan_file: Path) -> int:
    plan = json.loads(plan_file.read_text())
    settings = ManagerSettings(
        max_active=plan["max_active"],
        stall_timeout=plan["stall_timeout"],
        progress_interval=0.2,
        checkpoint_interval=0.5,
        policy=RetryPolicy(base_delay=0.05, max_delay=0.3),
    )
    async with DownloadManager(
        home=home,
        settings=settings,
        hub=HubConfig(plan["hub"]),
        models_dir=Path(plan["models_dir"]),
    ) as manager:
        logger = asyncio.create_task(log_events(manager))
        ids = [await add_until_planned(manager, spec) for spec in plan["specs"]]
        for group in plan["groups"]:
            request = GroupRequest(
                name=group["name"],
                dest_dir=Path(group["dest_dir"]),
                files=tuple(FileRequest(**f) for f in group["files"]),
            )
            ids.append(await manager.enqueue(request))
        say(type="enqueued", ids=ids)
        for round_ in range(plan["retry_rounds"] + 1):
            await manager.wait(ids)
            unfinished = [v for v in await manager.snapshot() if v.status != "completed"]
            if not unfinished:
                say(type="done", rounds=round_)
                await stop(logger)
                return 0
            for view in unfinished:
                say(type="retry_group", id=view.id, status=view.status, round=round_)
                await manager.retry(view.id)
        await stop(logger)
        return 3


if __name__ == "__main__":
    sys.exit(asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2]))))
