"""What only the PostgreSQL engine does: migrations under an advisory lock, a newer schema
refused, URL and connection errors that never show the password, readers, engine choice.

The engine-neutral contract is `test_store.py` (both engines); leases are `test_leases.py`.
Everything runs against the session's throwaway cluster (`pg.py`), a schema per test.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from modelfetch.core.errors import StateError
from modelfetch.recovery import open_reader, open_store
from modelfetch.store import (
    POSTGRES_MIGRATIONS,
    SCHEMA_VERSION,
    SQLITE_MIGRATIONS,
    LeasingStore,
    PostgresStore,
    PostgresStoreReader,
    Store,
    StoreReader,
    apply_migrations,
)
from modelfetch.store.postgres_connect import MIGRATION_LOCK, schema_version
from modelfetch.store.postgres_marker import MARKER_NAME

from .pg import (
    PASSWORD,
    PgCluster,
    pg_cluster_fixture,  # noqa: F401 -- the `pg_cluster` fixture
    pg_url_fixture,  # noqa: F401 -- the `pg_url` fixture
)
from .store_impls import full_group, plain_group

LEASE_COLUMNS = {"holder", "fence", "lease_expires"}


def connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(url, autocommit=True)


def assert_clean(error: BaseException) -> None:
    """One line, no password, and no chained libpq error that would print it again."""
    text = str(error)
    assert "\n" not in text and PASSWORD not in text and text
    assert error.__cause__ is None
    assert PASSWORD not in repr(error)


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    with PostgresStore(pg_url) as opened:
        yield opened


# -- the engine is the protocols -----------------------------------------------------------------


def test_the_postgres_engine_is_a_store_a_leasing_store_and_has_a_reader(pg_url: str) -> None:
    owner: Store = PostgresStore(pg_url)  # mypy checks these assignments structurally
    with owner:
        assert isinstance(owner, LeasingStore)
        group = owner.add_group(plain_group())
        reader: StoreReader = PostgresStoreReader(pg_url)
        with reader:
            assert reader.groups() == [group]
    assert PASSWORD not in repr(owner) and "postgres@127.0.0.1" in repr(owner)


def test_open_store_and_open_reader_choose_postgres_by_url(pg_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    for url in (pg_url, pg_url.replace("postgresql://", "postgres://", 1)):
        store, messages = open_store(home, models_dir=tmp_path / "models", url=url)
        with store:
            assert isinstance(store, PostgresStore)
            assert messages == []
            store.add_group(plain_group())
            with open_reader(home, url=url) as reader:
                assert isinstance(reader, PostgresStoreReader)
                assert len(reader.groups()) >= 1
    assert not home.exists()  # a shared queue takes no lock in a state directory


def test_several_owners_share_one_database(pg_url: str) -> None:
    with PostgresStore(pg_url) as first, PostgresStore(pg_url) as second:
        group = first.add_group(full_group())
        assert second.get_group(group.id) == group
        second.update_group(group.id, priority=9)
        again = first.get_group(group.id)
        assert again is not None and again.priority == 9


# -- migrations ------------------------------------------------------------------------------------


def test_both_engines_have_every_schema_version_with_the_same_columns(pg_url: str) -> None:
    assert len(POSTGRES_MIGRATIONS) == len(SQLITE_MIGRATIONS) == SCHEMA_VERSION
    mem = sqlite3.connect(":memory:", isolation_level=None)
    apply_migrations(mem, SQLITE_MIGRATIONS, Path(":memory:"))
    tables = [r[0] for r in mem.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    expected = {
        name: {str(col[1]) for col in mem.execute(f"PRAGMA table_info({name})")}
        for name in tables
        if not name.startswith("sqlite_")
    }
    PostgresStore(pg_url).close()
    with connect(pg_url) as db:
        assert schema_version(db) == SCHEMA_VERSION
        rows = db.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name <> 'modelfetch_schema'"
        ).fetchall()
    found: dict[str, set[str]] = {}
    for table, column in rows:
        found.setdefault(table, set()).add(column)
    # PostgreSQL's own: the marker's queue id, the fleet's limits and its roster of workers.
    assert set(found) == set(expected) | {"queue_identity", "fleet_limits", "workers"}
    for table, names in expected.items():
        extra = LEASE_COLUMNS if table == "files" else set()
        assert found[table] == names | extra, table


def test_an_older_schema_is_migrated_keeping_its_rows(pg_url: str, tmp_path: Path) -> None:
    with connect(pg_url) as db:  # what an older modelfetch (schema version 2) left
        db.execute(
            "CREATE TABLE modelfetch_schema (id INTEGER PRIMARY KEY, version INTEGER NOT NULL)"
        )
        for script in POSTGRES_MIGRATIONS[:2]:
            db.execute(script)
        db.execute("INSERT INTO modelfetch_schema VALUES (1, 2)")
        db.execute(
            "INSERT INTO groups (key, spec, name, dest_dir, created_at)"
            " VALUES ('k', 's', 'old', '/m', 1.0)"
        )
    store, messages = open_store(tmp_path, models_dir=tmp_path, url=pg_url)
    with store:
        assert isinstance(store, PostgresStore)
        assert store.where.startswith("postgresql://postgres@127.0.0.1:")
        assert messages == [f"upgraded {store.where} from schema version 2 to {SCHEMA_VERSION}"]
        [group] = store.groups()
        assert group.name == "old"
        store.set_group_limits(group.id, connections=2)  # a version 3 column
        assert store.group_limits(group.id) == (None, 2)
    assert PASSWORD not in messages[0]


def test_a_newer_schema_is_refused_by_owner_and_reader(pg_url: str, tmp_path: Path) -> None:
    PostgresStore(pg_url).close()
    with connect(pg_url) as db:
        db.execute("UPDATE modelfetch_schema SET version = %s", [SCHEMA_VERSION + 1])
    for opener in (
        lambda: PostgresStore(pg_url),
        lambda: PostgresStoreReader(pg_url),
        lambda: open_store(tmp_path, models_dir=tmp_path, url=pg_url),
    ):
        with pytest.raises(StateError, match="newer modelfetch") as caught:
            opener()
        assert_clean(caught.value)
        assert f"schema version {SCHEMA_VERSION + 1}" in str(caught.value)
    with connect(pg_url) as db:
        assert schema_version(db) == SCHEMA_VERSION + 1  # left alone


def test_migrations_wait_for_the_advisory_lock(pg_cluster: PgCluster, pg_url: str) -> None:
    holder = connect(pg_url)
    holder.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK])
    opened: list[PostgresStore] = []
    worker = threading.Thread(target=lambda: opened.append(PostgresStore(pg_url)))
    worker.start()
    try:
        with connect(pg_url) as watcher:  # the opener is queued behind the lock, not migrating
            for _ in range(500):
                row = watcher.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    " AND database ="
                    " (SELECT oid FROM pg_database WHERE datname = current_database())"
                ).fetchone()
                if row is not None and row[0] == 1:
                    break
                threading.Event().wait(0.01)
            else:
                pytest.fail("the opener never waited for the migration lock")
            assert worker.is_alive()
            assert schema_version(watcher) == 0
    finally:
        holder.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK])
        holder.close()
        worker.join(30)
    [store] = opened
    with store, connect(pg_url) as db:
        assert store.migrated_from == 0
        assert schema_version(db) == SCHEMA_VERSION


def test_owners_opening_a_new_database_at_once_all_succeed(pg_url: str) -> None:
    results: list[object] = []
    start = threading.Barrier(4)

    def open_one() -> None:
        start.wait()
        try:
            results.append(PostgresStore(pg_url))
        except Exception as exc:  # collected and asserted below
            results.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    stores = [r for r in results if isinstance(r, PostgresStore)]
    assert len(stores) == 4, results
    # One migrated, three waited.
    assert sorted(s.migrated_from for s in stores) == [0, *[SCHEMA_VERSION] * 3]
    for s in stores:
        s.close()


# -- URLs and connections --------------------------------------------------------------------------


def test_connection_errors_are_one_line_and_never_show_the_password(
    pg_cluster: PgCluster, pg_url: str, tmp_path: Path
) -> None:
    closed_port = pg_url.replace(f":{pg_cluster.port}/", ":1/")
    cases = {
        pg_url.replace(PASSWORD, "wrong-" + PASSWORD): "password authentication failed",
        closed_port: "cannot connect",
        pg_cluster.url("no_such_database"): "no_such_database",
        f"postgresql://postgres:{PASSWORD}%zz@127.0.0.1/x": "not a valid postgresql",
        f"postgresql://postgres:{PASSWORD}@127.0.0.1:notaport/x": "port",
    }
    for url, expected in cases.items():
        for opener in (
            PostgresStore,
            PostgresStoreReader,
            lambda u: open_store(tmp_path / "h", models_dir=tmp_path, url=u),
            lambda u: open_reader(tmp_path / "h", url=u),
        ):
            with pytest.raises(StateError, match=expected) as caught:
                opener(url)
            assert_clean(caught.value)
    assert not (tmp_path / "h").exists()


def test_a_lost_connection_is_a_state_error_then_a_reconnect(
    pg_url: str, store: PostgresStore
) -> None:
    group = store.add_group(plain_group())
    with connect(pg_url) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = current_setting('application_name')"
            " AND pid <> pg_backend_pid()"
        )
    with pytest.raises(StateError, match="terminating connection") as caught:
        store.get_group(group.id)
    assert "\n" not in str(caught.value) and PASSWORD not in str(caught.value)
    assert store.get_group(group.id) == group  # the next call reconnects
    store.begin_batch()
    store.update_file(group.id, 1, etag="lost")
    with connect(pg_url) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = current_setting('application_name')"
            " AND pid <> pg_backend_pid()"
        )
    with pytest.raises(StateError):
        store.update_file(group.id, 2, etag="also lost")
    with pytest.raises(StateError, match="middle of a batch"):
        store.end_batch()
    assert not store.batching
    assert [f.etag for f in store.files()] == [None, None]  # reconnected, nothing half-kept


def test_importing_the_store_package_does_not_import_psycopg() -> None:
    code = "import sys, modelfetch.store, modelfetch.recovery; print('psycopg' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"


# -- readers ---------------------------------------------------------------------------------------


def test_a_reader_never_migrates_and_refuses_every_write(pg_url: str) -> None:
    with pytest.raises(StateError, match="no modelfetch queue"):
        PostgresStoreReader(pg_url)
    with connect(pg_url) as db:
        assert schema_version(db) == 0  # the reader created nothing
    with PostgresStore(pg_url) as owner:
        group = owner.add_group(plain_group())
    with PostgresStoreReader(pg_url) as reader:
        for write in (
            lambda: reader.update_file(group.id, 1, etag="x"),
            lambda: reader.save_progress([(group.id, 1, 5, None)]),
            lambda: reader.add_group(plain_group("other")),
            lambda: reader.recover(),
            reader.begin_batch,
        ):
            with pytest.raises(StateError, match="read-only"):
                write()
        record = reader.get_file(group.id, 1)
        assert record is not None and record.etag is None and record.bytes_done == 0


# -- the models directory the workers share -------------------------------------------------------


def test_a_models_directory_that_is_not_the_shared_one_is_refused(
    pg_cluster: PgCluster, pg_url: str, tmp_path: Path
) -> None:
    shared, local = tmp_path / "shared", tmp_path / "local"
    first, _ = open_store(tmp_path / "h1", models_dir=shared, url=pg_url)
    first.close()
    queue_id = (shared / MARKER_NAME).read_text().strip()
    again, _ = open_store(tmp_path / "h2", models_dir=shared, url=pg_url)  # the same mount
    again.close()
    with connect(pg_url) as db:  # the queue is not new: no waiting for a racing first worker
        db.execute("UPDATE queue_identity SET created_at = created_at - 3600")
    with pytest.raises(StateError, match=f"has no {MARKER_NAME} marker") as caught:
        open_store(tmp_path / "h3", models_dir=local, url=pg_url)
    assert_clean(caught.value)
    with pg_cluster.database() as other_url:  # another queue's directory
        other, _ = open_store(tmp_path / "h4", models_dir=local, url=other_url)
        other.close()
        with pytest.raises(StateError, match="belongs to another modelfetch queue"):
            open_store(tmp_path / "h5", models_dir=local, url=pg_url)
    assert (shared / MARKER_NAME).read_text().strip() == queue_id
