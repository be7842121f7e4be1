"""The engines' schemas: SQLite's file names, each engine's numbered migrations, SQLite's runner.

The schema version is a number every engine shares: version n means the same tables and columns
whatever holds them. Each engine keeps its own ordered list of scripts that reach it
(`SQLITE_MIGRATIONS`, `POSTGRES_MIGRATIONS`), so `SCHEMA_VERSION` is the length of each list and
a migration added to one needs its twin in the other (a test pins the lengths equal).

One deliberate difference: PostgreSQL's `files` also carries the lease of the worker that holds
an active file (`holder`, `fence`, `lease_expires`, see `store/postgres_leases.py`). It is that
engine's way of sharing a queue between processes, as the state directory's lock file is
SQLite's way of not sharing it; no record field maps to those columns. Its `queue_identity`
table names the queue, for the marker its workers find in the models directory they share
(`store/postgres_marker.py`). The PostgreSQL migrations
are applied by `store/postgres_connect.py`, under an advisory lock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from modelfetch.core.errors import StateError

__all__ = [
    "DB_NAME",
    "LOCK_NAME",
    "MIGRATIONS",
    "POSTGRES_MIGRATIONS",
    "SCHEMA_VERSION",
    "SQLITE_MIGRATIONS",
    "apply_migrations",
]

DB_NAME: Final = "state.db"
LOCK_NAME: Final = "manager.lock"

SQLITE_MIGRATIONS: Final[tuple[str, ...]] = (
    # v1: groups and their files. The status CHECK must list exactly FileStatus (a test pins it);
    # adding a status means adding a migration that rebuilds the files table.
    """
    CREATE TABLE groups (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- user-visible: never reused
        key         TEXT NOT NULL,
        spec        TEXT NOT NULL,
        name        TEXT NOT NULL,
        dest_dir    TEXT NOT NULL,
        priority    INTEGER NOT NULL DEFAULT 0,
        repo_id     TEXT,
        revision    TEXT,
        commit_sha  TEXT,
        quant       TEXT,
        created_at  REAL NOT NULL,
        finished_at REAL
    ) STRICT;
    CREATE INDEX groups_by_key ON groups (key, id);

    CREATE TABLE files (
        id               INTEGER PRIMARY KEY,
        group_id         INTEGER NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
        idx              INTEGER NOT NULL CHECK (idx >= 1),
        url              TEXT NOT NULL,
        dest             TEXT NOT NULL,
        name             TEXT NOT NULL,
        status           TEXT NOT NULL DEFAULT 'queued' CHECK (status IN (
                             'queued', 'active', 'paused', 'waiting_retry',
                             'completed', 'failed', 'cancelled')),
        priority         INTEGER NOT NULL DEFAULT 0,
        order_key        INTEGER NOT NULL DEFAULT 0,
        bytes_done       INTEGER NOT NULL DEFAULT 0 CHECK (bytes_done >= 0),
        bytes_total      INTEGER CHECK (bytes_total >= 0),
        expected_size    INTEGER CHECK (expected_size >= 0),
        expected_sha256  TEXT,
        expected_git_oid TEXT,
        etag             TEXT,
        last_modified    TEXT,
        commit_sha       TEXT,
        sha256           TEXT,
        attempts         INTEGER NOT NULL DEFAULT 0,
        error_kind       TEXT,
        error_message    TEXT,
        retry_at         REAL,
        pause_reason     TEXT,
        created_at       REAL NOT NULL,
        started_at       REAL,
        finished_at      REAL,
        UNIQUE (group_id, idx)
    ) STRICT;
    CREATE INDEX files_by_status ON files (status);
    CREATE INDEX files_by_order ON files (priority DESC, order_key);  -- scheduling order
    """,
    # v2: the hf-cache layout's snapshot link, and the digests of files already verified on disk
    # (keyed by path, size and mtime, so a file present before is not hashed or fetched again).
    """
    ALTER TABLE files ADD COLUMN link TEXT;
    CREATE TABLE verified_files (
        path     TEXT PRIMARY KEY,
        size     INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        sha256   TEXT NOT NULL
    ) STRICT;
    """,
    # v3: multi-connection downloads. The segment map of a segmented `.part` (which bytes are on
    # disk: per segment [seg_start, seg_end) with `done` bytes written from seg_start), dropped
    # with its file and when the file completes or is cancelled; and per-download limits.
    """
    CREATE TABLE file_segments (
        file_id   INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
        seg_start INTEGER NOT NULL CHECK (seg_start >= 0),
        seg_end   INTEGER NOT NULL CHECK (seg_end > seg_start),
        done      INTEGER NOT NULL CHECK (done >= 0 AND done <= seg_end - seg_start),
        PRIMARY KEY (file_id, seg_start)
    ) STRICT, WITHOUT ROWID;
    CREATE TRIGGER file_segments_end AFTER UPDATE OF status ON files
        WHEN NEW.status IN ('completed', 'cancelled')
    BEGIN
        DELETE FROM file_segments WHERE file_id = NEW.id;
    END;
    ALTER TABLE groups ADD COLUMN rate_limit INTEGER CHECK (rate_limit > 0);
    ALTER TABLE groups ADD COLUMN connections INTEGER CHECK (connections >= 1);
    """,
    # v4: hosts held after a 429/503 (until when, epoch seconds), so a restart, or every worker
    # of a shared queue, waits as the server asked instead of asking again at once.
    """
    CREATE TABLE host_holds (
        host  TEXT PRIMARY KEY,
        until REAL NOT NULL
    ) STRICT, WITHOUT ROWID;
    """,
    # v5: the roster of a shared queue's workers and a fleet-wide connection cap, PostgreSQL's
    # alone (a SQLite queue has one worker, its lock's holder): nothing changes here.
    "SELECT 1;",
)

# The same versions for PostgreSQL. Types: BIGINT for every integer (byte counts pass 2**31),
# DOUBLE PRECISION for epoch seconds; CHECKs as in SQLite. Group ids come from an identity
# sequence, which never hands a number out twice.
POSTGRES_MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE groups (
        id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        key         TEXT NOT NULL,
        spec        TEXT NOT NULL,
        name        TEXT NOT NULL,
        dest_dir    TEXT NOT NULL,
        priority    BIGINT NOT NULL DEFAULT 0,
        repo_id     TEXT,
        revision    TEXT,
        commit_sha  TEXT,
        quant       TEXT,
        created_at  DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION
    );
    CREATE INDEX groups_by_key ON groups (key, id);

    CREATE TABLE files (
        id               BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        group_id         BIGINT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
        idx              BIGINT NOT NULL CHECK (idx >= 1),
        url              TEXT NOT NULL,
        dest             TEXT NOT NULL,
        name             TEXT NOT NULL,
        status           TEXT NOT NULL DEFAULT 'queued' CHECK (status IN (
                             'queued', 'active', 'paused', 'waiting_retry',
                             'completed', 'failed', 'cancelled')),
        priority         BIGINT NOT NULL DEFAULT 0,
        order_key        BIGINT NOT NULL DEFAULT 0,
        bytes_done       BIGINT NOT NULL DEFAULT 0 CHECK (bytes_done >= 0),
        bytes_total      BIGINT CHECK (bytes_total >= 0),
        expected_size    BIGINT CHECK (expected_size >= 0),
        expected_sha256  TEXT,
        expected_git_oid TEXT,
        etag             TEXT,
        last_modified    TEXT,
        commit_sha       TEXT,
        sha256           TEXT,
        attempts         BIGINT NOT NULL DEFAULT 0,
        error_kind       TEXT,
        error_message    TEXT,
        retry_at         DOUBLE PRECISION,
        pause_reason     TEXT,
        created_at       DOUBLE PRECISION NOT NULL,
        started_at       DOUBLE PRECISION,
        finished_at      DOUBLE PRECISION,
        -- The lease (PostgreSQL only): who works the file, the fencing token of that claim
        -- (from lease_fence, so a later claim always has a larger one) and until when
        -- (epoch seconds of the database server's clock). Only an active file has one.
        holder           TEXT,
        fence            BIGINT,
        lease_expires    DOUBLE PRECISION,
        CHECK (status = 'active' OR (holder IS NULL AND lease_expires IS NULL)),
        UNIQUE (group_id, idx)
    );
    CREATE SEQUENCE lease_fence AS BIGINT;
    CREATE INDEX files_by_status ON files (status);
    CREATE INDEX files_by_order ON files (priority DESC, order_key);  -- scheduling order
    CREATE UNIQUE INDEX files_by_fence ON files (fence);  -- renewals find claims by token
    -- What `claim` walks, in queue order: queued files and the few active ones (a lapsed lease
    -- is taken over), never the finished files that stay in the table.
    CREATE INDEX files_claimable ON files (priority DESC, order_key, group_id, idx)
        WHERE status IN ('queued', 'active');
    -- Which queue this is, for the marker file in the models directory its workers share.
    CREATE TABLE queue_identity (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        queue_id   TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL DEFAULT extract(epoch FROM now())
    );
    """,
    """
    ALTER TABLE files ADD COLUMN link TEXT;
    CREATE TABLE verified_files (
        path     TEXT PRIMARY KEY,
        size     BIGINT NOT NULL,
        mtime_ns BIGINT NOT NULL,
        sha256   TEXT NOT NULL
    );
    """,
    """
    CREATE TABLE file_segments (
        file_id   BIGINT NOT NULL REFERENCES files (id) ON DELETE CASCADE,
        seg_start BIGINT NOT NULL CHECK (seg_start >= 0),
        seg_end   BIGINT NOT NULL CHECK (seg_end > seg_start),
        done      BIGINT NOT NULL CHECK (done >= 0 AND done <= seg_end - seg_start),
        PRIMARY KEY (file_id, seg_start)
    );
    CREATE FUNCTION file_segments_end() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM file_segments WHERE file_id = NEW.id;
        RETURN NULL;
    END $$;
    CREATE TRIGGER file_segments_end AFTER UPDATE OF status ON files
        FOR EACH ROW WHEN (NEW.status IN ('completed', 'cancelled'))
        EXECUTE FUNCTION file_segments_end();
    ALTER TABLE groups ADD COLUMN rate_limit BIGINT CHECK (rate_limit > 0);
    ALTER TABLE groups ADD COLUMN connections BIGINT CHECK (connections >= 1);
    """,
    """
    CREATE TABLE host_holds (
        host  TEXT PRIMARY KEY,
        until DOUBLE PRECISION NOT NULL
    );
    -- Every committed change of the queue (a file's status, holder or place, a group added,
    -- changed or forgotten, a new hold) is announced on the `modelfetch_queue` channel, so
    -- every worker and daemon follows the fleet at once instead of at its next poll. Row
    -- triggers that fire only on a real change (a claim that found nothing, a renewal or a
    -- byte-count checkpoint announce nothing, or woken workers would wake each other); no
    -- payload, so PostgreSQL folds a transaction's notifications into one.
    CREATE FUNCTION modelfetch_queue_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('modelfetch_queue', '');
        RETURN NULL;
    END $$;
    CREATE TRIGGER files_added_or_removed AFTER INSERT OR DELETE ON files
        FOR EACH ROW EXECUTE FUNCTION modelfetch_queue_changed();
    CREATE TRIGGER files_changed AFTER UPDATE ON files FOR EACH ROW
        WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.holder IS DISTINCT FROM NEW.holder
              OR OLD.priority IS DISTINCT FROM NEW.priority
              OR OLD.order_key IS DISTINCT FROM NEW.order_key)
        EXECUTE FUNCTION modelfetch_queue_changed();
    CREATE TRIGGER groups_added_or_removed AFTER INSERT OR DELETE ON groups
        FOR EACH ROW EXECUTE FUNCTION modelfetch_queue_changed();
    CREATE TRIGGER groups_changed AFTER UPDATE ON groups FOR EACH ROW
        WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION modelfetch_queue_changed();
    CREATE TRIGGER host_holds_changed AFTER INSERT OR UPDATE ON host_holds FOR EACH ROW
        EXECUTE FUNCTION modelfetch_queue_changed();
    -- Limits of the whole fleet (PostgreSQL only, like the leases): files active at once over
    -- every worker; NULL, no cap beyond each worker's own max_active.
    CREATE TABLE fleet_limits (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        max_active BIGINT CHECK (max_active >= 1)
    );
    """,
    # v5: the workers of the queue, each announcing itself every beat (`expires`, on the
    # database's clock, a few beats ahead), so a worker knows who else is live and how many files
    # each may run (`core/fleet_share.py`). No trigger: a heartbeat changes nothing of the queue.
    # And a cap on connections to one upstream host over every worker.
    """
    CREATE TABLE workers (
        worker     TEXT PRIMARY KEY,
        max_active BIGINT NOT NULL CHECK (max_active >= 1),
        accepting  BOOLEAN NOT NULL,
        expires    DOUBLE PRECISION NOT NULL
    );
    ALTER TABLE fleet_limits ADD COLUMN max_connections_per_host BIGINT
        CHECK (max_connections_per_host >= 1);
    """,
)

# The name recovery and the tests know: the SQLite list, the engine modelfetch runs by default.
MIGRATIONS: Final = SQLITE_MIGRATIONS

SCHEMA_VERSION: Final = len(MIGRATIONS)


def apply_migrations(db: sqlite3.Connection, migrations: Sequence[str], path: Path) -> None:
    """Bring the database up to `len(migrations)`, each script in its own transaction together
    with its `PRAGMA user_version`. A database from a newer modelfetch is refused."""
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if found > len(migrations):
        raise StateError(
            f"{path} was written by a newer modelfetch (schema version {found}; this one"
            f" understands up to {len(migrations)}): upgrade modelfetch or use another home"
        )
    for version in range(found + 1, len(migrations) + 1):
        script = migrations[version - 1]
        try:
            # executescript runs in autocommit, so the script carries its own transaction.
            db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\n;PRAGMA user_version = {version};\nCOMMIT;"
            )
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StateError(f"cannot upgrade {path} to schema version {version}: {exc}") from exc
