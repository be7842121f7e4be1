"""A file's bytes to one client: from the held file, or from the `.part` as they arrive.

While the file downloads, a reader sends what is on disk from byte 0 (the manager's
`arrivals` board says how far that is, and wakes it when more lands) and waits for the rest;
a range beyond what has arrived waits for it. Two rules keep a client from ever holding a
complete response with bytes that failed verification:

- the last byte of every response from an unverified file is held back until the file is
  published (its SHA-256 or git blob id checked), and
- a reader stops at once, mid-body, when the board's epoch changes (the `.part` started over,
  the digest failed, the download was cancelled or failed for good); the connection is then
  aborted, so the client sees a truncated body, never a short one passing as whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

from modelfetch.core.models import FileStatus
from modelfetch.core.paths import part_path
from modelfetch.manager import DownloadManager
from modelfetch.mirror.held import HeldFile

__all__ = ["CHUNK", "Cut", "Serving", "send_body"]

CHUNK = 1 << 20
_RECHECK = 1.0  # seconds: the board wakes readers; this only bounds a missed wake-up


class Cut(Exception):
    """The bytes being sent are no longer vouched for: the response must end short."""


class Serving:
    """Which files are being read by a client right now (eviction must leave them alone)."""

    def __init__(self) -> None:
        self._open: Counter[Path] = Counter()

    @contextlib.contextmanager
    def reading(self, dest: Path) -> Iterator[None]:
        self._open[dest] += 1
        try:
            yield
        finally:
            self._open[dest] -= 1
            if self._open[dest] <= 0:
                del self._open[dest]

    def __contains__(self, dest: object) -> bool:
        return dest in self._open


def _pread(paths: tuple[Path, ...], offset: int, n: int) -> bytes:
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            continue
        try:
            return os.pread(fd, n, offset)
        finally:
            os.close(fd)
    return b""


async def send_body(
    response: web.StreamResponse,
    manager: DownloadManager,
    held: HeldFile,
    start: int,
    end: int,
) -> None:
    """Write bytes [start, end) of `held` to a prepared `response`; Cut when they stop being
    vouched for (the caller aborts the connection)."""
    if held.complete:
        await _send_complete(response, held.dest, start, end)
        return
    board = manager.arrivals
    key = held.key
    epoch = board.get(key).epoch
    paths = (part_path(held.dest), held.dest)
    pos = start
    while pos < end:
        arrival = board.get(key)
        record = manager.file_record(*key)
        if arrival.epoch != epoch or record is None:
            raise Cut
        if record.status is FileStatus.COMPLETED or arrival.completed:
            await _send_complete(response, held.dest, pos, end)
            return
        if record.status in (FileStatus.FAILED, FileStatus.CANCELLED):
            raise Cut
        limit = min(arrival.prefix, end - 1)  # the last byte waits for the verified file
        if limit <= pos:
            await board.wait(key, _RECHECK)
            continue
        data = await asyncio.to_thread(_pread, paths, pos, min(CHUNK, limit - pos))
        if board.get(key).epoch != epoch:
            raise Cut  # what was read may be of a `.part` that started over meanwhile
        if not data:
            await board.wait(key, _RECHECK)
            continue
        await response.write(data)
        pos += len(data)


async def _send_complete(response: web.StreamResponse, dest: Path, start: int, end: int) -> None:
    try:
        fd = await asyncio.to_thread(os.open, dest, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:  # evicted or removed since it was looked up: the response cannot be whole
        raise Cut from None
    try:
        pos = start
        while pos < end:
            data = await asyncio.to_thread(os.pread, fd, min(CHUNK, end - pos), pos)
            if not data:  # the file shrank under us: it is not the file any more
                raise Cut
            await response.write(data)
            pos += len(data)
    finally:
        os.close(fd)
