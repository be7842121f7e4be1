"""The scheduling step as pure functions (manager/scheduling.py): tables, no loop, no sockets.

The queue in these tests is the real `SchedulingQueue` (pure as well), so the order the
functions see is the order the manager's coordinator sees.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelfetch.core.models import FileRecord, FileStatus, GroupRecord
from modelfetch.core.queue import FileKey, SchedulingQueue
from modelfetch.manager.scheduling import (
    WAKE_SLACK,
    choose_starts,
    due_retries,
    host_of,
    is_held,
    next_wake_in,
)

Q = FileStatus.QUEUED
A = FileStatus.ACTIVE
P = FileStatus.PAUSED
R = FileStatus.WAITING_RETRY

# One group per tuple: (group id, priority, [(host, status), ...]); added to the queue in the
# order listed, as the manager adds them when they are enqueued.
Plan = list[tuple[int, int, list[tuple[str, FileStatus]]]]


def build(plan: Plan) -> tuple[SchedulingQueue, dict[int, GroupRecord]]:
    queue = SchedulingQueue()
    groups: dict[int, GroupRecord] = {}
    for gid, priority, members in plan:
        files = [
            FileRecord(
                group_id=gid,
                index=i,
                url=f"https://{host}/g{gid}/f{i}",
                dest=f"/tmp/out/{gid}/{i}",
                name=f"f{i}",
                status=status,
                priority=priority,
            )
            for i, (host, status) in enumerate(members, start=1)
        ]
        groups[gid] = GroupRecord(
            key=f"k{gid}", spec=f"s{gid}", name=f"g{gid}", dest_dir="/tmp/out", id=gid, files=files
        )
        queue.add_group(gid, [f.index for f in files], priority)
        for f in files:
            queue.set_waiting((gid, f.index), f.status is Q)
    return queue, groups


def keys(files: list[FileRecord]) -> list[FileKey]:
    return [(f.group_id, f.index) for f in files]


def starts(
    plan: Plan, free: int, holds: dict[str, float] | None = None, now: float = 0.0
) -> list[FileKey]:
    queue, groups = build(plan)
    return keys(choose_starts(queue.waiting(), groups, free=free, holds=holds or {}, now=now))


FIVE = [(1, 0, [("cdn", Q)] * 5)]


@pytest.mark.parametrize(
    ("free", "expected"),
    [
        (0, []),
        (-2, []),  # more running than max_active (it was lowered): nothing starts
        (1, [(1, 1)]),
        (3, [(1, 1), (1, 2), (1, 3)]),
        (5, [(1, i) for i in range(1, 6)]),
        (10, [(1, i) for i in range(1, 6)]),  # fewer waiting than free slots
    ],
)
def test_fills_at_most_the_free_slots(free: int, expected: list[FileKey]) -> None:
    assert starts(FIVE, free) == expected


@pytest.mark.parametrize(
    ("plan", "free", "expected"),
    [
        # Higher priority first, whatever the arrival order; FIFO within a priority.
        (
            [(1, 0, [("h", Q)]), (2, 5, [("h", Q)]), (3, 0, [("h", Q)]), (4, 5, [("h", Q)])],
            4,
            [(2, 1), (4, 1), (1, 1), (3, 1)],
        ),
        # Negative priorities run after the default class.
        ([(1, -1, [("h", Q)]), (2, 0, [("h", Q)])], 2, [(2, 1), (1, 1)]),
        # Only the first `free` of the order: the low class waits.
        ([(1, 0, [("h", Q)] * 2), (2, 3, [("h", Q)] * 2)], 3, [(2, 1), (2, 2), (1, 1)]),
    ],
)
def test_starts_follow_priority_then_arrival(
    plan: Plan, free: int, expected: list[FileKey]
) -> None:
    assert starts(plan, free) == expected


@pytest.mark.parametrize(
    ("plan", "free", "expected"),
    [
        # A group's files stay together: all of the first group before any of the second.
        (
            [(1, 0, [("h", Q)] * 3), (2, 0, [("h", Q)] * 2)],
            4,
            [(1, 1), (1, 2), (1, 3), (2, 1)],
        ),
        # A group's running or paused files keep their places but are not started again;
        # its next waiting file still comes before the next group's.
        (
            [(1, 0, [("h", A), ("h", P), ("h", Q)]), (2, 0, [("h", Q)] * 2)],
            2,
            [(1, 3), (2, 1)],
        ),
        # Files waiting to retry are not candidates (the promotion step queues them first).
        ([(1, 0, [("h", R), ("h", Q)])], 2, [(1, 2)]),
    ],
)
def test_groups_are_kept_together(plan: Plan, free: int, expected: list[FileKey]) -> None:
    assert starts(plan, free) == expected


def test_a_group_moved_to_a_higher_priority_moves_as_a_block() -> None:
    queue, groups = build([(1, 0, [("h", Q)] * 2), (2, 0, [("h", Q)] * 2)])
    queue.set_priority(2, 1)
    chosen = choose_starts(queue.waiting(), groups, free=3, holds={}, now=0.0)
    assert keys(chosen) == [(2, 1), (2, 2), (1, 1)]


def test_unknown_groups_and_records_not_queued_are_skipped() -> None:
    queue, groups = build([(1, 0, [("h", Q)] * 2), (2, 0, [("h", Q)]), (3, 0, [("h", Q)])])
    groups[1].files[0].status = A  # the record moved on before the queue heard of it
    del groups[2]  # forgotten
    chosen = choose_starts(queue.waiting(), groups, free=5, holds={}, now=0.0)
    assert keys(chosen) == [(1, 2), (3, 1)]


HELD_PLAN: Plan = [(1, 0, [("a.example", Q), ("b.example", Q)]), (2, 0, [("a.example", Q)])]


@pytest.mark.parametrize(
    ("holds", "now", "expected"),
    [
        ({}, 50.0, [(1, 1), (1, 2), (2, 1)]),
        # Held: every file of that host is passed over, the others still start.
        ({"a.example": 100.0}, 50.0, [(1, 2)]),
        ({"a.example": 100.0}, 99.99, [(1, 2)]),
        # The hold ends at its time: from then on the host's files start, in queue order.
        ({"a.example": 100.0}, 100.0, [(1, 1), (1, 2), (2, 1)]),
        ({"a.example": 100.0}, 150.0, [(1, 1), (1, 2), (2, 1)]),
        # A hold on another host changes nothing here.
        ({"c.example": 100.0}, 50.0, [(1, 1), (1, 2), (2, 1)]),
        ({"a.example": 100.0, "b.example": 80.0}, 50.0, []),
        ({"a.example": 100.0, "b.example": 80.0}, 90.0, [(1, 2)]),
    ],
)
def test_held_hosts_are_skipped_until_the_hold_passes(
    holds: dict[str, float], now: float, expected: list[FileKey]
) -> None:
    assert starts(HELD_PLAN, 5, holds, now) == expected


def test_held_files_in_front_do_not_use_up_slots() -> None:
    plan: Plan = [(1, 0, [("a", Q)] * 3 + [("b", Q)] * 3)]
    assert starts(plan, 2, {"a": 10.0}, 0.0) == [(1, 4), (1, 5)]


def test_the_queue_is_read_only_as_far_as_the_files_chosen() -> None:
    plan: Plan = [(1, 0, [("a", Q)] * 2 + [("b", Q)] * 500)]
    queue, groups = build(plan)
    read = 0

    def counted() -> Iterator[FileKey]:
        nonlocal read
        for key in queue.waiting():
            read += 1
            yield key

    chosen = choose_starts(counted(), groups, free=3, holds={"a": 10.0}, now=0.0)
    assert keys(chosen) == [(1, 3), (1, 4), (1, 5)]
    assert read == 5  # the two held in front and the three chosen, not 502
    read = 0
    assert choose_starts(counted(), groups, free=0, holds={}, now=0.0) == []
    assert read == 0


def retrying(*specs: tuple[int, int, str, float | None]) -> dict[FileKey, FileRecord]:
    return {
        (gid, idx): FileRecord(
            group_id=gid,
            index=idx,
            url=f"https://{host}/{gid}/{idx}",
            dest=f"/tmp/{gid}/{idx}",
            name=f"f{idx}",
            status=R,
            retry_at=at,
        )
        for gid, idx, host, at in specs
    }


@pytest.mark.parametrize(
    ("waiting", "holds", "now", "expected"),
    [
        ([], {}, 10.0, []),
        ([(1, 1, "a", 5.0), (1, 2, "a", 15.0)], {}, 10.0, [(1, 1)]),
        ([(1, 1, "a", 10.0)], {}, 10.0, [(1, 1)]),  # due at its time exactly
        ([(1, 1, "a", None)], {}, 10.0, [(1, 1)]),  # no time recorded: due now
        # Returned in key order, whatever order they were inserted in.
        (
            [(2, 1, "a", 1.0), (1, 3, "a", 2.0), (1, 2, "b", 3.0)],
            {},
            10.0,
            [(1, 2), (1, 3), (2, 1)],
        ),
        # A held host keeps its retries waiting even when their time has come.
        ([(1, 1, "a", 5.0), (1, 2, "b", 5.0)], {"a": 20.0}, 10.0, [(1, 2)]),
        ([(1, 1, "a", 5.0), (1, 2, "b", 5.0)], {"a": 20.0}, 20.0, [(1, 1), (1, 2)]),
    ],
)
def test_due_retries(
    waiting: list[tuple[int, int, str, float | None]],
    holds: dict[str, float],
    now: float,
    expected: list[FileKey],
) -> None:
    assert keys(due_retries(retrying(*waiting), holds, now)) == expected


@pytest.mark.parametrize(
    ("retry_times", "holds", "now", "expected"),
    [
        ([], {}, 100.0, None),  # nothing to wait for: sleep until woken
        ([None], {}, 100.0, None),
        ([105.0], {}, 100.0, 5.0),
        ([130.0, 104.0, 110.0], {}, 100.0, 4.0),  # the earliest retry
        ([130.0], {"a": 102.0}, 100.0, 2.0),  # a hold that ends first
        ([103.0], {"a": 120.0}, 100.0, 3.0),  # a retry that comes first
        ([], {"a": 90.0}, 100.0, None),  # a hold already over is no deadline
        ([], {"a": 90.0, "b": 107.0}, 100.0, 7.0),
        ([95.0], {}, 100.0, 0.0),  # overdue: wake at once
    ],
)
def test_the_wake_up_is_the_earliest_retry_or_hold_expiry(
    retry_times: list[float | None],
    holds: dict[str, float],
    now: float,
    expected: float | None,
) -> None:
    delay = next_wake_in(retry_times, holds, now)
    if expected is None:
        assert delay is None
    else:
        assert delay == pytest.approx(expected + WAKE_SLACK)


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://CDN.Example.com/a/b", "cdn.example.com"),
        ("http://127.0.0.1:8080/x", "127.0.0.1:8080"),
        ("https://huggingface.co/o/m/resolve/abc/f.gguf?download=1", "huggingface.co"),
    ],
)
def test_holds_are_per_host_and_port(url: str, host: str) -> None:
    assert host_of(url) == host
    assert is_held({host: 10.0}, url, 9.0)
    assert not is_held({host: 10.0}, url, 10.0)
    assert not is_held({}, url, 0.0)
    assert not is_held({"other": 10.0}, url, 9.0)
