"""The digests of a transfer's bytes (SHA-256, git blob id), on one thread fed a bounded queue.

Network reads and `pwrite` stay on the event loop (a thread hop per chunk halves throughput:
reference/stack-measurements.md §1d). Hashing does not: SHA-256 is the single biggest CPU cost of a
verified download (~1 s per GiB here), so each transfer feeds its chunks to one long-lived digest
thread (`Digester`; hashlib releases the GIL), which overlaps hashing with the next reads and keeps
the loop responsive. Measured on the 2-vCPU box, 1 GiB from nginx, medians of 4: inline hashing
376 MiB/s, digest thread 474, digest thread + early writeback 727 (curl, which neither hashes nor
fsyncs: 929). The thread's backlog is bounded (`MAX_PENDING`), so memory stays flat when the disk
and network outrun the hash.

The digest thread hashes bytes already written, from the file (`Digester.feed_from_file`),
while those pages are still cached, through a read-only mapping: a segmented `.part` is filled
out of order, so the thread follows its contiguous prefix as it grows; a front-to-back `.part`
hands over every few MiB (sink.FEED_STEP). A mapping of cached pages costs a fraction of a copy
(1 GiB here: pread 0.2-0.7 s of system time, the mapping 0.01-0.03 s); copying each received
chunk out for the thread cost a fresh, page-faulted allocation per chunk on top.

Small files (up to INLINE_HASH_LIMIT) are hashed inline instead: for them, starting and joining
a digest thread cost more than the hashing (a queue of many small files spent most of its time
there).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import mmap
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

REHASH_READ_SIZE = 8 << 20
INLINE_HASH_LIMIT = 8 << 20  # files up to this size are hashed without a digest thread
MAX_PENDING = 64 << 20  # bytes handed to the digest thread but not hashed yet


@dataclass(frozen=True, slots=True)
class Digests:
    size: int
    sha256: str
    git_oid: str | None  # sha1 of "blob <size>\0" + content, when it was asked for
    busy: float = 0.0  # seconds the digest thread spent hashing (0 when hashed inline)
    mtime_ns: int | None = None  # the published file's, when the publishing thread read it


class Digester:
    """SHA-256 (and optionally the git blob SHA-1) of a byte stream, computed on one dedicated
    thread. `feed` never blocks; `drain` waits (without blocking the loop) for the backlog.

    `inline=True` hashes in the caller instead, for small files: starting and joining a thread
    costs more than hashing a few MiB (a queue of many small files spent most of its loop time
    there), and a few milliseconds of hashing per chunk do not hold the loop up noticeably."""

    def __init__(self, *, git_blob_size: int | None, inline: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        self._sha256 = hashlib.sha256()
        self._git_sha1: Any = None
        self._git_blob_size = git_blob_size
        if git_blob_size is not None:
            self._git_sha1 = hashlib.sha1(b"blob %d\0" % git_blob_size, usedforsecurity=False)
        self._queue: queue.SimpleQueue[bytes | _ReadBack | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0  # guarded by _lock, like _waiter and _running
        self._waiter: tuple[asyncio.Future[None], int] | None = None
        self._running = True
        self._failure: BaseException | None = None
        self._abandoned = False
        self.fed = 0
        self.busy = 0.0  # seconds the thread spent hashing (written by it, read as a hint)
        self._thread: threading.Thread | None = None
        if not inline:
            self._thread = threading.Thread(target=self._run, name="modelfetch-digest", daemon=True)
            self._thread.start()

    @property
    def git_blob_size(self) -> int | None:
        return self._git_blob_size

    @property
    def threaded(self) -> bool:
        """Whether a digest thread hashes (False: `inline`, in the caller)."""
        return self._thread is not None

    @property
    def backlogged(self) -> bool:
        return self._pending > MAX_PENDING  # an unlocked read: a hint, `drain` is exact

    @property
    def pending(self) -> int:
        return self._pending  # an unlocked read: a hint

    def feed(self, data: bytes | memoryview) -> None:
        """Hash `data`. A view (of a receive buffer that is reused) is hashed at once inline,
        copied for the digest thread."""
        if self._thread is None:
            self._update(data)
            self.fed += len(data)
            return
        if isinstance(data, memoryview):
            data = bytes(data)
        with self._lock:
            self._pending += len(data)
        self.fed += len(data)
        self._queue.put(data)

    def _update(self, data: bytes | memoryview) -> None:
        self._sha256.update(data)
        if self._git_sha1 is not None:
            self._git_sha1.update(data)

    def feed_from_file(self, fd: int, length: int) -> None:
        """Hash the next `length` bytes of the stream by reading them back from `fd` (at offset
        `fed`) on the digest thread: for bytes already written, ideally still in the page
        cache. Holds no memory while queued. `fd` must stay open until `finish`/`close`."""
        offset = self.fed
        end = offset + length
        if self._thread is None:
            buffer = bytearray(min(REHASH_READ_SIZE, length))
            while offset < end:
                step = min(REHASH_READ_SIZE, end - offset)
                self._update(memoryview(buffer)[: _ReadBack(fd, offset, step).read(buffer)])
                offset += step
            self.fed = end
            return
        with self._lock:
            self._pending += length
        self.fed = end
        while offset < end:
            step = min(REHASH_READ_SIZE, end - offset)
            self._queue.put(_ReadBack(fd, offset, step))
            offset += step

    async def drain(self, limit: int = 0) -> None:
        """Return once at most `limit` fed bytes are still waiting to be hashed."""
        while True:
            with self._lock:
                if self._pending <= limit:
                    return
                if not self._running:
                    raise RuntimeError("the digest thread stopped") from self._failure
                waiter = self._loop.create_future()
                self._waiter = (waiter, limit)
            try:
                await waiter
            finally:
                with self._lock:
                    self._waiter = None

    async def finish(self) -> Digests:
        await self.drain(0)
        self.close()
        oid = None if self._git_sha1 is None else str(self._git_sha1.hexdigest())
        return Digests(self.fed, self._sha256.hexdigest(), oid, self.busy)

    def close(self) -> None:
        """Stop the thread (abandoning any backlog) and wait for it: at most one chunk's hash."""
        if self._thread is None:
            return
        self._abandoned = True
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        buffer: bytearray | None = None  # one reused read-back buffer: fresh pages cost more
        try:
            while (item := self._queue.get()) is not None:
                began = time.perf_counter()
                size = item.length if isinstance(item, _ReadBack) else len(item)
                if self._abandoned:
                    pass
                elif isinstance(item, _ReadBack):
                    if not item.hash_mapped(self._update):
                        if buffer is None:
                            buffer = bytearray(REHASH_READ_SIZE)
                        self._update(memoryview(buffer)[: item.read(buffer)])
                else:
                    self._update(item)
                self.busy += time.perf_counter() - began
                with self._lock:
                    self._pending -= size
                    if self._waiter is not None and self._pending <= self._waiter[1]:
                        self._wake_waiter()
        except BaseException as exc:  # handed to the loop side: drain() raises from it
            self._failure = exc
        finally:
            with self._lock:
                self._running = False
                if self._waiter is not None:
                    self._wake_waiter()

    def _wake_waiter(self) -> None:
        """Called with _lock held, on the digest thread."""
        assert self._waiter is not None
        waiter, self._waiter = self._waiter[0], None
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            self._loop.call_soon_threadsafe(_wake, waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass(frozen=True, slots=True)
class _ReadBack:
    """Bytes [offset, offset + length) of an open file, to be hashed by the digest thread."""

    fd: int
    offset: int
    length: int

    def read(self, buffer: bytearray) -> int:
        got = os.preadv(self.fd, [memoryview(buffer)[: self.length]], self.offset)
        if got != self.length:
            raise OSError(errno.EIO, f"read {got} of {self.length} bytes at {self.offset}")
        return got

    def hash_mapped(self, update: Callable[[memoryview], None]) -> bool:
        """Hash the bytes through a read-only mapping of the file instead of copying them out:
        the pages are in the page cache (just written), and mapping them costs a fraction of
        a copy (1 GiB measured here: pread 0.2-0.7 s of system time, mmap 0.01-0.03 s; with
        MAP_POPULATE, which walks every page up front, 0.085 s: faulting 64 KiB at a time is
        cheaper).
        False where the file cannot be mapped (the caller reads it instead)."""
        start = self.offset - self.offset % mmap.ALLOCATIONGRANULARITY
        try:
            # A page past the end of the file would be a SIGBUS, not an error: never map one
            # (a shorter file is the read's EIO).
            if os.fstat(self.fd).st_size < self.offset + self.length:
                return False
            mapped = mmap.mmap(
                self.fd,
                self.offset + self.length - start,
                flags=mmap.MAP_SHARED,
                prot=mmap.PROT_READ,
                offset=start,
            )
        except (OSError, ValueError):
            return False
        try:
            with memoryview(mapped) as view:
                update(view[self.offset - start :])
        finally:
            mapped.close()
        return True
