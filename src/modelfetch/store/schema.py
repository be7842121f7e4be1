"""The SQLite engine's schema: its file names, its numbered migrations and how they are applied.

The schema version is a number every engine shares: version n means the same tables and columns
whatever holds them. Each engine keeps its own ordered list of scripts that reach it (this module
is SQLite's; a PostgreSQL engine keeps its own list beside its code), so `SCHEMA_VERSION` is the
length of each list and a migration added here needs its twin there.
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
