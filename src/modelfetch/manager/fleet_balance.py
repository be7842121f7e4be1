"""A fleet worker's part in sharing the queue: announcing itself, its share of connections,
handing a file to an idle worker (the decisions are `core/fleet_share.py`'s).

Claims already leave queued files to less loaded workers (`PostgresLeases.claim`). What claims
cannot undo is a worker that took several files before the others announced themselves, or two
claims from rosters a moment apart: a worker holding two files more than an idle one hands its
file with the most bytes left back to the queue, its `.part` and segment map kept, and the idle
worker claims it and resumes from there. One handoff per few beats, and only of a file with
enough left (`fleet_handoff_min_left`) to be worth a second worker's connections.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from modelfetch.core import events as ev
from modelfetch.core.fleet_share import connection_share, handoff_due
from modelfetch.core.models import FileStatus, StopReason
from modelfetch.manager import files
from modelfetch.manager.groups import file_ref

if TYPE_CHECKING:
    from modelfetch.manager.coordinator import DownloadManager
    from modelfetch.manager.files import RunningFile
    from modelfetch.manager.fleet_worker import FleetWorker

__all__ = ["announce", "hand_off", "lapse_seconds"]

# Beats between two handoffs of one worker: the roster shows the last one's effect first.
_HANDOFF_BEATS: Final = 3


def lapse_seconds(m: DownloadManager) -> float:
    """How long a heartbeat keeps a worker in the roster: a few beats, so one slow beat does not
    drop it, and a dead worker's files go to the others within seconds."""
    return 3 * m.settings.fleet_poll_interval + 2.0


def announce(m: DownloadManager, fleet: FleetWorker) -> None:
    """Heartbeat, then hold to this worker's share of the fleet's per-host connection cap."""
    fleet.heartbeat(max_active=m.settings.max_active, lapse_seconds=lapse_seconds(m))
    cap = fleet.limits.max_connections_per_host
    if cap is None:
        m._slots.set_shared_per_host(None)
        return
    # Every worker transferring counts against every host: a fleet pulls from the same Hub.
    transferring = [w.worker for w in fleet.roster if w.running > 0]
    m._slots.set_shared_per_host(connection_share(cap, fleet.worker, transferring))


def hand_off(m: DownloadManager, fleet: FleetWorker) -> RunningFile | None:
    """Hand one running file back to the queue when another worker is idle and this one runs two
    more than it (`handoff_due`). Returns the file being handed off, its stop under way."""
    interval = m.settings.fleet_poll_interval
    if fleet.leaving or m._closing or len(fleet.roster) < 2:
        return None
    if time.monotonic() - fleet.handed_off_at < _HANDOFF_BEATS * interval:
        return None
    queued = any(f.status is FileStatus.QUEUED for f in m._book.all_live_files())
    if not handoff_due(fleet.worker, fleet.roster, 1 if queued else 0):
        return None
    now = time.time()

    def left(run: RunningFile) -> int:
        return (run.total or 0) - run.done

    candidates = [
        run
        for run in m._running.values()
        if left(run) >= m.settings.fleet_handoff_min_left
        and run.stop.reason is None
        and now - (run.rec.started_at or now) >= interval  # not one claimed a moment ago
    ]
    if not candidates:
        return None
    run = max(candidates, key=left)
    fleet.handed_off_at = time.monotonic()
    idle = [w.worker for w in fleet.roster if w.worker != fleet.worker and w.room > 0]
    m._emit(
        ev.Notice(
            message=(
                f"{file_ref(run.rec)} {run.rec.name}: handed back to the queue for an idle"
                f" worker ({', '.join(idle[:3])}); its {run.done} bytes are kept"
            ),
            level="info",
            ref=file_ref(run.rec),
        )
    )
    assert m._tg is not None
    m._tg.create_task(files.stop(m, run, StopReason.SHUTDOWN))
    return run
