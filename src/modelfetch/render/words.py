"""The words a display shows for a file, a download and an event: states, errors, plain lines.

Every time-dependent word ("retrying in 12 s") takes `now` (epoch seconds) as a parameter, and
nothing here computes a speed or an ETA: both come from the manager's estimator and read `—`
while unknown.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from modelfetch.core import events as ev
from modelfetch.core.format import UNKNOWN, format_bytes, format_duration, format_rate
from modelfetch.core.models import FileStatus
from modelfetch.views import FileView, GroupView

STALL_AFTER = 5.0
"""Seconds without a byte after which an active file reads "stalled N s"."""

FINISHED = frozenset({"completed", "partial", "failed", "cancelled"})
"""Group statuses that no longer change on their own."""

_HTTP_ERROR = re.compile(r"^HTTP (?P<status>\d{3})\b.*? from (?P<url>\S+)")


def seconds(value: float) -> str:
    """`12 s` below a minute (the countdown reads naturally), else `3m 20s`."""
    whole = max(0, math.ceil(value))
    return f"{whole} s" if whole < 60 else format_duration(whole)


def short_error(message: str | None, kind: str | None = None) -> str:
    """A few words for a status column: `503 from cdn.example`, else the message's first line."""
    if message:
        match = _HTTP_ERROR.match(message)
        if match:
            host = urlsplit(match["url"]).hostname or match["url"]
            return f"{match['status']} from {host}"
        first = message.strip().splitlines()[0] if message.strip() else ""
        head = first.split(": ", 1)[0]
        if len(first) > 48 and len(head) >= 12 and head.count("(") == head.count(")"):
            first = head  # "the body was cut short: <library detail>"
        if first:
            return first if len(first) <= 80 else first[:79] + "…"
    return (kind or "error").replace("_", " ")


def file_state(f: FileView, now: float) -> str | None:
    """Why a file is not simply downloading, in words; None while bytes are moving."""
    status = f.status
    if status == FileStatus.ACTIVE:
        if f.idle_for is not None and f.idle_for >= STALL_AFTER:
            return f"stalled {seconds(f.idle_for)}"
        return None
    if status == FileStatus.WAITING_RETRY:
        reason = short_error(f.error_message, f.error_kind)
        if f.retry_at is None or f.retry_at - now < 0.5:
            return f"retrying now: {reason}"
        return f"retrying in {seconds(f.retry_at - now)}: {reason}"
    if status == FileStatus.PAUSED:
        return paused_words([f])
    if status == FileStatus.QUEUED:
        return f"queued #{f.position}" if f.position else "queued"
    if status == FileStatus.FAILED:
        return f"failed: {short_error(f.error_message, f.error_kind)}"
    if status == FileStatus.CANCELLED:
        return "cancelled"
    if status == FileStatus.COMPLETED:
        return "done"
    return status


def group_state(g: GroupView, now: float) -> str | None:
    """Why a model is not simply downloading, in words; None while bytes are moving."""
    status = g.status
    if status == "active":
        active = [f for f in g.files if f.status == FileStatus.ACTIVE]
        idle = [f.idle_for for f in active if f.idle_for is not None]
        if active and len(idle) == len(active) and min(idle) >= STALL_AFTER:
            return f"stalled {seconds(min(idle))}"
        return None
    if status == "queued":
        if g.position:
            return f"queued #{g.position}"
        retrying = [f for f in g.files if f.status == FileStatus.WAITING_RETRY]
        if retrying:
            return file_state(min(retrying, key=lambda f: f.retry_at or 0.0), now)
        return "queued"
    if status == "paused":
        return paused_words(g.files)
    if status == "completed":
        return "done"
    if status in ("failed", "partial"):
        failed = sum(1 for f in g.files if f.status == FileStatus.FAILED)
        return f"failed: {failed} of {len(g.files)} files" if failed else status
    return status


def paused_words(files: Sequence[FileView]) -> str:
    """Why paused files wait: a full disk (red in the live display), a Ctrl-C (the next `run`
    or `get` continues them), else the user's own pause."""
    reasons = {f.pause_reason for f in files if f.status == FileStatus.PAUSED}
    if "disk_full" in reasons:
        return "paused: disk full"
    if "interrupted" in reasons:
        return "paused (interrupted)"
    return "paused"


def percent(done: int, total: int | None) -> str:
    if not total:
        return UNKNOWN
    return f"{min(100.0, 100.0 * done / total):.0f}%"


def bytes_of(done: int, total: int | None) -> str:
    """`1.0 GiB / 2.4 GiB`."""
    return f"{format_bytes(done)} / {format_bytes(total)}"


def files_done(g: GroupView) -> str:
    """`1/3 files` (empty for a download with no files yet)."""
    done = sum(1 for f in g.files if f.status == FileStatus.COMPLETED)
    return f"{done}/{len(g.files)} files" if g.files else ""


def group_line(g: GroupView, now: float) -> str:
    """A plain line for a model: `name  42%  1.0 GiB / 2.4 GiB  45.1 MB/s  ETA 31s  (1/3 files)`."""
    state = group_state(g, now)
    parts = [
        g.name,
        percent(g.downloaded, g.total),
        bytes_of(g.downloaded, g.total),
        format_rate(g.speed),
        f"ETA {format_duration(g.eta)}",
    ]
    if state:
        parts.append(state)
    files = files_done(g)
    if files:
        parts.append(f"({files})")
    return "  ".join(parts)


def event_line(event: ev.Event, now: float) -> str | None:
    """A plain line for an event worth a line of its own (state changes, not progress)."""
    if isinstance(event, ev.GroupQueued):
        where = f" #{event.position}" if event.position else ""
        count = "1 file" if event.files == 1 else f"{event.files} files"
        return f"queued{where}: {event.name} ({count}, {format_bytes(event.total)})"
    if isinstance(event, ev.FileStarted):
        if event.offset:
            return f"resuming {event.ref} {event.name} from {format_bytes(event.offset)}"
        return f"started {event.ref} {event.name}"
    if isinstance(event, ev.StatusChanged):
        reason = short_error(event.error_message, event.error_kind)
        if event.status == FileStatus.WAITING_RETRY:
            wait = seconds(event.retry_at - now) if event.retry_at is not None else "a moment"
            return f"retrying {event.ref} {event.name} in {wait}: {reason}"
        if event.status == FileStatus.PAUSED:
            why = {"disk_full": ": disk full", "interrupted": " (interrupted)"}.get(
                event.reason or "", ""
            )
            return f"paused {event.ref} {event.name}{why}"
        return None
    if isinstance(event, ev.FileCompleted):
        size = format_bytes(event.size)
        return f"done {event.ref} {event.name} ({size}, sha256 {event.sha256[:12]}…)"
    if isinstance(event, ev.FileFailed):
        return f"failed {event.ref} {event.name}: {event.message}"
    if isinstance(event, ev.Cancelled):
        return f"cancelled {event.ref} {event.name}"
    if isinstance(event, ev.GroupFinished):
        count = f"{event.completed} completed"
        if event.failed:
            count += f", {event.failed} failed"
        if event.cancelled:
            count += f", {event.cancelled} cancelled"
        return f"finished {event.name}: {event.status} ({count})"
    if isinstance(event, ev.Notice):
        return f"{event.level}: {event.message}"
    return None
