"""Fleet mode: the manager as one worker of a queue several processes share (a `LeasingStore`).

With PostgreSQL any number of `run` and `serve` processes, on any number of hosts, work one
queue. Three things change for the manager, and only when its store leases files:
- **what starts** is decided by the store, not by the in-memory queue: `fill_slots` claims the
  next files in the one queue order (`claim`, `FOR UPDATE SKIP LOCKED`), so two workers never
  start the same file;
- **every write about a claimed file is fenced** (`FleetWorker`): status, byte counts and the
  segment map go through the claim, and once the lease is lost (it lapsed and another worker took
  the file over, or another host paused it) they are refused, the transfer is stopped at once and
  nothing more of it is written;
- **the in-memory mirror follows the other workers** (`sync`, every `fleet_poll_interval`): new
  groups, files they started, finished or paused, so `wait()`, `run`, the views and the events
  see the whole queue. Leases of running files are renewed on the same beat.

The mirror is polled, not pushed (no LISTEN/NOTIFY yet): another worker's change shows within a
poll interval.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Collection, Iterable, Sequence
from dataclasses import fields as dataclass_fields
from typing import TYPE_CHECKING, Protocol

from modelfetch.core import events as ev
from modelfetch.core.models import FileRecord, FileStatus, GroupRecord, StopReason
from modelfetch.core.queue import FileKey, entries_of
from modelfetch.core.segments import SegmentRecord
from modelfetch.manager import files
from modelfetch.manager.groups import file_ref, member
from modelfetch.manager.scheduling import host_of, is_held
from modelfetch.store import Claim, LeaseLostError, LeasingStore, Store

if TYPE_CHECKING:
    from modelfetch.manager.coordinator import DownloadManager

__all__ = ["FleetWorker", "SharedStore", "fill_slots", "sync", "watch", "worker_id"]

_ACTIVE_ONLY = frozenset({FileStatus.ACTIVE})
# What a worker copies from the store into its mirror for a file it does not run.
_SYNCED = tuple(
    f.name for f in dataclass_fields(FileRecord) if f.name not in ("group_id", "index", "id")
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

    def claim(self, limit: int) -> list[Claim]:
        started = time.perf_counter()
        got = self.store.claim(self.worker, lease_seconds=self.lease_seconds, limit=limit)
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
        claimed file is `active`, whatever the mirror says while it starts)."""
        key = (group_id, index)
        if key in self.fenced:
            return False
        claim = self.claims.get(key)
        if claim is None:
            return self.store.transition(group_id, index, to, allowed_from=allowed_from, **fields)
        try:
            changed = self.store.transition_claimed(claim, to, allowed_from=_ACTIVE_ONLY, **fields)
        except LeaseLostError:
            self._lose([key])
            return False
        if to is not FileStatus.ACTIVE:
            del self.claims[key]  # leaving active ended the lease
        return changed

    def save_progress(self, rows: Iterable[tuple[int, int, int, int | None]]) -> None:
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
        if plain:
            self.store.save_progress(plain)
        if claimed:
            try:
                self.store.save_claimed_progress(claimed)
            except LeaseLostError as exc:  # the rows still held were written
                self._lose([(c.group_id, c.index) for c in exc.claims])

    def save_segments(
        self, group_id: int, index: int, segments: Sequence[SegmentRecord] | None
    ) -> None:
        key = (group_id, index)
        if key in self.fenced:
            return
        claim = self.claims.get(key)
        if claim is None:
            self.store.save_segments(group_id, index, segments)
            return
        try:
            self.store.save_claimed_segments(claim, segments)
        except LeaseLostError:
            self._lose([key])

    def renew(self) -> None:
        """Extend the leases held; a lease that could not be renewed is lost."""
        self.renewed_at = time.monotonic()
        if not self.claims:
            return
        renewed = self.store.renew(list(self.claims.values()))
        for claim in renewed:
            self.claims[claim.group_id, claim.index] = claim
        held = {(c.group_id, c.index) for c in renewed}
        self._lose([key for key in self.claims if key not in held])

    def renew_due(self) -> bool:
        return time.monotonic() - self.renewed_at >= self.lease_seconds / 3

    def _lose(self, keys: Iterable[FileKey]) -> None:
        for key in list(keys):
            self.claims.pop(key, None)
            if key not in self.fenced:
                self.fenced.add(key)
                self.lost.append(key)


def fill_slots(m: DownloadManager, fleet: FleetWorker, now: float) -> None:
    """Claim the next files of the shared queue for the free slots and start them. A claimed
    file on a held host (a 429/503 seen here) waits for the hold instead, visible to all."""
    free = m.settings.max_active - len(m._running)
    if free <= 0 or m._closing or fleet.leaving:
        return
    for claim in fleet.claim(free):
        f = _mirror_of(m, claim)
        key = (claim.group_id, claim.index)
        m._segmented.add(key)  # another worker may have saved a map: ask the store
        if f is None:  # cannot happen (the claim returned the row); hand it back
            fleet.transition(*key, FileStatus.QUEUED, allowed_from=_ACTIVE_ONLY)
            continue
        if is_held(m._holds, f.url, now):
            m._transition(
                f,
                FileStatus.WAITING_RETRY,
                allowed_from=(f.status,),
                reason=f"{host_of(f.url)} asked to wait",
                retry_at=m._holds[host_of(f.url)],
            )
            continue
        if not files.start(m, f, now):
            fleet.claims.pop(key, None)


