"""Ctrl-C and SIGTERM while a command runs in the foreground: pause on the first, leave on the
second."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NoReturn

from modelfetch.cli.errors import EXIT_INTERRUPTED

if TYPE_CHECKING:
    import asyncio

    from modelfetch.backend import Backend
    from modelfetch.render import Display


class Interrupts:
    """SIGINT and SIGTERM while a command runs in the foreground.

    The first sets `event` (the command then pauses what it started, persists and exits 130).
    A second SIGINT calls `on_second`, which leaves at once: the store is always consistent and
    every `.part` file is a valid prefix, so the next run continues from the disk.
    """

    def __init__(self, on_first: Callable[[], None], on_second: Callable[[], None]) -> None:
        import asyncio

        self.event = asyncio.Event()
        self.signum: int | None = None
        self._on_first = on_first
        self._on_second = on_second
        self._installed: list[int] = []

    def _fire(self, signum: int) -> None:
        import signal

        if self.event.is_set():
            if signum == signal.SIGINT:
                self._on_second()
            return
        self.signum = signum
        self.event.set()
        self._on_first()

    async def __aenter__(self) -> Interrupts:
        import asyncio
        import signal

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, self._fire, signum)
                self._installed.append(signum)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        for signum in self._installed:
            loop.remove_signal_handler(signum)
        self._installed.clear()

    @property
    def exit_code(self) -> int:
        import signal

        return 128 + signal.SIGTERM if self.signum == signal.SIGTERM else EXIT_INTERRUPTED


def leave_now(display: Display, stream: Any) -> NoReturn:
    """The second Ctrl-C: restore the terminal, say how to continue, exit without cleanup."""
    display.abort()
    stream.write("Quitting now. Run the same command again to continue from the bytes on disk.\n")
    stream.flush()
    os._exit(EXIT_INTERRUPTED)


async def race(work: asyncio.Task[Any], event: asyncio.Event) -> bool:
    """Wait for `work` or `event`; True if `event` came first (then `work` is cancelled)."""
    import asyncio

    stopper = asyncio.create_task(event.wait())
    try:
        await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if work.done():
        return False
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    return True


async def pause_interrupted(backend: Backend, group_ids: Iterable[int] | None) -> list[int]:
    """The one thing Ctrl-C does in `get` and `run`: pause what the command was working on
    (`group_ids`; None: the whole queue) and return the downloads that had something paused.

    With the manager in this process the pause reason is "interrupted": the next `run` or
    `get` resumes it by itself, `ls` shows "paused (interrupted)", and what the user paused
    stays paused. The daemon keeps working when a client leaves, so there only the groups
    named (a `get`'s own) are paused, as a user's pause: its API takes no reason."""
    from modelfetch.cli.backends import is_local
    from modelfetch.core.errors import ModelfetchError

    if is_local(backend):
        from modelfetch.manager import DownloadManager

        assert isinstance(backend, DownloadManager)
        return await backend.interrupt(group_ids)
    paused: list[int] = []
    for gid in group_ids or ():
        with contextlib.suppress(ModelfetchError):
            await backend.pause(gid)
            paused.append(gid)
    return paused
