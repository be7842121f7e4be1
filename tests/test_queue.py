"""The scheduling queue: gglib's queue tests adapted, priorities, renumbering, and properties."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from modelfetch.core.queue import SPACING, FileKey, QueueEntry, SchedulingQueue


def queue_of(*sizes: int, priority: int = 0) -> SchedulingQueue:
    """Groups 1..len(sizes), group g having sizes[g-1] files, added in order."""
    queue = SchedulingQueue()
    for group_id, size in enumerate(sizes, start=1):
        queue.add_group(group_id, range(1, size + 1), priority)
    return queue


# -- positions and FIFO (gglib DL/queue/mod.rs) --------------------------------------------------


def test_a_single_download_is_position_one() -> None:
    queue = queue_of(1)
    assert (1, 1) in queue
    assert 1 in queue
    assert queue.positions() == {(1, 1): 1}
    assert queue.group_positions() == {1: 1}


def test_positions_follow_arrival_order() -> None:
    queue = queue_of(1, 1, 1)
    assert queue.candidates() == [(1, 1), (2, 1), (3, 1)]
    assert queue.positions() == {(1, 1): 1, (2, 1): 2, (3, 1): 3}


def test_an_active_file_keeps_its_place_but_takes_no_position() -> None:
    queue = queue_of(1, 1)
    queue.set_waiting((1, 1), False)  # started
    assert queue.order() == [(1, 1), (2, 1)]
    assert queue.positions() == {(2, 1): 1}
    assert queue.candidates() == [(2, 1)]


def test_positions_renumber_when_the_head_leaves() -> None:
    queue = queue_of(1, 1, 1)
    queue.set_waiting((1, 1), False)
    queue.remove((1, 1))  # completed
    assert queue.positions() == {(2, 1): 1, (3, 1): 2}
    assert len(queue) == 2


def test_fifo_drains_in_arrival_order_then_empty() -> None:
    queue = queue_of(1, 1, 1)
    started = []
    while queue.candidates():
        head = queue.candidates()[0]
        started.append(head)
        queue.remove(head)
    assert started == [(1, 1), (2, 1), (3, 1)]
    assert len(queue) == 0
    assert queue.positions() == {}
    assert queue.group_positions() == {}


def test_a_sharded_group_is_consecutive_and_one_group_position() -> None:
    queue = queue_of(1, 2)
    assert queue.order() == [(1, 1), (2, 1), (2, 2)]
    assert queue.positions() == {(1, 1): 1, (2, 1): 2, (2, 2): 3}
    assert queue.group_positions() == {1: 1, 2: 2}


def test_add_group_returns_spaced_keys_for_its_members_only() -> None:
    queue = queue_of(1)
    changes = queue.add_group(2, [1, 2, 3])
    assert changes == {(2, 1): 2 * SPACING, (2, 2): 3 * SPACING, (2, 3): 4 * SPACING}


def test_adding_a_key_twice_is_refused() -> None:
    queue = queue_of(2)
    with pytest.raises(ValueError, match=r"1\.2"):
        queue.add_group(1, [2])
    with pytest.raises(ValueError, match="twice"):
        queue.add_group(3, [1, 1])
    assert queue.order() == [(1, 1), (1, 2)]


def test_a_retried_file_rejoins_its_group_at_the_back() -> None:
    queue = queue_of(2, 1)
    queue.remove((1, 2))  # failed
    queue.add_group(1, [2])  # retried
    assert queue.order() == [(1, 1), (2, 1), (1, 2)]


def test_remove_group_removes_every_live_member() -> None:
    queue = queue_of(1, 2)
    queue.remove_group(2)
    assert queue.order() == [(1, 1)]
    assert 2 not in queue
    queue.remove_group(2)  # nothing left: a no-op
    assert len(queue) == 1


def test_removing_an_unknown_file_is_a_key_error() -> None:
    queue = queue_of(1)
    with pytest.raises(KeyError):
        queue.remove((9, 1))
    with pytest.raises(KeyError):
        queue.set_waiting((9, 1), True)


def test_a_paused_file_resumes_at_its_place() -> None:
    queue = queue_of(1, 1, 1)
    queue.set_waiting((1, 1), False)
    assert queue.positions()[(3, 1)] == 2
    queue.set_waiting((1, 1), True)
    assert queue.positions() == {(1, 1): 1, (2, 1): 2, (3, 1): 3}


# -- reorder -------------------------------------------------------------------------------------


def test_reorder_to_front() -> None:
    queue = queue_of(1, 1, 1)
    changes = queue.move(3, 1)
    assert queue.candidates() == [(3, 1), (1, 1), (2, 1)]
    assert set(changes) == {(3, 1)}


def test_reorder_to_middle() -> None:
    queue = queue_of(1, 1, 1)
    changes = queue.move((3, 1), 2)
    assert queue.candidates() == [(1, 1), (3, 1), (2, 1)]
    assert set(changes) == {(3, 1)}
    assert SPACING < changes[(3, 1)] < 2 * SPACING


def test_reorder_with_an_active_file_counts_only_waiting_ones() -> None:
    queue = queue_of(1, 1, 1)
    queue.set_waiting((1, 1), False)
    queue.move_to_front(3)
    assert queue.order() == [(1, 1), (3, 1), (2, 1)]  # the active one is not displaced
    assert queue.positions() == {(3, 1): 1, (2, 1): 2}


def test_a_group_moves_together_and_keeps_its_inner_order() -> None:
    queue = queue_of(1, 3)
    queue.move(2, 1)
    assert queue.order() == [(2, 1), (2, 2), (2, 3), (1, 1)]
    assert queue.group_positions() == {2: 1, 1: 2}


def test_a_member_moves_alone() -> None:
    queue = queue_of(3, 1)
    queue.move_to_front((1, 3))
    assert queue.order() == [(1, 3), (1, 1), (1, 2), (2, 1)]
    queue.move_to_back((1, 1))
    assert queue.order() == [(1, 3), (1, 2), (2, 1), (1, 1)]


def test_a_group_move_gathers_scattered_members_in_their_current_order() -> None:
    queue = queue_of(2, 2)
    queue.move_to_back((1, 1))  # 1.2 2.1 2.2 1.1
    queue.move(1, 2)  # group 1 behind group 2, together, the user's member order kept
    assert queue.order() == [(2, 1), (2, 2), (1, 2), (1, 1)]


def test_a_position_is_clamped_to_the_line() -> None:
    queue = queue_of(1, 1, 1)
    queue.move((1, 1), 99)
    assert queue.candidates() == [(2, 1), (3, 1), (1, 1)]
    queue.move((1, 1), -5)
    assert queue.candidates() == [(1, 1), (2, 1), (3, 1)]
    queue.move(3, 0)
    assert queue.group_positions() == {3: 1, 1: 2, 2: 3}


def test_moving_to_the_current_place_changes_nothing() -> None:
    queue = queue_of(1, 2, 1)
    assert queue.move(2, 2) == {}
    assert queue.move((2, 2), 3) == {}
    assert queue.move_to_front(1) == {}
    assert queue.order() == [(1, 1), (2, 1), (2, 2), (3, 1)]


def test_a_paused_file_can_be_moved_and_takes_that_place_on_resume() -> None:
    queue = queue_of(1, 1, 1)
    queue.set_waiting((3, 1), False)
    queue.move_to_front((3, 1))
    assert queue.positions() == {(1, 1): 1, (2, 1): 2}
    queue.set_waiting((3, 1), True)
    assert queue.positions()[(3, 1)] == 1


def test_an_unknown_target_is_a_key_error() -> None:
    queue = queue_of(1)
    with pytest.raises(KeyError):
        queue.move(7, 1)
    with pytest.raises(KeyError):
        queue.move((1, 2), 1)
    with pytest.raises(KeyError):
        queue.set_priority(7, 1)
    assert queue.order() == [(1, 1)]


# -- priorities ----------------------------------------------------------------------------------


def test_a_higher_priority_goes_first_whatever_its_arrival() -> None:
    queue = queue_of(1, 1)
    queue.add_group(3, [1], priority=5)
    queue.add_group(4, [1], priority=-1)
    queue.add_group(5, [1], priority=5)
    assert queue.order() == [(3, 1), (5, 1), (1, 1), (2, 1), (4, 1)]


def test_set_priority_moves_a_group_to_the_back_of_its_new_class() -> None:
    queue = queue_of(1, 1, 2)
    queue.set_priority(1, 1)
    changes = queue.set_priority(3, 1)
    assert queue.order() == [(1, 1), (3, 1), (3, 2), (2, 1)]
    assert set(changes) == {(3, 1), (3, 2)}
    assert [queue.entry(k).priority for k in queue.order()] == [1, 1, 1, 0]
    assert queue.set_priority(3, 1) == {}  # already there: stays put


def test_set_priority_on_one_member_leaves_the_others() -> None:
    queue = queue_of(2, 1)
    queue.set_priority((1, 2), 3)
    assert queue.order() == [(1, 2), (1, 1), (2, 1)]
    assert queue.group_positions() == {1: 1, 2: 2}


def test_a_move_never_crosses_a_priority_class() -> None:
    queue = queue_of(1, 1)
    queue.set_priority(1, 2)  # 1.1 (p2), 2.1 (p0)
    queue.add_group(3, [1])
    queue.move_to_front(3)
    assert queue.order() == [(1, 1), (3, 1), (2, 1)]  # front of its own class
    queue.move_to_back(1)
    assert queue.order() == [(1, 1), (3, 1), (2, 1)]  # still the only priority-2 file


def test_a_mixed_priority_group_moves_within_each_class() -> None:
    queue = queue_of(2, 1, 1)
    queue.set_priority((1, 1), 1)  # 1.1 (p1) | 1.2 2.1 3.1 (p0)
    queue.move(1, 3)  # group 1 after group 3: its p0 member goes to the back of p0
    assert queue.order() == [(1, 1), (2, 1), (3, 1), (1, 2)]


# -- order keys ----------------------------------------------------------------------------------


def test_repeated_moves_into_one_gap_renumber_and_keep_the_order() -> None:
    queue = queue_of(1, 1, 1)
    expected = [(1, 1), (2, 1), (3, 1)]
    renumbered = 0
    for group_id in range(4, 40):
        queue.add_group(group_id, [1])
        expected.append((group_id, 1))
        changes = queue.move(group_id, 2)  # always into the ever-smaller gap after 1.1
        expected.insert(1, expected.pop())
        assert queue.order() == expected
        if len(changes) > 1:
            renumbered += 1
            keys = [queue.entry(k).order_key for k in queue.order()]
            assert keys == [SPACING * n for n in range(1, len(keys) + 1)]
        keys = [queue.entry(k).order_key for k in queue.order()]
        assert keys == sorted(set(keys))
    assert renumbered >= 2  # a 1024 gap halves ~10 times before it is gone


def test_entries_reload_into_an_identical_queue() -> None:
    queue = queue_of(2, 1, 3)
    queue.set_priority(2, 4)
    queue.move((3, 3), 1)
    queue.set_waiting((3, 1), False)
    again = SchedulingQueue()
    again.load(queue.entries())
    assert again.entries() == queue.entries()
    assert again.positions() == queue.positions()
    assert again.group_positions() == queue.group_positions()


def test_load_tolerates_equal_keys_and_the_next_move_renumbers() -> None:
    queue = SchedulingQueue()
    queue.load(QueueEntry((g, 1), 0, 7, True) for g in (3, 1, 2))
    assert queue.order() == [(1, 1), (2, 1), (3, 1)]  # ties broken by file key
    changes = queue.move((3, 1), 2)
    assert queue.order() == [(1, 1), (3, 1), (2, 1)]
    assert changes == {(1, 1): SPACING, (3, 1): 2 * SPACING, (2, 1): 3 * SPACING}


def test_load_with_equal_keys_keeps_its_order_across_removals_and_appends() -> None:
    queue = SchedulingQueue()
    queue.load(QueueEntry((g, 1), 0, 7, True) for g in (3, 1, 2))
    queue.remove((2, 1))  # found among equal keys by its file key
    queue.add_group(4, [1])
    assert queue.order() == [(1, 1), (3, 1), (4, 1)]
    assert queue.entry((4, 1)).order_key == 7 + SPACING


def test_waiting_is_candidates_lazily_and_allows_starting_what_it_yields() -> None:
    queue = queue_of(2, 1, 2)
    queue.set_waiting((1, 2), False)
    started = []
    for key in queue.waiting():  # what the manager does: start files while it reads
        queue.set_waiting(key, False)
        started.append(key)
        if len(started) == 2:
            break
    assert started == [(1, 1), (2, 1)]
    assert list(queue.waiting()) == queue.candidates() == [(3, 1), (3, 2)]


@pytest.mark.parametrize(
    "change",
    [
        lambda q: q.remove((2, 1)),
        lambda q: q.remove((1, 1)),
        lambda q: q.add_group(9, [1]),
        lambda q: q.move((3, 1), 1),
        lambda q: q.remove_group(3),
        lambda q: q.load([]),
    ],
)
def test_waiting_refuses_to_go_on_after_the_order_changed(change: object) -> None:
    queue = queue_of(1, 1, 1)
    reading = queue.waiting()
    assert next(reading) == (1, 1)
    change(queue)  # type: ignore[operator]
    with pytest.raises(RuntimeError, match="changed during iteration"):
        next(reading)


def test_load_refuses_a_duplicated_file() -> None:
    with pytest.raises(ValueError, match="twice"):
        SchedulingQueue().load([QueueEntry((1, 1), 0, 1, True)] * 2)


def test_repr_shows_the_line() -> None:
    queue = queue_of(1, 1)
    queue.set_waiting((1, 1), False)
    assert repr(queue) == (
        f"<SchedulingQueue [1.1 p0 #{SPACING} held, 2.1 p0 #{2 * SPACING} waiting]>"
    )


# -- properties ----------------------------------------------------------------------------------

PRIORITIES = st.sampled_from([0, 0, 0, 1, -1])


class QueueMachine(RuleBasedStateMachine):
    """Random command sequences, checked against a model that only applies returned changes."""

    def __init__(self) -> None:
        super().__init__()
        self.queue = SchedulingQueue()
        self.model: dict[FileKey, tuple[int, int]] = {}  # key -> (priority, order_key)
        self.waiting: dict[FileKey, bool] = {}
        self.next_group = 1

    # helpers

    def apply(self, changes: dict[FileKey, int], priority: int | None = None) -> None:
        for key, order_key in changes.items():
            old_priority = self.model[key][0] if key in self.model else priority
            assert old_priority is not None, f"{key} changed but was never added"
            self.model[key] = (old_priority if priority is None else priority, order_key)

    def keys_of(self, target: FileKey | int) -> list[FileKey]:
        if isinstance(target, int):
            return [k for k in self.queue.order() if k[0] == target]
        return [target]

    def single_class(self) -> bool:
        return len({p for p, _ in self.model.values()}) <= 1

    def check_others_undisturbed(
        self, before: list[FileKey], moved: list[FileKey], after: list[FileKey]
    ) -> None:
        moving = set(moved)
        assert [k for k in after if k not in moving] == [k for k in before if k not in moving]

    def pick_target(self, data: st.DataObject) -> FileKey | int:
        if data.draw(st.booleans(), label="whole group"):
            return data.draw(st.sampled_from(sorted({g for g, _ in self.model})), label="group")
        return data.draw(st.sampled_from(sorted(self.model)), label="file")

    # commands

    @rule(size=st.integers(1, 4), priority=PRIORITIES)
    def add_group(self, size: int, priority: int) -> None:
        group_id = self.next_group
        self.next_group += 1
        before = self.queue.order()
        changes = self.queue.add_group(group_id, range(1, size + 1), priority)
        new = [(group_id, i) for i in range(1, size + 1)]
        assert set(new) <= set(changes)
        self.apply(changes, priority)
        self.waiting.update(dict.fromkeys(new, True))
        after = self.queue.order()
        self.check_others_undisturbed(before, new, after)
        in_class = [k for k in after if self.model[k][0] == priority]
        assert in_class[-size:] == new  # appended at the end of its class, consecutive

    @precondition(lambda self: self.model)
    @rule(data=st.data(), position=st.integers(-1, 12))
    def move(self, data: st.DataObject, position: int) -> None:
        target = self.pick_target(data)
        moved = self.keys_of(target)
        uniform = self.single_class()
        before = self.queue.order()
        self.apply(self.queue.move(target, position))
        after = self.queue.order()
        self.check_others_undisturbed(before, moved, after)
        assert [k for k in after if k in set(moved)] == moved  # relative order kept
        if not uniform:
            return
        if isinstance(target, int):
            first = after.index(moved[0])
            assert after[first : first + len(moved)] == moved  # together
            groups = self.queue.group_positions()
            if target in groups:
                assert groups[target] == min(max(position, 1), len(groups))
        elif self.waiting[target]:
            files = self.queue.positions()
            assert files[target] == min(max(position, 1), len(files))

    @precondition(lambda self: len(self.model) >= 3)
    @rule(data=st.data())
    def crowd_one_gap(self, data: st.DataObject) -> None:
        """Two files take turns at position 2: each move halves the same gap until the class
        has to be renumbered, which random moves alone rarely reach."""
        first, second = data.draw(
            st.lists(st.sampled_from(sorted(self.model)), min_size=2, max_size=2, unique=True)
        )
        for _ in range(14):
            for key in (first, second):
                before = self.queue.order()
                self.apply(self.queue.move(key, 2))
                self.check_others_undisturbed(before, [key], self.queue.order())

    @precondition(lambda self: self.model)
    @rule(data=st.data(), front=st.booleans())
    def move_to_an_end(self, data: st.DataObject, front: bool) -> None:
        target = self.pick_target(data)
        moved = self.keys_of(target)
        before = self.queue.order()
        if front:
            self.apply(self.queue.move_to_front(target))
        else:
            self.apply(self.queue.move_to_back(target))
        self.check_others_undisturbed(before, moved, self.queue.order())

    @precondition(lambda self: self.model)
    @rule(data=st.data(), priority=PRIORITIES)
    def set_priority(self, data: st.DataObject, priority: int) -> None:
        target = self.pick_target(data)
        moved = self.keys_of(target)
        before = self.queue.order()
        changes = self.queue.set_priority(target, priority)
        if any(self.model[k][0] != priority for k in moved):
            assert set(moved) <= set(changes)
        else:
            assert changes == {}
        self.apply(changes, priority)
        self.check_others_undisturbed(before, moved, self.queue.order())

    @precondition(lambda self: self.model)
    @rule(data=st.data(), waiting=st.booleans())
    def set_waiting(self, data: st.DataObject, waiting: bool) -> None:
        """start (False), pause (False), wait for a retry (False), resume (True)."""
        key = data.draw(st.sampled_from(sorted(self.model)))
        before = self.queue.order()
        self.queue.set_waiting(key, waiting)
        self.waiting[key] = waiting
        assert self.queue.order() == before

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        """finish, fail or cancel one file."""
        key = data.draw(st.sampled_from(sorted(self.model)))
        before = self.queue.order()
        self.queue.remove(key)
        del self.model[key]
        del self.waiting[key]
        assert self.queue.order() == [k for k in before if k != key]

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove_group(self, data: st.DataObject) -> None:
        group_id = data.draw(st.sampled_from(sorted({g for g, _ in self.model})))
        self.queue.remove_group(group_id)
        for key in [k for k in self.model if k[0] == group_id]:
            del self.model[key]
            del self.waiting[key]
        assert group_id not in self.queue

    @rule()
    def reload(self) -> None:
        """A restart: the queue is loaded from its entries (the store's rows) and sorts afresh."""
        before = self.queue.entries()
        self.queue.load(before)
        assert self.queue.entries() == before

    @rule(data=st.data(), count=st.integers(1, 4))
    def start_waiting(self, data: st.DataObject, count: int) -> None:
        """The coordinator: read `waiting()` lazily, starting (set_waiting False) as it goes."""
        expected = self.queue.candidates()[:count]
        started: list[FileKey] = []
        for key in self.queue.waiting():
            if len(started) == count:
                break
            self.queue.set_waiting(key, False)
            self.waiting[key] = False
            started.append(key)
        assert started == expected

    @rule(position=st.integers(1, 5))
    def move_unknown(self, position: int) -> None:
        before = self.queue.entries()
        with pytest.raises(KeyError):
            self.queue.move(self.next_group + 10, position)
        with pytest.raises(KeyError):
            self.queue.move((self.next_group, 1), position)
        assert self.queue.entries() == before

    # invariants

    @invariant()
    def keys_match_the_model(self) -> None:
        entries = self.queue.entries()
        assert {e.key: (e.priority, e.order_key) for e in entries} == self.model
        assert {e.key: e.waiting for e in entries} == self.waiting
        assert len(self.queue) == len(self.model)
        classes = [(p, k) for p, k in self.model.values()]
        assert len(classes) == len(set(classes)), "an order key repeats inside a class"

    @invariant()
    def order_is_by_priority_then_key(self) -> None:
        order = self.queue.order()
        assert len(order) == len(set(order))
        assert order == sorted(self.model, key=lambda k: (-self.model[k][0], self.model[k][1]))

    @invariant()
    def remembered_positions_are_those_of_now(self) -> None:
        """candidates(), positions() and group_positions() are remembered between changes:
        they always equal what the model gives, and what a caller does to them stays its own."""
        waiting = [k for k in self.queue.order() if self.waiting[k]]
        groups: dict[int, int] = {}
        for group_id, _ in waiting:
            groups.setdefault(group_id, len(groups) + 1)
        for _ in range(2):  # the second read is the remembered one
            assert self.queue.candidates() == waiting
            assert self.queue.positions() == {k: n for n, k in enumerate(waiting, start=1)}
            assert self.queue.group_positions() == groups
            self.queue.candidates().append((0, 0))
            self.queue.positions()[(0, 0)] = 0
            self.queue.group_positions()[0] = 0

    @invariant()
    def kept_order_equals_a_fresh_sort(self) -> None:
        """The order kept across removals, appends and moves is what sorting the same entries
        from scratch gives (a queue loaded from them sorts at its first read)."""
        fresh = SchedulingQueue()
        fresh.load(self.queue.entries())
        assert fresh.order() == self.queue.order()
        assert list(self.queue.waiting()) == fresh.candidates()

    @invariant()
    def positions_are_dense(self) -> None:
        positions = self.queue.positions()
        waiting = [k for k in self.queue.order() if self.waiting[k]]
        assert list(positions) == waiting == self.queue.candidates()
        assert sorted(positions.values()) == list(range(1, len(waiting) + 1))
        groups = self.queue.group_positions()
        assert sorted(groups.values()) == list(range(1, len(groups) + 1))
        assert set(groups) == {g for g, _ in waiting}


QueueMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_queue_state_machine = QueueMachine.TestCase
