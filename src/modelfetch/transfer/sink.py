"""Where a transfer's body bytes land: the `.part` (front to back, or segmented) or memory.

The `.part` is written with `pwrite` on the event loop (a thread hop per chunk halves throughput:
reference/stack-measurements.md §1d); its digests are computed on a digest thread
(transfer/hashing.py), and the publish is transfer/publish.py.

Early writeback. The publish must fsync; left to the end, that fsync flushes every dirty page at
once (0.6 s per GiB here, seconds for a multi-GB file). Every `WRITEBACK_STEP` bytes we ask Linux
to start writing the range out (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, asynchronous), so the
final fsync finds little left and dirty memory never piles up to the throttling threshold.

Preallocation. `posix_fallocate` would make the file's apparent size the full total, so "how many
bytes are on disk" would need a second source of truth (a sidecar offset rewritten on every report,
which can run ahead of the data after a power cut). Instead, on Linux we call
`fallocate(FALLOC_FL_KEEP_SIZE)`: the blocks are reserved (ENOSPC shows up at the start, the file
is not fragmented) but `st_size` still grows only as bytes are written front to back. So `st_size`
is always the committed prefix, and a resume takes its offset from `st_size` alone. Where that call
is unavailable (other OSes, filesystems without it) we simply skip preallocation.

Segmented files are the exception (`SegmentedPartFile`, see transfer/segments.py). Several
connections fill the file out of order, so it is allocated to its full size at once (plain
`fallocate`, or a sparse `ftruncate`) and `st_size` means nothing: what is on disk is the
segment map the caller persists, and the sidecar says so (`PartState.segmented`, saved as
version 2 so a reader that only knows prefix files discards it).

Small bodies fetched from zero (see SMALL_BODY_LIMIT in transfer/receive.py) skip the `.part`
while they arrive: they are received into memory on the loop (`HeldBody`), and everything else
(hash, verify, create, write, fsync, rename) is one worker-thread call,
`publish.verify_and_publish_body`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from modelfetch.core.errors import DiskFullError, LocalFileError
from modelfetch.transfer import hashing
from modelfetch.transfer.hashing import MAX_PENDING, Digester, Digests
from modelfetch.transfer.partstate import PartState
from modelfetch.transfer.space import require_space

WRITEBACK_STEP = 64 << 20
# A `.part` written front to back hands its new bytes to the digest thread every FEED_STEP: the
# thread hashes them through a mapping of the file's (just written, cached) pages. Copying each
# received chunk out for the thread instead cost a fresh allocation per chunk, faulted in page
# by page, and a copy.
FEED_STEP = 4 << 20
_FALLOC_FL_KEEP_SIZE = 0x01
_SYNC_FILE_RANGE_WRITE = 0x02
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
UNSUPPORTED_ERRNOS = frozenset(
    {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS, errno.ENODEV}
)

# The one write primitive, a module attribute so a test can substitute a failing one (ENOSPC).
# transfer/publish.py writes through it too.
pwrite: Callable[[int, Any, int], int] = os.pwrite
# What makes a `.part`'s written bytes durable before a segment map that the store keeps may
# claim them (transfer/checkpoints.py); a module attribute so a test can watch or fail it.
fdatasync: Callable[[int], None] = os.fdatasync
# How a resumed prefix is read back to be hashed (on a worker thread); substitutable as well.
pread: Callable[[int, int, int], bytes] = os.pread


def _libc_call(names: tuple[str, ...], argtypes: list[Any]) -> Callable[..., None] | None:
    """A Linux libc function that raises OSError on failure, or None where it does not exist."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        native = next(f for f in (getattr(libc, n, None) for n in names) if f is not None)
    except (OSError, StopIteration):
        return None
    native.argtypes = argtypes
    native.restype = ctypes.c_int

    def call(*args: int) -> None:
        if native(*args) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return call


