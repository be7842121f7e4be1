"""The PostgreSQL engine of the `Store` protocol: `PostgresStore`, a queue several processes share.

`PostgresStore(url)` implements `Store` with the same semantics as `SqliteStore` (guarded
`transition`, batches as one transaction, `set_order`, segment maps, limits, verified digests),
over one synchronous psycopg 3 connection in autocommit mode. The manager calls the store on its
event loop, so each method is as few round trips as it can be: one prepared statement where one
statement can do the work (multi-row writes go through `unnest` arrays, not a loop of rows).

What differs from SQLite, on purpose:
- opening it takes no exclusive ownership: any number of processes, on any number of hosts,
  open the same database and share its queue. Who works which file is a lease on that file
  (`claim`, `renew`, `release` and the fenced writes of `store/postgres_leases.py`, the
  `LeasingStore` protocol), not a lock on the whole state;
- `recover` returns to `queued` only the active files nobody holds a live lease on (an
  unleased active file, or one whose lease has lapsed), so a worker starting up never takes
  files from a worker that is alive;
- leaving `active` ends the file's lease, in the same statement;
- the server can go away: the call that finds the connection broken raises `StateError`, the
  next one reconnects (`store/postgres_transactions.py`); an open batch is lost with it;
- `check_models_dir` refuses a models directory that is not the queue's shared one (a marker
  file, `store/postgres_marker.py`); `open_store` calls it.

Statements are prepared on the server (psycopg `prepare=True`), so a pooler in front of the
database must keep sessions (pgbouncer's session mode, not transaction mode).

The URL never appears in a message or a repr with its password (`store/postgres_connect.py`).
As with SQLite, no column holds a credential.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from modelfetch.core.models import FileRecord, FileStatus, GroupRecord
from modelfetch.core.segments import SegmentRecord
from modelfetch.store.postgres_connect import connect, migrate
from modelfetch.store.postgres_leases import PostgresLeases
from modelfetch.store.postgres_marker import check_models_dir
from modelfetch.store.postgres_transactions import REMEMBER_VERIFIED
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
    set_clause,
)
from modelfetch.store.schema import SCHEMA_VERSION

__all__ = ["PostgresStore"]

_TRANSITION_SQL: Final[dict[tuple[tuple[str, ...], bool], str]] = {}
# Leaving `active` ends the lease (the table's CHECK insists).
_END_LEASE: Final = ", holder = NULL, fence = NULL, lease_expires = NULL"
_GROUP_INSERT: Final = tuple(n for n in GROUP_FIELDS if n not in ("id", "created_at"))
_FILE_INSERT: Final = tuple(n for n in FILE_FIELDS if n not in ("id", "group_id", "created_at"))


def pg_set_clause(
    fields: Mapping[str, object], allowed: frozenset[str], record: str
) -> tuple[str, list[object]]:
    """`rows.set_clause` with psycopg's placeholders (column names never contain a `?`)."""
    sql, values = set_clause(fields, allowed, record)
    return sql.replace("?", "%s"), values


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)


