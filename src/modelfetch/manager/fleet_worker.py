"""One fleet worker's claims and the fenced writes under them (`FleetWorker`), outages included.

Every write about a file this worker claimed goes through its claim: once the lease is lost
(it lapsed and another worker took the file over, or another host paused it) the writes are
refused and the transfer must stop at once (`lost`).

**The state database unreachable** (the server restarts, the network drops): the first write
that meets it marks the worker `down`. From then on nothing is sent to the store: a claimed
file's transitions are kept in memory only (the manager's mirror moves on and announces them),
progress and segment maps wait in memory, nothing new is claimed, and `fleet.watch` stops the
running transfers (their `.part` files and segment maps stay) and reconnects with backoff. Once
it is back, `replay` writes what happened meanwhile under each claim that still holds (a claim
that lapsed in the meantime belongs to another worker now: its row is the truth), and the
worker carries on. A batch whose transaction died with the connection lost its writes too, so
the claims it ended are replayed as well (`released`, until a commit confirms them).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Protocol

from modelfetch.core.fleet_share import WorkerLoad
from modelfetch.core.models import FileRecord, FileStatus
from modelfetch.core.queue import FileKey
from modelfetch.core.segments import SegmentRecord
from modelfetch.store import (
    Claim,
    FleetLimits,
    LeaseLostError,
    LeasingStore,
    Store,
    StoreUnavailableError,
)
from modelfetch.store.rows import FILE_UPDATABLE

__all__ = ["FleetWorker", "SharedStore", "worker_id"]

_ACTIVE_ONLY = frozenset({FileStatus.ACTIVE})
# What a transfer's transitions write about a file (never its place in the queue, which other
# workers may have changed meanwhile).
_REPLAYED = tuple(
    sorted(FILE_UPDATABLE - {"priority", "order_key", "url", "dest", "name", "created_at", "link"})
)


class SharedStore(Store, LeasingStore, Protocol):
    """A store several workers share: the `Store` protocol with leases (PostgreSQL's)."""


def worker_id() -> str:
    """This process's name as a lease holder: host, pid and a random tail (a pid is reused)."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"


class FleetWorker:
    """The claims of one worker and the fenced writes under them."""

    def __init__(self, store: SharedStore, *, worker: str, lease_seconds: float) -> None:
        self.store = store
        self.worker = worker
        self.lease_seconds = lease_seconds
        self.claims: dict[FileKey, Claim] = {}
        # Lost leases whose transfer may still be stopping: nothing of them is written.
        self.fenced: set[FileKey] = set()
        self.lost: list[FileKey] = []  # newly lost, for `watch` to stop
        self.renewed_at = time.monotonic()
        self.leaving = False  # Ctrl-C: claim nothing more, the others take over
        # How long each claim took (seconds, the newest 10,000): `make bench`'s fleet row.
        self.claim_seconds: deque[float] = deque(maxlen=10_000)
        self.nudged = asyncio.Event()  # another connection committed a change of the queue
        self.seen_group = 0  # the largest group id `sync` has seen
        # The live workers and the fleet's limits at the last heartbeat.
        self.roster: list[WorkerLoad] = []
        self.limits = FleetLimits()
        self.handed_off_at = 0.0  # time.monotonic() of the last file handed to an idle worker
        self.announced_at = -1e9  # time.monotonic() of the last heartbeat
        # -- outages of the state database
        self.down: StoreUnavailableError | None = None  # set while it cannot be reached
        self.down_since = 0.0  # time.monotonic() when it went down
        # Claims ended by a write not yet known to be committed (a batch still open).
        self.released: dict[FileKey, Claim] = {}
        # While down: the claims whose state is to be written once it is back, their last
        # segment maps and the host holds seen meanwhile.
        self.replay_claims: dict[FileKey, Claim] = {}
        self.pending_segments: dict[FileKey, Sequence[SegmentRecord] | None] = {}
        self.pending_holds: dict[str, float] = {}

    # -- the outage state -----------------------------------------------------------------------

    def went_down(self, exc: StoreUnavailableError) -> None:
        """The store could not be reached: keep every claim whose state may not be written."""
        if self.down is None:
            self.down = exc
            self.down_since = time.monotonic()
        self.replay_claims.update(self.released)
        self.replay_claims.update(self.claims)
        self.released.clear()

    def absorb(self, exc: StoreUnavailableError) -> bool:
        """A commit the unreachable store lost: its claims are replayed later (True)."""
        self.went_down(exc)
        return True

    def committed(self) -> None:
        """The manager's batch committed: the claims it ended are ended in the store."""
        self.released.clear()

    def replay(self, mirror: Mapping[FileKey, FileRecord]) -> list[FileKey]:
        """Back from an outage: write each kept claim's state as the mirror has it (a file the
        outage stopped goes back to the queue, bytes kept), and the holds seen meanwhile.
        Returns the files whose claim had lapsed (another worker's now). The caller makes
        sure nothing of these files is still running. StoreUnavailableError: still down."""
        store = self.store
        for host, until in list(self.pending_holds.items()):
            store.hold_host(host, until)
            del self.pending_holds[host]
        lapsed: list[FileKey] = []
        for key, claim in list(self.replay_claims.items()):
            f = mirror.get(key)
            try:
                if key in self.pending_segments:
                    store.save_claimed_segments(claim, self.pending_segments[key])
                if f is not None:
                    to = FileStatus.QUEUED if f.status is FileStatus.ACTIVE else f.status
                    fields = {
                        name: getattr(f, name)
                        for name in _REPLAYED
                        if getattr(f, name) != getattr(claim.file, name)
                    }
                    store.transition_claimed(claim, to, allowed_from=_ACTIVE_ONLY, **fields)
            except LeaseLostError:
                lapsed.append(key)
            self.pending_segments.pop(key, None)
            del self.replay_claims[key]
            self.claims.pop(key, None)
        self.pending_segments.clear()
        self.down = None
        self.renewed_at = time.monotonic()
        return lapsed

    # -- claims and fenced writes ---------------------------------------------------------------

    def claim(self, limit: int) -> list[Claim]:
        if self.down is not None:
            return []
        started = time.perf_counter()
        try:
            got = self.store.claim(self.worker, lease_seconds=self.lease_seconds, limit=limit)
        except StoreUnavailableError as exc:
            self.went_down(exc)
            return []
        self.claim_seconds.append(time.perf_counter() - started)
        for c in got:
            key = (c.group_id, c.index)
            self.claims[key] = c
            self.fenced.discard(key)
        return got

    def transition(
        self,
        group_id: int,
        index: int,
        to: FileStatus,
        *,
        allowed_from: Collection[FileStatus],
        **fields: object,
    ) -> bool:
        """`Store.transition`, under the claim when this worker holds the file (in the store a
        claimed file is `active`, whatever the mirror says while it starts). While the store
        is down, a claimed file's change is kept for `replay` (True: the mirror moves on), any
        other is not made (False)."""
        key = (group_id, index)
        if key in self.fenced:
            return False
        claim = self.claims.get(key) or self.replay_claims.get(key)
        if self.down is not None:
            return claim is not None
        try:
            if claim is None:
                return self.store.transition(
                    group_id, index, to, allowed_from=allowed_from, **fields
                )
            changed = self.store.transition_claimed(claim, to, allowed_from=_ACTIVE_ONLY, **fields)
        except LeaseLostError:
            self._lose([key])
            return False
        except StoreUnavailableError as exc:
            self.went_down(exc)
            return claim is not None
        if to is not FileStatus.ACTIVE:
            del self.claims[key]  # leaving active ended the lease
            if self.store.batching:
                self.released[key] = claim
        return changed

    def save_progress(self, rows: Iterable[tuple[int, int, int, int | None]]) -> None:
        """Byte counts, fenced; while down they are dropped (`replay` writes the last ones)."""
        if self.down is not None:
            return
        claimed: list[tuple[Claim, int, int | None]] = []
        plain: list[tuple[int, int, int, int | None]] = []
        for row in rows:
            key = (row[0], row[1])
            if key in self.fenced:
                continue
            claim = self.claims.get(key)
            if claim is None:
                plain.append(row)
            else:
                claimed.append((claim, row[2], row[3]))
        try:
            if plain:
                self.store.save_progress(plain)
            if claimed:
                self.store.save_claimed_progress(claimed)
        except LeaseLostError as exc:  # the rows still held were written
            self._lose([(c.group_id, c.index) for c in exc.claims])
        except StoreUnavailableError as exc:
            self.went_down(exc)

    def save_segments(
        self, group_id: int, index: int, segments: Sequence[SegmentRecord] | None
    ) -> None:
        key = (group_id, index)
        if key in self.fenced:
            return
        claim = self.claims.get(key) or self.replay_claims.get(key)
        if self.down is not None:
            if claim is not None:
                self.pending_segments[key] = segments
            return
        try:
            if claim is None:
                self.store.save_segments(group_id, index, segments)
            else:
                self.store.save_claimed_segments(claim, segments)
        except LeaseLostError:
            self._lose([key])
        except StoreUnavailableError as exc:
            self.went_down(exc)
            if claim is not None:
                self.pending_segments[key] = segments

    def hold_host(self, host: str, until: float) -> None:
        """A 429/503 hold, for every worker; while down, written by `replay`."""
        if self.down is None:
            try:
                self.store.hold_host(host, until)
                return
            except StoreUnavailableError as exc:
                self.went_down(exc)
        self.pending_holds[host] = max(self.pending_holds.get(host, 0.0), until)

    def renew(self) -> None:
        """Extend the leases held; a lease that could not be renewed is lost. Raises
        StoreUnavailableError (after marking the worker down) when the store is unreachable."""
        self.renewed_at = time.monotonic()
        if not self.claims or self.down is not None:
            return
        try:
            renewed = self.store.renew(list(self.claims.values()))
        except StoreUnavailableError as exc:
            self.went_down(exc)
            raise
        for claim in renewed:
            self.claims[claim.group_id, claim.index] = claim
        held = {(c.group_id, c.index) for c in renewed}
        self._lose([key for key in self.claims if key not in held])

    def heartbeat(self, *, max_active: int, lapse_seconds: float) -> None:
        """Announce this worker (taking more files unless it is leaving) and read the roster
        and the fleet's limits. StoreUnavailableError: marked down, re-raised."""
        if self.down is not None:
            return
        self.announced_at = time.monotonic()
        try:
            self.roster = self.store.heartbeat(
                self.worker,
                max_active=max_active,
                accepting=not self.leaving,
                lapse_seconds=lapse_seconds,
            )
            self.limits = self.store.fleet_limits()
        except StoreUnavailableError as exc:
            self.went_down(exc)
            raise

    def leave(self) -> None:
        """Out of the roster at once (closing): the others need not wait for it to lapse."""
        if self.down is None:
            try:
                self.store.leave(self.worker)
            except StoreUnavailableError as exc:
                self.went_down(exc)

    def renew_due(self) -> bool:
        return time.monotonic() - self.renewed_at >= self.lease_seconds / 3

    def _lose(self, keys: Iterable[FileKey]) -> None:
        for key in list(keys):
            self.claims.pop(key, None)
            if key not in self.fenced:
                self.fenced.add(key)
                self.lost.append(key)
