"""How the workers of one shared queue divide it: pure decisions over a roster of workers.

A worker claiming greedily takes as many files as it has free slots. When a model of four shards
reaches three workers with `max_active` 3, the first to look takes three of them and the others
get one or none: the fleet downloads at barely more than one worker's speed, although every
worker has its own bandwidth. The workers therefore share the queue the way water fills
vessels: each queued file goes to the least loaded worker that has room, and a worker claims only
the files that would go to it (`fair_claims`). Each worker computes this for itself from the same
roster (the live workers, what they run, how many files each may run), so no coordinator is
needed; when two claim at the same moment from slightly different rosters, or a worker joins
after the others have claimed, `handoff_due` tells a worker with two files more than an idle
one to hand one back to the queue (its bytes kept) for that worker to take.

`connection_share` divides a fleet-wide cap on connections per upstream host among the workers
transferring: their share of it, so that the sum holds the cap.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["WorkerLoad", "connection_share", "fair_claims", "handoff_due"]


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """One live worker of the fleet as the roster shows it."""

    worker: str
    running: int  # files it holds with a live lease
    max_active: int  # files it may run at once
    accepting: bool = True  # False: leaving (Ctrl-C), or its state database is unreachable

    @property
    def room(self) -> int:
        return max(0, self.max_active - self.running) if self.accepting else 0


def fair_claims(me: str, roster: Sequence[WorkerLoad], queued: int, limit: int) -> int:
    """How many of `queued` files `me` should claim now (at most `limit`, its free slots):
    those that filling the least loaded worker first would give it. Ties go by worker id, the
    same on every host. A worker missing from the roster (it has not announced itself yet)
    takes as a lone worker would."""
    limit = max(0, min(limit, queued))
    others = [w for w in roster if w.worker != me and w.room > 0]
    if limit == 0 or not others:
        return limit
    mine = next((w for w in roster if w.worker == me), None)
    if mine is None:
        return limit
    room = min(limit, mine.room)
    if room == 0:
        return 0
    # (running, worker id, room left): the next file goes to the smallest.
    heap = [(w.running, w.worker, w.room) for w in others]
    heap.append((mine.running, me, room))
    heapq.heapify(heap)
    given = 0
    for _ in range(queued):
        if not heap:
            break
        running, worker, room = heapq.heappop(heap)
        if worker == me:
            given += 1
        if room > 1:
            heapq.heappush(heap, (running + 1, worker, room - 1))
    return min(given, limit)


def handoff_due(me: str, roster: Iterable[WorkerLoad], queued: int) -> bool:
    """True when `me` should hand one of its files back to the queue: nothing is queued, and
    another worker with room runs at least two files fewer (after the handoff both are
    closer; a difference of one is as even as it gets)."""
    if queued > 0:
        return False
    workers = list(roster)
    mine = next((w for w in workers if w.worker == me), None)
    if mine is None or mine.running < 2:
        return False
    return any(w.worker != me and w.room > 0 and w.running <= mine.running - 2 for w in workers)


def connection_share(cap: int, me: str, transferring: Iterable[str]) -> int:
    """`me`'s part of a fleet-wide cap of `cap` connections to one host, shared with the other
    workers `transferring` (me counted whether listed or not): an equal part, the remainder
    to the first by worker id. Never below 1: a worker with a file to fetch opens at least one
    connection, so the cap holds exactly while it is at least the number of workers."""
    if cap < 1:
        raise ValueError(f"a connection cap must be at least 1, not {cap}")
    workers = sorted(set(transferring) | {me})
    base, extra = divmod(cap, len(workers))
    return max(1, base + (1 if workers.index(me) < extra else 0))
