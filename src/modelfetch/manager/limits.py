"""Bandwidth and connection limits: global ones changed while running, and per download."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelfetch.core.errors import ConflictError
from modelfetch.store import Keep, LeasingStore
from modelfetch.transfer.limiter import TokenBucket
from modelfetch.views import FleetView, WorkerView, worker_host

if TYPE_CHECKING:
    from modelfetch.manager.coordinator import DownloadManager
    from modelfetch.manager.files import RunningFile


def set_limits(
    m: DownloadManager,
    *,
    max_active: int | None,
    rate_limit: int | None,
    max_connections: int | None,
    max_connections_per_host: int | None,
    connections_per_file: int | None,
) -> list[RunningFile]:
    """`DownloadManager.set_limits`: None leaves a limit as it is. Returns the running files
    a lower `max_active` leaves over (the newest), for the caller to park."""
    settings = m.settings
    if rate_limit is not None:
        if rate_limit < 0:
            raise ValueError("rate_limit must be >= 0 bytes/s (0: unlimited)")
        settings.rate_limit = rate_limit or None
        m._bandwidth.set_rate(rate_limit or None)
    if max_connections is not None or max_connections_per_host is not None:
        m._slots.set_limits(total=max_connections, per_host=max_connections_per_host)
        if max_connections is not None:
            settings.max_connections = max_connections
        if max_connections_per_host is not None:
            settings.max_connections_per_host = max_connections_per_host
    if connections_per_file is not None:
        if connections_per_file < 1:
            raise ValueError("connections_per_file must be at least 1")
        settings.connections_per_file = connections_per_file
    if max_active is not None:
        if max_active < 1:
            raise ValueError("max_active must be at least 1")
        settings.max_active = max_active
        excess = len(m._running) - max_active
        if excess > 0:
            runs = m._running.values()
            return sorted(runs, key=lambda r: r.rec.started_at or 0, reverse=True)[:excess]
    return []


def set_group_rate(m: DownloadManager, gid: int, rate: int | None) -> None:
    """Store one download's own bandwidth cap (None: none); it applies at once."""
    with m._batch():
        m.store.set_group_limits(gid, rate_limit=rate)
    m._book.limits.pop(gid, None)
    group_bucket(m, gid).set_rate(rate)


def set_group_connections(m: DownloadManager, gid: int, connections: int | None) -> None:
    """Store one download's connections per file (None: the global setting)."""
    with m._batch():
        m.store.set_group_limits(gid, connections=connections)
    m._book.limits.pop(gid, None)


def group_limits(m: DownloadManager, gid: int) -> tuple[int | None, int | None]:
    """`store.group_limits`, cached: only this manager (holding the lock) changes them."""
    limits = m._book.limits.get(gid)
    if limits is None:
        limits = m._book.limits[gid] = m.store.group_limits(gid)
    return limits


def group_bucket(m: DownloadManager, gid: int) -> TokenBucket:
    """The download's own bandwidth bucket, made on first use from its stored rate."""
    bucket = m._group_bandwidth.get(gid)
    if bucket is None:
        rate, _ = group_limits(m, gid)
        bucket = m._group_bandwidth[gid] = TokenBucket(rate)
    return bucket


def fleet_view(m: DownloadManager) -> FleetView:
    """The live workers of the shared queue and the fleet's caps."""
    store = _shared(m)
    caps = store.fleet_limits()
    workers = [
        WorkerView(
            worker=w.worker,
            host=worker_host(w.worker),
            running=w.running,
            max_active=w.max_active,
            accepting=w.accepting,
        )
        for w in store.roster()
    ]
    return FleetView(
        workers=workers,
        max_active=caps.max_active,
        max_connections_per_host=caps.max_connections_per_host,
    )


def set_fleet_limits(
    m: DownloadManager,
    *,
    max_active: int | Keep | None,
    max_connections_per_host: int | Keep | None,
) -> None:
    caps = _shared(m).set_fleet_limits(  # ValueError for a cap below 1, nothing changed
        max_active=max_active, max_connections_per_host=max_connections_per_host
    )
    if m._fleet is not None:  # this worker's share at once; the others' at their next beat
        m._fleet.limits = caps


def _shared(m: DownloadManager) -> LeasingStore:
    store = m.store
    if not isinstance(store, LeasingStore):
        raise ConflictError(
            "fleet limits need a queue shared by workers (a postgresql:// store);"
            " this one is private to this host"
        )
    return store
