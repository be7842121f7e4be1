"""The store's contract, engine-neutral: every test runs against each engine (`store_impls`)."""

from __future__ import annotations

import time

import pytest

from modelfetch.core.models import (
    LIVE_STATUSES,
    TERMINAL_STATUSES,
    FileStatus,
    PauseReason,
)
from modelfetch.core.segments import SegmentRecord
from modelfetch.store import Store

from .store_impls import (
    StoreEngine,
    committed_statuses,
    engine_fixture,  # noqa: F401 -- the `engine` fixture
    full_group,
    plain_group,
    store_fixture,  # noqa: F401 -- the `store` fixture
)

# -- records -------------------------------------------------------------------------------------


def test_a_group_with_every_field_round_trips(store: Store) -> None:
    group = full_group()
    stored = store.add_group(group)
    assert stored is group
    assert group.id >= 1
    assert [f.group_id for f in group.files] == [group.id, group.id]
    assert all(f.id >= 1 for f in group.files)
    assert store.get_group(group.id) == group
    assert store.get_file(group.id, 2) == group.files[1]
    assert store.groups() == [group]


def test_round_trip_survives_reopening(engine: StoreEngine) -> None:
    with engine.open() as first:
        group = first.add_group(full_group())
    with engine.open() as second:
        again = second.get_group(group.id)
    assert again == group
    assert again is not None
    assert all(isinstance(f.retry_at, float) for f in again.files)


def test_add_group_fills_created_at_and_ids(store: Store) -> None:
    before = time.time()
    group = store.add_group(plain_group())
    after = time.time()
    assert before <= group.created_at <= after
    assert all(f.created_at == group.created_at for f in group.files)
    assert isinstance(group.created_at, float)
    assert store.get_group(group.id) == group


@pytest.mark.parametrize("count", [1, 3])
def test_add_group_gives_each_file_its_own_id(store: Store, count: int) -> None:
    first = store.add_group(plain_group("a", files=count))
    second = store.add_group(plain_group("b", files=count))
    ids = [f.id for f in first.files + second.files]
    assert all(ids) and len(set(ids)) == 2 * count
    assert store.get_group(second.id) == second


def test_add_group_refuses_bad_indexes_and_writes_nothing(store: Store) -> None:
    group = plain_group(files=2)
    group.files[1].index = 3
    with pytest.raises(ValueError, match=r"1\.\.2"):
        store.add_group(group)
    duplicate = plain_group(files=2)
    duplicate.files[1].index = 1
    with pytest.raises(ValueError):
        store.add_group(duplicate)
    assert store.groups() == []


def test_add_group_is_one_transaction(store: Store) -> None:
    group = plain_group(files=2)
    group.files[1].bytes_done = -1  # the second insert violates a CHECK
    with pytest.raises(ValueError, match="rejected"):
        store.add_group(group)
    assert store.groups() == []
    assert store.files() == []
    assert group.id == 0 and group.created_at == 0.0  # a rolled-back insert leaves no trace
    assert [(f.id, f.group_id, f.created_at) for f in group.files] == [(0, 0, 0.0)] * 2


def test_group_ids_are_never_reused(store: Store) -> None:
    first = store.add_group(plain_group("a"))
    second = store.add_group(plain_group("b"))
    assert store.forget_group(second.id)
    third = store.add_group(plain_group("c"))
    assert third.id > second.id > first.id


def test_missing_rows_read_as_none(store: Store) -> None:
    assert store.get_group(42) is None
    assert store.get_file(42, 1) is None
    assert store.find_group("nothing") is None


def test_find_group_returns_the_newest_with_that_key(store: Store) -> None:
    old = store.add_group(plain_group("same"))
    store.add_group(plain_group("other"))
    new = store.add_group(plain_group("same"))
    found = store.find_group("same")
    assert found is not None
    assert found.id == new.id != old.id
    assert [f.index for f in found.files] == [1, 2]


