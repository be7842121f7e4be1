"""The SQLite engine of the `Store` protocol: `SqliteStore`, the owner of `home/state.db`.

`SqliteStore(home)` owns `home/state.db` for as long as it is open: it takes the state
directory's exclusive lock first (`store/lock.py`), so two managers can never write the same
state. It is used directly from the event loop thread; every write is one short transaction that
has committed by the time the method returns, so the manager can emit the matching event right
after. Inside `with store.batch():` writes join one transaction instead, committed when the
block ends (`store/sqlite_transactions.py`): the caller announces them after that.

Shape, after the SQLite-backed queues worth copying (huey, litequeue, persist-queue) and not their
faults:
- typed columns in STRICT tables, never pickled blobs; the schema version is `PRAGMA
  user_version` and `MIGRATIONS` (`store/schema.py`) is the ordered list of scripts that reach it;
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

import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from modelfetch.core.errors import StateError
from modelfetch.core.models import FileRecord, FileStatus, GroupRecord
from modelfetch.core.segments import SegmentRecord
from modelfetch.store.lock import lock_state_dir, unlock
from modelfetch.store.protocol import KEEP, Keep
from modelfetch.store.rows import (
    FILE_FIELDS,
    FILE_SELECT,
    FILE_UPDATABLE,
    GROUP_FIELDS,
    GROUP_SELECT,
    GROUP_UPDATABLE,
    LIVE,
    columns,
    decode_file,
    decode_group,
    encode,
    groups_where,
    marks,
    set_clause,
)
from modelfetch.store.schema import DB_NAME, MIGRATIONS, SCHEMA_VERSION, apply_migrations
from modelfetch.store.sqlite_connect import connect
from modelfetch.store.sqlite_transactions import REMEMBER_VERIFIED, SqliteTransactions

__all__ = ["SqliteStore"]

# `transition` statements by (field names, allowed statuses).
_TRANSITION_SQL: Final[dict[tuple[tuple[str, ...], tuple[str, ...]], str]] = {}


class SqliteStore(SqliteTransactions):
    """The SQLite repository of groups and files. One per state directory, per process."""

    SCHEMA_VERSION: Final = SCHEMA_VERSION

    def __init__(self, home: Path) -> None:
        home = Path(home)
        try:
            home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the state directory {home}: {exc}") from exc
        super().__init__(home / DB_NAME)
        self._lock_fd: int | None = lock_state_dir(home)
        try:
            self._db = connect(self._path)
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
            unlock(fd)

    def __enter__(self) -> Self:
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
        fields = [name for name in GROUP_FIELDS if name not in ("id", "created_at")]
        file_fields = [name for name in FILE_FIELDS if name not in ("id", "group_id", "created_at")]
        with self._transaction() as db:
            row = db.execute(
                f"INSERT INTO groups ({columns(fields)}, created_at)"
                f" VALUES ({marks(fields)}, ?) RETURNING id",
                [*(encode(getattr(group, name)) for name in fields), created_at],
            ).fetchone()
            group_id = int(row[0])
            insert = (
                f"INSERT INTO files ({columns(file_fields)}, group_id, created_at)"
                f" VALUES ({marks(file_fields)}, ?, ?)"
            )
            rows = [
                [
                    *(encode(getattr(record, name)) for name in file_fields),
                    group_id,
                    record.created_at or created_at,
                ]
                for record in group.files
            ]
            if len(rows) == 1:  # most downloads of a list: its id comes back, no second read
                file_ids = [int(db.execute(insert + " RETURNING id", rows[0]).fetchone()[0])]
            else:
                db.executemany(insert, rows)
                ids_by_index = dict(
                    db.execute("SELECT idx, id FROM files WHERE group_id = ?", [group_id])
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

    def groups(
        self,
        *,
        live_only: bool = False,
        added_after: int | None = None,
        limit: int | None = None,
    ) -> list[GroupRecord]:
        """Every group with its files, by id; `live_only`: only groups with a non-terminal file;
        `added_after`: only (or, with `live_only`, also) groups with a larger id; `limit`: the
        first that many."""
        live = f"id IN (SELECT group_id FROM files WHERE status IN ({marks(LIVE)}))"
        where, values = groups_where(
            live_only=live_only, added_after=added_after, limit=limit, live=(live, LIVE)
        )
        return self._load_groups(where, values, limit=limit)

    def find_group(self, key: str) -> GroupRecord | None:
        """The newest group with this dedupe key."""
        found = self._load_groups("WHERE id = (SELECT max(id) FROM groups WHERE key = ?)", [key])
        return found[0] if found else None

    def update_group(self, group_id: int, **fields: object) -> None:
        """Set GroupRecord fields (priority, commit, ...) of a group; a missing group is ignored."""
        assignments, values = set_clause(fields, GROUP_UPDATABLE, "GroupRecord")
        if assignments:
            with self._write() as db:
                db.execute(f"UPDATE groups SET {assignments} WHERE id = ?", [*values, group_id])

    def finish_group(self, group_id: int, finished_at: float) -> None:
        sql = "UPDATE groups SET finished_at = ? WHERE id = ?"
        if self._batching:  # with the batch's other deferred writes (see _defer)
            self._defer(sql, [finished_at, group_id], ("group", group_id))
            return
        with self._write() as db:
            db.execute(sql, [finished_at, group_id])

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
                f" WHERE files.group_id = groups.id AND status IN ({marks(LIVE)}))"
                " RETURNING id",
                LIVE,
            ).fetchall()
        return sorted(int(row[0]) for row in rows)

    # -- files ----------------------------------------------------------------------------------

    def get_file(self, group_id: int, index: int) -> FileRecord | None:
        with self._errors():
            row = self._conn.execute(
                f"SELECT {FILE_SELECT} FROM files WHERE group_id = ? AND idx = ?",
                [group_id, index],
            ).fetchone()
        return None if row is None else decode_file(row)

    def files(self, statuses: Collection[FileStatus] | None = None) -> list[FileRecord]:
        """Files by (group id, index), all of them or those in one of `statuses`."""
        sql = f"SELECT {FILE_SELECT} FROM files"
        values: list[str] = []
        if statuses is not None:
            values = [FileStatus(s).value for s in statuses]
            sql += f" WHERE status IN ({marks(values)})"
        with self._errors():
            rows = self._conn.execute(sql + " ORDER BY group_id, idx", values).fetchall()
        return [decode_file(row) for row in rows]

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
        sql, params = self._transition_statement(group_id, index, to, allowed_from, fields)
        return self._execute(sql, params).rowcount == 1

    def transition_in_batch(
        self,
        group_id: int,
        index: int,
        to: FileStatus,
        *,
        allowed_from: Collection[FileStatus],
        **fields: object,
    ) -> None:
        """`transition` for a caller that knows the row is in `allowed_from` (this store's one
        writer), inside a batch: the UPDATE runs with the batch's other deferred ones before
        anything else reads or writes, at the latest right before its COMMIT (see
        SqliteTransactions._defer)."""
        sql, params = self._transition_statement(group_id, index, to, allowed_from, fields)
        self._defer(sql, params, (group_id, index))

    def _transition_statement(
        self,
        group_id: int,
        index: int,
        to: FileStatus,
        allowed_from: Collection[FileStatus],
        fields: dict[str, object],
    ) -> tuple[str, list[object]]:
        allowed = tuple(FileStatus(s).value for s in allowed_from)
        names = tuple(fields)
        # The manager makes a handful of shapes of transition, thousands of times: the text of
        # each is built (and its field names checked) once.
        sql = _TRANSITION_SQL.get((names, allowed))
        if sql is None:
            if not allowed:
                raise ValueError("allowed_from is empty: the transition could never happen")
            assignments, _ = set_clause(fields, FILE_UPDATABLE, "FileRecord")
            extra = f", {assignments}" if assignments else ""
            sql = (
                f"UPDATE files SET status = ?{extra}"
                f" WHERE group_id = ? AND idx = ? AND status IN ({marks(allowed)})"
            )
            if len(_TRANSITION_SQL) < 256:  # bounded whatever callers pass
                _TRANSITION_SQL[names, allowed] = sql
        return sql, [FileStatus(to).value, *map(encode, fields.values()), group_id, index, *allowed]

    def update_file(self, group_id: int, index: int, **fields: object) -> None:
        """Set FileRecord fields without a status guard (validators, expected size, ...).
        `status` is refused: use `transition`. A missing file is ignored."""
        assignments, values = set_clause(fields, FILE_UPDATABLE, "FileRecord")
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
        priority they moved to) in one transaction; inside a batch, with its other deferred
        writes (see _defer: no savepoint of their own)."""
        if not changes:
            return
        if priority is None:
            sql = "UPDATE files SET order_key = ? WHERE group_id = ? AND idx = ?"
            rows = [[key, g, i] for (g, i), key in changes.items()]
        else:
            sql = "UPDATE files SET order_key = ?, priority = ? WHERE group_id = ? AND idx = ?"
            rows = [[key, priority, g, i] for (g, i), key in changes.items()]
        if self._batching:
            for row in rows:
                self._defer(sql, row, (row[-2], row[-1]))
            return
        with self._transaction() as db:
            db.executemany(sql, rows)

    def recover(self) -> list[FileRecord]:
        """At start: every file left `active` by a crash goes back to `queued` (bytes and `.part`
        kept), in one transaction. Returns those rows as they are now."""
        with self._transaction() as db:
            rows = db.execute(
                "UPDATE files SET status = ? WHERE status = ? RETURNING " + FILE_SELECT,
                [FileStatus.QUEUED.value, FileStatus.ACTIVE.value],
            ).fetchall()
        return sorted((decode_file(row) for row in rows), key=lambda f: (f.group_id, f.index))

    def remember_verified(self, path: str, size: int, mtime_ns: int, sha256: str) -> None:
        """Record that the file at `path`, as it is now (size, mtime), has this digest. Inside a
        batch the row is written together with the batch's others just before it commits."""
        row = (path, size, mtime_ns, sha256)
        if self._batching:
            self._conn  # noqa: B018 -- a closed store refuses now, not at the commit
            self._verified[path] = row
            return
        self._execute(REMEMBER_VERIFIED, row)

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

    def hold_host(self, host: str, until: float) -> None:
        self._execute(
            "INSERT INTO host_holds (host, until) VALUES (?, ?) ON CONFLICT (host)"
            " DO UPDATE SET until = max(until, excluded.until)",
            (host, float(until)),
        )

    def host_holds(self, now: float) -> dict[str, float]:
        rows = self._conn.execute(
            "SELECT host, until FROM host_holds WHERE until > ?", (float(now),)
        ).fetchall()
        return {str(h): float(u) for h, u in rows}

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
        rate_limit: int | Keep | None = KEEP,
        connections: int | Keep | None = KEEP,
    ) -> None:
        """Set (a value) or clear (None) a download's own bandwidth limit in bytes/s and its
        connections per file; a limit not given is left as it is."""
        fields: dict[str, int | None] = {}
        if not isinstance(rate_limit, Keep):
            fields["rate_limit"] = rate_limit
        if not isinstance(connections, Keep):
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

    def integrity_check(self) -> str:
        """SQLite's own check of the file: "ok", or its list of problems one per line."""
        with self._errors():
            rows = self._conn.execute("PRAGMA integrity_check").fetchall()
        return "\n".join(str(row[0]) for row in rows)

    # -- internals ------------------------------------------------------------------------------

    def _load_groups(
        self, where: str, values: Sequence[object], *, limit: int | None = None
    ) -> list[GroupRecord]:
        page = f" ORDER BY id LIMIT {int(limit)}" if limit is not None else " ORDER BY id"
        db = self._conn
        with self._errors():
            group_rows = db.execute(
                f"SELECT {GROUP_SELECT} FROM groups {where}{page}", values
            ).fetchall()
            if not group_rows:  # (a new download's dedupe lookup, every time): no second read
                return []
            file_rows = db.execute(
                f"SELECT {FILE_SELECT} FROM files"
                f" WHERE group_id IN (SELECT id FROM groups {where}{page}) ORDER BY group_id, idx",
                values,
            ).fetchall()
        groups = [decode_group(row) for row in group_rows]
        by_id = {group.id: group for group in groups}
        for row in file_rows:
            record = decode_file(row)
            owner = by_id.get(record.group_id)
            if owner is not None:  # a group inserted between the two reads is left out
                owner.files.append(record)
        return groups
