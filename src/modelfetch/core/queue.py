"""The scheduling queue: which waiting file goes next, and where every file stands in line.

A pure state machine (no I/O, no clock, no asyncio), in the spirit of httpcore's pool: the manager
feeds it commands, reads decisions out of it, and persists what it returns.

Every live (non-terminal) file is in the queue under its `FileKey` (group id, 1-based index) and
is ordered by `(-priority, order_key)`: higher priority first, then by order key. Order keys are
plain ints the store keeps in the `files` table. They are unique within one priority class and
handed out spaced by `SPACING`, so that a move usually rewrites only the keys of what moved (a new
key between two neighbours); when two neighbours leave no gap, the whole priority class is
renumbered. Every mutating call returns the keys it changed, `{file_key: new_order_key}`, and the
caller persists exactly those (`Store.set_order`).

Files that are active, paused or waiting for a retry stay in the queue and keep their place, but
they are not *waiting*: positions (1..n) count waiting files only, so a paused file resumes where
it was and the first waiting file is always position 1.

A move never crosses a priority class: priority is an explicit user choice and beats manual order,
so moving a file "to position 1" puts it as close to position 1 as its priority class allows.

The scheduling order is sorted once (at the first read after `load`) and then kept in step by
every change: a removal deletes its key (found by bisection), an append inserts at the end of its
class, a move rewrites only its class's run of the list. So the manager's per-file calls
(`remove`, `set_waiting`, `waiting()`) cost O(log n) plus a list splice, never a re-sort.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from modelfetch.core.models import LIVE_STATUSES, FileStatus, GroupRecord

FileKey: TypeAlias = tuple[int, int]
"""(group_id, index): one file of one group."""

Target: TypeAlias = FileKey | int
"""What a command acts on: a whole group (its id) or one of its files (a `FileKey`)."""

SPACING = 1024
"""Distance between neighbouring order keys when they are handed out fresh."""


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One live file as the queue sees it; `waiting` is True when its status is `queued`."""

    key: FileKey
    priority: int
    order_key: int
    waiting: bool


@dataclass(slots=True)
class _Slot:
    priority: int
    order_key: int
    waiting: bool


@dataclass(frozen=True, slots=True)
class _Memo:
    """What the queue's readers ask for, as of one state (callers get copies)."""

    at: tuple[int, int]  # (_version, _waiting_changes)
    candidates: list[FileKey]
    positions: dict[FileKey, int]
    group_positions: dict[int, int]


