"""The mirror's own tasks beside the daemon: its network listener and the cache limit's sweeps."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

from modelfetch.mirror.app import public_app
from modelfetch.mirror.evict import evict
from modelfetch.mirror.state import MirrorState

__all__ = ["run_mirror"]

log = logging.getLogger("modelfetch.mirror")
_SWEEP_EVERY = 5.0  # seconds; a sweep is one read of the queue and a stat per pulled file


async def _listen(
    state: MirrorState, host: str, port: int, on_listening: Callable[[str], None] | None
) -> None:
    runner = web.AppRunner(public_app(state), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound = next((a[1] for a in runner.addresses if isinstance(a, tuple)), port)
        log.info("modelfetch Hub mirror (read-only) listening on %s:%s", host, bound)
        state.public_port = int(bound)
        if on_listening is not None:
            name = f"[{host}]" if ":" in host else host
            on_listening(f"http://{name}:{bound}")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def _sweep(state: MirrorState, cache_max: int) -> None:
    while True:
        await evict(state, cache_max)
        await asyncio.sleep(_SWEEP_EVERY)


async def run_mirror(
    state: MirrorState,
    *,
    host: str | None,
    port: int,
    cache_max: int | None,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Until cancelled: the read side on `host:port` of its own (None: only at the daemon's
    origin) and, with `cache_max`, eviction down to it."""
    async with asyncio.TaskGroup() as tasks:
        if host is not None:
            tasks.create_task(_listen(state, host, port, on_listening))
        if cache_max is not None:
            tasks.create_task(_sweep(state, cache_max))
        tasks.create_task(asyncio.Event().wait())  # an empty group would return at once
