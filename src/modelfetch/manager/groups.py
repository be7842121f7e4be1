"""Group bookkeeping: the registered groups, their running totals and indexes, and `wait()`s.

Per-group running totals (`GroupTally`: files by status, bytes) and indexes (live destinations,
files waiting to retry, queued files per priority) are kept in step with every change of a
member's status or byte counts (`GroupBook.set`), so progress, `wait()` and the coordinator cost
O(1) or O(running) per event, not O(files in the group) or O(queue).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelfetch.bus import EventBus
from modelfetch.core.models import LIVE_STATUSES, FileRecord, FileStatus, GroupRecord
from modelfetch.core.queue import FileKey

if TYPE_CHECKING:
    from modelfetch.manager.files import RunningFile

WAITING = frozenset({FileStatus.QUEUED, FileStatus.PAUSED, FileStatus.WAITING_RETRY})
"""Statuses of a file that is live but not running."""
UNSETTLED = frozenset({FileStatus.QUEUED, FileStatus.ACTIVE, FileStatus.WAITING_RETRY})
"""What `wait()` waits out: a group is settled when none of its files is in one of these."""


@dataclass(slots=True)
class GroupTally:
    """Running totals over one group's files, equal at every moment to a recount of
    `group.files` (tests check this): files per status, and the sums of `bytes_done` and of each
    file's total (`bytes_total`, else `expected_size`; `unknown` counts files with neither)."""

    statuses: dict[FileStatus, int] = field(default_factory=dict)
    bytes_done: int = 0
    bytes_total: int = 0
    unknown: int = 0

    @property
    def settled(self) -> bool:
        statuses = self.statuses
        return not any(statuses.get(s) for s in UNSETTLED)

    @property
    def live(self) -> bool:
        statuses = self.statuses
        return any(statuses.get(s) for s in LIVE_STATUSES)

    @property
    def total(self) -> int | None:
        return None if self.unknown else self.bytes_total


@dataclass(eq=False)
class Waiter:
    """One `wait()` call: `pending` are its groups not yet seen settling; `woken` is set when
    the last of them settles (each settle is O(1) here, not a re-check of every group)."""

    pending: set[int]
    woken: asyncio.Future[None]