class SchedulingQueue:
    """Orders live files by (-priority, order_key) and moves them on request."""

    __slots__ = ("_memo", "_order", "_slots", "_version", "_waiting_changes")

    def __init__(self) -> None:
        self._slots: dict[FileKey, _Slot] = {}
        # Every key in scheduling order: sorted lazily after `load`, then kept in step by each
        # change (never thrown away), so it always equals a fresh sort by `_sort_key`.
        self._order: list[FileKey] | None = None
        self._version = 0  # bumped by every change of the order: `waiting()` checks it
        self._waiting_changes = 0  # bumped by every change of a file's `waiting`
        # candidates(), positions() and group_positions() as of (_version, _waiting_changes):
        # each is a pass over the whole queue, and every view and page of the API asks for
        # them (10 ms at 10,000 files, for a page of 250 downloads taking 10 ms more).
        self._memo: _Memo | None = None

    # -- loading and membership ---------------------------------------------------------------

    def load(self, entries: Iterable[QueueEntry]) -> None:
        """Replace the contents with rows read from the store (at start, after `recover`).

        Equal order keys inside one priority class (which the queue never hands out) are tolerated
        and ordered by file key; the next move that needs a gap between them renumbers the class.
        """
        slots: dict[FileKey, _Slot] = {}
        for entry in entries:
            if entry.key in slots:
                raise ValueError(f"file {_label(entry.key)} is listed twice")
            slots[entry.key] = _Slot(entry.priority, entry.order_key, entry.waiting)
        self._slots = slots
        self._order = None
        self._version += 1

    def add_group(
        self, group_id: int, indexes: Sequence[int], priority: int = 0
    ) -> dict[FileKey, int]:
        """Append files, waiting, at the end of their priority class, consecutive and in the
        order given. The group may already have live files (a retried file joins the back)."""
        keys = [(group_id, index) for index in indexes]
        if len(set(keys)) != len(keys):
            raise ValueError(f"group {group_id}: an index is listed twice in {list(indexes)}")
        present = [key for key in keys if key in self._slots]
        if present:
            raise ValueError(f"already queued: {', '.join(_label(k) for k in present)}")
        if not keys:
            return {}
        return self._append(keys, priority)

    def remove(self, key: FileKey) -> None:
        """The file reached a terminal status: it leaves the queue. Unknown key -> KeyError."""
        slot = self._slots[key]
        order = self._order
        if order is not None:
            at = bisect_left(order, (-slot.priority, slot.order_key, key), key=self._sort_key)
            if at < len(order) and order[at] == key:
                del order[at]
            else:  # the cache is out of step (a bug): sort again at the next read
                self._order = None
        del self._slots[key]
        self._version += 1

    def remove_group(self, group_id: int) -> None:
        """Every live file of the group leaves the queue; a group with none left is a no-op."""
        gone = [key for key in self._slots if key[0] == group_id]
        if not gone:
            return
        for key in gone:
            del self._slots[key]
        if self._order is not None:
            self._order = [key for key in self._order if key[0] != group_id]
        self._version += 1

    def set_waiting(self, key: FileKey, waiting: bool) -> None:
        """False while the file is active, paused or waiting for a retry; it keeps its place."""
        slot = self._slots[key]
        if slot.waiting != waiting:
            slot.waiting = waiting
            self._waiting_changes += 1

    def __contains__(self, target: object) -> bool:
        """`(g, i) in queue` for a file, `g in queue` for a group with any live file."""
        if isinstance(target, int):
            return any(key[0] == target for key in self._slots)
        return target in self._slots

    def __len__(self) -> int:
        return len(self._slots)

    def __iter__(self) -> Iterator[FileKey]:
        return iter(self.order())

    # -- reading --------------------------------------------------------------------------------

    def order(self) -> list[FileKey]:
        """Every live key in scheduling order."""
        return list(self._sorted())

    def candidates(self) -> list[FileKey]:
        """Waiting keys in scheduling order; the manager starts the first eligible ones."""
        return list(self._memoized().candidates)

    def waiting(self) -> Iterator[FileKey]:
        """`candidates()`, lazily: costs only as far as the caller reads (the files it starts,
        and the held ones in front of them), not O(queue). `set_waiting` may be called while
        iterating; a change of the order (add, remove, move, load) makes the next step raise
        RuntimeError, like a dict changed during iteration."""
        order = self._sorted()
        slots = self._slots
        version = self._version
        for key in order:
            if slots[key].waiting:
                yield key
                if self._version != version:
                    raise RuntimeError("the queue's order changed during iteration")

    def positions(self) -> dict[FileKey, int]:
        """1..n, dense, for waiting files in scheduling order."""
        return dict(self._memoized().positions)

    def group_positions(self) -> dict[int, int]:
        """1..m among groups with a waiting file, ordered by each group's first waiting file."""
        return dict(self._memoized().group_positions)

    def _memoized(self) -> _Memo:
        memo = self._memo
        if memo is not None and memo.at == (self._version, self._waiting_changes):
            return memo
        slots = self._slots
        candidates = [key for key in self._sorted() if slots[key].waiting]
        groups: dict[int, int] = {}
        for group_id, _ in candidates:
            if group_id not in groups:
                groups[group_id] = len(groups) + 1
        memo = self._memo = _Memo(
            at=(self._version, self._waiting_changes),
            candidates=candidates,
            positions={key: n for n, key in enumerate(candidates, start=1)},
            group_positions=groups,
        )
        return memo

    def entry(self, key: FileKey) -> QueueEntry:
        slot = self._slots[key]
        return QueueEntry(key, slot.priority, slot.order_key, slot.waiting)

    def entries(self) -> list[QueueEntry]:
        """Every live file in scheduling order."""
        return [self.entry(key) for key in self._sorted()]

    def __repr__(self) -> str:
        items = []
        for key in self._sorted():
            slot = self._slots[key]
            state = "waiting" if slot.waiting else "held"
            items.append(f"{_label(key)} p{slot.priority} #{slot.order_key} {state}")
        return f"<SchedulingQueue [{', '.join(items)}]>"

    # -- moving ---------------------------------------------------------------------------------

    def move(self, target: Target, position: int) -> dict[FileKey, int]:
        """Move a group (its live files together, in their order) or a single file so that it
        stands at `position` (1-based, clamped to 1..n) among waiting groups or waiting files.

        A file that is not waiting can be moved too: it then takes that place once it waits
        again. Unknown target -> KeyError. Moving something where it already is changes nothing.
        """
        members = self._members(target)
        if isinstance(target, int):
            # Each other group is placed by its first waiting file; one pass, not one per group.
            firsts: dict[int, FileKey] = {}
            for key in self.candidates():
                firsts.setdefault(key[0], key)
            others = [key for group_id, key in firsts.items() if group_id != target]
        else:
            others = [key for key in self.candidates() if key != target]
        spot = min(max(position, 1), len(others) + 1)
        anchor = others[spot - 1] if spot <= len(others) else None
        changes: dict[FileKey, int] = {}
        for priority, in_class in _by_priority(members, self._slots):
            changes.update(self._place(in_class, priority, anchor))
        return changes

    def move_to_front(self, target: Target) -> dict[FileKey, int]:
        return self.move(target, 1)

    def move_to_back(self, target: Target) -> dict[FileKey, int]:
        return self.move(target, len(self._slots) + 1)

    def set_priority(self, target: Target, priority: int) -> dict[FileKey, int]:
        """Give a group (every live file) or one file a priority. What changes class goes to the
        back of its new class, a group's files consecutive; persist the result with
        `Store.set_order(changes, priority=priority)`. No change of priority -> no move."""
        members = self._members(target)
        if all(self._slots[key].priority == priority for key in members):
            return {}
        return self._place(members, priority, anchor=None)

    # -- internals ------------------------------------------------------------------------------

    def _sorted(self) -> list[FileKey]:
        if self._order is None:
            self._order = sorted(self._slots, key=self._sort_key)
        return self._order

    def _sort_key(self, key: FileKey) -> tuple[int, int, FileKey]:
        slot = self._slots[key]
        return (-slot.priority, slot.order_key, key)

    def _class_bounds(self, order: list[FileKey], priority: int) -> tuple[int, int]:
        """[start, end) of priority class `priority` in `order` (empty: where it would be)."""
        slots = self._slots

        def rank(key: FileKey) -> int:
            return -slots[key].priority

        return (
            bisect_left(order, -priority, key=rank),
            bisect_right(order, -priority, key=rank),
        )

    def _append(self, keys: list[FileKey], priority: int) -> dict[FileKey, int]:
        """New keys, waiting, at the end of class `priority`: what `_place(keys, priority,
        anchor=None)` does for keys not in the queue, without walking the class."""
        order = self._sorted()
        slots = self._slots
        start, end = self._class_bounds(order, priority)
        last = slots[order[end - 1]].order_key if end > start else None
        fresh = _keys_between(last, None, len(keys))
        assert fresh is not None  # unbounded above: there is always room
        for key, order_key in zip(keys, fresh, strict=True):
            slots[key] = _Slot(priority, order_key, waiting=True)
        order[end:end] = keys
        self._version += 1
        return dict(zip(keys, fresh, strict=True))

    def _members(self, target: Target) -> list[FileKey]:
        if isinstance(target, int):
            members = [key for key in self._sorted() if key[0] == target]
            if not members:
                raise KeyError(target)
            return members
        if target not in self._slots:
            raise KeyError(target)
        return [target]

    def _place(
        self, members: list[FileKey], priority: int, anchor: FileKey | None
    ) -> dict[FileKey, int]:
        """Put `members` (new or live, any class) consecutively into class `priority`, just
        before `anchor` if it is in that class, else at the end of the class nearest to it
        (the back when `anchor` is None)."""
        moving = set(members)
        order = self._sorted()
        start, end = self._class_bounds(order, priority)
        current = order[start:end]
        rest = [k for k in current if k not in moving]
        # Members from another class (set_priority), or new ones: the rest of the order loses them.
        from_elsewhere = len(rest) + len(members) != len(current)
        if anchor is None:
            at = len(rest)
        else:
            anchor_priority = self._slots[anchor].priority
            if anchor_priority == priority:
                at = rest.index(anchor)
            else:  # a higher class comes before this one: the closest spot is its front
                at = 0 if anchor_priority > priority else len(rest)
        arranged = rest[:at] + members + rest[at:]
        if arranged == current:
            return {}

        low = self._slots[rest[at - 1]].order_key if at > 0 else None
        high = self._slots[rest[at]].order_key if at < len(rest) else None
        fresh = _keys_between(low, high, len(members))
        if fresh is None:  # no gap left between the neighbours: renumber the whole class
            assigned = {key: SPACING * n for n, key in enumerate(arranged, start=1)}
        else:
            assigned = dict(zip(members, fresh, strict=True))

        changes: dict[FileKey, int] = {}
        for key, order_key in assigned.items():
            slot = self._slots.get(key)
            if slot is None:
                self._slots[key] = _Slot(priority, order_key, waiting=True)
            elif key in moving or slot.order_key != order_key:
                slot.priority = priority
                slot.order_key = order_key
            else:
                continue
            changes[key] = order_key
        # The class's run of the order becomes `arranged`: its new keys increase along it.
        if from_elsewhere:
            self._order = [
                *(k for k in order[:start] if k not in moving),
                *arranged,
                *(k for k in order[end:] if k not in moving),
            ]
        else:
            order[start:end] = arranged
        self._version += 1
        return changes


