"""Start and stop: adopt the stored state at start; at shutdown park transfers and persist.

At start the store is opened (a corrupt one rebuilt), rows left active go back to queued, byte
counts are reconciled with the `.part` files, files published before a crash are adopted, and
the coordinator and ticker start. At shutdown active transfers keep their `.part`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import TYPE_CHECKING

from modelfetch.core import events as ev
from modelfetch.core.models import FileStatus, StopReason
from modelfetch.core.network import NetworkSettings
from modelfetch.core.queue import entries_of
from modelfetch.manager import control, files
from modelfetch.manager.fleet import FleetWorker, listen, watch, worker_id
from modelfetch.manager.fleet_balance import announce
from modelfetch.manager.groups import WAITING
from modelfetch.manager.intake import adopt_existing
from modelfetch.manager.partials import on_disk
from modelfetch.manager.progress import checkpoint, emit_progress
from modelfetch.recovery import open_store
from modelfetch.store import LeasingStore, StoreUnavailableError

if TYPE_CHECKING:
    from modelfetch.manager.coordinator import DownloadManager


async def start(m: DownloadManager) -> None:
    """Open the state directory and adopt what it holds; with workers, start the coordinator
    and the ticker in the manager's TaskGroup."""
    # A corrupt or foreign database is moved aside and the queue rebuilt from the `.part`
    # sidecars on disk; what happened is announced once the bus is up.
    m._store, notices = open_store(m.home, models_dir=m.models_dir, url=m.store_url)
    for message in notices:
        m._emit(ev.Notice(message=message, level="warning"))
    try:
        _recover(m)
        m._network = m.settings.network or NetworkSettings.from_env(os.environ)
        m._tg = asyncio.TaskGroup()
        await m._tg.__aenter__()
    except BaseException:
        m._store.close()
        raise
    # A kill between a publish (the rename) and its commit leaves a verified file under its
    # final name and a row that is not completed: adopt it rather than fetch it again.
    present = [
        f
        for f in m._book.all_live_files()
        if f.status is FileStatus.QUEUED and os.path.exists(f.dest)
    ]
    for f in present:
        await adopt_existing(m, f)
    if m._workers:
        m._service_tasks = [
            m._tg.create_task(m._coordinate(), name="modelfetch-coordinator"),
            m._tg.create_task(ticker(m), name="modelfetch-ticker"),
        ]
        if isinstance(m._store, LeasingStore):  # a queue shared with other workers
            fleet = m._fleet = FleetWorker(
                m._store, worker=worker_id(), lease_seconds=m.settings.lease_seconds
            )
            # In the roster before the first claim, so the others leave it its share at once.
            with contextlib.suppress(StoreUnavailableError):  # down: `watch` reconnects
                announce(m, fleet)
            m._service_tasks += [
                m._tg.create_task(watch(m, fleet), name="modelfetch-fleet"),
                m._tg.create_task(listen(m, fleet), name="modelfetch-fleet-listen"),
            ]


async def ticker(m: DownloadManager) -> None:
    """The manager's clock: progress events, queue positions, checkpoints, the disk check."""
    last_checkpoint = time.monotonic()
    last_disk_check = last_checkpoint
    while not m._closing:
        await asyncio.sleep(m.settings.progress_interval)
        now = time.monotonic()
        emit_progress(m, now)
        if m._tx.positions_dirty:
            m._tx.positions_dirty = False
            control.emit_positions(m)
        if now - last_checkpoint >= m.settings.checkpoint_interval:
            checkpoint(m)
            last_checkpoint = now
        if now - last_disk_check >= m.settings.disk_check_interval:
            control.resume_when_space_returns(m)
            last_disk_check = now


def _recover(m: DownloadManager) -> None:
    """Crash recovery: rows left active go back to queued, counts reconciled with the disk."""
    store = m.store
    store.recover()
    m._holds.update(store.host_holds(time.time()))  # a 429/503 before the restart still holds
    m._segmented.clear()
    m._segmented.update(store.segmented_files())
    with m._batch():
        for group in store.groups(live_only=True):
            for f in group.files:
                if f.status in WAITING:
                    bytes_on_disk = on_disk(m, f)
                    if bytes_on_disk != f.bytes_done:
                        store.update_file(f.group_id, f.index, bytes_done=bytes_on_disk)
                        f.bytes_done = bytes_on_disk
            m._book.register(group)
    m._queue.load(entries_of(m._groups.values()))


async def shutdown(m: DownloadManager) -> None:
    """Stop taking work, park active transfers (keeping `.part` files), persist, return."""
    if m._closing:
        return
    m._closing = True
    m._wake.set()
    running = list(m._running.values())
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(m.settings.shutdown_grace):
            await asyncio.gather(*(files.stop(m, r, StopReason.SHUTDOWN) for r in running))
    checkpoint(m, force=True)
    for t in m._service_tasks:
        t.cancel()
    if m._tg is not None:
        await m._tg.__aexit__(None, None, None)
    if m._store is not None:
        m._flush()  # the last changes, committed and announced before the bus closes
    if m._fleet is not None:
        m._fleet.leave()  # its heartbeats have stopped with `watch`
    m.bus.close()
    m._book.wake_waiters(list(m._waiters))  # wait() returns once the bus is closed
    m._network = None  # no new session after this point
    if m._session is not None:
        await m._session.close()
        m._session = None
    if m._api_session is not None and m._external_api_session is None:
        await m._api_session.close()
    if m._store is not None:
        m._store.close()
