"""What only the SQLite engine promises: its lock file, PRAGMAs, WAL, migrations, raw rows."""

from __future__ import annotations

import inspect
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from modelfetch.core.errors import StateError, StateLockedError
from modelfetch.core.models import FileStatus
from modelfetch.recovery import open_reader, open_store
from modelfetch.store import (
    DB_NAME,
    LOCK_NAME,
    MIGRATIONS,
    SqliteStore,
    SqliteStoreReader,
    Store,
    StoreReader,
    apply_migrations,
)

from .store_impls import full_group, plain_group


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "home") as opened:
        yield opened


# -- the engine and the protocols ----------------------------------------------------------------

STORE_READER_MEMBERS = {
    "closed", "close", "__enter__", "__exit__",
    "get_group", "groups", "find_group", "get_file", "files",
    "verified_digest", "segments", "group_limits", "segmented_files",
}  # fmt: skip
STORE_WRITE_MEMBERS = {
    "add_group", "update_group", "finish_group", "forget_group", "forget_finished",
    "transition", "update_file", "save_progress", "set_order", "recover", "remember_verified",
    "save_segments", "set_group_limits", "hold_host", "host_holds",
    "batch", "begin_batch", "end_batch", "batching",
}  # fmt: skip


def protocol_members(protocol: type) -> set[str]:
    """The public members a Protocol class and its protocol bases declare (and the context
    manager's two)."""
    found: set[str] = set()
    for klass in protocol.__mro__:
        if klass in (object, Protocol) or not getattr(klass, "_is_protocol", False):
            continue
        found |= {n for n in vars(klass) if not n.startswith("_") or n in ("__enter__", "__exit__")}
    return found


def test_the_protocols_list_what_the_rest_of_modelfetch_uses() -> None:
    assert protocol_members(StoreReader) == STORE_READER_MEMBERS
    assert protocol_members(Store) == STORE_READER_MEMBERS | STORE_WRITE_MEMBERS
    for name in ("path", "integrity_check", "SCHEMA_VERSION"):  # SQLite's own
        assert not hasattr(Store, name)


@pytest.mark.parametrize(
    ("protocol", "engine"), [(Store, SqliteStore), (StoreReader, SqliteStoreReader)]
)
def test_the_sqlite_classes_have_every_protocol_member(protocol: type, engine: type) -> None:
    assert protocol not in engine.__mro__  # structural: the engine does not subclass it
    for name in protocol_members(protocol):
        declared, found = getattr(protocol, name), getattr(engine, name, None)
        assert found is not None, name
        assert isinstance(found, property) == isinstance(declared, property), name
        if not isinstance(declared, property):
            wanted = list(inspect.signature(declared).parameters)
            assert list(inspect.signature(found).parameters) == wanted, name


def test_the_sqlite_engine_is_a_store_and_its_reader_a_store_reader(tmp_path: Path) -> None:
    owner: Store = SqliteStore(tmp_path)  # mypy checks these two assignments structurally
    with owner:
        group = owner.add_group(plain_group())
        reader: StoreReader = SqliteStoreReader(tmp_path)
        with reader:
            assert reader.groups() == [group]


def test_open_store_and_open_reader_take_only_the_sqlite_engine(tmp_path: Path) -> None:
    home, models = tmp_path / "home", tmp_path / "models"
    for url in (None, "sqlite:", "sqlite://", "SQLite:"):
        store, _ = open_store(home, models_dir=models, url=url)
        with store:
            assert isinstance(store, SqliteStore)
            with open_reader(home, url=url) as reader:
                assert isinstance(reader, SqliteStoreReader)
    elsewhere = tmp_path / "elsewhere"
    for url, expected in [
        ("mysql://modelfetch:secret@db.test/state", "'mysql' is not supported"),
        ("sqlite:///var/lib/state.db", "without a path"),
        ("state.db", "no scheme"),
        (":secret@db.test", "no scheme"),
        ("my secret:x", "of that URL is not supported"),
    ]:
        with pytest.raises(StateError, match=expected) as caught:
            open_store(elsewhere, models_dir=models, url=url)
        assert "secret" not in str(caught.value)  # a password in a URL is never repeated
        with pytest.raises(StateError, match=expected):
            open_reader(home, url=url)
    assert not elsewhere.exists()  # refused before anything was created


# -- rows the engine checks ------------------------------------------------------------------------


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


# -- transactions --------------------------------------------------------------------------------


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


def test_a_batch_of_digests_only_leaves_no_transaction_open(store: SqliteStore) -> None:
    with store.batch():
        store.remember_verified("/m/c.gguf", 7, 8, "01" * 32)
        assert store._db is not None and not store._db.in_transaction  # written at the commit
    assert store._db is not None and not store._db.in_transaction