def _keys_between(low: int | None, high: int | None, count: int) -> list[int] | None:
    """`count` increasing ints strictly between low and high (None = unbounded), or None."""
    if low is None and high is None:
        return [SPACING * n for n in range(1, count + 1)]
    if high is None:
        assert low is not None
        return [low + SPACING * n for n in range(1, count + 1)]
    if low is None:
        return [high - SPACING * n for n in range(count, 0, -1)]
    step = (high - low) // (count + 1)
    if step < 1:
        return None
    return [low + step * n for n in range(1, count + 1)]


def _by_priority(
    members: list[FileKey], slots: dict[FileKey, _Slot]
) -> list[tuple[int, list[FileKey]]]:
    classes: dict[int, list[FileKey]] = {}
    for key in members:
        classes.setdefault(slots[key].priority, []).append(key)
    return list(classes.items())


def _label(key: FileKey) -> str:
    return f"{key[0]}.{key[1]}"


def entries_of(groups: Iterable[GroupRecord]) -> Iterator[QueueEntry]:
    """The queue entries of stored groups: every live file, waiting when it is queued. What the
    manager loads at start, and what a read-only view loads to show the same positions."""
    for g in groups:
        for f in g.files:
            if f.status in LIVE_STATUSES:
                yield QueueEntry(
                    key=(f.group_id, f.index),
                    priority=f.priority,
                    order_key=f.order_key,
                    waiting=f.status is FileStatus.QUEUED,
                )
