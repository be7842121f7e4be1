"""How much of each active file is on disk from byte 0, and a way to wait until more is.

A reader that streams a file while it downloads (the mirror) needs two things the queue's
progress does not give: the *contiguous* prefix (a segmented transfer's byte count is a sum
over its segments) and a wake-up when it grows. The transfer reports the prefix
(`fetch_file(on_prefix=...)`); the per-file task forwards it here, and says when the file was
published (verified) and when its bytes stopped being vouched for.

The epoch is what keeps a reader honest: it changes whenever bytes that may already have been
read are no longer trusted (the `.part` started over, the digest failed, the file was
cancelled or failed for good). A reader remembers the epoch it began under and stops the moment
it sees another one: whatever it sent is then not known to be the file.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from modelfetch.core.queue import FileKey

__all__ = ["Arrival", "Arrivals"]


@dataclass(slots=True)
class Arrival:
    """What is known of one file's bytes right now."""

    prefix: int = 0  # bytes [0, prefix) are on disk in the `.part` (or the published file)
    total: int | None = None
    epoch: int = 0
    completed: bool = False  # published under its final name, digest verified
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class Arrivals:
    """The board of every file a transfer reported on since the manager started."""

    def __init__(self) -> None:
        self._files: dict[FileKey, Arrival] = {}

    def get(self, key: FileKey) -> Arrival:
        """The file's entry (made on first use, so a reader may wait for a file not started)."""
        found = self._files.get(key)
        if found is None:
            found = self._files[key] = Arrival()
        return found

    def report(self, key: FileKey, prefix: int, total: int | None) -> None:
        a = self.get(key)
        if prefix < a.prefix:  # the `.part` started over: what was read is not vouched for
            a.epoch += 1
        a.prefix = prefix
        if total is not None:
            a.total = total
        a.completed = False
        self._wake(a)

    def completed(self, key: FileKey, size: int) -> None:
        a = self.get(key)
        a.prefix = a.total = size
        a.completed = True
        self._wake(a)

    def broken(self, key: FileKey) -> None:
        """Bytes read so far may not be the file (digest failed, cancelled, failed for good)."""
        a = self.get(key)
        a.epoch += 1
        a.prefix = 0
        a.completed = False
        self._wake(a)

    async def wait(self, key: FileKey, at_most: float) -> None:
        """Until the file's entry changes, or `at_most` seconds (the caller re-reads either way)."""
        a = self.get(key)
        try:
            async with asyncio.timeout(at_most):
                await a.changed.wait()
        except TimeoutError:
            return

    @staticmethod
    def _wake(a: Arrival) -> None:
        # One event per generation of change: waiters of this one wake, later ones get a new.
        a.changed.set()
        a.changed = asyncio.Event()
