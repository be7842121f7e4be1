"""The durable state of modelfetch: one SQLite file that is the truth after any crash.

`SqliteStore(home)` owns `home/state.db` for as long as it is open: it takes an exclusive OS lock on
`home/manager.lock` first, so two managers can never write the same state. It is used directly from
the event loop thread; every write is one short transaction that has committed by the time the
method returns, so the manager can emit the matching event right after. Inside `with
store.batch():` writes join one transaction instead, committed when the block ends: the caller
announces them after that.

Shape, after the SQLite-backed queues worth copying (huey, litequeue, persist-queue) and not their
faults:
- typed columns in STRICT tables, never pickled blobs; the schema version is `PRAGMA
  user_version` and `MIGRATIONS` is the ordered list of scripts that reach it;
- a file stays in its row until it reaches a terminal status (nothing is "dequeued" by deleting);
- a status change is one guarded statement (`transition`: `UPDATE ... WHERE status IN (allowed)`,
  then a rowcount check), so a stale caller cannot overwrite a newer state;
- recovery at start is one query (`recover`: every `active` file goes back to `queued`, keeping
  its byte count and its `.part` on disk).

Secrets: there is deliberately no column for a token, a cookie or any other credential. Records
carry only URLs pinned to a commit and a request spec with tokens stripped; credentials live in
memory (`transfer.api.Credentials`) and are looked up again at each start. Keep it that way: a
state file is something users attach to bug reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import fcntl
import os
import sqlite3
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence, Sized
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from modelfetch.core.errors import StateError, StateLockedError
from modelfetch.core.models import LIVE_STATUSES, FileRecord, FileStatus, GroupRecord
from modelfetch.core.segments import SegmentRecord

DB_NAME: Final = "state.db"
LOCK_NAME: Final = "manager.lock"

MIGRATIONS: Final[tuple[str, ...]] = (
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

SCHEMA_VERSION: Final = len(MIGRATIONS)


class _Keep(enum.Enum):
    """The "leave it as it is" default of optional setters (None means "clear")."""

    KEEP = "keep"


_KEEP: Final = _Keep.KEEP

# Dataclass field -> column. Only these two differ: `index` and `commit` are SQL keywords.
_RENAMED: Final = {"index": "idx", "commit": "commit_sha"}
_FILE_FIELDS: Final = tuple(f.name for f in dataclasses.fields(FileRecord))
_GROUP_FIELDS: Final = tuple(f.name for f in dataclasses.fields(GroupRecord) if f.name != "files")
_FILE_SELECT: Final = ", ".join(_RENAMED.get(name, name) for name in _FILE_FIELDS)
_GROUP_SELECT: Final = ", ".join(_RENAMED.get(name, name) for name in _GROUP_FIELDS)
# A file's identity and status are not plain fields: status changes only through `transition`.
_FILE_UPDATABLE: Final = frozenset(_FILE_FIELDS) - {"id", "group_id", "index", "status"}
_GROUP_UPDATABLE: Final = frozenset(_GROUP_FIELDS) - {"id"}
_LIVE: Final = tuple(sorted(s.value for s in LIVE_STATUSES))
# Epoch-second columns. SQLite stores an integral REAL as an integer and RETURNING (3.40) hands it
# back as one, so decoding turns these back into floats.
_REAL_FIELDS: Final = frozenset({"created_at", "started_at", "finished_at", "retry_at"})


class SqliteStore:
    """The SQLite repository of groups and files. One per state directory, per process."""

    SCHEMA_VERSION: Final = SCHEMA_VERSION

    def __init__(self, home: Path) -> None:
        home = Path(home)
        try:
            home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the state directory {home}: {exc}") from exc
        self._path = home / DB_NAME
        self._lock_fd: int | None = _lock(home)
        self._db: sqlite3.Connection | None = None
        self._batching = False
        self._begun = False  # inside a batch: its BEGIN has been issued
        # remember_verified rows of the open batch, by path: written in one statement when the
        # batch commits (a completion per file otherwise costs one statement more).
        self._verified: dict[str, tuple[str, int, int, str]] = {}
        try:
            self._db = _connect(self._path)
            apply_migrations(self._db, MIGRATIONS, self._path)
        except BaseException:
            self.close()
            raise

    # -- lifetime -------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def closed(self) -> bool:
        return self._lock_fd is None

    def close(self) -> None:
        """Close the database and release the lock. Safe to call twice."""
        db, self._db = self._db, None
        if db is not None:
            db.close()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SqliteStore {str(self._path)!r}{' closed' if self.closed else ''}>"

    # -- groups ---------------------------------------------------------------------------------

    def add_group(self, group: GroupRecord) -> GroupRecord:
        """Insert a group and its files in one transaction; fill in ids, group ids and
        `created_at` (now, when 0). The same record is returned, updated in place."""
        if group.id:
            raise ValueError(f"group {group.id} is already stored")
        indexes = sorted(f.index for f in group.files)
        if indexes != list(range(1, len(indexes) + 1)):
            raise ValueError(f"file indexes must be 1..{len(indexes)}, got {indexes}")
        created_at = group.created_at or time.time()
        fields = [name for name in _GROUP_FIELDS if name not in ("id", "created_at")]
        file_fields = [
            name for name in _FILE_FIELDS if name not in ("id", "group_id", "created_at")
        ]
        with self._transaction() as db:
            row = db.execute(
                f"INSERT INTO groups ({_columns(fields)}, created_at)"
                f" VALUES ({_marks(fields)}, ?) RETURNING id",
                [*(_sql(getattr(group, name)) for name in fields), created_at],
            ).fetchone()
            group_id = int(row[0])
            db.executemany(
                f"INSERT INTO files ({_columns(file_fields)}, group_id, created_at)"
                f" VALUES ({_marks(file_fields)}, ?, ?)",
                [
                    [
                        *(_sql(getattr(record, name)) for name in file_fields),
                        group_id,
                        record.created_at or created_at,
                    ]
                    for record in group.files
                ],
            )
            ids_by_index = dict(
                db.execute("SELECT idx, id FROM files WHERE group_id = ?", [group_id]).fetchall()
            )
            file_ids = [int(ids_by_index[record.index]) for record in group.files]
        # Only a committed insert touches the caller's records.
        group.id, group.created_at = group_id, created_at
        for record, file_id in zip(group.files, file_ids, strict=True):
            record.id, record.group_id = file_id, group_id
            record.created_at = record.created_at or created_at
        return group

    def get_group(self, group_id: int) -> GroupRecord | None:
        found = self._load_groups("WHERE id = ?", [group_id])
        return found[0] if found else None

    def groups(self, *, live_only: bool = False) -> list[GroupRecord]:
        """Every group with its files, by id; `live_only`: only groups with a non-terminal file."""
        if live_only:
            return self._load_groups(
                f"WHERE id IN (SELECT group_id FROM files WHERE status IN ({_marks(_LIVE)}))",
                _LIVE,
            )
        return self._load_groups("", [])

    def find_group(self, key: str) -> GroupRecord | None:
        """The newest group with this dedupe key."""
        found = self._load_groups("WHERE id = (SELECT max(id) FROM groups WHERE key = ?)", [key])
        return found[0] if found else None

    def update_group(self, group_id: int, **fields: object) -> None:
        """Set GroupRecord fields (priority, commit, ...) of a group; a missing group is ignored."""
        assignments, values = _assignments(fields, _GROUP_UPDATABLE, "GroupRecord")
        if assignments:
            with self._write() as db:
                db.execute(f"UPDATE groups SET {assignments} WHERE id = ?", [*values, group_id])

    def finish_group(self, group_id: int, finished_at: float) -> None:
        with self._write() as db:
            db.execute("UPDATE groups SET finished_at = ? WHERE id = ?", [finished_at, group_id])

    def forget_group(self, group_id: int) -> bool:
        """Delete a group and its files, whatever their status; False when there was none."""
        with self._write() as db:
            cursor = db.execute("DELETE FROM groups WHERE id = ?", [group_id])
        return cursor.rowcount == 1

    def forget_finished(self) -> list[int]:
        """Delete every group whose files are all terminal; return their ids, ascending."""
        with self._transaction() as db:
            rows = db.execute(
                "DELETE FROM groups WHERE NOT EXISTS (SELECT 1 FROM files"
                f" WHERE files.group_id = groups.id AND status IN ({_marks(_LIVE)}))"
                " RETURNING id",
                _LIVE,
            ).fetchall()
        return sorted(int(row[0]) for row in rows)

    # -- files ----------------------------------------------------------------------------------

    def get_file(self, group_id: int, index: int) -> FileRecord | None:
        with self._errors():
            row = self._conn.execute(
                f"SELECT {_FILE_SELECT} FROM files WHERE group_id = ? AND idx = ?",
                [group_id, index],
            ).fetchone()
        return None if row is None else _decode_file(row)

    def files(self, statuses: Collection[FileStatus] | None = None) -> list[FileRecord]:
        """Files by (group id, index), all of them or those in one of `statuses`."""
        sql = f"SELECT {_FILE_SELECT} FROM files"
        values: list[str] = []
        if statuses is not None:
            values = [FileStatus(s).value for s in statuses]
            sql += f" WHERE status IN ({_marks(values)})"
        with self._errors():
            rows = self._conn.execute(sql + " ORDER BY group_id, idx", values).fetchall()
        return [_decode_file(row) for row in rows]

    def transition(
        self,
        group_id: int,
        index: int,
        to: FileStatus,
        *,
        allowed_from: Collection[FileStatus],
        **fields: object,
    ) -> bool:
        """Set a file's status (and FileRecord `fields`) only if its status is in `allowed_from`,
        in one UPDATE. True when the row changed; False when it is missing or in another state."""
        allowed = tuple(FileStatus(s).value for s in allowed_from)
        names = tuple(fields)
        # The manager makes a handful of shapes of transition, thousands of times: the text of
        # each is built (and its field names checked) once.
        sql = _TRANSITION_SQL.get((names, allowed))
        if sql is None:
            if not allowed:
                raise ValueError("allowed_from is empty: the transition could never happen")
            assignments, _ = _assignments(fields, _FILE_UPDATABLE, "FileRecord")
            extra = f", {assignments}" if assignments else ""
            sql = (
                f"UPDATE files SET status = ?{extra}"
                f" WHERE group_id = ? AND idx = ? AND status IN ({_marks(allowed)})"
            )
            if len(_TRANSITION_SQL) < 256:  # bounded whatever callers pass
                _TRANSITION_SQL[names, allowed] = sql
        cursor = self._execute(
            sql, [FileStatus(to).value, *map(_sql, fields.values()), group_id, index, *allowed]
        )
        return cursor.rowcount == 1

    def update_file(self, group_id: int, index: int, **fields: object) -> None:
        """Set FileRecord fields without a status guard (validators, expected size, ...).
        `status` is refused: use `transition`. A missing file is ignored."""
        assignments, values = _assignments(fields, _FILE_UPDATABLE, "FileRecord")
        if assignments:
            with self._write() as db:
                db.execute(
                    f"UPDATE files SET {assignments} WHERE group_id = ? AND idx = ?",
                    [*values, group_id, index],
                )

    def save_progress(self, rows: Iterable[tuple[int, int, int, int | None]]) -> None:
        """Checkpoint (group_id, index, bytes_done, bytes_total) rows in one transaction.
        A total of None keeps the total already known."""
        params = [(done, total, group_id, index) for group_id, index, done, total in rows]
        if not params:
            return
        with self._transaction() as db:
            db.executemany(
                "UPDATE files SET bytes_done = ?, bytes_total = coalesce(?, bytes_total)"
                " WHERE group_id = ? AND idx = ?",
                params,
            )

    def set_order(
        self, changes: Mapping[tuple[int, int], int], *, priority: int | None = None
    ) -> None:
        """Persist order keys returned by the scheduling queue (and, for `set_priority`, the
        priority they moved to) in one transaction."""
        if not changes:
            return
        with self._transaction() as db:
            if priority is None:
                db.executemany(
                    "UPDATE files SET order_key = ? WHERE group_id = ? AND idx = ?",
                    [(key, g, i) for (g, i), key in changes.items()],
                )
            else:
                db.executemany(
                    "UPDATE files SET order_key = ?, priority = ? WHERE group_id = ? AND idx = ?",
                    [(key, priority, g, i) for (g, i), key in changes.items()],
                )

    def recover(self) -> list[FileRecord]:
        """At start: every file left `active` by a crash goes back to `queued` (bytes and `.part`
        kept), in one transaction. Returns those rows as they are now."""
        with self._transaction() as db:
            rows = db.execute(
                "UPDATE files SET status = ? WHERE status = ? RETURNING " + _FILE_SELECT,
                [FileStatus.QUEUED.value, FileStatus.ACTIVE.value],
            ).fetchall()
        return sorted((_decode_file(row) for row in rows), key=lambda f: (f.group_id, f.index))

    def remember_verified(self, path: str, size: int, mtime_ns: int, sha256: str) -> None:
        """Record that the file at `path`, as it is now (size, mtime), has this digest. Inside a
        batch the row is written together with the batch's others just before it commits."""
        row = (path, size, mtime_ns, sha256)
        if self._batching:
            self._conn  # noqa: B018 -- a closed store refuses now, not at the commit
            self._verified[path] = row
            return
        self._execute(_REMEMBER_VERIFIED, row)

    def verified_digest(self, path: str, size: int, mtime_ns: int) -> str | None:
        """The digest recorded for `path` if the file has not changed since (size and mtime)."""
        pending = self._verified.get(path)
        if pending is not None:  # remembered in the open batch
            return pending[3] if pending[1:3] == (size, mtime_ns) else None
        row = self._conn.execute(
            "SELECT sha256 FROM verified_files WHERE path = ? AND size = ? AND mtime_ns = ?",
            (path, size, mtime_ns),
        ).fetchone()
        return None if row is None else str(row[0])

    # -- segment maps and per-download limits (multi-connection downloads) ----------------------

    def save_segments(
        self, group_id: int, index: int, segments: Sequence[SegmentRecord] | None
    ) -> None:
        """Replace the segment map of a file's `.part` (None or empty: forget it), in one
        transaction. A missing file is ignored."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM files WHERE group_id = ? AND idx = ?", [group_id, index]
            ).fetchone()
            if row is None:
                return
            db.execute("DELETE FROM file_segments WHERE file_id = ?", [row[0]])
            if segments:
                db.executemany(
                    "INSERT INTO file_segments (file_id, seg_start, seg_end, done)"
                    " VALUES (?, ?, ?, ?)",
                    [(row[0], s.start, s.end, s.done) for s in segments],
                )

    def segments(self, group_id: int, index: int) -> tuple[SegmentRecord, ...] | None:
        """The segment map last saved for a file, by start; None when there is none."""
        with self._errors():
            rows = self._conn.execute(
                "SELECT seg_start, seg_end, done FROM file_segments WHERE file_id ="
                " (SELECT id FROM files WHERE group_id = ? AND idx = ?) ORDER BY seg_start",
                [group_id, index],
            ).fetchall()
        if not rows:
            return None
        return tuple(SegmentRecord(int(a), int(b), int(d)) for a, b, d in rows)

    def set_group_limits(
        self,
        group_id: int,
        *,
        rate_limit: int | _Keep | None = _KEEP,
        connections: int | _Keep | None = _KEEP,
    ) -> None:
        """Set (a value) or clear (None) a download's own bandwidth limit in bytes/s and its
        connections per file; a limit not given is left as it is."""
        fields: dict[str, int | None] = {}
        if not isinstance(rate_limit, _Keep):
            fields["rate_limit"] = rate_limit
        if not isinstance(connections, _Keep):
            fields["connections"] = connections
        if fields:
            assignments = ", ".join(f"{name} = ?" for name in fields)
            with self._write() as db:
                db.execute(
                    f"UPDATE groups SET {assignments} WHERE id = ?", [*fields.values(), group_id]
                )

    def group_limits(self, group_id: int) -> tuple[int | None, int | None]:
        """(rate_limit bytes/s, connections per file) of a download; None where not set."""
        with self._errors():
            row = self._conn.execute(
                "SELECT rate_limit, connections FROM groups WHERE id = ?", [group_id]
            ).fetchone()
        if row is None:
            return None, None
        return row[0], row[1]

    def segmented_files(self) -> set[tuple[int, int]]:
        """(group id, index) of every file that has a segment map."""
        with self._errors():
            rows = self._conn.execute(
                "SELECT group_id, idx FROM files WHERE id IN (SELECT file_id FROM file_segments)"
            ).fetchall()
        return {(int(g), int(i)) for g, i in rows}

    # -- batches --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Every write inside the block joins one transaction, committed (one WAL commit instead
        of one per write) when the block ends; a nested `batch` joins the outer one.

        Each write stays atomic on its own: a failing statement or multi-statement method
        (savepoint) leaves no trace, and the block's exception propagates. What succeeded before
        it is still committed, so a caller that mirrors each successful write in memory stays
        in step with the file. A failed COMMIT raises `StateError` and rolls back the batch.
        `remember_verified` rows (a cache of digests) are written in one statement right
        before the COMMIT, and seen by `verified_digest` meanwhile."""
        if self._batching:
            yield
            return
        self.begin_batch()
        try:
            yield
        finally:
            self.end_batch()

    def begin_batch(self) -> None:
        """`batch()` in two calls, for a batch that outlives one block: writes from here on
        join one transaction until `end_batch`."""
        if self._batching:
            raise RuntimeError("a batch is already open")
        self._conn  # noqa: B018 -- a closed store refuses now, not at the first write
        self._batching = True  # BEGIN comes with the first write: a batch may write nothing

    def end_batch(self) -> None:
        """Commit the open batch (if it wrote anything); see `batch()`."""
        if not self._batching:
            return
        self._batching = False
        verified, self._verified = self._verified, {}
        if not self._begun and not verified:
            return
        self._begun = False
        db = self._conn
        try:
            with self._errors():
                if not db.in_transaction:
                    db.execute("BEGIN IMMEDIATE")
                if verified:
                    db.executemany(_REMEMBER_VERIFIED, list(verified.values()))
                db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    @property
    def batching(self) -> bool:
        """True while a batch is open: writes are not committed yet."""
        return self._batching

    def integrity_check(self) -> str:
        """SQLite's own check of the file: "ok", or its list of problems one per line."""
        with self._errors():
            rows = self._conn.execute("PRAGMA integrity_check").fetchall()
        return "\n".join(str(row[0]) for row in rows)

    # -- internals ------------------------------------------------------------------------------

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"the store at {self._path} is closed")
        return self._db

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """The one seam where sqlite3 errors become ours: a rejected value is the caller's bug
        (ValueError), anything else means the state file cannot be used (StateError)."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self._ours(exc) from exc

    def _ours(self, exc: sqlite3.Error) -> Exception:
        if isinstance(exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.DataError)):
            return ValueError(f"rejected by the state database: {exc}")
        return StateError(f"state database {self._path}: {exc}")

    def _execute(self, sql: str, params: Sequence[object]) -> sqlite3.Cursor:
        """`with self._write() as db: return db.execute(sql, params)`, without the cost of two
        context managers: for the writes the manager makes for every file."""
        db = self._conn
        try:
            if self._batching and not self._begun:
                db.execute("BEGIN IMMEDIATE")
                self._begun = True
            return db.execute(sql, params)
        except sqlite3.Error as exc:
            raise self._ours(exc) from exc

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write statement: committed on its own (autocommit), or inside a batch."""
        db = self._conn
        with self._errors():
            if self._batching and not self._begun:
                db.execute("BEGIN IMMEDIATE")
                self._begun = True
            yield db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT around several statements; ROLLBACK on any error. Inside a
        `batch()` a savepoint instead: all or nothing, committed with the batch."""
        db = self._conn
        if self._batching:
            with self._errors():
                if not self._begun:
                    db.execute("BEGIN IMMEDIATE")
                    self._begun = True
                db.execute("SAVEPOINT store_write")
                try:
                    yield db
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK TO store_write")
                        db.execute("RELEASE store_write")
                    raise
                db.execute("RELEASE store_write")
            return
        with self._errors():
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _load_groups(self, where: str, values: Sequence[object]) -> list[GroupRecord]:
        db = self._conn
        with self._errors():
            group_rows = db.execute(
                f"SELECT {_GROUP_SELECT} FROM groups {where} ORDER BY id", values
            ).fetchall()
            file_rows = db.execute(
                f"SELECT {_FILE_SELECT} FROM files"
                f" WHERE group_id IN (SELECT id FROM groups {where}) ORDER BY group_id, idx",
                values,
            ).fetchall()
        groups = [_decode_group(row) for row in group_rows]
        by_id = {group.id: group for group in groups}
        for row in file_rows:
            record = _decode_file(row)
            owner = by_id.get(record.group_id)
            if owner is not None:  # a group inserted between the two reads is left out
                owner.files.append(record)
        return groups


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


def _lock(home: Path) -> int:
    """Take the exclusive lock of a state directory and write our pid into it.

    flock locks belong to the open file description, so a second open of the same file fails
    even inside this process; the kernel drops the lock when the process dies, however it dies.
    """
    path = home / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StateError(f"cannot open the lock file {path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        pid = holder if holder.isdigit() else "unknown"
        raise StateLockedError(f"another modelfetch process (pid {pid}) is using {home}") from None
    except OSError as exc:
        os.close(fd)
        raise StateError(f"cannot lock {path}: {exc}") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def _connect(path: Path) -> sqlite3.Connection:
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


def _assignments(
    fields: Mapping[str, object], allowed: frozenset[str], record: str
) -> tuple[str, list[object]]:
    unknown = sorted(set(fields) - allowed)
    if unknown:
        hint = " (use transition() to change a status)" if "status" in unknown else ""
        raise ValueError(f"not updatable {record} fields: {', '.join(unknown)}{hint}")
    sql = ", ".join(f"{_RENAMED.get(name, name)} = ?" for name in fields)
    return sql, [_sql(value) for value in fields.values()]


_PLAIN: Final = frozenset({str, int, float, bytes, type(None)})
_REMEMBER_VERIFIED: Final = (
    "INSERT INTO verified_files (path, size, mtime_ns, sha256) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (path) DO UPDATE SET size = excluded.size,"
    " mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256"
)
# `transition` statements by (field names, allowed statuses).
_TRANSITION_SQL: Final[dict[tuple[tuple[str, ...], tuple[str, ...]], str]] = {}


def _sql(value: object) -> object:
    if type(value) in _PLAIN:  # most values: no conversion (bool and enums are not plain)
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bool):
        return int(value)
    return value


def _columns(names: Sequence[str]) -> str:
    return ", ".join(_RENAMED.get(name, name) for name in names)


def _marks(values: Sized) -> str:
    return ", ".join(["?"] * len(values))


# Positions in a row (columns are selected in field order), for decoding 10,000 rows quickly.
_FILE_STATUS_AT: Final = _FILE_FIELDS.index("status")
_FILE_REALS_AT: Final = tuple(i for i, name in enumerate(_FILE_FIELDS) if name in _REAL_FIELDS)
_GROUP_REALS_AT: Final = tuple(i for i, name in enumerate(_GROUP_FIELDS) if name in _REAL_FIELDS)
_STATUSES: Final = {s.value: s for s in FileStatus}


def _decode_file(row: Sequence[Any]) -> FileRecord:
    values = list(row)
    if len(values) != len(_FILE_FIELDS):
        raise ValueError(f"a files row has {len(values)} columns, not {len(_FILE_FIELDS)}")
    raw = values[_FILE_STATUS_AT]
    status = _STATUSES.get(raw)
    if status is None:
        named = dict(zip(_FILE_FIELDS, values, strict=True))
        raise StateError(
            f"file {named['group_id']}.{named['index']} has an unknown status {raw!r}"
            " (written by a newer modelfetch?)"
        )
    values[_FILE_STATUS_AT] = status
    for i in _FILE_REALS_AT:
        if values[i] is not None:
            values[i] = float(values[i])
    return FileRecord(*values)


def _decode_group(row: Sequence[Any]) -> GroupRecord:
    values = list(row)
    if len(values) != len(_GROUP_FIELDS):
        raise ValueError(f"a groups row has {len(values)} columns, not {len(_GROUP_FIELDS)}")
    for i in _GROUP_REALS_AT:
        if values[i] is not None:
            values[i] = float(values[i])
    return GroupRecord(*values)


class SqliteStoreReader(SqliteStore):
    """The queue as another process last committed it, read without the lock and without writing.

    For showing the queue while a manager in another process owns the state directory. The file
    is opened read-only (`mode=ro`): a WAL reader sees the last committed transaction, and the
    owner's checkpoints (bytes about once a second) are what it shows. Nothing is migrated or
    recovered: a database of another schema version is refused with a clear `StateError`. Every
    read method of `SqliteStore` works; every write raises `StateError` before touching the file.
    """

    def __init__(self, home: Path) -> None:
        # Not SqliteStore.__init__: that one takes the lock, creates the file and migrates it.
        self._path = Path(home) / DB_NAME
        self._lock_fd = None
        self._db = None
        self._batching = False
        self._begun = False
        self._verified = {}
        if not self._path.is_file():
            raise StateError(f"{self._path} does not exist: there is no queue to show")
        self._db = _connect_readonly(self._path)

    @property
    def closed(self) -> bool:
        return self._db is None

    def __enter__(self) -> SqliteStoreReader:
        return self

    def __repr__(self) -> str:
        return f"<SqliteStoreReader {str(self._path)!r}{' closed' if self.closed else ''}>"

    def begin_batch(self) -> None:
        raise self._read_only()

    def _execute(self, sql: str, params: Sequence[object]) -> sqlite3.Cursor:
        raise self._read_only()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        raise self._read_only()
        yield self._conn  # pragma: no cover -- makes this a generator

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        raise self._read_only()
        yield self._conn  # pragma: no cover -- makes this a generator

    def _read_only(self) -> StateError:
        return StateError(f"{self._path} is open read-only here: another process owns it")


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to a modelfetch database at this schema version.

    No PRAGMA that writes (journal_mode, migrations): the owner set WAL mode in the file's header
    already. The busy timeout is `_connect`'s, for the moment a checkpoint holds a lock."""
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
        db.execute(f"SELECT {_GROUP_SELECT} FROM groups LIMIT 0").fetchall()
        db.execute(f"SELECT {_FILE_SELECT} FROM files LIMIT 0").fetchall()
    except sqlite3.Error as exc:
        db.close()
        raise StateError(f"{path} cannot be used as a modelfetch database: {exc}") from exc
    except BaseException:
        db.close()
        raise
    return db


# Transitional names until the store protocol lands (issue 12).
Store = SqliteStore
StoreReader = SqliteStoreReader