def test_groups_lists_by_id_and_live_only_filters(store: Store) -> None:
    live = store.add_group(plain_group("live"))
    done = store.add_group(plain_group("done", files=1))
    mixed = store.add_group(plain_group("mixed"))
    store.transition(done.id, 1, FileStatus.CANCELLED, allowed_from={FileStatus.QUEUED})
    store.transition(mixed.id, 1, FileStatus.COMPLETED, allowed_from={FileStatus.QUEUED})
    assert [g.id for g in store.groups()] == [live.id, done.id, mixed.id]
    listed = store.groups(live_only=True)
    assert [g.id for g in listed] == [live.id, mixed.id]
    assert [f.status for f in listed[1].files] == [FileStatus.COMPLETED, FileStatus.QUEUED]
    # What a fleet worker asks each sync: the live groups, and any added since it last looked.
    assert [g.id for g in store.groups(added_after=live.id)] == [done.id, mixed.id]
    since = store.groups(live_only=True, added_after=done.id - 1)
    assert [g.id for g in since] == [live.id, done.id, mixed.id]
    assert [g.id for g in store.groups(live_only=True, added_after=mixed.id)] == [
        live.id,
        mixed.id,
    ]


def test_groups_are_read_a_page_at_a_time(store: Store) -> None:
    ids = [store.add_group(plain_group(f"g{n}", files=2)).id for n in range(5)]
    first = store.groups(limit=2)
    assert [g.id for g in first] == ids[:2]
    assert all(len(g.files) == 2 for g in first)  # a page carries its groups' files, whole
    assert [g.id for g in store.groups(added_after=first[-1].id, limit=2)] == ids[2:4]
    assert [g.id for g in store.groups(added_after=ids[3], limit=2)] == ids[4:]
    assert store.groups(added_after=ids[4], limit=2) == []
    with pytest.raises(ValueError, match="at least 1"):
        store.groups(limit=0)


def test_files_filters_by_status(store: Store) -> None:
    group = store.add_group(plain_group(files=3))
    store.transition(group.id, 2, FileStatus.ACTIVE, allowed_from={FileStatus.QUEUED})
    assert [f.index for f in store.files()] == [1, 2, 3]
    assert [f.index for f in store.files({FileStatus.ACTIVE})] == [2]
    assert [f.index for f in store.files(LIVE_STATUSES)] == [1, 2, 3]
    assert store.files(TERMINAL_STATUSES) == []
    assert store.files(()) == []


# -- guarded transitions -------------------------------------------------------------------------


def test_a_transition_from_an_allowed_status_succeeds_with_its_fields(store: Store) -> None:
    group = store.add_group(plain_group())
    changed = store.transition(
        group.id, 1, FileStatus.ACTIVE, allowed_from={FileStatus.QUEUED}, started_at=5.5, attempts=1
    )
    assert changed is True
    record = store.get_file(group.id, 1)
    assert record is not None
    assert (record.status, record.started_at, record.attempts) == (FileStatus.ACTIVE, 5.5, 1)
    other = store.get_file(group.id, 2)
    assert other is not None and other.status is FileStatus.QUEUED


def test_a_transition_from_another_status_is_refused_and_changes_nothing(
    store: Store,
) -> None:
    group = store.add_group(plain_group())
    store.transition(group.id, 1, FileStatus.COMPLETED, allowed_from={FileStatus.QUEUED})
    refused = store.transition(
        group.id,
        1,
        FileStatus.ACTIVE,
        allowed_from={FileStatus.QUEUED, FileStatus.PAUSED},
        attempts=9,
    )
    assert refused is False
    record = store.get_file(group.id, 1)
    assert record is not None
    assert (record.status, record.attempts) == (FileStatus.COMPLETED, 0)
    missing = store.transition(99, 1, FileStatus.ACTIVE, allowed_from={FileStatus.QUEUED})
    assert missing is False


