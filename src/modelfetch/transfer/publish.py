"""The end of a transfer: check the digests, fsync, rename into place atomically, clean up.

The final name only ever receives a verified, fsynced, closed file: `sync_and_publish` for a
`.part` streamed to disk, `verify_and_publish_body` for a small body held in memory (hash, verify,
create, write, fsync, rename in one worker-thread call: creating an inode on ext4 and hashing cost
more loop time than receiving such a body; on a worker thread they overlap with the loop serving
other connections). A held body that stops early is written out as a `.part` prefix
(`write_prefix`), so it resumes like a streamed one. `finish_off_loop` runs these on a worker
thread so that a cancel arriving mid-publish cannot strand a complete file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import errno
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from modelfetch.core.errors import IntegrityError, LocalFileError
from modelfetch.core.paths import JOURNAL_SUFFIX, PART_SUFFIX
from modelfetch.transfer import sink
from modelfetch.transfer.hashing import Digests
from modelfetch.transfer.sink import DISK_FULL_ERRNOS, UNSUPPORTED_ERRNOS, disk_full

_T = TypeVar("_T")
JOURNAL_TAIL = JOURNAL_SUFFIX.removeprefix(PART_SUFFIX)  # `x.part` + this = journal_path(x)


def check_digests(
    digests: Digests, *, sha256: str | None, git_oid: str | None, name: str, url: str
) -> bool:
    """IntegrityError unless the digests are the expected ones (those that are known); whether
    anything was checked."""
    checks: list[tuple[str, str, str]] = []
    if sha256 is not None:
        checks.append(("SHA-256", sha256, digests.sha256))
    if git_oid is not None:
        checks.append(("git blob id", git_oid, digests.git_oid or ""))
    for what, want, got in checks:
        if want != got:
            raise IntegrityError(f"{what} mismatch for {name}", url=url, expected=want, actual=got)
    return bool(checks)


async def finish_off_loop(call: Callable[[], _T]) -> _T:
    """`call` (the last step of a transfer: the publish) on a worker thread. A cancel that
    arrives once it has started is too late: the thread is waited for and, if the verified file
    made it under its final name, the transfer returns as completed (so the caller records what
    is on disk, instead of calling "cancelled" or "paused" a file that is already complete). A
    failed call still raises the CancelledError."""
    task = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(_publishers(), call))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        try:
            result = await task
        except Exception:
            pass
        else:
            return result  # published: the cancel came too late (swallowed deliberately)
        raise


PUBLISH_THREADS = 16
"""Publishes at once. Each spends most of its time in two fsyncs (the file, its directory), which
wait on the disk, not the CPU: the loop's default executor has cpu_count + 4 threads (6 on two
cores), so 16 small files finishing together queued behind each other's fsyncs; on their own
threads the file system commits them together."""

_POOL: concurrent.futures.ThreadPoolExecutor | None = None


def _publishers() -> concurrent.futures.ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = concurrent.futures.ThreadPoolExecutor(
            PUBLISH_THREADS, thread_name_prefix="modelfetch-publish"
        )
    return _POOL


def publish(part: Path, dest: Path, sidecar: Path | None) -> None:
    """Make a verified, fsynced `.part` visible under its final name, atomically and durably;
    then remove its sidecar (None: it has none)."""
    os.replace(part, dest)
    fsync_directory(dest.parent)
    if sidecar is not None:
        sidecar.unlink(missing_ok=True)


def sync_and_publish(fd: int, part: Path, dest: Path, sidecar: Path) -> tuple[float, float]:
    """fsync the verified `.part` (open as `fd`, closed here whatever happens), close it, then
    `publish` it: the whole of a publish in one call, to run on a worker thread. Closing before
    the rename means no writer ever has the final name open (watchers see the close on the
    `.part`, and the final name appears complete). Returns the seconds (fsync and close,
    publish) for transfer/stages.py."""
    began = time.perf_counter()
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    synced = time.perf_counter()
    publish(part, dest, sidecar)
    return synced - began, time.perf_counter() - synced


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
    prefix; other OSErrors of the write → LocalFileError, the rest propagate (a complete
    `.part` stays when fsync or the rename fail).
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
            if exc.errno in DISK_FULL_ERRNOS:
                raise disk_full(exc) from exc
            raise LocalFileError.from_os_error(exc, part) from exc  # pwrite names no file
        os.fsync(fd)
        # Read here, on the worker thread: the manager records (size, mtime) with the verified
        # digest, and a stat of the published name on the loop waits on the directory's lock
        # while other publishes rename into it. A rename keeps the inode's mtime.
        mtime_ns = os.fstat(fd).st_mtime_ns
    finally:
        os.close(fd)
    publish(part, dest, sidecar)
    return dataclasses.replace(digests, mtime_ns=mtime_ns)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    written = 0
    while written < len(view):
        written += sink.pwrite(fd, view[written:], written)


def fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:  # e.g. platforms without O_DIRECTORY semantics; the rename still happened
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in UNSUPPORTED_ERRNOS and exc.errno != errno.EBADF:
            raise
    finally:
        os.close(fd)


def remove_partial(part: Path, sidecar: Path) -> None:
    """Remove a `.part`, its sidecar and its volatile segment map (`journal_path`: the `.part`'s
    name + ".map"), which must never outlive the bytes it describes."""
    part.unlink(missing_ok=True)
    sidecar.unlink(missing_ok=True)
    part.with_name(part.name + JOURNAL_TAIL).unlink(missing_ok=True)
