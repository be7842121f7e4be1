"""Opening SQLite connections to a state database: the owner's (WAL) and a reader's (read-only)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from modelfetch.core.errors import StateError
from modelfetch.store.rows import FILE_SELECT, GROUP_SELECT
from modelfetch.store.schema import MIGRATIONS, SCHEMA_VERSION, apply_migrations

__all__ = ["connect", "connect_readonly"]


def connect(path: Path) -> sqlite3.Connection:
    """The owner's connection: autocommit (transactions are explicit), WAL, foreign keys on."""
    db = sqlite3.connect(path, isolation_level=None)  # autocommit; transactions are explicit
    try:
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StateError(f"{path}: SQLite refused WAL mode (journal_mode is {mode})")
        db.execute("PRAGMA synchronous = NORMAL")  # durable at each checkpoint; WAL keeps it safe
        db.execute("PRAGMA busy_timeout = 5000")
        db.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        db.close()
        raise StateError(f"{path} cannot be used as a modelfetch database: {exc}") from exc
    except BaseException:
        db.close()
        raise
    return db


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to a modelfetch database at this schema version.

    No PRAGMA that writes (journal_mode, migrations): the owner set WAL mode in the file's header
    already. The busy timeout is `connect`'s, for the moment a checkpoint holds a lock."""
    try:
        db = sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise StateError(f"{path} cannot be opened: {exc}") from exc
    try:
        db.execute("PRAGMA busy_timeout = 5000")
        db.execute("PRAGMA query_only = ON")
        found = int(db.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            apply_migrations(db, MIGRATIONS, path)  # refuses a newer schema before any write
        if found != SCHEMA_VERSION:
            if found == 0:
                raise StateError(f"{path} is not a modelfetch database (no schema version)")
            raise StateError(
                f"{path} has schema version {found}, older than this modelfetch's"
                f" {SCHEMA_VERSION}: an older modelfetch is using it; look again once it has"
                " finished (this one upgrades the file when it opens it)"
            )
        db.execute(f"SELECT {GROUP_SELECT} FROM groups LIMIT 0").fetchall()
        db.execute(f"SELECT {FILE_SELECT} FROM files LIMIT 0").fetchall()
    except sqlite3.Error as exc:
        db.close()
        raise StateError(f"{path} cannot be used as a modelfetch database: {exc}") from exc
    except BaseException:
        db.close()
        raise
    return db
