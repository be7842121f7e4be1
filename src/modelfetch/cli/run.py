"""`run`: work the queue in the foreground until it is drained."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import typer

from modelfetch.cli.backends import command_backend, is_local
from modelfetch.cli.errors import EXIT_FAILED, EXIT_OK, execute
from modelfetch.cli.follow import FINISHED, EventFeed, follow, group_views, make_display
from modelfetch.cli.interrupts import Interrupts, leave_now, race
from modelfetch.cli.options import JsonOpt, app_state

if TYPE_CHECKING:
    from modelfetch.backend import Backend


def run(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Work the queue until it is drained."""
    state = app_state(ctx)

    async def go() -> int:
        import asyncio

        from modelfetch.render import print_summary

        cfg = state.config()
        display, console = make_display(json_out, hint="Ctrl-C stops; `modelfetch run` continues")
        interrupts = Interrupts(
            on_first=lambda: display.message("Stopping…", style="yellow"),
            on_second=lambda: leave_now(display, sys.stderr),
        )
        seen: set[int] = set()

        async def work(backend: Backend, feed: EventFeed) -> int:
            released = False
            while True:
                views = await backend.snapshot()
                live = {v.id for v in views if v.status in ("queued", "active")}
                if not live:
                    break
                seen.update(live)
                display.track(seen)
                if not released:
                    feed.release()
                    released = True
                await follow(backend, display, live)
            if not seen:
                paused = sum(1 for v in views if v.status == "paused")
                display.end()
                console.print("Nothing to download: no queued downloads.")
                if paused:
                    console.print(f"{paused} paused; `modelfetch resume --all` queues them again.")
                return EXIT_OK
            final = await group_views(backend, seen)
            await feed.drain({v.id for v in final if v.status in FINISHED}, grace=1.0)
            display.on_views(final)
            display.tick(time.time())
            display.end()
            return EXIT_OK if print_summary(final, console, time.time()) else EXIT_FAILED

        async with interrupts, command_backend(cfg) as backend:
            feed = EventFeed(backend, display)
            await feed.start()
            display.begin()
            try:
                job = asyncio.create_task(work(backend, feed))
                if not await race(job, interrupts.event):
                    return job.result()
            finally:
                display.end()
                await feed.close()
            local = is_local(backend)
        if local:
            console.print(
                "Stopped; the queue and the bytes on disk are kept. `modelfetch run` continues."
            )
        else:
            console.print("Stopped watching; the daemon keeps downloading.")
        return interrupts.exit_code

    execute(state.debug, go)
