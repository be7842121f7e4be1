"""The SQLite store, against real database files under tmp_path."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfetch.core.errors import StateError, StateLockedError
from modelfetch.core.models import (
    LIVE_STATUSES,
    TERMINAL_STATUSES,
    FileRecord,
    FileStatus,
    GroupRecord,
    PauseReason,
)
from modelfetch.store import DB_NAME, LOCK_NAME, MIGRATIONS, SqliteStore, apply_migrations


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "home") as opened:
        yield opened


def plain_group(key: str = "k", files: int = 2) -> GroupRecord:
    return GroupRecord(
        key=key,
        spec="owner/model:Q4_K_M",
        name="owner/model:Q4_K_M",
        dest_dir="/models",
        files=[
            FileRecord(
                group_id=0, index=i, url=f"https://h/{i}", dest=f"/models/{i}.gguf", name=f"{i}"
            )
            for i in range(1, files + 1)
        ],
    )


def full_group() -> GroupRecord:
    """Every field set to a value that differs from its default."""

    def file(index: int) -> FileRecord:
        return FileRecord(
            group_id=0,
            index=index,
            url=f"https://hub.test/o/m/resolve/abc123/m-0000{index}-of-00002.gguf",
            dest=f"/models/o_m/m-0000{index}-of-00002.gguf",
            name=f"m-0000{index}-of-00002.gguf",
            status=FileStatus.PAUSED if index == 1 else FileStatus.WAITING_RETRY,
            priority=3,
            order_key=1024 * index,
            bytes_done=100 * index,
            bytes_total=1000 * index,
            expected_size=1000 * index,
            expected_sha256=f"{index:064x}",
            expected_git_oid=f"{index:040x}",
            etag=f'"etag-{index}"',
            last_modified="Wed, 21 Oct 2026 07:28:00 GMT",
            commit="abc123",
            sha256=f"{index + 7:064x}",
            attempts=index,
            error_kind="rate_limited",
            error_message="429 Too Many Requests",
            retry_at=1_800_000_000.25 + index,
            pause_reason=PauseReason.USER.value,
            created_at=1_700_000_000.5,
            started_at=1_700_000_001.0,
            finished_at=1_700_000_002.75,
        )

    return GroupRecord(
        key="o/m:Q4_K_M -> /models",
        spec="o/m:Q4_K_M",
        name="o/m:Q4_K_M",
        dest_dir="/models/o_m",
        priority=3,
        repo_id="o/m",
        revision="main",
        commit="abc123",
        quant="Q4_K_M",
        created_at=1_700_000_000.5,
        finished_at=1_700_000_003.0,
        files=[file(1), file(2)],
    )


# -- records -------------------------------------------------------------------------------------


def test_a_group_with_every_field_round_trips(store: SqliteStore) -> None:
    group = full_group()
    stored = store.add_group(group)
    assert stored is group
    assert group.id >= 1
    assert [f.group_id for f in group.files] == [group.id, group.id]
    assert all(f.id >= 1 for f in group.files)
    assert store.get_group(group.id) == group
    assert store.get_file(group.id, 2) == group.files[1]
    assert store.groups() == [group]


def test_round_trip_survives_reopening(tmp_path: Path) -> None:
    with SqliteStore(tmp_path) as first:
        group = first.add_group(full_group())
    with SqliteStore(tmp_path) as second:
        again = second.get_group(group.id)
    assert again == group
    assert again is not None
    assert all(isinstance(f.retry_at, float) for f in again.files)


def test_add_group_fills_created_at_and_ids(store: SqliteStore) -> None:
    before = time.time()
    group = store.add_group(plain_group())
    after = time.time()
    assert before <= group.created_at <= after
    assert all(f.created_at == group.created_at for f in group.files)
    assert isinstance(group.created_at, float)
    assert store.get_group(group.id) == group


def test_add_group_refuses_bad_indexes_and_writes_nothing(store: SqliteStore) -> None:
    group = plain_group(files=2)
    group.files[1].index = 3
    with pytest.raises(ValueError, match=r"1\.\.2"):
        store.add_group(group)
    duplicate = plain_group(files=2)
    duplicate.files[1].index = 1
    with pytest.raises(ValueError):
        store.add_group(duplicate)
    assert store.groups() == []


def test_add_group_is_one_transaction(store: SqliteStore) -> None:
    group = plain_group(files=2)
    group.files[1].bytes_done = -1  # the second insert violates a CHECK
    with pytest.raises(ValueError, match="rejected"):
        store.add_group(group)
    assert store.groups() == []
    assert store.files() == []
    assert group.id == 0 and group.created_at == 0.0  # a rolled-back insert leaves no trace
    assert [(f.id, f.group_id, f.created_at) for f in group.files] == [(0, 0, 0.0)] * 2


def test_group_ids_are_never_reused(store: SqliteStore) -> None:
    first = store.add_group(plain_group("a"))
    second = store.add_group(plain_group("b"))
    assert store.forget_group(second.id)
    third = store.add_group(plain_group("c"))
    assert third.id > second.id > first.id


def test_missing_rows_read_as_none(store: SqliteStore) -> None:
    assert store.get_group(42) is None
    assert store.get_file(42, 1) is None
    assert store.find_group("nothing") is None


def test_find_group_returns_the_newest_with_that_key(store: SqliteStore) -> None:
    old = store.add_group(plain_group("same"))
    store.add_group(plain_group("other"))
    new = store.add_group(plain_group("same"))
    found = store.find_group("same")
    assert found is not None
    assert found.id == new.id != old.id
    assert [f.index for f in found.files] == [1, 2]


def test_groups_lists_by_id_and_live_only_filters(store: SqliteStore) -> None:
    live = store.add_group(plain_group("live"))
    done = store.add_group(plain_group("done", files=1))
    mixed = store.add_group(plain_group("mixed"))
    store.transition(done.id, 1, FileStatus.CANCELLED, allowed_from={FileStatus.QUEUED})
    store.transition(mixed.id, 1, FileStatus.COMPLETED, allowed_from={FileStatus.QUEUED})
    assert [g.id for g in store.groups()] == [live.id, done.id, mixed.id]
    listed = store.groups(live_only=True)
    assert [g.id for g in listed] == [live.id, mixed.id]
    assert [f.status for f in listed[1].files] == [FileStatus.COMPLETED, FileStatus.QUEUED]


def test_files_filters_by_status(store: SqliteStore) -> None:
    group = store.add_group(plain_group(files=3))
    store.transition(group.id, 2, FileStatus.ACTIVE, allowed_from={FileStatus.QUEUED})
    assert [f.index for f in store.files()] == [1, 2, 3]
    assert [f.index for f in store.files({FileStatus.ACTIVE})] == [2]
    assert [f.index for f in store.files(LIVE_STATUSES)] == [1, 2, 3]
    assert store.files(TERMINAL_STATUSES) == []
    assert store.files(()) == []


# -- guarded transitions -------------------------------------------------------------------------


def test_a_transition_from_an_allowed_status_succeeds_with_its_fields(store: SqliteStore) -> None:
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
    store: SqliteStore,
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


def test_transition_validates_its_arguments(store: SqliteStore) -> None:
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


def test_every_status_is_storable_and_nothing_else(store: SqliteStore) -> None:
    group = store.add_group(plain_group(files=1))
    current = FileStatus.QUEUED
    for status in FileStatus:
        assert store.transition(group.id, 1, status, allowed_from={current})
        current = status
        record = store.get_file(group.id, 1)
        assert record is not None and record.status is status
    raw = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        raw.execute("UPDATE files SET status = 'running'")
    raw.close()


def test_an_unknown_stored_status_is_a_state_error(store: SqliteStore) -> None:
    group = store.add_group(plain_group(files=1))
    raw = sqlite3.connect(store.path, isolation_level=None)
    raw.execute("PRAGMA ignore_check_constraints = ON")
    raw.execute("UPDATE files SET status = 'from_the_future'")
    raw.close()
    with pytest.raises(StateError, match="from_the_future"):
        store.get_group(group.id)


def test_update_file_sets_fields_without_a_guard_but_never_the_status(store: SqliteStore) -> None:
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


def test_update_group_and_finish_group(store: SqliteStore) -> None:
    group = store.add_group(plain_group())
    store.update_group(group.id, priority=4, commit="c0ffee")
    store.finish_group(group.id, 123.5)
    again = store.get_group(group.id)
    assert again is not None
    assert (again.priority, again.commit, again.finished_at) == (4, "c0ffee", 123.5)
    with pytest.raises(ValueError, match="files"):
        store.update_group(group.id, files=[])


# -- batches -------------------------------------------------------------------------------------


def test_save_progress_writes_a_batch(store: SqliteStore) -> None:
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


def test_save_progress_is_all_or_nothing(store: SqliteStore) -> None:
    group = store.add_group(plain_group())
    with pytest.raises(ValueError):
        store.save_progress([(group.id, 1, 10, 100), (group.id, 2, -5, 100)])
    assert [f.bytes_done for f in store.files()] == [0, 0]


def test_set_order_writes_keys_and_optionally_priority(store: SqliteStore) -> None:
    group = store.add_group(plain_group(files=3))
    store.set_order({(group.id, 1): 3072, (group.id, 3): 512})
    store.set_order({(group.id, 2): -1024}, priority=7)
    rows = [(f.index, f.priority, f.order_key) for f in store.files()]
    assert rows == [(1, 0, 3072), (2, 7, -1024), (3, 0, 512)]


def test_the_order_index_serves_a_scheduling_scan(store: SqliteStore) -> None:
    plan = store._conn.execute(
        "EXPLAIN QUERY PLAN SELECT group_id, idx FROM files ORDER BY priority DESC, order_key"
    ).fetchall()
    text = " ".join(str(row[-1]) for row in plan)
    assert "files_by_order" in text and "TEMP B-TREE" not in text
    plan = store._conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM files WHERE status = 'active'"
    ).fetchall()
    assert "files_by_status" in " ".join(str(row[-1]) for row in plan)


# -- recovery and forgetting ---------------------------------------------------------------------


def test_recover_flips_only_active_files_back_to_queued(store: SqliteStore) -> None:
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


def test_forget_group_deletes_its_files(store: SqliteStore) -> None:
    keep = store.add_group(plain_group("keep", files=1))
    drop = store.add_group(plain_group("drop"))
    assert store.forget_group(drop.id) is True
    assert store.forget_group(drop.id) is False
    assert store.get_group(drop.id) is None
    assert [(f.group_id, f.index) for f in store.files()] == [(keep.id, 1)]


def test_forget_finished_deletes_only_groups_with_no_live_file(store: SqliteStore) -> None:
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


# -- the state directory lock --------------------------------------------------------------------


def test_a_second_store_in_the_same_process_is_locked_out(tmp_path: Path) -> None:
    with SqliteStore(tmp_path) as first:
        with pytest.raises(StateLockedError) as caught:
            SqliteStore(tmp_path)
        assert f"pid {os.getpid()}" in str(caught.value)
        assert str(tmp_path) in str(caught.value)
        first.add_group(plain_group())  # the failed attempt did not disturb the owner
    with SqliteStore(tmp_path) as again:  # released on close
        assert len(again.groups()) == 1


def test_close_is_idempotent_and_a_closed_store_refuses_work(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.close()
    store.close()
    assert store.closed
    with pytest.raises(RuntimeError, match="closed"):
        store.groups()
    SqliteStore(tmp_path).close()


def test_a_store_held_by_another_process_is_locked_out(tmp_path: Path) -> None:
    holder = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from modelfetch.store import SqliteStore
        store = SqliteStore(Path({str(tmp_path)!r}))
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(StateLockedError, match=f"pid {proc.pid}"):
            SqliteStore(tmp_path)
        assert (tmp_path / LOCK_NAME).read_text().strip() == str(proc.pid)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    with SqliteStore(tmp_path) as store:  # a killed owner leaves no lock behind
        assert store.integrity_check() == "ok"
        assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())


# -- the database file ---------------------------------------------------------------------------


def test_the_database_is_configured_as_promised(store: SqliteStore) -> None:
    assert store.path == store.path.parent / DB_NAME
    db = store._conn
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    tables = {row[1]: row[5] for row in db.execute("PRAGMA table_list")}
    assert tables["groups"] == 1 and tables["files"] == 1  # STRICT


def test_wal_mode_and_user_version_are_in_the_file(store: SqliteStore) -> None:
    raw = sqlite3.connect(store.path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SqliteStore.SCHEMA_VERSION
    finally:
        raw.close()
    assert SqliteStore.SCHEMA_VERSION == len(MIGRATIONS) >= 1


def test_a_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    SqliteStore(tmp_path).close()
    raw = sqlite3.connect(tmp_path / DB_NAME)
    raw.execute(f"PRAGMA user_version = {SqliteStore.SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StateError, match="newer") as caught:
        SqliteStore(tmp_path)
    assert not isinstance(caught.value, StateLockedError)
    with pytest.raises(StateError, match="newer") as again:  # the failed open released the lock
        SqliteStore(tmp_path)
    assert not isinstance(again.value, StateLockedError)


def test_a_file_that_is_not_a_database_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError):
        SqliteStore(tmp_path)


def test_a_failed_migration_leaves_the_database_as_it_was(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    good = "CREATE TABLE a (x INTEGER) STRICT;"
    bad = "CREATE TABLE b (x INTEGER) STRICT; INSERT INTO nowhere VALUES (1);"
    apply_migrations(db, [good], tmp_path / "m.db")
    with pytest.raises(StateError, match="version 2"):
        apply_migrations(db, [good, bad], tmp_path / "m.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert names == {"a"}
    assert not db.in_transaction
    db.close()


def test_integrity_check_is_ok(store: SqliteStore) -> None:
    store.add_group(full_group())
    assert store.integrity_check() == "ok"


def test_a_committed_transition_is_visible_from_a_fresh_connection(store: SqliteStore) -> None:
    group = store.add_group(plain_group())
    assert store.transition(
        group.id, 1, FileStatus.COMPLETED, allowed_from={FileStatus.QUEUED}, sha256="ab" * 32
    )
    store.save_progress([(group.id, 2, 4096, 8192)])
    raw = sqlite3.connect(store.path)
    try:
        rows = raw.execute(
            "SELECT idx, status, sha256, bytes_done FROM files WHERE group_id = ? ORDER BY idx",
            [group.id],
        ).fetchall()
    finally:
        raw.close()
    assert rows == [(1, "completed", "ab" * 32, 0), (2, "queued", None, 4096)]


def test_a_version_1_database_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    from modelfetch.store import MIGRATIONS, apply_migrations

    home = tmp_path / "home"
    home.mkdir()
    db = sqlite3.connect(home / "state.db", isolation_level=None)
    apply_migrations(db, MIGRATIONS[:1], home / "state.db")
    db.execute(
        "INSERT INTO groups (key, spec, name, dest_dir, created_at) VALUES ('k', 's', 'n', '/d', 1)"
    )
    db.execute(
        "INSERT INTO files (group_id, idx, url, dest, name, created_at)"
        " VALUES (1, 1, 'http://x/f', '/d/f', 'f', 1)"
    )
    db.close()
    with SqliteStore(home) as store:
        group = store.get_group(1)
        assert group is not None and group.files[0].url == "http://x/f"
        assert group.files[0].link is None
        check = sqlite3.connect(store.path)
        assert check.execute("PRAGMA user_version").fetchone()[0] == SqliteStore.SCHEMA_VERSION
        check.close()


def test_verified_digests_are_remembered_by_path_size_and_mtime(tmp_path: Path) -> None:
    with SqliteStore(tmp_path) as store:
        store.remember_verified("/m/a.gguf", 10, 111, "ab" * 32)
        assert store.verified_digest("/m/a.gguf", 10, 111) == "ab" * 32
        assert store.verified_digest("/m/a.gguf", 10, 112) is None  # touched since
        assert store.verified_digest("/m/a.gguf", 11, 111) is None  # size changed
        store.remember_verified("/m/a.gguf", 12, 113, "cd" * 32)
        assert store.verified_digest("/m/a.gguf", 12, 113) == "cd" * 32


def _fresh_statuses(store: SqliteStore, group_id: int) -> list[str]:
    """Statuses as another connection sees them: what has been committed."""
    db = sqlite3.connect(store.path)
    try:
        rows = db.execute(
            "SELECT status FROM files WHERE group_id = ? ORDER BY idx", [group_id]
        ).fetchall()
    finally:
        db.close()
    return [str(r[0]) for r in rows]


def test_a_batch_commits_its_writes_together_when_it_ends(store: SqliteStore) -> None:
    group = store.add_group(plain_group(files=3))
    with store.batch():
        assert store.batching
        for i in (1, 2):
            assert store.transition(
                group.id, i, FileStatus.ACTIVE, allowed_from={FileStatus.QUEUED}
            )
        with store.batch():  # nested: joins
            store.remember_verified("/models/1.gguf", 1, 2, "ab" * 32)
        assert _fresh_statuses(store, group.id) == ["queued"] * 3  # nothing committed yet
        assert store.verified_digest("/models/1.gguf", 1, 2) == "ab" * 32  # own writes seen
    assert not store.batching
    assert _fresh_statuses(store, group.id) == ["active", "active", "queued"]


def _fresh_digests(store: SqliteStore) -> dict[str, tuple[int, int, str]]:
    db = sqlite3.connect(store.path)
    try:
        rows = db.execute("SELECT path, size, mtime_ns, sha256 FROM verified_files").fetchall()
    finally:
        db.close()
    return {str(p): (int(s), int(m), str(d)) for p, s, m, d in rows}


def test_digests_remembered_in_a_batch_commit_with_it_and_the_last_one_wins(
    store: SqliteStore,
) -> None:
    group = store.add_group(plain_group(files=2))
    with store.batch():
        store.remember_verified("/m/a.gguf", 1, 2, "ab" * 32)
        store.remember_verified("/m/b.gguf", 3, 4, "cd" * 32)
        store.remember_verified("/m/a.gguf", 5, 6, "ef" * 32)  # the file changed again
        assert store.transition(group.id, 1, FileStatus.ACTIVE, allowed_from={FileStatus.QUEUED})
        assert _fresh_digests(store) == {}  # nothing committed yet
        assert store.verified_digest("/m/a.gguf", 5, 6) == "ef" * 32
        assert store.verified_digest("/m/a.gguf", 1, 2) is None  # superseded
    assert _fresh_digests(store) == {"/m/a.gguf": (5, 6, "ef" * 32), "/m/b.gguf": (3, 4, "cd" * 32)}
    assert _fresh_statuses(store, group.id) == ["active", "queued"]
    with store.batch():  # a batch that only remembers a digest commits it too
        store.remember_verified("/m/c.gguf", 7, 8, "01" * 32)
    assert _fresh_digests(store)["/m/c.gguf"] == (7, 8, "01" * 32)
    assert store._db is not None and not store._db.in_transaction


def test_a_batch_that_writes_nothing_opens_no_transaction(store: SqliteStore) -> None:
    group = store.add_group(plain_group())
    with store.batch():
        assert store.get_group(group.id) is not None
        assert store._db is not None and not store._db.in_transaction
    store.begin_batch()
    with pytest.raises(RuntimeError):
        store.begin_batch()
    store.end_batch()
    store.end_batch()  # ending twice is harmless


def test_a_failing_write_in_a_batch_leaves_no_trace_and_the_others_commit(
    store: SqliteStore,
) -> None:
    group = store.add_group(plain_group(files=2))
    with pytest.raises(ValueError), store.batch():
        store.transition(group.id, 1, FileStatus.PAUSED, allowed_from={FileStatus.QUEUED})
        # A multi-row write that fails half way (a negative byte count breaks a CHECK on the
        # second row): its savepoint is rolled back, the batch's other writes stand.
        store.save_progress([(group.id, 1, 5, None), (group.id, 2, -1, None)])
    assert _fresh_statuses(store, group.id) == ["paused", "queued"]
    stored = store.get_group(group.id)
    assert stored is not None and [f.bytes_done for f in stored.files] == [0, 0]
