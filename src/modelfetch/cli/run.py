"""`run`: work the queue in the foreground until it is drained."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import typer

from modelfetch.cli.backends import command_backend, is_local
from modelfetch.cli.errors import EXIT_FAILED, EXIT_OK, execute
from modelfetch.cli.follow import FINISHED, EventFeed, follow, group_views, make_display
from modelfetch.cli.interrupts import Interrupts, leave_now, pause_interrupted, race
from modelfetch.cli.options import JsonOpt, app_state

if TYPE_CHECKING:
    from rich.console import Console

    from modelfetch.backend import Backend


def run(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Work the queue until it is drained. Ctrl-C pauses; the next `run` (or `get`) continues."""
    state = app_state(ctx)

    async def go() -> int:
        import asyncio

        from modelfetch.render import paused_hint, print_summary

        cfg = state.config()
        display, console = make_display(json_out, hint="Ctrl-C pauses; `modelfetch run` continues")
        interrupts = Interrupts(
            on_first=lambda: display.message(
                "Pausing… (press Ctrl-C again to quit at once)", style="yellow"
            ),
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
                display.end()
                console.print("Nothing to download: no queued downloads.")
                _print_paused(console, paused_hint(views))
                return EXIT_OK
            final = await group_views(backend, seen)
            await feed.drain({v.id for v in final if v.status in FINISHED}, grace=1.0)
            display.on_views(final)
            display.tick(time.time())
            display.end()
            ok = print_summary(final, console, time.time())
            # Paused downloads are not worked (a user's pause, a full disk): say how to go on.
            _print_paused(console, paused_hint(await backend.snapshot()))
            return EXIT_OK if ok else EXIT_FAILED

        async with interrupts, command_backend(cfg) as backend:
            local = is_local(backend)
            feed = EventFeed(backend, display)
            await feed.start()
            display.begin()
            try:
                job = asyncio.create_task(work(backend, feed))
                if not await race(job, interrupts.event):
                    return job.result()
                # As `get` does: what this run was working on (the whole queue) is paused as
                # interrupted, and the next `run` or `get` picks it up by itself.
                paused = await pause_interrupted(backend, None)
            finally:
                display.end()
                await feed.close()
        if not local:
            console.print("Stopped watching; the daemon keeps downloading.")
        elif getattr(backend, "shares_queue", False):
            console.print(
                f"Left the shared queue: {len(paused)} download(s) this worker was fetching went"
                " back to it for the other workers (bytes on disk kept)."
            )
        elif paused:
            count = "1 download" if len(paused) == 1 else f"{len(paused)} downloads"
            console.print(
                f"Paused {count} (interrupted); the bytes on disk are kept. "
                "`modelfetch run` continues."
            )
        else:
            console.print("Stopped; nothing was downloading. `modelfetch run` continues.")
        return interrupts.exit_code

    execute(state.debug, go)


def _print_paused(console: Console, hint: str | None) -> None:
    if hint is not None:
        console.print(hint, highlight=False, soft_wrap=True)