def test_transition_validates_its_arguments(store: Store) -> None:
    group = store.add_group(plain_group())
    with pytest.raises(ValueError, match="no_such_field"):
        store.transition(
            group.id, 1, FileStatus.ACTIVE, allowed_from={FileStatus.QUEUED}, no_such_field=1
        )
    with pytest.raises(ValueError, match="status"):
        store.transition(
            group.id, 1, FileStatus.ACTIVE, allowed_from={FileStatus.QUEUED}, status="paused"
        )
    with pytest.raises(ValueError, match="id"):
        store.transition(group.id, 1, FileStatus.ACTIVE, allowed_from={FileStatus.QUEUED}, id=2)
    with pytest.raises(ValueError, match="empty"):
        store.transition(group.id, 1, FileStatus.ACTIVE, allowed_from=())
    with pytest.raises(ValueError):
        store.transition(group.id, 1, "running", allowed_from={FileStatus.QUEUED})  # type: ignore[arg-type]
    record = store.get_file(group.id, 1)
    assert record is not None and record.status is FileStatus.QUEUED


def test_every_status_is_storable(store: Store) -> None:
    group = store.add_group(plain_group(files=1))
    current = FileStatus.QUEUED
    for status in FileStatus:
        assert store.transition(group.id, 1, status, allowed_from={current})
        current = status
        record = store.get_file(group.id, 1)
        assert record is not None and record.status is status


def test_update_file_sets_fields_without_a_guard_but_never_the_status(store: Store) -> None:
    group = store.add_group(plain_group())
    store.update_file(group.id, 2, expected_size=10, etag='"e"', pause_reason=PauseReason.DISK_FULL)
    record = store.get_file(group.id, 2)
    assert record is not None
    assert (record.expected_size, record.etag, record.pause_reason) == (10, '"e"', "disk_full")
    with pytest.raises(ValueError, match="transition"):
        store.update_file(group.id, 2, status=FileStatus.COMPLETED)
    with pytest.raises(ValueError, match="rejected"):
        store.update_file(group.id, 2, bytes_done="lots")  # STRICT column: types are enforced
    store.update_file(group.id, 99, etag="x")  # a missing file is ignored
    again = store.get_file(group.id, 2)
    assert again is not None and again.status is FileStatus.QUEUED


def test_update_group_and_finish_group(store: Store) -> None:
    group = store.add_group(plain_group())
    store.update_group(group.id, priority=4, commit="c0ffee")
    store.finish_group(group.id, 123.5)
    again = store.get_group(group.id)
    assert again is not None
    assert (again.priority, again.commit, again.finished_at) == (4, "c0ffee", 123.5)
    with pytest.raises(ValueError, match="files"):
        store.update_group(group.id, files=[])


# -- progress and order -------------------------------------------------------------------------


def test_save_progress_writes_a_batch(store: Store) -> None:
    a = store.add_group(plain_group("a"))
    b = store.add_group(plain_group("b", files=1))
    store.save_progress([(a.id, 1, 10, 100), (a.id, 2, 20, None), (b.id, 1, 30, 300)])
    assert [(f.bytes_done, f.bytes_total) for f in store.files()] == [
        (10, 100),
        (20, None),
        (30, 300),
    ]
    store.save_progress([(a.id, 1, 50, None)])  # an unknown total keeps the known one
    record = store.get_file(a.id, 1)
    assert record is not None and (record.bytes_done, record.bytes_total) == (50, 100)
    store.save_progress([])


def test_save_progress_is_all_or_nothing(store: Store) -> None:
    group = store.add_group(plain_group())
    with pytest.raises(ValueError):
        store.save_progress([(group.id, 1, 10, 100), (group.id, 2, -5, 100)])
    assert [f.bytes_done for f in store.files()] == [0, 0]


def test_set_order_writes_keys_and_optionally_priority(store: Store) -> None:
    group = store.add_group(plain_group(files=3))
    store.set_order({(group.id, 1): 3072, (group.id, 3): 512})
    store.set_order({(group.id, 2): -1024}, priority=7)
    rows = [(f.index, f.priority, f.order_key) for f in store.files()]
    assert rows == [(1, 0, 3072), (2, 7, -1024), (3, 0, 512)]


