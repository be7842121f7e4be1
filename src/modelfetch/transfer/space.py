"""Whether a file's folder has room for the bytes a transfer is about to write.

Every transfer asks before its body (`require_space`), and 200 small files ask 200 times a
second. Each look at the disk (statvfs) is a call that hands the GIL to the publish threads
and waits to take it back while they run Python: under case 3 of the benchmark those waits
were a third of the loop's time in a small file's transfer. So a reading of a folder's free
space answers the checks for `FRESH` seconds, less what the checks since were granted, and
only a fresh reading ever says no: a check that the remembered figure cannot grant looks
again. A disk that other programs fill meanwhile still ends a write with ENOSPC, which is a
DiskFullError all the same (sink.py); the check is there to fail before the body, not instead
of that.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from modelfetch.core.errors import DiskFullError, IntegrityError

__all__ = ["FRESH", "require_space"]

FRESH = 1.0
"""Seconds a reading of a folder's free space answers checks (less what they were granted)."""
_KEPT = 64  # folders remembered at most


@dataclass(slots=True)
class _Reading:
    at: float  # time.monotonic() of the look at the disk
    total: int
    free: int  # free then, less what the checks since were granted


_readings: dict[str, _Reading] = {}


def require_space(path: Path, needed: int) -> None:
    """DiskFullError if the filesystem cannot hold `needed` more bytes now. A size larger than
    the whole filesystem is not a full disk but a lying (or wrong) server: that file fails on its
    own (IntegrityError) instead of pausing every download as 'disk full'."""
    if needed <= 0:
        return
    folder = str(path.parent)
    now = time.monotonic()
    reading = _readings.get(folder)
    if reading is None or now - reading.at >= FRESH or needed > reading.free:
        usage = shutil.disk_usage(folder)
        reading = _Reading(now, usage.total, usage.free)
        _readings.pop(folder, None)
        _readings[folder] = reading
        while len(_readings) > _KEPT:
            del _readings[next(iter(_readings))]
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
    reading.free -= needed
