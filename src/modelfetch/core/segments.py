"""The segment map of a multi-connection download (pure: no I/O, no clock).

A map covers the byte range [0, total) of one file exactly once: segments sorted by start, each
`[start, end)` with `done` bytes filled front to back from its start. It is the only record of
which bytes of a segmented `.part` are real: the file itself is allocated to full size at once,
so its length says nothing (see transfer/segments.py).

How work is handed out (`claim`):
  1. Front to back. An idle connection takes the first unclaimed bytes, cut into a piece of at
     most `piece` bytes. Connections therefore sweep the file roughly in order and the
     contiguous prefix (what the SHA-256 has already read back) trails the newest byte by about
     connections x piece, which keeps the hashing left after the last byte small.
  2. Tail stealing. When nothing is unclaimed, an idle connection takes the upper half of the
     largest remaining claimed segment (the victim's `end` moves down; its connection stops at
     the new end). The last percent is never left to one slow connection. A segment smaller
     than 2 x `min_steal` is not split: a new request would cost more than it saves.

Segments that are complete and unclaimed are merged with their neighbours (`release`), so the
map stays about as long as the number of connections however large the file is, and what is
persisted (`records`) is a handful of rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = ["ALIGN", "Segment", "SegmentMap", "SegmentRecord", "grow_step", "keeps_scaling"]

ALIGN = 1 << 16  # steal boundaries fall on 64 KiB when they can (page- and block-friendly)


@dataclass(frozen=True, slots=True)
class SegmentRecord:
    """One persisted segment: bytes [start, start + done) of [start, end) are on disk."""

    start: int
    end: int
    done: int


@dataclass(eq=False, slots=True)
class Segment:
    """A live segment; `owner` is the connection working on it (None: nobody)."""

    start: int
    end: int
    done: int = 0
    owner: int | None = None

    @property
    def pos(self) -> int:
        """The next byte to fetch."""
        return self.start + self.done

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    @property
    def complete(self) -> bool:
        return self.pos >= self.end

    def record(self) -> SegmentRecord:
        return SegmentRecord(self.start, self.end, self.done)


class SegmentMap:
    """Which bytes of [0, total) are on disk, which are claimed, and who fetches what next."""

    def __init__(self, total: int, records: Iterable[SegmentRecord] | None = None) -> None:
        if total < 0:
            raise ValueError(f"total must be >= 0, not {total}")
        self.total = total
        self.steals = 0  # how many claims were tail steals (for tests and benchmarks)
        if records is None:
            self._segments = [Segment(0, total)] if total else []
        else:
            self._segments = [Segment(r.start, r.end, r.done) for r in records]
            _check_cover(total, self._segments)

    # -- reading ---------------------------------------------------------------------------------

    @property
    def segments(self) -> tuple[Segment, ...]:
        return tuple(self._segments)

    def __iter__(self) -> Iterator[Segment]:
        return iter(tuple(self._segments))

    @property
    def done_bytes(self) -> int:
        """Bytes on disk, in every segment: the honest progress count."""
        return sum(s.done for s in self._segments)

    @property
    def prefix(self) -> int:
        """The length of the contiguous run of bytes on disk from offset 0."""
        end = 0
        for s in self._segments:
            end = s.pos
            if not s.complete:
                break
        return end

    @property
    def complete(self) -> bool:
        return all(s.complete for s in self._segments)

    def incomplete(self) -> list[Segment]:
        return [s for s in self._segments if not s.complete]

    def records(self) -> tuple[SegmentRecord, ...]:
        """The map as rows to persist, with every complete segment merged into its successor
        (a complete [a, b) followed by [b, c) with d done is [a, c) with b - a + d done)."""
        out: list[SegmentRecord] = []
        for s in self._segments:
            if out and out[-1].done == out[-1].end - out[-1].start:
                head = out.pop()
                out.append(SegmentRecord(head.start, s.end, head.done + s.done))
            else:
                out.append(s.record())
        return tuple(out)

    # -- handing out work ------------------------------------------------------------------------

    def claim(
        self, owner: int, *, piece: int, min_steal: int, help_front: bool = False
    ) -> Segment | None:
        """The next segment for the idle connection `owner`, or None when nothing is left worth
        a request (see the module docstring for the order). `help_front`: if the first
        unfinished segment is claimed and has at least half a piece (and 2 x min_steal) left,
        take the upper half of it instead: the prefix waits for it (a slow connection there
        holds up the hashing of everything behind it)."""
        if piece < 1 or min_steal < 1:
            raise ValueError("piece and min_steal must be >= 1")
        if any(s.owner == owner for s in self._segments):
            raise ValueError(f"connection {owner} already holds a segment")
        if help_front:
            front = next((s for s in self._segments if not s.complete), None)
            if (
                front is not None
                and front.owner is not None
                and front.remaining >= max(piece // 2, 2 * min_steal)
            ):
                return self._split(front, owner)
        for i, s in enumerate(self._segments):
            if s.owner is None and not s.complete:
                # Cut a piece off the front, unless what would be left is too small to matter.
                if s.remaining > piece + piece // 2:
                    cut = s.pos + piece
                    self._segments.insert(i + 1, Segment(cut, s.end))
                    s.end = cut
                s.owner = owner
                return s
        return self._steal(owner, min_steal)

    def _steal(self, owner: int, min_steal: int) -> Segment | None:
        victim: Segment | None = None
        for s in self._segments:
            if s.owner is not None and (victim is None or s.remaining > victim.remaining):
                victim = s
        if victim is None or victim.remaining < 2 * min_steal:
            return None
        return self._split(victim, owner)

    def _split(self, victim: Segment, owner: int) -> Segment:
        """Give the upper half of `victim`'s remaining bytes to `owner`."""
        cut = victim.pos + victim.remaining // 2
        aligned = cut - cut % ALIGN
        if aligned > victim.pos:
            cut = aligned
        thief = Segment(cut, victim.end, owner=owner)
        victim.end = cut
        self.steals += 1
        self._segments.insert(self._segments.index(victim) + 1, thief)
        return thief

    def advance(self, segment: Segment, n: int) -> None:
        """Record that `n` more bytes of `segment` are on disk."""
        if n < 0 or n > segment.remaining:
            raise ValueError(f"cannot advance by {n}: {segment.remaining} bytes remain")
        segment.done += n

    def release(self, segment: Segment) -> None:
        """The connection is done with `segment` (complete, or it gave up on the rest, which
        becomes claimable again from `pos`). Merges complete unclaimed neighbours."""
        segment.owner = None
        merged: list[Segment] = []
        for s in self._segments:
            head = merged[-1] if merged else None
            if head is not None and head.owner is None and s.owner is None and head.complete:
                head.done = head.end - head.start + s.done
                head.end = s.end
            else:
                merged.append(s)
        self._segments = merged


def _check_cover(total: int, segments: list[Segment]) -> None:
    """ValueError unless `segments` cover [0, total) exactly once, in order, sensibly filled."""
    expected_start = 0
    for s in segments:
        if s.start != expected_start or s.end <= s.start:
            raise ValueError(f"segment [{s.start}, {s.end}) does not follow {expected_start}")
        if not 0 <= s.done <= s.end - s.start:
            raise ValueError(f"segment [{s.start}, {s.end}) claims {s.done} bytes done")
        expected_start = s.end
    if expected_start != total:
        raise ValueError(f"the segments end at {expected_start}, the file at {total}")


def keeps_scaling(
    rate_before: float, workers_before: int, rate_now: float, workers_now: int
) -> bool:
    """Whether going from `workers_before` to `workers_now` connections paid: throughput grew
    by at least half of what linear scaling would give. True means each connection is what
    limits (a server or path that caps every connection), so more of them help."""
    if workers_now <= workers_before or workers_before < 1:
        return False
    linear = workers_now / workers_before
    return rate_now >= rate_before * (1 + 0.5 * (linear - 1))


def grow_step(workers: int, limit: int) -> int:
    """The next number of connections to try: twice as many, at most `limit`."""
    return min(limit, max(workers + 1, 2 * workers))
