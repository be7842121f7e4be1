"""How many downloads collapse into one line: the limits, the counts and the summary words."""

from __future__ import annotations

from collections.abc import Sequence

from modelfetch.core.format import format_rate
from modelfetch.core.models import FileStatus
from modelfetch.render.words import bytes_of, percent
from modelfetch.views import GroupView

MANY_GROUPS = 8
"""Above this many downloads, the displays collapse: one line for all of them, then only those
that are moving or need attention (`get -I list` with 200 URLs stays one screen)."""

MAX_GROUP_ROWS = 10
"""Downloads shown under the summary line once collapsed; the rest are counted."""


def rows_worth_showing(groups: Sequence[GroupView]) -> list[GroupView]:
    """What a collapsed display lists: downloads moving first, then those waiting to retry,
    paused or stalled, then failed ones; plainly queued and completed ones are only counted."""
    moving = [g for g in groups if g.status == "active"]
    waiting = [
        g
        for g in groups
        if g.status in ("queued", "paused")
        and (g.status == "paused" or any(f.status == FileStatus.WAITING_RETRY for f in g.files))
    ]
    failed = [g for g in groups if g.status in ("failed", "partial")]
    return moving + waiting + failed


def count_in(groups: Sequence[GroupView], status: str) -> int:
    return sum(1 for g in groups if g.status == status)


def totals(groups: Sequence[GroupView]) -> tuple[int, int | None, float | None]:
    """Bytes done, bytes in all (None while any size is unknown), and the sum of the speeds the
    manager estimated for each download (None while none is known)."""
    downloaded = sum(g.downloaded for g in groups)
    sizes = [g.total for g in groups]
    total = None if any(t is None for t in sizes) else sum(t or 0 for t in sizes)
    speeds = [g.speed for g in groups if g.speed is not None and g.status == "active"]
    return downloaded, total, (sum(speeds) if speeds else None)


def summary_words(groups: Sequence[GroupView]) -> str:
    """`3 active, 185 queued, 2 failed`: how many downloads are in each state (none omitted)."""
    order = ("active", "queued", "paused", "completed", "partial", "failed", "cancelled")
    counts = {status: count_in(groups, status) for status in order}
    words = {"completed": "done"}
    return ", ".join(f"{n} {words.get(s, s)}" for s, n in counts.items() if n) or "nothing"


def many_line(groups: Sequence[GroupView]) -> str:
    """`200 downloads: 45%  1.2 GiB / 2.4 GiB  45.1 MB/s  (3 active, 185 queued, 12 done)`."""
    downloaded, total, speed = totals(groups)
    return (
        f"{len(groups)} downloads: {percent(downloaded, total)}  {bytes_of(downloaded, total)}  "
        f"{format_rate(speed)}  ({summary_words(groups)})"
    )