class GroupBook:
    """The in-memory mirror of the known groups, with their tallies and indexes."""

    def __init__(self) -> None:
        self.groups: dict[int, GroupRecord] = {}  # registered through `register` only
        self.tallies: dict[int, GroupTally] = {}
        self.live_dests: dict[str, dict[FileKey, FileRecord]] = {}
        self.retrying: dict[FileKey, FileRecord] = {}  # status WAITING_RETRY
        # priority -> {group id: its QUEUED files of that priority}: where a new group stands
        self.queued_by_priority: dict[int, dict[int, int]] = {}
        self.limits: dict[int, tuple[int | None, int | None]] = {}  # store.group_limits cache
        self.waiters: dict[int, list[Waiter]] = {}

    def register(self, group: GroupRecord) -> GroupRecord:
        """Start tracking a group (its files' totals and indexes); the one way into `groups`."""
        if group.id in self.groups:
            self.unregister(group.id)
        self.groups[group.id] = group
        self.tallies[group.id] = GroupTally()
        for f in group.files:
            self._count(f, 1)
        return group

    def unregister(self, gid: int) -> None:
        group = self.groups.pop(gid, None)
        if group is not None:
            for f in group.files:
                self._count(f, -1)
        self.tallies.pop(gid, None)
        self.limits.pop(gid, None)

    def settled(self, gid: int) -> bool:
        tally = self.tallies.get(gid)
        return tally is None or tally.settled

    def all_live_files(self) -> list[FileRecord]:
        return [f for g in self.groups.values() for f in g.files if f.status in LIVE_STATUSES]

    def set(self, f: FileRecord, fields: dict[str, Any]) -> None:
        """Change fields of a registered file's record, keeping its group's totals and the
        indexes in step; wakes `wait()` calls when the group settles."""
        tracked = f.group_id in self.tallies
        if tracked:
            self._count(f, -1)
        for name, value in fields.items():
            setattr(f, name, value)
        if tracked:
            self._count(f, 1)
            if "status" in fields and f.group_id in self.waiters and self.settled(f.group_id):
                self.wake_waiters([f.group_id])

    def wake_waiters(self, gids: Iterable[int]) -> None:
        for gid in gids:
            for waiter in self.waiters.pop(gid, ()):
                waiter.pending.discard(gid)
                if not waiter.pending and not waiter.woken.done():
                    waiter.woken.set_result(None)

    def new_group_position(self, gid: int, priority: int) -> int | None:
        """`group_positions()[gid]` for a group just appended to the end of its priority class,
        without sorting the queue: 1 + the groups with a waiting file in that class or above."""
        mine = self.queued_by_priority.get(priority, {})
        if gid not in mine:
            return None
        classes = [groups for p, groups in self.queued_by_priority.items() if p >= priority]
        if len(classes) == 1:
            return len(mine)
        ahead: set[int] = set()
        for groups in classes:
            ahead.update(groups)
        return len(ahead)

    def _count(self, f: FileRecord, sign: int) -> None:
        tally = self.tallies[f.group_id]
        status = f.status
        tally.statuses[status] = tally.statuses.get(status, 0) + sign
        tally.bytes_done += sign * f.bytes_done
        total = f.bytes_total if f.bytes_total is not None else f.expected_size
        if total is None:
            tally.unknown += sign
        else:
            tally.bytes_total += sign * total
        if status not in LIVE_STATUSES:
            return
        if status is FileStatus.QUEUED:
            groups = self.queued_by_priority.setdefault(f.priority, {})
            left = groups.get(f.group_id, 0) + sign
            if left:
                groups[f.group_id] = left
            else:
                del groups[f.group_id]
                if not groups:
                    del self.queued_by_priority[f.priority]
        key = (f.group_id, f.index)
        if sign > 0:
            self.live_dests.setdefault(f.dest, {})[key] = f
            if status is FileStatus.WAITING_RETRY:
                self.retrying[key] = f
        else:
            owners = self.live_dests.get(f.dest)
            if owners is not None:
                owners.pop(key, None)
                if not owners:
                    del self.live_dests[f.dest]
            if status is FileStatus.WAITING_RETRY:
                self.retrying.pop(key, None)


def group_done(
    tallies: Mapping[int, GroupTally], running: Mapping[FileKey, RunningFile], group: GroupRecord
) -> int:
    """Bytes of the group on disk: the stored counts, and for running files what moved
    since (O(running files), not O(files))."""
    tally = tallies.get(group.id)
    if tally is None:
        return group.bytes_done
    done = tally.bytes_done
    for run in running.values():
        if run.rec.group_id == group.id:
            done += run.done - run.rec.bytes_done
    return done


async def wait_settled(
    book: GroupBook,
    group_ids: Iterable[int],
    *,
    settled: Callable[[int], bool],
    bus: EventBus,
) -> None:
    """`DownloadManager.wait`: until every given group is `settled`, or the bus is closed."""
    groups = frozenset(group_ids)
    loop = asyncio.get_running_loop()
    while not bus.closed:
        pending = {g for g in groups if not settled(g)}
        if not pending:
            return
        # Each group leaves `pending` as it settles (`GroupBook.wake_waiters`); once all have,
        # every group is checked once more: one may have been queued again in between.
        waiter = Waiter(pending, loop.create_future())
        for g in pending:
            book.waiters.setdefault(g, []).append(waiter)
        try:
            await waiter.woken
        finally:
            for g in waiter.pending:  # left only when the wait was cancelled
                waiters = book.waiters.get(g)
                if waiters is not None and waiter in waiters:
                    waiters.remove(waiter)
                    if not waiters:
                        del book.waiters[g]


def member(group: GroupRecord, index: int) -> FileRecord | None:
    """The file `index` of a group (files are stored in index order, 1-based)."""
    files = group.files
    if 0 < index <= len(files) and files[index - 1].index == index:
        return files[index - 1]
    return next((f for f in files if f.index == index), None)


def file_ref(f: FileRecord) -> str:
    """`str(f.ref)` without making an ItemRef: every event about a file carries it."""
    return f"{f.group_id}.{f.index}"