_fallocate = _libc_call(
    ("fallocate64", "fallocate"), [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
)
_sync_file_range = _libc_call(
    ("sync_file_range",), [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
)


def disk_full(exc: OSError, *, needed: int | None = None) -> DiskFullError:
    return DiskFullError(f"no space left on device: {exc.strerror or exc}", needed=needed)


class PartFile:
    """The `.part` of one file, filled front to back; `size` is the committed prefix and always
    equals the file's `st_size`. Owns the digests of that prefix."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.size = os.fstat(self._fd).st_size
        self._digester: Digester | None = None
        self._written_back = 0
        self.pwrite_seconds = 0.0  # time spent inside pwrite (transfer/stages.py)

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise RuntimeError(f"{self.path} is closed")
        return self._fd

    # -- digests -----------------------------------------------------------------------------

    async def start_digests(
        self, *, git_blob_size: int | None = None, inline: bool = False
    ) -> None:
        """Start fresh digests and feed them the bytes already on disk (a resume), 8 MiB at a
        time, each read on a worker thread: from a cold cache on this machine's disk one read
        took ~30 ms, and a 50 GB prefix is thousands of them, which on the loop would stall
        every other download and request that often. `inline`: hash on the caller's thread
        (see Digester)."""
        self._stop_digests()
        digester = self._digester = Digester(git_blob_size=git_blob_size, inline=inline)
        while digester.fed < self.size:
            block = await self._read_back(
                min(hashing.REHASH_READ_SIZE, self.size - digester.fed), digester.fed
            )
            if not block:
                raise OSError(errno.EIO, f"{self.path} shrank while being re-hashed")
            digester.feed(block)
            if digester.backlogged:
                await digester.drain(hashing.MAX_PENDING // 2)
            await asyncio.sleep(0)

    async def _read_back(self, size: int, offset: int) -> bytes:
        read = asyncio.ensure_future(asyncio.to_thread(pread, self.fd, size, offset))
        try:
            return await asyncio.shield(read)
        except asyncio.CancelledError:
            # The read ends before the caller may close the file (its number could be reused).
            await asyncio.wait([read])
            raise

    async def finish_digests(self) -> Digests:
        digester = self._digester
        if digester is not None and digester.threaded and digester.fed < self.size:
            digester.feed_from_file(self.fd, self.size - digester.fed)  # the last few MiB
        if digester is None or digester.fed != self.size:
            raise RuntimeError(f"the digests do not cover the {self.size} bytes of {self.path}")
        self._digester = None
        return await digester.finish()

    @property
    def git_blob_size(self) -> int | None:
        return None if self._digester is None else self._digester.git_blob_size

    def _stop_digests(self) -> None:
        if self._digester is not None:
            digester, self._digester = self._digester, None
            digester.close()

    # -- writing -----------------------------------------------------------------------------

    async def write(self, data: bytes | memoryview) -> None:
        """Append `data` at the committed offset and hash it. ENOSPC/EDQUOT → DiskFullError;
        any other OSError → LocalFileError naming the `.part`. A view must stay valid until
        this returns."""
        digester = self._digester
        if digester is None:
            raise RuntimeError("start_digests() first")
        view = memoryview(data)
        written = 0
        began = time.perf_counter()
        try:
            while written < len(view):
                written += pwrite(self.fd, view[written:], self.size + written)
        except OSError as exc:
            # Bytes that did land are genuine body bytes: count them so size == st_size.
            # The digests no longer match the file; a later attempt re-hashes from disk.
            self.size += written
            self._stop_digests()
            if exc.errno in DISK_FULL_ERRNOS:
                raise disk_full(exc) from exc
            raise LocalFileError.from_os_error(exc, self.path) from exc  # pwrite names no file
        self.size += written
        self.pwrite_seconds += time.perf_counter() - began
        if not digester.threaded:
            digester.feed(data)
        elif self.size - digester.fed >= FEED_STEP:
            digester.feed_from_file(self.fd, self.size - digester.fed)
        if self.size - self._written_back >= WRITEBACK_STEP:
            self._start_writeback()
        if digester.backlogged:
            await digester.drain(hashing.MAX_PENDING // 2)

    def _start_writeback(self) -> None:
        if _sync_file_range is not None:
            # Only an optimisation: the fsync before publishing is what counts.
            with contextlib.suppress(OSError):
                _sync_file_range(
                    self.fd,
                    self._written_back,
                    self.size - self._written_back,
                    _SYNC_FILE_RANGE_WRITE,
                )
        self._written_back = self.size

    def discard(self) -> None:
        """Throw away the content (a server that ignored our Range or changed the file)."""
        self._stop_digests()
        os.ftruncate(self.fd, 0)
        self.size = 0
        self._written_back = 0

    def reserve(self, total: int) -> None:
        """Preallocate blocks up to `total` without changing st_size (see the module docstring)."""
        if _fallocate is None or total <= self.size:
            return
        try:
            _fallocate(self.fd, _FALLOC_FL_KEEP_SIZE, self.size, total - self.size)
        except OSError as exc:
            if exc.errno in DISK_FULL_ERRNOS:
                raise disk_full(exc, needed=total - self.size) from exc
            if exc.errno not in UNSUPPORTED_ERRNOS:
                raise

    def check_free_space(self, total: int) -> None:
        """DiskFullError if the filesystem cannot hold the rest of the file. Blocks we already
        reserved beyond EOF (an earlier attempt's preallocation) count as ours."""
        stat = os.fstat(self.fd)
        reserved_beyond_eof = max(0, stat.st_blocks * 512 - stat.st_size)
        require_space(self.path, total - self.size - reserved_beyond_eof)

    def sync_and_close(self) -> None:
        os.fsync(self.fd)
        self.close()

    def close(self) -> None:
        self._stop_digests()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def detach(self) -> int:
        """Stop the digests and hand the descriptor over: the caller closes it (the publish
        does, before the rename, so nothing ever holds the final name open for writing)."""
        self._stop_digests()
        fd = self.fd
        self._fd = None
        return fd


class SegmentedPartFile(PartFile):
    """The `.part` of a segmented transfer: allocated to its full size up front and written at
    any offset by several connections, so its length says nothing about what is on disk (the
    segment map does, see core/segments.py). `size` here is the prefix the digests cover: the
    digest thread reads the contiguous prefix back from the file as it grows (`hash_upto`)."""

    def __init__(self, path: Path, total: int) -> None:
        super().__init__(path)
        self.total = total
        self.size = 0
        self._catching_up: asyncio.Future[None] | None = None

    async def start_digests(
        self, *, git_blob_size: int | None = None, inline: bool = False
    ) -> None:
        """Fresh digests of nothing yet; `hash_upto` feeds them (also a resumed prefix)."""
        self._stop_digests()
        self._digester = Digester(git_blob_size=git_blob_size, inline=inline)

    def hash_upto(self, prefix: int) -> None:
        """The bytes [0, prefix) are on disk: hash what the digests have not seen yet."""
        digester = self._digester
        if digester is None:
            raise RuntimeError("start_digests() first")
        if prefix > self.size:
            digester.feed_from_file(self.fd, prefix - self.size)
            self.size = prefix

    @property
    def hash_pending(self) -> int:
        """Bytes of the prefix handed to the digest thread and not hashed yet."""
        return 0 if self._digester is None else self._digester.pending

    @property
    def hash_busy(self) -> float:
        """Seconds the digest thread has spent working so far (see SegmentedFetch)."""
        return 0.0 if self._digester is None else self._digester.busy

    async def hash_catch_up(self, limit: int) -> None:
        """Wait until at most `limit` bytes wait for the digest thread. Any number of
        connections may wait at once: they share one drain (a Digester has one waiter)."""
        digester = self._digester
        if digester is None:
            return
        if self._catching_up is None or self._catching_up.done():
            self._catching_up = asyncio.ensure_future(digester.drain(limit))
            self._catching_up.add_done_callback(outcome_seen)
        await asyncio.shield(self._catching_up)

    def close(self) -> None:
        if self._catching_up is not None:
            self._catching_up.cancel()
        super().close()

    async def write(self, data: bytes | memoryview) -> None:
        raise RuntimeError("a segmented .part is written with write_at")

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        """pwrite all of `data` at `offset`. ENOSPC/EDQUOT → DiskFullError (possible even
        after allocation, e.g. on filesystems without fallocate); other OSErrors →
        LocalFileError."""
        view = memoryview(data)
        written = 0
        began = time.perf_counter()
        try:
            while written < len(view):
                written += pwrite(self.fd, view[written:], offset + written)
        except OSError as exc:
            if exc.errno in DISK_FULL_ERRNOS:
                raise disk_full(exc) from exc
            raise LocalFileError.from_os_error(exc, self.path) from exc  # pwrite names no file
        self.pwrite_seconds += time.perf_counter() - began

    def write_back(self, offset: int, length: int) -> None:
        """Ask the kernel to start writing [offset, offset + length) out (see early writeback
        in the module docstring)."""
        if _sync_file_range is not None and length > 0:
            with contextlib.suppress(OSError):
                _sync_file_range(self.fd, offset, length, _SYNC_FILE_RANGE_WRITE)

    def allocate(self) -> None:
        """Make the file `total` bytes long with its blocks reserved (ENOSPC now, not midway);
        where fallocate is unsupported, a sparse `ftruncate` still gives it its length."""
        stat = os.fstat(self.fd)
        if stat.st_size > self.total:
            os.ftruncate(self.fd, self.total)
        if _fallocate is not None and self.total > 0:
            try:
                _fallocate(self.fd, 0, 0, self.total)
                return
            except OSError as exc:
                if exc.errno in DISK_FULL_ERRNOS:
                    raise disk_full(exc, needed=self.total - stat.st_blocks * 512) from exc
                if exc.errno not in UNSUPPORTED_ERRNOS:
                    raise
        if stat.st_size < self.total:
            os.ftruncate(self.fd, self.total)

    def check_free_space(self, total: int) -> None:
        """DiskFullError unless the filesystem can hold the blocks of `total` bytes that are not
        allocated to the file yet."""
        stat = os.fstat(self.fd)
        require_space(self.path, total - stat.st_blocks * 512)

    def discard(self) -> None:
        raise RuntimeError("a segmented .part is discarded by removing it")


def outcome_seen(future: asyncio.Future[None]) -> None:
    """Mark the outcome of a future nobody awaits any more as seen (a done callback), so
    asyncio does not log it as never retrieved: whoever cared has been told otherwise."""
    if not future.cancelled():
        future.exception()


_SPARE_BYTES = 8 << 20  # spare small-body buffers kept, at most (16 files of 512 KiB)
_MIN_BUFFER = 64 << 10
_spares: dict[int, list[bytearray]] = {}  # by size (a power of two)
_spare_total = 0


def _spare_buffer(total: int) -> bytearray:
    """A buffer of at least `total` bytes: a spare one of its size class, else a new one."""
    global _spare_total
    size = max(_MIN_BUFFER, 1 << max(0, total - 1).bit_length())
    spares = _spares.get(size)
    if spares:
        _spare_total -= size
        return spares.pop()
    return bytearray(size)


def _give_back(buffer: bytearray) -> None:
    global _spare_total
    size = len(buffer)
    if _spare_total + size > _SPARE_BYTES:
        return
    _spares.setdefault(size, []).append(buffer)
    _spare_total += size


class Body(Protocol):
    """Where `_stream` puts body bytes: the `.part` (PartFile) or memory (HeldBody)."""

    size: int

    async def write(self, data: bytes | memoryview) -> None: ...


class HeldBody:
    """A small body received into memory: one buffer of its announced size, filled in order.

    Buffers are reused (`recycle`): a fresh 256 KiB bytearray per file is an mmap, its page
    faults and an munmap, about 80 us of the loop's time each under case 3 of the benchmark.
    A reused one is not zeroed, which is harmless: only the `size` bytes written are read."""

    __slots__ = ("_buffer", "size", "view")

    def __init__(self, total: int) -> None:
        self._buffer = _spare_buffer(total)
        self.view = memoryview(self._buffer)[:total]
        self.size = 0

    def recycle(self) -> None:
        """Nothing reads these bytes any more (the publish returned): the buffer goes back for
        the next small body, unless a view of it is still alive somewhere."""
        buffer = self._buffer
        self.view.release()
        try:  # a resize is refused while any view of the buffer exists
            buffer.append(0)
            buffer.pop()
        except BufferError:
            return
        _give_back(buffer)

    async def write(self, data: bytes | memoryview) -> None:
        end = self.size + len(data)
        self.view[self.size : end] = data  # never past the end: _stream checks the limit first
        self.size = end


# MAX_PENDING and PartState are re-exported: segments.py and recovery.py import them from here.
# The code here reads `hashing.MAX_PENDING`, so there is one knob (tests turn it).
__all__ = [
    "DISK_FULL_ERRNOS",
    "MAX_PENDING",
    "UNSUPPORTED_ERRNOS",
    "WRITEBACK_STEP",
    "Body",
    "HeldBody",
    "PartFile",
    "PartState",
    "SegmentedPartFile",
    "disk_full",
    "fdatasync",
    "outcome_seen",
    "pread",
    "pwrite",
    "require_space",
]
