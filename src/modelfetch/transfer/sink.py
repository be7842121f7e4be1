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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modelfetch.core.errors import DiskFullError

REHASH_READ_SIZE = 8 << 20
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
    thread. `feed` never blocks; `drain` waits (without blocking the loop) for the backlog."""

    def __init__(self, *, git_blob_size: int | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._sha256 = hashlib.sha256()
        self._git_sha1: Any = None
        self._git_blob_size = git_blob_size
        if git_blob_size is not None:
            self._git_sha1 = hashlib.sha1(b"blob %d\0" % git_blob_size, usedforsecurity=False)
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0  # guarded by _lock, like _waiter and _running
        self._waiter: tuple[asyncio.Future[None], int] | None = None
        self._running = True
        self._failure: BaseException | None = None
        self._abandoned = False
        self.fed = 0
        self._thread = threading.Thread(target=self._run, name="modelfetch-digest", daemon=True)
        self._thread.start()

    @property
    def git_blob_size(self) -> int | None:
        return self._git_blob_size

    @property
    def backlogged(self) -> bool:
        return self._pending > MAX_PENDING  # an unlocked read: a hint, `drain` is exact

    def feed(self, data: bytes) -> None:
        with self._lock:
            self._pending += len(data)
        self.fed += len(data)
        self._queue.put(data)

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
        self._abandoned = True
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                if not self._abandoned:
                    self._sha256.update(item)
                    if self._git_sha1 is not None:
                        self._git_sha1.update(item)
                with self._lock:
                    self._pending -= len(item)
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

    async def start_digests(self, *, git_blob_size: int | None = None) -> None:
        """Start fresh digests and feed them the bytes already on disk (a resume), 8 MiB at a
        time, yielding to the loop between reads so a multi-GB prefix does not freeze it."""
        self._stop_digests()
        digester = self._digester = Digester(git_blob_size=git_blob_size)
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

    async def write(self, data: bytes) -> None:
        """Append `data` at the committed offset and hash it. ENOSPC/EDQUOT → DiskFullError;
        any other OSError propagates unchanged."""
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
        needed = total - self.size - reserved_beyond_eof
        if needed <= 0:
            return
        free = shutil.disk_usage(self.path.parent).free
        if free < needed:
            raise DiskFullError(
                f"{needed} more bytes needed for {self.path.name}, only {free} free",
                needed=needed,
                free=free,
            )

    def sync_and_close(self) -> None:
        os.fsync(self.fd)
        self.close()

    def close(self) -> None:
        self._stop_digests()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def publish(part: Path, dest: Path, sidecar: Path) -> None:
    """Make a verified, fsynced `.part` visible under its final name, atomically and durably."""
    os.replace(part, dest)
    fsync_directory(dest.parent)
    sidecar.unlink(missing_ok=True)


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

    def save(self, path: Path) -> None:
        """Atomic replace, no fsync: losing the sidecar in a crash only costs a restart."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> PartState | None:
        """The recorded state, or None when missing, unreadable or not ours."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        if not isinstance(raw, dict) or raw.get("version") != 1:
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
        return cls(url=url, validator=validator, total=total, sha256=sha256)
