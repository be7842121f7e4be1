"""`DownloadManager`'s limit commands: the global caps, the fleet's, one download's.

A mixin of the manager's public class, split out along its one seam (the work is in
`manager/limits.py`); every method runs on the manager itself.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from modelfetch.core.models import KEEP, ItemRef, Keep, StopReason
from modelfetch.manager import files, limits

if TYPE_CHECKING:
    from modelfetch.manager.coordinator import DownloadManager
    from modelfetch.views import FleetView

__all__ = ["LimitsCommands"]


def _manager(commands: LimitsCommands) -> DownloadManager:
    return cast("DownloadManager", commands)


class LimitsCommands:
    """Bandwidth and connection caps, changed while the manager runs."""

    async def set_limits(
        self,
        *,
        max_active: int | None = None,
        rate_limit: int | None = None,
        max_connections: int | None = None,
        max_connections_per_host: int | None = None,
        connections_per_file: int | None = None,
    ) -> None:
        """Change limits while running; None leaves a limit as it is. `rate_limit` is bytes/s
        over every download (0: unlimited) and applies at once, also to running transfers, as
        do the connection caps (for new connections). `connections_per_file` applies to files
        that start from now on."""
        m = _manager(self)
        excess = limits.set_limits(
            m,
            max_active=max_active,
            rate_limit=rate_limit,
            max_connections=max_connections,
            max_connections_per_host=max_connections_per_host,
            connections_per_file=connections_per_file,
        )
        await asyncio.gather(*(files.stop(m, r, StopReason.SHUTDOWN) for r in excess))
        m._wake.set()

    async def fleet(self) -> FleetView:
        """On a queue shared by workers: the live workers and the caps over all of them."""
        m = _manager(self)
        return limits.fleet_view(m)

    async def set_fleet_limits(
        self,
        *,
        max_active: int | Keep | None = KEEP,
        max_connections_per_host: int | Keep | None = KEEP,
    ) -> FleetView:
        """Caps over every worker of a shared queue: files active at once, connections to one
        host (None: none beyond each worker's own; KEEP: as it is). Stored with the queue, so
        they hold for every worker; what runs beyond them finishes. ValueError on a private
        store."""
        m = _manager(self)
        limits.set_fleet_limits(
            m, max_active=max_active, max_connections_per_host=max_connections_per_host
        )
        m._wake.set()
        return limits.fleet_view(m)

    async def set_rate_limit(self, ref: str | int | ItemRef, bytes_per_s: int | None) -> None:
        """Cap one download's bandwidth (bytes/s over all its files and connections; None or
        0: no cap of its own). `ref` names the download (for `12.3`, its download 12). Applies
        at once, also while it runs, and is remembered across restarts."""
        m = _manager(self)
        if bytes_per_s is not None and bytes_per_s < 0:
            raise ValueError("bytes_per_s must be >= 0 (0 or None: unlimited)")
        group = m._group(m._ref(ref).group_id)
        limits.set_group_rate(m, group.id, bytes_per_s or None)

    async def set_connections(self, ref: str | int | ItemRef, connections: int | None) -> None:
        """Connections per file for one download (1: a single stream each; None: back to the
        global setting). Remembered across restarts; applies to its files that start next."""
        m = _manager(self)
        if connections is not None and connections < 1:
            raise ValueError("connections must be at least 1 (or None for the default)")
        group = m._group(m._ref(ref).group_id)
        limits.set_group_connections(m, group.id, connections)