# -- recovery and forgetting ---------------------------------------------------------------------


def test_recover_flips_only_active_files_back_to_queued(store: Store) -> None:
    group = store.add_group(plain_group(files=4))
    for index, status in [
        (1, FileStatus.ACTIVE),
        (2, FileStatus.PAUSED),
        (3, FileStatus.ACTIVE),
        (4, FileStatus.COMPLETED),
    ]:
        store.transition(group.id, index, status, allowed_from={FileStatus.QUEUED}, started_at=2.0)
    store.save_progress([(group.id, 1, 777, 1000)])
    recovered = store.recover()
    assert [(f.index, f.status, f.bytes_done) for f in recovered] == [
        (1, FileStatus.QUEUED, 777),
        (3, FileStatus.QUEUED, 0),
    ]
    assert recovered[0] == store.get_file(group.id, 1)  # the rows as they are now
    assert [f.status for f in store.files()] == [
        FileStatus.QUEUED,
        FileStatus.PAUSED,
        FileStatus.QUEUED,
        FileStatus.COMPLETED,
    ]
    assert store.recover() == []


def test_forget_group_deletes_its_files(store: Store) -> None:
    keep = store.add_group(plain_group("keep", files=1))
    drop = store.add_group(plain_group("drop"))
    assert store.forget_group(drop.id) is True
    assert store.forget_group(drop.id) is False
    assert store.get_group(drop.id) is None
    assert [(f.group_id, f.index) for f in store.files()] == [(keep.id, 1)]


def test_forget_finished_deletes_only_groups_with_no_live_file(store: Store) -> None:
    done = store.add_group(plain_group("done"))
    partial = store.add_group(plain_group("partial"))
    live = store.add_group(plain_group("live"))
    store.transition(done.id, 1, FileStatus.COMPLETED, allowed_from={FileStatus.QUEUED})
    store.transition(done.id, 2, FileStatus.FAILED, allowed_from={FileStatus.QUEUED})
    store.transition(partial.id, 1, FileStatus.COMPLETED, allowed_from={FileStatus.QUEUED})
    store.transition(partial.id, 2, FileStatus.PAUSED, allowed_from={FileStatus.QUEUED})
    assert store.forget_finished() == [done.id]
    assert [g.id for g in store.groups()] == [partial.id, live.id]
    assert store.forget_finished() == []


# -- lifetime ------------------------------------------------------------------------------------


def test_close_is_idempotent_and_a_closed_store_refuses_work(engine: StoreEngine) -> None:
    store = engine.open()
    assert not store.closed
    store.close()
    store.close()
    assert store.closed
    with pytest.raises(RuntimeError, match="closed"):
        store.groups()
    engine.open().close()


def test_a_reader_sees_what_the_owner_committed(engine: StoreEngine, store: Store) -> None:
    group = store.add_group(full_group())
    store.set_group_limits(group.id, rate_limit=1000)
    store.remember_verified("/m/a.gguf", 10, 111, "ab" * 32)
    # Opened while the owner holds the state: a reader needs no ownership.
    reader = engine.open_reader()
    with reader:
        assert not reader.closed
        assert reader.groups() == [group]
        assert reader.get_file(group.id, 1) == group.files[0]
        assert reader.group_limits(group.id) == (1000, None)
        assert reader.verified_digest("/m/a.gguf", 10, 111) == "ab" * 32
    assert reader.closed


# -- segment maps and per-download limits --------------------------------------------------------


