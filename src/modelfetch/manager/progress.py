"""Live progress: progress events, byte-count checkpoints, and the live numbers in views."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from modelfetch.core import events as ev
from modelfetch.core.models import FileRecord, FileStatus, GroupRecord, GroupStatus
from modelfetch.core.queue import FileKey
from modelfetch.core.rate import RateEstimator
from modelfetch.manager.groups import file_ref, group_done
from modelfetch.store import LeasingStore, holder_ids
from modelfetch.views import FileView, GroupView, file_view, group_view

if TYPE_CHECKING:
    from modelfetch.manager.coordinator import DownloadManager


def emit_progress(m: DownloadManager, now: float) -> None:
    """A progress event for every running file and for each group they belong to."""
    groups: set[int] = set()
    for run in list(m._running.values()):
        f = run.rec
        run.rate.sample(run.done, now)
        groups.add(f.group_id)
        m._emit(
            ev.FileProgress(
                ref=file_ref(f),
                group_id=f.group_id,
                name=f.name,
                downloaded=run.done,
                total=run.total,
                speed=run.rate.speed,
                eta=run.rate.eta(run.total, run.done),
            )
        )
    for gid in groups:
        emit_group_progress(m, gid, now)


def emit_group_progress(m: DownloadManager, gid: int, now: float) -> None:
    group = m._groups.get(gid)
    tally = m._tallies.get(gid)
    if group is None or tally is None:
        return
    done = group_done(m._tallies, m._running, group)
    total = tally.total
    rate = m._group_rates.setdefault(gid, RateEstimator())
    rate.sample(done, now)
    m._emit(
        ev.GroupProgress(
            group_id=gid,
            name=group.name,
            downloaded=done,
            total=total,
            speed=rate.speed,
            eta=rate.eta(total, done),
            files_done=tally.statuses.get(FileStatus.COMPLETED, 0),
            files_total=len(group.files),
        )
    )


def checkpoint(m: DownloadManager, *, force: bool = False) -> None:
    """Save the byte counts of running files that moved since the last checkpoint."""
    rows = []
    for run in m._running.values():
        if force or run.done != run.saved_done:
            rows.append((run.rec.group_id, run.rec.index, run.done, run.total))
            run.saved_done = run.done
            m._book.set(run.rec, {"bytes_done": run.done, "bytes_total": run.total})
    if rows and m._store is not None:
        (m._fleet or m._store).save_progress(rows)


def group_view_of(
    m: DownloadManager,
    group: GroupRecord,
    positions: dict[FileKey, int],
    group_positions: dict[int, int],
    holders: Mapping[FileKey, str],
) -> GroupView:
    rate = m._group_rates.get(group.id)
    done = group_done(m._tallies, m._running, group)
    tally = m._tallies.get(group.id)
    total = tally.total if tally is not None else group.bytes_total
    active = rate is not None and group.status is GroupStatus.ACTIVE
    return group_view(
        group,
        group_positions.get(group.id),
        [_file_view(m, f, positions, holders) for f in group.files],
        downloaded=done,
        total=total,
        speed=rate.speed if rate is not None and active else None,
        eta=rate.eta(total, done) if rate is not None and active else None,
    )


def holders_of(m: DownloadManager) -> Mapping[FileKey, str]:
    """Which worker holds each active file, on a queue shared by workers (none on SQLite);
    read once per snapshot or view, like the queue positions.

    A fleet worker keeps them from its syncs (`m._holders`). A manager without workers on a
    shared queue (`modelfetch ls` or `status` on a host where no daemon runs) never syncs, so it
    reads them from the store's leases."""
    if m._fleet is not None or not isinstance(m._store, LeasingStore):
        return m._holders
    return holder_ids(m._store)


def _file_view(
    m: DownloadManager,
    f: FileRecord,
    positions: dict[FileKey, int],
    holders: Mapping[FileKey, str],
) -> FileView:
    key = (f.group_id, f.index)
    run = m._running.get(key)
    worker = holders.get(key)
    if run is None:
        return file_view(f, positions.get(key), worker=worker)
    if m._fleet is not None:
        worker = m._fleet.worker  # this worker's own claim, also before the next sync
    return file_view(
        f,
        positions.get(key),
        downloaded=run.done,
        total=run.total,
        speed=run.rate.speed,
        eta=run.rate.eta(run.total, run.done),
        idle_for=run.rate.idle_for(time.monotonic()),
        worker=worker,
    )
