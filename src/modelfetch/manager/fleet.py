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

The mirror follows pushes: every committed change of the queue is notified (LISTEN/NOTIFY, see
`store/postgres_listen.py`) and wakes `watch` at once; polling every `fleet_poll_interval` is
the fallback (and the beat that renews leases and stops transfers whose lease was lost). When
the state database cannot be reached, `watch` stops this worker's transfers (their bytes
kept), reconnects with backoff and writes what happened meanwhile (`fleet_worker.py`), then
carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import fields as dataclass_fields
from typing import TYPE_CHECKING

from modelfetch.core import events as ev
from modelfetch.core.models import FileRecord, FileStatus, GroupRecord, StopReason
from modelfetch.core.queue import FileKey, entries_of
from modelfetch.manager import files
from modelfetch.manager.fleet_balance import announce, hand_off
from modelfetch.manager.fleet_worker import FleetWorker, SharedStore, worker_id
from modelfetch.manager.groups import file_ref, member
from modelfetch.manager.scheduling import host_of, is_held
from modelfetch.manager.transitions import maybe_finish_group
from modelfetch.store import Claim, StoreUnavailableError, holder_ids

if TYPE_CHECKING:
    from modelfetch.manager.coordinator import DownloadManager

__all__ = ["FleetWorker", "SharedStore", "fill_slots", "listen", "sync", "watch", "worker_id"]

_ACTIVE_ONLY = frozenset({FileStatus.ACTIVE})
# What a worker copies from the store into its mirror for a file it does not run.
_SYNCED = tuple(
    f.name for f in dataclass_fields(FileRecord) if f.name not in ("group_id", "index", "id")
)


def fill_slots(m: DownloadManager, fleet: FleetWorker, now: float) -> None:
    """Claim the next files of the shared queue for the free slots and start them. A claimed
    file on a held host (a 429/503 seen here) waits for the hold instead, visible to all."""
    free = m.settings.max_active - files.downloading(m)
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
    # The live groups, and any group added since the last sync even if it already finished
    # (another worker may have added and completed it in between: it is shown all the same).
    seen = max(fleet.seen_group, max(m._groups, default=0))
    stored = {g.id: g for g in store.groups(live_only=True, added_after=seen)}
    fleet.seen_group = max(stored, default=seen)
    for gid in [g for g in m._groups if g not in stored]:
        group = store.get_group(gid)  # no longer live: finished, or forgotten
        if group is not None:
            stored[gid] = group
    m._holders = holder_ids(fleet.store)
    for host, until in store.host_holds(time.time()).items():  # a 429/503 another worker saw
        m._host_holds.hold(host, until, announce=False)  # (stored already)
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
    """The fleet's beat: stop transfers whose lease was lost, renew leases, announce this
    worker, follow the other workers, hand a file to an idle one, and wake the coordinator so
    free slots claim what they left or added. With the state database unreachable: stop the
    transfers and reconnect (`_ride_out`)."""
    interval = m.settings.fleet_poll_interval
    while not m._closing:
        fleet.nudged.clear()  # a change committed from here on is seen by this round or the next
        try:
            if fleet.down is None:
                _stop_lost(m, fleet)
                if fleet.renew_due():
                    fleet.renew()
                    _stop_lost(m, fleet)
                if time.monotonic() - fleet.announced_at >= min(interval, _ANNOUNCE_GAP):
                    announce(m, fleet)
                with m._deferred():
                    sync(m, fleet)
                hand_off(m, fleet)
        except StoreUnavailableError as exc:
            fleet.went_down(exc)
        if fleet.down is not None:
            await _ride_out(m, fleet)
        m._wake.set()
        # Until the next beat, or sooner when another connection committed a change (`listen`);
        # a burst of them is taken in one sync.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await fleet.nudged.wait()
                await asyncio.sleep(min(interval, _NUDGE_GATHER))


# Seconds a sync waits after a notification for the ones that follow it.
_NUDGE_GATHER = 0.05
# Seconds at least between two heartbeats (a burst of notifications wakes many syncs).
_ANNOUNCE_GAP = 0.25


async def listen(m: DownloadManager, fleet: FleetWorker) -> None:
    """Wake `watch` whenever any worker commits a change of the queue (LISTEN/NOTIFY), so the
    fleet's changes show at once; polling stays the fallback while the listener reconnects."""
    attempt = 0
    while not m._closing:
        try:
            async for _ in fleet.store.queue_changes():
                attempt = 0
                fleet.nudged.set()
        except StoreUnavailableError:
            pass  # the main connection's outage handling says so; listen again soon
        await asyncio.sleep(_RECONNECT_BACKOFF[min(attempt, len(_RECONNECT_BACKOFF) - 1)])
        attempt += 1


# Seconds between reconnection attempts while the state database is unreachable.
_RECONNECT_BACKOFF = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0)


async def _ride_out(m: DownloadManager, fleet: FleetWorker) -> None:
    """The state database is unreachable: stop the transfers in flight (bytes and segment maps
    kept, their state kept for `replay`), reconnect with backoff, write what happened
    meanwhile, and carry on. Returns when it is back, or when the manager closes."""
    assert fleet.down is not None
    since = fleet.down_since
    m._emit(
        ev.Notice(
            message=(
                f"state database unreachable ({fleet.down}); stopping {len(m._running)}"
                " transfer(s) here, their bytes kept, and reconnecting"
            ),
            level="warning",
        )
    )
    await asyncio.gather(
        *(files.stop(m, r, StopReason.SHUTDOWN) for r in list(m._running.values()))
    )
    attempt = 0
    while not m._closing:
        await asyncio.sleep(_RECONNECT_BACKOFF[min(attempt, len(_RECONNECT_BACKOFF) - 1)])
        attempt += 1
        if m._running:  # a stop still finishing: its state is kept for the replay
            continue
        try:
            mirror = {key: f for key in fleet.replay_claims if (f := _record(m, key)) is not None}
            lapsed = fleet.replay(mirror)
        except StoreUnavailableError as exc:
            fleet.down = exc
            continue
        with m._deferred():
            for group in list(m._groups.values()):  # a group whose end was not written
                maybe_finish_group(m, group)
        m._emit(
            ev.Notice(
                message=(
                    f"state database reachable again after {time.monotonic() - since:.1f} s;"
                    f" carrying on ({len(lapsed)} file(s) taken over by other workers meanwhile)"
                ),
                level="info",
            )
        )
        return


def _record(m: DownloadManager, key: FileKey) -> FileRecord | None:
    group = m._groups.get(key[0])
    return None if group is None else member(group, key[1])


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