class PostgresStore(PostgresLeases):
    """The PostgreSQL repository of groups and files, shared by every process that opens it."""

    SCHEMA_VERSION: Final = SCHEMA_VERSION

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._db = connect(url)
        try:
            self.migrated_from: int = migrate(self._db, self._where)
        except BaseException:
            self.close()
            raise

    # -- lifetime -------------------------------------------------------------------------------

    def check_models_dir(self, models_dir: Path) -> None:
        """Refuse (StateError) a models directory that is not the one this queue's workers
        share; the first worker of a queue marks its directory (`store/postgres_marker.py`)."""
        db = self._conn
        with self._errors():
            check_models_dir(db, self._where, Path(models_dir))

    @property
    def where(self) -> str:
        """The database, as a URL without its password."""
        return self._where

    @property
    def closed(self) -> bool:
        return self._db is None

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

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
        return f"<{type(self).__name__} {self._where!r}{' closed' if self.closed else ''}>"

    # -- groups ---------------------------------------------------------------------------------

    def add_group(self, group: GroupRecord) -> GroupRecord:
        if group.id:
            raise ValueError(f"group {group.id} is already stored")
        indexes = sorted(f.index for f in group.files)
        if indexes != list(range(1, len(indexes) + 1)):
            raise ValueError(f"file indexes must be 1..{len(indexes)}, got {indexes}")
        created_at = group.created_at or time.time()
        with self._transaction() as db:
            row = db.execute(
                f"INSERT INTO groups ({columns(_GROUP_INSERT)}, created_at)"
                f" VALUES ({_marks(len(_GROUP_INSERT) + 1)}) RETURNING id",
                [*(encode(getattr(group, name)) for name in _GROUP_INSERT), created_at],
            ).fetchone()
            assert row is not None
            group_id = int(row[0])
            if group.files:
                # executemany pipelines the rows: one round trip, not one per file.
                db.cursor().executemany(
                    f"INSERT INTO files ({columns(_FILE_INSERT)}, group_id, created_at)"
                    f" VALUES ({_marks(len(_FILE_INSERT) + 2)})",
                    [
                        [
                            *(encode(getattr(record, name)) for name in _FILE_INSERT),
                            group_id,
                            record.created_at or created_at,
                        ]
                        for record in group.files
                    ],
                )
            ids_by_index = dict(
                db.execute("SELECT idx, id FROM files WHERE group_id = %s", [group_id]).fetchall()
            )
            file_ids = [int(ids_by_index[record.index]) for record in group.files]
        group.id, group.created_at = group_id, created_at
        for record, file_id in zip(group.files, file_ids, strict=True):
            record.id, record.group_id = file_id, group_id
            record.created_at = record.created_at or created_at
        return group

    def get_group(self, group_id: int) -> GroupRecord | None:
        found = self._load_groups("WHERE id = %s", [group_id])
        return found[0] if found else None

    def groups(
        self,
        *,
        live_only: bool = False,
        added_after: int | None = None,
        limit: int | None = None,
    ) -> list[GroupRecord]:
        where, values = groups_where(
            live_only=live_only,
            added_after=added_after,
            limit=limit,
            live=("id IN (SELECT group_id FROM files WHERE status = ANY(?))", [list(LIVE)]),
        )
        return self._load_groups(where.replace("?", "%s"), values, limit=limit)

    def find_group(self, key: str) -> GroupRecord | None:
        found = self._load_groups("WHERE id = (SELECT max(id) FROM groups WHERE key = %s)", [key])
        return found[0] if found else None

    def update_group(self, group_id: int, **fields: object) -> None:
        assignments, values = pg_set_clause(fields, GROUP_UPDATABLE, "GroupRecord")
        if assignments:
            self._execute(f"UPDATE groups SET {assignments} WHERE id = %s", [*values, group_id])

    def finish_group(self, group_id: int, finished_at: float) -> None:
        self._execute("UPDATE groups SET finished_at = %s WHERE id = %s", [finished_at, group_id])

    def forget_group(self, group_id: int) -> bool:
        return self._execute("DELETE FROM groups WHERE id = %s", [group_id]).rowcount == 1

    def forget_finished(self) -> list[int]:
        rows = self._execute(
            "DELETE FROM groups WHERE NOT EXISTS (SELECT 1 FROM files"
            " WHERE files.group_id = groups.id AND status = ANY(%s)) RETURNING id",
            [list(LIVE)],
        ).fetchall()
        return sorted(int(row[0]) for row in rows)

    # -- files ----------------------------------------------------------------------------------

    def get_file(self, group_id: int, index: int) -> FileRecord | None:
        row = self._read_one(
            f"SELECT {FILE_SELECT} FROM files WHERE group_id = %s AND idx = %s", [group_id, index]
        )
        return None if row is None else decode_file(row)

    def files(self, statuses: Collection[FileStatus] | None = None) -> list[FileRecord]:
        if statuses is None:
            rows = self._read(f"SELECT {FILE_SELECT} FROM files ORDER BY group_id, idx", [])
        else:
            values = [FileStatus(s).value for s in statuses]
            if not values:
                self._conn  # noqa: B018 -- a closed store refuses even an empty question
                return []
            rows = self._read(
                f"SELECT {FILE_SELECT} FROM files WHERE status = ANY(%s) ORDER BY group_id, idx",
                [values],
            )
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
        allowed = [FileStatus(s).value for s in allowed_from]
        target = FileStatus(to)
        names = tuple(fields)
        key = (names, target is FileStatus.ACTIVE)
        sql = _TRANSITION_SQL.get(key)
        if sql is None:
            assignments, _ = pg_set_clause(fields, FILE_UPDATABLE, "FileRecord")
            extra = f", {assignments}" if assignments else ""
            if target is not FileStatus.ACTIVE:
                extra += _END_LEASE
            sql = (
                f"UPDATE files SET status = %s{extra}"
                " WHERE group_id = %s AND idx = %s AND status = ANY(%s)"
            )
            if len(_TRANSITION_SQL) < 256:  # bounded whatever callers pass
                _TRANSITION_SQL[key] = sql
        if not allowed:
            raise ValueError("allowed_from is empty: the transition could never happen")
        params = [target.value, *map(encode, fields.values()), group_id, index, allowed]
        return self._execute(sql, params).rowcount == 1

    def update_file(self, group_id: int, index: int, **fields: object) -> None:
        assignments, values = pg_set_clause(fields, FILE_UPDATABLE, "FileRecord")
        if assignments:
            self._execute(
                f"UPDATE files SET {assignments} WHERE group_id = %s AND idx = %s",
                [*values, group_id, index],
            )

    def save_progress(self, rows: Iterable[tuple[int, int, int, int | None]]) -> None:
        # By file, the last row wins (as one UPDATE per row in order would have it).
        latest = {(g, i): (done, total) for g, i, done, total in rows}
        if not latest:
            return
        keys, values = list(latest), list(latest.values())
        self._execute(
            "UPDATE files AS f SET bytes_done = v.done,"
            " bytes_total = coalesce(v.total, f.bytes_total)"
            " FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[])"
            " AS v(g, i, done, total) WHERE f.group_id = v.g AND f.idx = v.i",
            [
                [k[0] for k in keys],
                [k[1] for k in keys],
                [v[0] for v in values],
                [v[1] for v in values],
            ],
        )

    def set_order(
        self, changes: Mapping[tuple[int, int], int], *, priority: int | None = None
    ) -> None:
        if not changes:
            return
        self._execute(
            "UPDATE files AS f SET order_key = v.k, priority = coalesce(%s, f.priority)"
            " FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS v(g, i, k)"
            " WHERE f.group_id = v.g AND f.idx = v.i",
            [priority, [g for g, _ in changes], [i for _, i in changes], list(changes.values())],
        )

    def recover(self) -> list[FileRecord]:
        """Every active file nobody holds a live lease on goes back to `queued` (bytes, `.part`
        and segment map kept), in one statement; returns those rows as they are now."""
        rows = self._execute(
            f"UPDATE files SET status = 'queued'{_END_LEASE} WHERE status = 'active'"
            " AND (holder IS NULL OR lease_expires < extract(epoch FROM statement_timestamp()))"
            f" RETURNING {FILE_SELECT}",
            [],
        ).fetchall()
        return sorted((decode_file(row) for row in rows), key=lambda f: (f.group_id, f.index))

    def remember_verified(self, path: str, size: int, mtime_ns: int, sha256: str) -> None:
        row = (path, size, mtime_ns, sha256)
        if self._batching:
            self._conn  # noqa: B018 -- a closed store refuses now, not at the commit
            self._verified[path] = row
            return
        self._execute(REMEMBER_VERIFIED, row)

    def verified_digest(self, path: str, size: int, mtime_ns: int) -> str | None:
        pending = self._verified.get(path)
        if pending is not None:  # remembered in the open batch
            return pending[3] if pending[1:3] == (size, mtime_ns) else None
        row = self._read_one(
            "SELECT sha256 FROM verified_files WHERE path = %s AND size = %s AND mtime_ns = %s",
            [path, size, mtime_ns],
        )
        return None if row is None else str(row[0])

    # -- segment maps and per-download limits ---------------------------------------------------

    def save_segments(
        self, group_id: int, index: int, segments: Sequence[SegmentRecord] | None
    ) -> None:
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM files WHERE group_id = %s AND idx = %s FOR UPDATE",
                [group_id, index],
                prepare=True,
            ).fetchone()
            if row is not None:
                self._replace_segments(db, int(row[0]), segments)

    def segments(self, group_id: int, index: int) -> tuple[SegmentRecord, ...] | None:
        rows = self._read(
            "SELECT seg_start, seg_end, done FROM file_segments WHERE file_id ="
            " (SELECT id FROM files WHERE group_id = %s AND idx = %s) ORDER BY seg_start",
            [group_id, index],
        )
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
        fields: dict[str, int | None] = {}
        if not isinstance(rate_limit, Keep):
            fields["rate_limit"] = rate_limit
        if not isinstance(connections, Keep):
            fields["connections"] = connections
        if fields:
            assignments = ", ".join(f"{name} = %s" for name in fields)
            self._execute(
                f"UPDATE groups SET {assignments} WHERE id = %s", [*fields.values(), group_id]
            )

    def group_limits(self, group_id: int) -> tuple[int | None, int | None]:
        row = self._read_one("SELECT rate_limit, connections FROM groups WHERE id = %s", [group_id])
        if row is None:
            return None, None
        return row[0], row[1]

    def segmented_files(self) -> set[tuple[int, int]]:
        rows = self._read(
            "SELECT group_id, idx FROM files WHERE id IN (SELECT file_id FROM file_segments)", []
        )
        return {(int(g), int(i)) for g, i in rows}

    # -- internals ------------------------------------------------------------------------------

    def _read(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        db = self._conn
        with self._errors():
            return db.execute(sql, params, prepare=True).fetchall()

    def _read_one(self, sql: str, params: Sequence[object]) -> tuple[Any, ...] | None:
        db = self._conn
        with self._errors():
            return db.execute(sql, params, prepare=True).fetchone()

    def _load_groups(
        self, where: str, values: Sequence[object], *, limit: int | None = None
    ) -> list[GroupRecord]:
        page = f" ORDER BY id LIMIT {int(limit)}" if limit is not None else " ORDER BY id"
        group_rows = self._read(f"SELECT {GROUP_SELECT} FROM groups {where}{page}", values)
        if not group_rows:  # (a new download's dedupe lookup, every time): no second read
            return []
        file_rows = self._read(
            f"SELECT {FILE_SELECT} FROM files"
            f" WHERE group_id IN (SELECT id FROM groups {where}{page}) ORDER BY group_id, idx",
            values,
        )
        groups = [decode_group(row) for row in group_rows]
        by_id = {group.id: group for group in groups}
        for row in file_rows:
            record = decode_file(row)
            owner = by_id.get(record.group_id)
            if owner is not None:  # a group inserted between the two reads is left out
                owner.files.append(record)
        return groups
