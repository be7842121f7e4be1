"""The scheduling step as pure functions: which retries are due, which files start, when to wake.

The coordinator task reads its state (the queue's waiting files, the running count, per-host
holds after a 429/503, the files waiting to retry) and `now`, asks these functions, and does the
I/O they name. They take everything as arguments and change nothing, so they are tested with
tables, without a loop or a socket.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Mapping

from modelfetch.core.models import FileRecord, FileStatus, GroupRecord
from modelfetch.core.queue import FileKey
from modelfetch.manager.groups import member

WAKE_SLACK = 0.01
"""Seconds added to a wake-up so the deadline has passed when the coordinator looks again."""


def host_of(url: str) -> str:
    """The key of a per-host hold: the URL's `host[:port]`, lower-cased."""
    return urllib.parse.urlsplit(url).netloc.lower()


def is_held(holds: Mapping[str, float], url: str, now: float) -> bool:
    """True while the host of `url` is held (until a time after `now`)."""
    if not holds:
        return False
    until = holds.get(host_of(url))
    return until is not None and until > now


def due_retries(
    retrying: Mapping[FileKey, FileRecord], holds: Mapping[str, float], now: float
) -> list[FileRecord]:
    """Files waiting to retry whose time has come and whose host is not held, in key order:
    they go back to `queued` before slots are filled."""
    return [
        f
        for _, f in sorted(retrying.items())
        if (f.retry_at or 0) <= now and not is_held(holds, f.url, now)
    ]


def choose_starts(
    waiting: Iterable[FileKey],
    groups: Mapping[int, GroupRecord],
    *,
    free: int,
    holds: Mapping[str, float],
    now: float,
) -> list[FileRecord]:
    """The first `free` files of `waiting` (the queue's waiting keys, in scheduling order) that
    can start: known, `queued`, and not on a held host. `waiting` is read lazily, only as far
    as the files chosen and the held ones in front of them, never the whole queue."""
    chosen: list[FileRecord] = []
    if free <= 0:
        return chosen
    for key in waiting:
        group = groups.get(key[0])
        if group is None:
            continue
        f = member(group, key[1])
        if f is None or f.status is not FileStatus.QUEUED or is_held(holds, f.url, now):
            continue
        chosen.append(f)
        if len(chosen) >= free:
            break
    return chosen


def next_wake_in(
    retry_times: Iterable[float | None], holds: Mapping[str, float], now: float
) -> float | None:
    """Seconds until the earliest retry time or the end of a hold still in force (None: no
    deadline, sleep until woken)."""
    times = [t for t in retry_times if t is not None]
    times += [t for t in holds.values() if t > now]
    if not times:
        return None
    return max(0.0, min(times) - now) + WAKE_SLACK
