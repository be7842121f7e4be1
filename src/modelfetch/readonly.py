"""The queue as seen from outside while another process works it: `ReadOnlyBackend`.

When a manager in another process (not a daemon: that one answers requests) owns the state
directory, `modelfetch ls` and `status` still show the queue, from what that process last
committed (a `StoreReader` from `recovery.open_reader`): statuses, bytes as of its last
checkpoint (about once a second), totals, and positions derived from the stored order keys the
way the manager derives them. Speed, ETA and idle time live only in the owner's memory, so they
are unknown (None). Nothing that changes state is offered: commands that would are refused with
the lock's own message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Final

from modelfetch.core.errors import UnknownItemError
from modelfetch.core.models import GroupRecord, ItemRef
from modelfetch.core.queue import FileKey, SchedulingQueue, entries_of
from modelfetch.recovery import open_reader
from modelfetch.store import LOCK_NAME, LeasingStore, StoreReader, holder_ids
from modelfetch.views import GroupView, file_view, group_view

__all__ = ["NOTICE", "ReadOnlyBackend", "queue_positions", "stored_view"]

NOTICE: Final = (
    "another modelfetch process{pid} is working this queue: showing its last saved state"
    " (speeds are not shown)"
)


class ReadOnlyBackend:
    """`snapshot()` and `group_view()` of a Backend, answered from the state database alone."""

    def __init__(self, home: Path, *, url: str | None = None) -> None:
        """`url`: the state database as `recovery.open_reader` names it (None: `home`'s)."""
        home = Path(home)
        self._reader: StoreReader = open_reader(home, url=url)
        self._holder = _holder_pid(home)

    @property
    def read_only_notice(self) -> str:
        """The one line a person is told: whose queue this is and what is missing."""
        return NOTICE.format(pid=f" (pid {self._holder})" if self._holder else "")

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> ReadOnlyBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def snapshot(self) -> list[GroupView]:
        """Every stored group in id order, as the manager would show it (without speeds)."""
        groups = self._reader.groups()
        positions, group_positions = queue_positions(groups)
        holders = self._holders()
        return [stored_view(g, positions, group_positions, holders) for g in groups]

    async def group_view(self, ref: str | int | ItemRef) -> GroupView:
        target = ref if isinstance(ref, ItemRef) else ItemRef.parse(ref)
        # Positions count every waiting file of the queue, not just this group's.
        groups = self._reader.groups(live_only=True)
        group = next((g for g in groups if g.id == target.group_id), None)
        if group is None:
            group = self._reader.get_group(target.group_id)
            if group is None:
                raise UnknownItemError(f"no download with id {target.group_id}")
        positions, group_positions = queue_positions(groups)
        return stored_view(group, positions, group_positions, self._holders())

    def _holders(self) -> dict[FileKey, str]:
        """Who holds each active file, on a queue shared by workers (none on SQLite)."""
        reader = self._reader
        if not isinstance(reader, LeasingStore):
            return {}
        return holder_ids(reader)


def queue_positions(
    groups: Iterable[GroupRecord],
) -> tuple[dict[FileKey, int], dict[int, int]]:
    """(file positions, group positions) of the waiting files, from their stored priorities and
    order keys: the scheduling queue loaded as the manager loads it at start."""
    queue = SchedulingQueue()
    queue.load(entries_of(groups))
    return queue.positions(), queue.group_positions()


def stored_view(
    group: GroupRecord,
    positions: dict[FileKey, int],
    group_positions: dict[int, int],
    holders: Mapping[FileKey, str] | None = None,
) -> GroupView:
    """A stored group as the manager shows one it is not transferring (no speed, no ETA)."""
    holders = holders or {}
    files = []
    for f in group.files:
        key = (f.group_id, f.index)
        files.append(file_view(f, positions.get(key), worker=holders.get(key)))
    return group_view(group, group_positions.get(group.id), files)


def _holder_pid(home: Path) -> str | None:
    """The pid the lock's owner wrote into the lock file, if it can be read."""
    try:
        text = (home / LOCK_NAME).read_text("ascii", "replace").strip()
    except OSError:
        return None
    return text if text.isdigit() else None