def test_segment_maps_are_replaced_forgotten_and_dropped_at_the_end(store: Store) -> None:
    group = store.add_group(plain_group(files=3))
    assert store.segments(group.id, 1) is None
    first = (SegmentRecord(0, 100, 100), SegmentRecord(100, 200, 30))
    store.save_segments(group.id, 1, list(reversed(first)))
    store.save_segments(group.id, 2, [SegmentRecord(0, 50, 0)])
    store.save_segments(group.id, 3, [SegmentRecord(0, 10, 1)])
    store.save_segments(99, 1, [SegmentRecord(0, 10, 0)])  # a missing file is ignored
    assert store.segments(group.id, 1) == first  # by start
    assert store.segmented_files() == {(group.id, 1), (group.id, 2), (group.id, 3)}
    store.save_segments(group.id, 1, [SegmentRecord(0, 200, 150)])  # replaced
    assert store.segments(group.id, 1) == (SegmentRecord(0, 200, 150),)
    store.save_segments(group.id, 2, None)  # forgotten
    assert store.segments(group.id, 2) is None
    # Completing (or cancelling) a file drops its map in the same step; pausing keeps it.
    store.transition(group.id, 1, FileStatus.PAUSED, allowed_from={FileStatus.QUEUED})
    store.transition(group.id, 3, FileStatus.COMPLETED, allowed_from={FileStatus.QUEUED})
    assert store.segmented_files() == {(group.id, 1)}
    with pytest.raises(ValueError, match="rejected"):  # done beyond the segment's end
        store.save_segments(group.id, 1, [SegmentRecord(0, 10, 11)])
    assert store.segments(group.id, 1) == (SegmentRecord(0, 200, 150),)  # all or nothing


def test_group_limits_are_set_cleared_and_kept(store: Store) -> None:
    group = store.add_group(plain_group())
    assert store.group_limits(group.id) == (None, None)
    assert store.group_limits(99) == (None, None)
    store.set_group_limits(group.id, rate_limit=5000)
    store.set_group_limits(group.id, connections=4)  # the rate limit is kept
    assert store.group_limits(group.id) == (5000, 4)
    store.set_group_limits(group.id, rate_limit=None)  # cleared
    assert store.group_limits(group.id) == (None, 4)
    with pytest.raises(ValueError, match="rejected"):
        store.set_group_limits(group.id, connections=0)
    assert store.group_limits(group.id) == (None, 4)


# -- digests of verified files --------------------------------------------------------------------


def test_verified_digests_are_remembered_by_path_size_and_mtime(store: Store) -> None:
    store.remember_verified("/m/a.gguf", 10, 111, "ab" * 32)
    assert store.verified_digest("/m/a.gguf", 10, 111) == "ab" * 32
    assert store.verified_digest("/m/a.gguf", 10, 112) is None  # touched since
    assert store.verified_digest("/m/a.gguf", 11, 111) is None  # size changed
    store.remember_verified("/m/a.gguf", 12, 113, "cd" * 32)
    assert store.verified_digest("/m/a.gguf", 12, 113) == "cd" * 32


# -- batches -------------------------------------------------------------------------------------


def test_a_batch_commits_its_writes_together_when_it_ends(
    engine: StoreEngine, store: Store
) -> None:
    group = store.add_group(plain_group(files=3))
    with store.batch():
        assert store.batching
        for i in (1, 2):
            assert store.transition(
                group.id, i, FileStatus.ACTIVE, allowed_from={FileStatus.QUEUED}
            )
        with store.batch():  # nested: joins
            store.remember_verified("/models/1.gguf", 1, 2, "ab" * 32)
        assert committed_statuses(engine, group.id) == ["queued"] * 3  # nothing committed yet
        assert store.verified_digest("/models/1.gguf", 1, 2) == "ab" * 32  # own writes seen
    assert not store.batching
    assert committed_statuses(engine, group.id) == ["active", "active", "queued"]


