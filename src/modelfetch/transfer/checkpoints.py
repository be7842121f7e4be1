"""Where a segmented transfer's map is kept, at two levels of truth.

1. The durable map: what the caller persists (`on_segments`; the manager: its store) and hands
   back as `TransferRequest.segments`. It only ever claims bytes that are durable: the map is
   snapshotted, the `.part` is `fdatasync`ed (on a worker thread, and cheap because early
   writeback has already sent most pages on their way, transfer/sink.py), and only then is
   that snapshot saved. So after a power cut it is still true. It is saved every
   `checkpoint_interval` (1 s) while bytes move, and whenever the transfer stops, fails or
   ends (a stop must leave nothing that only the page cache holds, as a reboot may follow
   it; the transfer's end waits for that fdatasync, on a worker thread like the others, so
   the loop serves everything else meanwhile).
2. The volatile map: transfer/segment_journal.py, beside the `.part`, rewritten every
   JOURNAL_BYTES or JOURNAL_INTERVAL, whichever comes first, with no fsync. It is trusted only
   while the kernel that wrote it still runs (a `kill -9`, an OOM kill), and then a restart
   resumes from the union of both maps, so a kill costs what was in flight, not a second.

A restart that trusts the volatile map makes the union durable (fdatasync, then save) before
the `.part` changes, so the durable map never claims a byte that only the page cache holds.
An fdatasync that fails (EIO: written pages were lost) removes the journal and saves nothing:
the map the store has stays the truth, and a failure during the transfer fails it (the retry
resumes from that map). Without an `on_segments` (a bare `fetch_file`) there is no durable map
and no fdatasync; the journal alone lets a restart on the same boot resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

from modelfetch.core.errors import LocalFileError
from modelfetch.core.segments import SegmentMap, SegmentRecord
from modelfetch.transfer import sink
from modelfetch.transfer.api import SegmentsCallback
from modelfetch.transfer.segment_journal import SegmentJournal
from modelfetch.transfer.sink import PartFile

__all__ = ["JOURNAL_BYTES", "JOURNAL_INTERVAL", "Checkpoints"]

# How often the volatile map is rewritten: after this many bytes (at 1 GiB/s, 500 pwrites of
# one page a second, ~1% of one core), or this long on a slow link (where that is few bytes).
JOURNAL_BYTES = 2 << 20
JOURNAL_INTERVAL = 0.025


def _sync_path(path: Path) -> None:
    """On a worker thread: fdatasync the `.part` the transfer has closed, through a read-only
    descriptor of our own (it syncs the same file's pages)."""
    own = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        sink.fdatasync(own)
    finally:
        os.close(own)


def _sync_and_close(fd: int) -> None:
    """On a worker thread: fdatasync our duplicate of the descriptor, then close it (the
    transfer may close its own meanwhile; a duplicate cannot be reused for another file)."""
    try:
        sink.fdatasync(fd)
    finally:
        os.close(fd)


class Checkpoints:
    """Keeps the durable and the volatile map of one segmented transfer (module docstring)."""

    def __init__(
        self, part_path: Path, on_segments: SegmentsCallback | None, interval: float
    ) -> None:
        self.part_path = part_path
        self.on_segments = on_segments
        self.interval = interval
        self.journal: SegmentJournal | None = None
        self.durable_saves = 0  # maps saved after an fdatasync (for tests and benchmarks)
        self._synced = -1  # done bytes that the last successful fdatasync covered
        self._last = time.monotonic()
        self._pending: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None

    def open_journal(self, path: Path, *, token: str, total: int) -> None:
        """A `.part` was (re)opened: journal it from now on. What an earlier fdatasync covered
        may have been another `.part` of this name (a start over), so the next save syncs."""
        if self.journal is not None:
            self.journal.close()
        self.journal = SegmentJournal(path, token=token, total=total)
        self._synced = -1

    # -- while bytes move ---------------------------------------------------------------------

    def frequent(self, segmap: SegmentMap, part: PartFile) -> None:
        """The connections' checkpoint (every JOURNAL_BYTES or JOURNAL_INTERVAL): rewrite the
        volatile map; every `interval` start a durable save in the background. A background
        save that failed fails the transfer here, in a connection."""
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed
        if self.journal is not None:
            self.journal.write(segmap.records())
        if self.on_segments is None:
            return
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        if self._pending is not None and not self._pending.done():
            return  # the last fdatasync is still running: the disk is the limit, not us
        self._last = now
        saving = self._save_in_background(segmap, part)
        self._pending = asyncio.get_running_loop().create_task(saving)

    async def _save_in_background(self, segmap: SegmentMap, part: PartFile) -> None:
        records = segmap.records()  # before the fdatasync: it covers every byte counted here
        done = segmap.done_bytes
        try:
            if done > self._synced:
                try:
                    # Duplicated now, while the `.part` is certainly open (a closed part has
                    # no fd, and its old number may already name another file).
                    fd = os.dup(part.fd)
                except RuntimeError:
                    return  # the transfer closed its `.part`: its own stop saves the map
                await asyncio.to_thread(_sync_and_close, fd)
                self._synced = max(self._synced, done)
            self._commit(records)
        except OSError as exc:
            self._lost_pages()
            self._failed = LocalFileError.from_os_error(exc, self.part_path)
        except Exception as exc:  # the store refused: the next checkpoint raises it
            self._failed = exc

    # -- when the transfer starts, stops or ends ----------------------------------------------

    async def save(
        self, segmap: SegmentMap | None, fd: int | None, *, stopping: bool = False
    ) -> None:
        """Save the map durably now, the fdatasync on a worker thread (the loop serves other
        transfers meanwhile: on a slow disk a stop's fdatasync took a quarter of a second,
        and blocking the loop for it froze every other download and the API).

        While the transfer runs, an fdatasync that fails raises LocalFileError, and so does
        (as itself) a background save's failure not reported yet. `stopping` (a stop, a
        failure: the transfer ends with its own error) never raises: if the fdatasync fails
        or the stop is cancelled again meanwhile, nothing is saved (the store's older map
        stays true); the journal is closed either way."""
        if self._failed is not None:
            failed, self._failed = self._failed, None
            if not stopping:
                raise failed
        try:
            await self._save(segmap, fd, stopping)
        finally:
            if stopping and self.journal is not None:
                self.journal.close()

    async def _save(self, segmap: SegmentMap | None, fd: int | None, stopping: bool) -> None:
        records = self._begin(segmap)
        if records is None or segmap is None:
            return
        done = segmap.done_bytes
        if self.on_segments is not None and done > self._synced:
            # Our own descriptor (a duplicate, or one opened on the path): the transfer may
            # close its own while the thread syncs.
            sync = asyncio.ensure_future(
                asyncio.to_thread(_sync_path, self.part_path)
                if fd is None
                else asyncio.to_thread(_sync_and_close, os.dup(fd))
            )
            try:
                await asyncio.shield(sync)
            except OSError as exc:
                self._lost_pages()
                if stopping:
                    return
                raise LocalFileError.from_os_error(exc, self.part_path) from exc
            except asyncio.CancelledError:
                sync.add_done_callback(sink.outcome_seen)
                raise
            self._synced = max(self._synced, done)
        self._commit(records)

    def discard_journal(self) -> None:
        """The volatile map is not needed any more (the map is complete and durable, or the
        `.part` is no longer segmented): remove it."""
        if self.journal is not None:
            self.journal.remove()
            self.journal = None

    def _begin(self, segmap: SegmentMap | None) -> tuple[SegmentRecord, ...] | None:
        """Supersede a background save (its older snapshot must not land after this one);
        the records to save, or None when there is nothing (left) to describe."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if segmap is None:
            return None
        if not self.part_path.exists():
            if self.on_segments is not None:
                self.on_segments(None)
            self.discard_journal()
            self._synced = -1  # a new `.part` has had nothing synced
            return None
        return segmap.records()

    def _commit(self, records: tuple[SegmentRecord, ...]) -> None:
        if self.on_segments is not None:
            self.on_segments(records)
            self.durable_saves += 1
        if self.journal is not None:
            self.journal.write(records)

    def _lost_pages(self) -> None:
        """An fdatasync failed: pages the page cache held may be gone, so the volatile map may
        claim lost bytes. Only the durable map counts from here on."""
        with contextlib.suppress(OSError):
            self.discard_journal()