def _mirror_of(m: DownloadManager, claim: Claim) -> FileRecord | None:
    """The mirror's record of a claimed file, brought in step with the claimed row (its group
    loaded if another worker added it since the last sync)."""
    group = m._groups.get(claim.group_id)
    if group is None:
        stored = m.store.get_group(claim.group_id)
        if stored is None:
            return None
        _adopt(m, stored)
        group = stored
    f = member(group, claim.index)
    if f is None:
        return None
    row = claim.file
    m._book.set(f, {"bytes_done": row.bytes_done, "bytes_total": row.bytes_total})
    return f


def _adopt(m: DownloadManager, group: GroupRecord) -> None:
    m._book.register(group)
    m._queue.load(entries_of(m._groups.values()))
    m._emit(
        ev.GroupQueued(
            group_id=group.id,
            name=group.name,
            files=len(group.files),
            total=m._tallies[group.id].total,
            position=None,
        )
    )


def sync(m: DownloadManager, fleet: FleetWorker) -> bool:
    """Copy into the mirror what other workers committed since the last sync: groups added or
    forgotten, and every file this worker does not run. True when anything changed."""
    store = m.store
    for key in [k for k in fleet.fenced if k not in m._running]:
        fleet.fenced.discard(key)  # its transfer has stopped: the store's row is the truth
    stored = {g.id: g for g in store.groups(live_only=True)}
    for gid in [g for g in m._groups if g not in stored]:
        group = store.get_group(gid)  # no longer live: finished, or forgotten
        if group is not None:
            stored[gid] = group
    m._holders = {key: holder for key, (holder, _) in fleet.store.holders().items()}
    for host, until in store.host_holds(time.time()).items():  # a 429/503 another worker saw
        m._holds[host] = max(m._holds.get(host, 0.0), until)
    changed = False
    for gid in [g for g in m._groups if g not in stored]:
        m._queue.remove_group(gid)
        m._book.unregister(gid)
        changed = True
    for gid, group in stored.items():
        mine = m._groups.get(gid)
        if mine is None:
            _adopt(m, group)
            changed = True
            continue
        if mine.finished_at is None and group.finished_at is not None:
            mine.finished_at = group.finished_at
        for row in group.files:
            key = (gid, row.index)
            if key in m._running or key in fleet.claims:
                continue
            f = member(mine, row.index)
            if f is not None and _apply(m, f, row):
                changed = True
    if changed:
        m._queue.load(entries_of(m._groups.values()))
        m._tx.positions_dirty = True
    return changed


def _apply(m: DownloadManager, f: FileRecord, row: FileRecord) -> bool:
    """Another worker's state of a file, into the mirror, announced as a status change."""
    fields = {
        name: getattr(row, name) for name in _SYNCED if getattr(row, name) != getattr(f, name)
    }
    if not fields:
        return False
    previous = f.status
    m._book.set(f, fields)
    if "status" in fields:
        failing = f.status is FileStatus.WAITING_RETRY or f.status is FileStatus.FAILED
        m._emit(
            ev.StatusChanged(
                ref=file_ref(f),
                group_id=f.group_id,
                name=f.name,
                status=f.status.value,
                previous=previous.value,
                reason=f.pause_reason if f.status is FileStatus.PAUSED else "another worker",
                retry_at=f.retry_at if f.status is FileStatus.WAITING_RETRY else None,
                error_kind=f.error_kind if failing else None,
                error_message=f.error_message if failing else None,
            )
        )
    return "status" in fields or "priority" in fields or "order_key" in fields


async def watch(m: DownloadManager, fleet: FleetWorker) -> None:
    """The fleet's beat: stop transfers whose lease was lost, renew leases, follow the other
    workers, and wake the coordinator so free slots claim what they left or added."""
    interval = m.settings.fleet_poll_interval
    while not m._closing:
        _stop_lost(m, fleet)
        if fleet.renew_due():
            fleet.renew()
            _stop_lost(m, fleet)
        with m._deferred():
            sync(m, fleet)
        m._wake.set()
        await asyncio.sleep(interval)


def _stop_lost(m: DownloadManager, fleet: FleetWorker) -> None:
    lost, fleet.lost = fleet.lost, []
    for key in lost:
        run = m._running.get(key)
        if run is None:
            continue
        m._emit(
            ev.Notice(
                message=(
                    f"{file_ref(run.rec)} {run.rec.name}: another worker holds it now (its lease"
                    " here lapsed or it was paused elsewhere); stopped writing it"
                ),
                level="warning",
                ref=file_ref(run.rec),
            )
        )
        assert m._tg is not None
        m._tg.create_task(files.stop(m, run, StopReason.SHUTDOWN))