def test_digests_remembered_in_a_batch_commit_with_it_and_the_last_one_wins(
    engine: StoreEngine, store: Store
) -> None:
    group = store.add_group(plain_group(files=2))
    with store.batch():
        store.remember_verified("/m/a.gguf", 1, 2, "ab" * 32)
        store.remember_verified("/m/b.gguf", 3, 4, "cd" * 32)
        store.remember_verified("/m/a.gguf", 5, 6, "ef" * 32)  # the file changed again
        assert store.transition(group.id, 1, FileStatus.ACTIVE, allowed_from={FileStatus.QUEUED})
        with engine.open_reader() as reader:  # nothing committed yet
            assert reader.verified_digest("/m/a.gguf", 5, 6) is None
            assert reader.verified_digest("/m/b.gguf", 3, 4) is None
        assert store.verified_digest("/m/a.gguf", 5, 6) == "ef" * 32
        assert store.verified_digest("/m/a.gguf", 1, 2) is None  # superseded
    with engine.open_reader() as reader:
        assert reader.verified_digest("/m/a.gguf", 5, 6) == "ef" * 32
        assert reader.verified_digest("/m/a.gguf", 1, 2) is None
        assert reader.verified_digest("/m/b.gguf", 3, 4) == "cd" * 32
    assert committed_statuses(engine, group.id) == ["active", "queued"]
    with store.batch():  # a batch that only remembers a digest commits it too
        store.remember_verified("/m/c.gguf", 7, 8, "01" * 32)
    with engine.open_reader() as reader:
        assert reader.verified_digest("/m/c.gguf", 7, 8) == "01" * 32


def test_a_batch_cannot_be_begun_twice_and_ending_twice_is_harmless(store: Store) -> None:
    group = store.add_group(plain_group())
    with store.batch():
        assert store.get_group(group.id) is not None
    store.begin_batch()
    with pytest.raises(RuntimeError):
        store.begin_batch()
    assert store.batching
    store.end_batch()
    store.end_batch()  # ending twice is harmless
    assert not store.batching


def test_a_failing_write_in_a_batch_leaves_no_trace_and_the_others_commit(
    engine: StoreEngine, store: Store
) -> None:
    group = store.add_group(plain_group(files=2))
    with pytest.raises(ValueError), store.batch():
        store.transition(group.id, 1, FileStatus.PAUSED, allowed_from={FileStatus.QUEUED})
        # A multi-row write that fails half way (a negative byte count breaks a CHECK on the
        # second row): its savepoint is rolled back, the batch's other writes stand.
        store.save_progress([(group.id, 1, 5, None), (group.id, 2, -1, None)])
    assert committed_statuses(engine, group.id) == ["paused", "queued"]
    stored = store.get_group(group.id)
    assert stored is not None and [f.bytes_done for f in stored.files] == [0, 0]


# -- host holds ----------------------------------------------------------------------------------


def test_host_holds_keep_the_latest_until_and_survive_reopening(engine: StoreEngine) -> None:
    with engine.open() as store:
        assert store.host_holds(1000.0) == {}
        store.hold_host("cdn.example:443", 1010.0)
        store.hold_host("cdn.example:443", 1005.0)  # an earlier end never shortens a hold
        store.hold_host("hub.example", 1002.0)
        assert store.host_holds(1000.0) == {"cdn.example:443": 1010.0, "hub.example": 1002.0}
        assert store.host_holds(1003.0) == {"cdn.example:443": 1010.0}  # ended: not in force
        store.hold_host("cdn.example:443", 1020.0)
    with engine.open() as again:  # a restart waits as the server asked
        # PostgreSQL keeps holds on its own clock: a new connection measures its offset to it
        # anew, so the end comes back to within that measurement (microseconds on loopback).
        assert again.host_holds(1003.0) == {"cdn.example:443": pytest.approx(1020.0, abs=0.5)}
        assert again.host_holds(1021.0) == {}


def test_a_hold_inside_a_batch_commits_with_it(store: Store) -> None:
    with store.batch():
        store.hold_host("cdn.example", 50.0)
        assert store.host_holds(0.0) == {"cdn.example": 50.0}
    assert store.host_holds(0.0) == {"cdn.example": 50.0}