def test_a_reader_needs_no_lock_and_refuses_every_write(store: SqliteStore) -> None:
    group = store.add_group(plain_group())
    with SqliteStoreReader(store.path.parent) as reader:
        assert [f.index for f in reader.files()] == [1, 2]
        assert "SqliteStoreReader" in repr(reader)
        for write in (
            lambda: reader.add_group(plain_group("other")),
            lambda: reader.save_progress([(group.id, 1, 5, None)]),
            lambda: reader.set_order({(group.id, 1): 7}),
            lambda: reader.recover(),
            lambda: reader.remember_verified("/m/a", 1, 2, "ab" * 32),
            lambda: reader.begin_batch(),
        ):
            with pytest.raises(StateError, match="read-only"):
                write()
    assert reader.closed  # and closing it left the owner open:
    assert store.get_group(group.id) == group and not store.closed


def test_a_reader_of_a_home_without_a_database_is_a_state_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="does not exist"):
        SqliteStoreReader(tmp_path)


# -- writes deferred to the batch (transition_in_batch) ------------------------------------------


def _committed(home: Path, group_id: int) -> list[str]:
    with SqliteStoreReader(home) as reader:
        group = reader.get_group(group_id)
    assert group is not None
    return [f.status.value for f in group.files]


def test_a_deferred_transition_is_seen_by_the_next_statement_and_committed_with_the_batch(
    store: SqliteStore, tmp_path: Path
) -> None:
    group = store.add_group(plain_group())
    with store.batch():
        store.transition_in_batch(group.id, 1, FileStatus.ACTIVE, allowed_from={FileStatus.QUEUED})
        store.transition_in_batch(group.id, 2, FileStatus.ACTIVE, allowed_from={FileStatus.QUEUED})
        assert _committed(tmp_path / "home", group.id) == ["queued", "queued"]  # not yet
        record = store.get_file(group.id, 1)  # a read in the batch runs them first
        assert record is not None and record.status is FileStatus.ACTIVE
    assert _committed(tmp_path / "home", group.id) == ["active", "active"]


def test_deferred_changes_of_one_row_keep_their_order(store: SqliteStore) -> None:
    group = store.add_group(plain_group())
    with store.batch():
        store.transition_in_batch(group.id, 1, FileStatus.ACTIVE, allowed_from={FileStatus.QUEUED})
        store.transition_in_batch(group.id, 2, FileStatus.ACTIVE, allowed_from={FileStatus.QUEUED})
        store.transition_in_batch(
            group.id, 1, FileStatus.COMPLETED, allowed_from={FileStatus.ACTIVE}, bytes_done=9
        )
    first, second = store.get_file(group.id, 1), store.get_file(group.id, 2)
    assert first is not None and (first.status, first.bytes_done) == (FileStatus.COMPLETED, 9)
    assert second is not None and second.status is FileStatus.ACTIVE


def test_a_deferred_transition_needs_a_batch(store: SqliteStore) -> None:
    group = store.add_group(plain_group())
    with pytest.raises(RuntimeError, match="open batch"):
        store.transition_in_batch(group.id, 1, FileStatus.ACTIVE, allowed_from={FileStatus.QUEUED})
    record = store.get_file(group.id, 1)
    assert record is not None and record.status is FileStatus.QUEUED


def test_a_group_s_end_in_a_batch_is_deferred_too(store: SqliteStore, tmp_path: Path) -> None:
    group = store.add_group(plain_group())
    with store.batch():
        store.finish_group(group.id, 123.0)
        with SqliteStoreReader(tmp_path / "home") as reader:
            outside = reader.get_group(group.id)
        assert outside is not None and outside.finished_at is None  # not committed yet
        inside = store.get_group(group.id)  # runs it first
        assert inside is not None and inside.finished_at == 123.0
    with SqliteStoreReader(tmp_path / "home") as reader:
        committed = reader.get_group(group.id)
    assert committed is not None and committed.finished_at == 123.0


def test_order_keys_in_a_batch_are_deferred_and_seen_by_the_next_read(
    store: SqliteStore, tmp_path: Path
) -> None:
    group = store.add_group(plain_group())
    with store.batch():
        store.set_order({(group.id, 1): 4096, (group.id, 2): 8192}, priority=5)
        assert _committed(tmp_path / "home", group.id) == ["queued", "queued"]
        record = store.get_file(group.id, 2)
        assert record is not None and (record.order_key, record.priority) == (8192, 5)
    with SqliteStoreReader(tmp_path / "home") as reader:
        stored = reader.get_group(group.id)
    assert stored is not None
    assert [(f.order_key, f.priority) for f in stored.files] == [(4096, 5), (8192, 5)]
