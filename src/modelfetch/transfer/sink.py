"""The on-disk side of one transfer: the `.part` file, its digests, its sidecar, the publish.

Where the work runs. Network reads and `pwrite` stay on the event loop (a thread hop per chunk
halves throughput: reference/stack-measurements.md §1d). Hashing does not: SHA-256 is the single
biggest CPU cost of a verified download (~1 s per GiB here), so each transfer feeds its chunks to
one long-lived digest thread (`Digester`; hashlib releases the GIL), which overlaps hashing with
the next reads and keeps the loop responsive. Measured on the 2-vCPU box, 1 GiB from nginx,
medians of 4: inline hashing 376 MiB/s, digest thread 474, digest thread + early writeback 727
(curl, which neither hashes nor fsyncs: 929). The thread's backlog is bounded (`MAX_PENDING`), so
memory stays flat when the disk and network outrun the hash.

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
version 2 so a reader that only knows prefix files discards it). Their digests cannot follow
the network bytes either: the digest thread reads the contiguous prefix back from the file as it
grows (`Digester.feed_from_file`), while those pages are still cached.

Small files (up to INLINE_HASH_LIMIT) are hashed inline instead: for them, starting and joining
a digest thread cost more than the hashing (a queue of many small files spent most of its time
there).

Small bodies fetched from zero (see SMALL_BODY_LIMIT in transfer/http.py) skip the `.part` while
they arrive: they are received into memory on the loop, and everything else (hash, verify,
create, write, fsync, rename) is one worker-thread call, `verify_and_publish_body`. Creating an
inode on ext4 and hashing cost more loop time than receiving such a body; on a worker thread they
overlap with the loop serving other connections. A body that stops early is written out as a
`.part` prefix (`write_prefix`), so it resumes like a streamed one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import json
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modelfetch.core.errors import DiskFullError, IntegrityError

REHASH_READ_SIZE = 8 << 20
INLINE_HASH_LIMIT = 8 << 20  # files up to this size are hashed without a digest thread
MAX_PENDING = 64 << 20  # bytes handed to the digest thread but not hashed yet
WRITEBACK_STEP = 64 << 20
_FALLOC_FL_KEEP_SIZE = 0x01
_SYNC_FILE_RANGE_WRITE = 0x02
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_UNSUPPORTED_ERRNOS = frozenset(
    {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS, errno.ENODEV}
)

# The one write primitive, a module attribute so a test can substitute a failing one (ENOSPC).
pwrite: Callable[[int, Any, int], int] = os.pwrite


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


@dataclass(frozen=True, slots=True)
class Digests:
    size: int
    sha256: str
    git_oid: str | None  # sha1 of "blob <size>\0" + content, when it was asked for


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
        return Digests(self.fed, self._sha256.hexdigest(), oid)

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


class PartFile:
    """The `.part` of one file, filled front to back; `size` is the committed prefix and always
    equals the file's `st_size`. Owns the digests of that prefix."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.size = os.fstat(self._fd).st_size
        self._digester: Digester | None = None
        self._written_back = 0

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
        time, yielding to the loop between reads so a multi-GB prefix does not freeze it.
        `inline`: hash on the caller's thread (see Digester)."""
        self._stop_digests()
        digester = self._digester = Digester(git_blob_size=git_blob_size, inline=inline)
        while digester.fed < self.size:
            block = os.pread(self.fd, min(REHASH_READ_SIZE, self.size - digester.fed), digester.fed)
            if not block:
                raise OSError(errno.EIO, f"{self.path} shrank while being re-hashed")
            digester.feed(block)
            if digester.backlogged:
                await digester.drain(MAX_PENDING // 2)
            await asyncio.sleep(0)

    async def finish_digests(self) -> Digests:
        digester = self._digester
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
        any other OSError propagates unchanged. A view must stay valid until this returns."""
        digester = self._digester
        if digester is None:
            raise RuntimeError("start_digests() first")
        view = memoryview(data)
        written = 0
        try:
            while written < len(view):
                written += pwrite(self.fd, view[written:], self.size + written)
        except OSError as exc:
            # Bytes that did land are genuine body bytes: count them so size == st_size.
            # The digests no longer match the file; a later attempt re-hashes from disk.
            self.size += written
            self._stop_digests()
            if exc.errno in _DISK_FULL_ERRNOS:
                raise disk_full(exc) from exc
            raise
        self.size += written
        digester.feed(data)
        if self.size - self._written_back >= WRITEBACK_STEP:
            self._start_writeback()
        if digester.backlogged:
            await digester.drain(MAX_PENDING // 2)

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
            if exc.errno in _DISK_FULL_ERRNOS:
                raise disk_full(exc, needed=total - self.size) from exc
            if exc.errno not in _UNSUPPORTED_ERRNOS:
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
            self._catching_up.add_done_callback(_retrieve)
        await asyncio.shield(self._catching_up)

    def close(self) -> None:
        if self._catching_up is not None:
            self._catching_up.cancel()
        super().close()

    async def write(self, data: bytes | memoryview) -> None:
        raise RuntimeError("a segmented .part is written with write_at")

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        """pwrite all of `data` at `offset`. ENOSPC/EDQUOT → DiskFullError (possible even
        after allocation, e.g. on filesystems without fallocate); other OSErrors propagate."""
        view = memoryview(data)
        written = 0
        try:
            while written < len(view):
                written += pwrite(self.fd, view[written:], offset + written)
        except OSError as exc:
            if exc.errno in _DISK_FULL_ERRNOS:
                raise disk_full(exc) from exc
            raise

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
                if exc.errno in _DISK_FULL_ERRNOS:
                    raise disk_full(exc, needed=self.total - stat.st_blocks * 512) from exc
                if exc.errno not in _UNSUPPORTED_ERRNOS:
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


def require_space(path: Path, needed: int) -> None:
    """DiskFullError if the filesystem cannot hold `needed` more bytes now. A size larger than
    the whole filesystem is not a full disk but a lying (or wrong) server: that file fails on its
    own (IntegrityError) instead of pausing every download as 'disk full'."""
    if needed <= 0:
        return
    usage = shutil.disk_usage(path.parent)
    if needed > usage.total:
        raise IntegrityError(
            f"the server announces {needed} bytes for {path.name}, more than the whole disk"
            f" holds ({usage.total} bytes)"
        )
    if usage.free < needed:
        raise DiskFullError(
            f"{needed} more bytes needed for {path.name}, only {usage.free} free",
            needed=needed,
            free=usage.free,
        )


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a shared wait's outcome as seen: whoever cares awaited it already."""
    if not future.cancelled():
        future.exception()


def publish(part: Path, dest: Path, sidecar: Path | None) -> None:
    """Make a verified, fsynced `.part` visible under its final name, atomically and durably;
    then remove its sidecar (None: it has none)."""
    os.replace(part, dest)
    fsync_directory(dest.parent)
    if sidecar is not None:
        sidecar.unlink(missing_ok=True)


def sync_and_publish(fd: int, part: Path, dest: Path, sidecar: Path) -> None:
    """fsync the verified `.part` (open as `fd`, closed here whatever happens), close it, then
    `publish` it: the whole of a publish in one call, to run on a worker thread. Closing before
    the rename means no writer ever has the final name open (watchers see the close on the
    `.part`, and the final name appears complete)."""
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    publish(part, dest, sidecar)


def write_prefix(part: Path, data: bytes | memoryview) -> None:
    """Make `data` the whole content of the `.part` (a body held in memory whose attempt ended
    early: it becomes a prefix to resume from, as if it had been streamed to disk). Bytes that
    land stay, even when a write then fails (the OSError propagates: they are still a prefix)."""
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def verify_and_publish_body(
    body: bytes | memoryview,
    part: Path,
    dest: Path,
    sidecar: Path | None,
    *,
    git_oid: bool,
    verify: Callable[[Digests], object],
) -> Digests:
    """The whole disk side of a small body held in memory, in one call for a worker thread
    (hashlib and the os calls release the GIL, so the loop serves other connections meanwhile):
    hash, `verify` the digests (it raises on a mismatch: nothing has been created then), write
    the `.part`, fsync, close and `publish`. The final name only ever receives a verified,
    fsynced, closed file. ENOSPC/EDQUOT → DiskFullError with the bytes that landed kept as a
    prefix; other OSErrors propagate (a complete `.part` stays when fsync or the rename fail).
    `sidecar`: the one to remove once published, or None when the caller knows there is none
    (each call here that releases the GIL costs a wait for it while the loop runs Python)."""
    sha256 = hashlib.sha256(body).hexdigest()
    oid: str | None = None
    if git_oid:
        sha1 = hashlib.sha1(b"blob %d\0" % len(body), usedforsecurity=False)
        sha1.update(body)
        oid = sha1.hexdigest()
    digests = Digests(len(body), sha256, oid)
    verify(digests)
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        try:
            _write_all(fd, body)
        except OSError as exc:
            if exc.errno in _DISK_FULL_ERRNOS:
                raise disk_full(exc) from exc
            raise
        os.fsync(fd)
    finally:
        os.close(fd)
    publish(part, dest, sidecar)
    return digests


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    written = 0
    while written < len(view):
        written += pwrite(fd, view[written:], written)


def fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:  # e.g. platforms without O_DIRECTORY semantics; the rename still happened
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED_ERRNOS and exc.errno != errno.EBADF:
            raise
    finally:
        os.close(fd)


def remove_partial(part: Path, sidecar: Path) -> None:
    part.unlink(missing_ok=True)
    sidecar.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class PartState:
    """What a `.part` holds, recorded beside it when it is begun, so a later attempt knows whether
    the prefix is still the beginning of the same file (and what to send as `If-Range`)."""

    url: str
    validator: str | None  # the body hop's strong ETag (quoted, as sent) or its Last-Modified
    total: int | None
    sha256: str | None  # the expected digest at the time, when one was known
    version: int = 1
    # A segmented `.part` (written at any offset; its segment map says what is on disk) is
    # saved as version 2, which a modelfetch that only knows prefix files discards.
    segmented: bool = False

    def save(self, path: Path) -> None:
        """Atomic replace, no fsync: losing the sidecar in a crash only costs a restart."""
        fields = asdict(self)
        del fields["segmented"]
        if self.segmented:
            fields["version"] = 2
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(fields, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> PartState | None:
        """The recorded state, or None when missing, unreadable or not ours."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        if not isinstance(raw, dict) or raw.get("version") not in (1, 2):
            return None
        url, validator, total, sha256 = (
            raw.get(k) for k in ("url", "validator", "total", "sha256")
        )
        if not isinstance(url, str):
            return None
        if validator is not None and not isinstance(validator, str):
            return None
        if total is not None and (not isinstance(total, int) or total < 0):
            return None
        if sha256 is not None and not isinstance(sha256, str):
            return None
        segmented = raw["version"] == 2
        if segmented and total is None:
            return None
        return cls(url=url, validator=validator, total=total, sha256=sha256, segmented=segmented)
