"""Following downloads live: events to the display, views reloaded, redrawn until settled."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import TYPE_CHECKING

from modelfetch.cli.consoles import stderr_console, stdout_console

if TYPE_CHECKING:
    import asyncio

    from rich.console import Console

    from modelfetch.backend import Backend
    from modelfetch.core import events as ev
    from modelfetch.render import Display
    from modelfetch.views import GroupView

FINISHED = frozenset({"completed", "partial", "failed", "cancelled"})
TICK = 0.25  # redraw period of the display (seconds)
RELOAD = 1.0  # how often the views are reloaded between events (seconds)


class EventFeed:
    """Events from the backend to a display. Subscribed before anything is enqueued; events are
    held back until `release()` (when the display knows which groups to show)."""

    def __init__(self, backend: Backend, display: Display) -> None:
        import asyncio

        self._events = backend.events()
        self._display = display
        self._held: list[ev.Event] | None = []
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.finished: set[int] = set()

    async def start(self) -> None:
        import asyncio

        self._task = asyncio.create_task(self._pump(), name="modelfetch-cli-events")
        # Let the pump reach its first await: the subscription exists from here on.
        await asyncio.sleep(0)

    async def _pump(self) -> None:
        from modelfetch.core import events as ev

        async for event in self._events:
            if isinstance(event, ev.GroupFinished):
                self.finished.add(event.group_id)
            if self._held is not None:
                self._held.append(event)
            else:
                self._display.on_event(event)
            self._changed.set()

    def release(self) -> None:
        held, self._held = self._held or [], None
        for event in held:
            self._display.on_event(event)

    async def drain(self, group_ids: set[int], grace: float = 2.0) -> None:
        """Until a `group_finished` was seen for every id in `group_ids` (at most `grace` s)."""
        import asyncio

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while not group_ids <= self.finished:
                    if self._task is not None and self._task.done():
                        return
                    self._changed.clear()
                    await self._changed.wait()
        await asyncio.sleep(0)

    async def close(self) -> None:
        import asyncio

        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


async def group_views(backend: Backend, group_ids: set[int] | None) -> list[GroupView]:
    """The backend's views of `group_ids` (of every group for None)."""
    views = await backend.snapshot()
    return [v for v in views if group_ids is None or v.id in group_ids]


async def follow(backend: Backend, display: Display, group_ids: set[int]) -> None:
    """Redraw the display until every group in `group_ids` is settled."""
    import asyncio

    waiter = asyncio.create_task(backend.wait(sorted(group_ids)), name="modelfetch-cli-wait")
    try:
        next_reload = 0.0
        while not waiter.done():
            if time.monotonic() >= next_reload:
                display.on_views(await group_views(backend, group_ids))
                next_reload = time.monotonic() + RELOAD
            display.tick(time.time())
            await asyncio.wait({waiter}, timeout=TICK)
        waiter.result()
    finally:
        if not waiter.done():
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter


def make_display(json_mode: bool, *, hint: str | None) -> tuple[Display, Console]:
    """NDJSON with --json; a live display on a terminal; plain lines otherwise. Also returns
    the console where summaries go (stderr in JSON mode, so stdout stays NDJSON)."""
    from rich.console import Console

    from modelfetch.render import JsonDisplay, LiveDisplay, PlainDisplay

    if json_mode:
        return JsonDisplay(sys.stdout, sys.stderr), stderr_console()
    console = Console(file=sys.stdout, highlight=False)
    if console.is_terminal and not console.is_dumb_terminal:
        return LiveDisplay(console, hint=hint), console
    return PlainDisplay(sys.stdout, interval=_progress_interval()), stdout_console()


def _progress_interval() -> float:
    """Seconds between plain progress lines: MODELFETCH_PROGRESS_INTERVAL, else 5."""
    try:
        value = float(os.environ.get("MODELFETCH_PROGRESS_INTERVAL", "") or 5.0)
    except ValueError:
        return 5.0
    return value if value > 0 else 5.0
