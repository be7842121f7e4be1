"""The manager's host holds: one `HostHolds` for every request it makes, each hold kept.

A 429 or 503 with `Retry-After` on any request (a transfer's, a Hub API call, a URL probe)
holds that host for all of them (`transfer/holds.py`). The manager stores each new hold, so a
restart and every worker of a shared queue wait as the server asked, and says so when the
request was not a transfer's (a transfer's wait shows as its file's `waiting_retry`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from modelfetch.core import events as ev
from modelfetch.transfer.holds import HostHolds

if TYPE_CHECKING:
    from modelfetch.manager.coordinator import DownloadManager

__all__ = ["host_holds"]


def host_holds(m: DownloadManager) -> HostHolds:
    holds = HostHolds()
    holds.listen(lambda host, until, why: _keep(m, host, until, why))
    return holds


def _keep(m: DownloadManager, host: str, until: float, why: str) -> None:
    if m._store is not None:  # stored: a restart, and every worker of a shared queue, waits too
        (m._fleet or m.store).hold_host(host, until)
    if why:
        m._emit(
            ev.Notice(
                message=(
                    f"{host} asked to wait {max(0.0, until - time.time()):.0f} s ({why});"
                    " nothing is sent to it before then"
                ),
                level="warning",
            )
        )
