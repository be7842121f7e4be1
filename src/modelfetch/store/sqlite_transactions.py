"""How the SQLite store writes: autocommit statements, batches, savepoints, and its error seam.

`SqliteTransactions` is the base of `SqliteStore`: it owns the connection and decides, for each
write, whether it commits on its own or joins the open batch's one transaction.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from modelfetch.core.errors import StateError

__all__ = ["REMEMBER_VERIFIED", "SqliteTransactions"]

REMEMBER_VERIFIED: Final = (
    "INSERT INTO verified_files (path, size, mtime_ns, sha256) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (path) DO UPDATE SET size = excluded.size,"
    " mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256"
)


class SqliteTransactions:
    """One connection to a state database and the transaction discipline of its writes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None
        self._batching = False
        self._begun = False  # inside a batch: its BEGIN has been issued
        # remember_verified rows of the open batch, by path: written in one statement when the
        # batch commits (a completion per file otherwise costs one statement more).
        self._verified: dict[str, tuple[str, int, int, str]] = {}
        # Writes of the open batch not run yet (`_defer`): (sql, params, the row's key).
        self._later: list[tuple[str, Sequence[object], object]] = []

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
        if not self._begun and not verified and not self._later:
            return
        self._begun = False
        db = self._db
        if db is None:
            raise RuntimeError(f"the store at {self._path} is closed")
        try:
            with self._errors():
                if not db.in_transaction:
                    db.execute("BEGIN IMMEDIATE")
                self._run_later(db)
                if verified:
                    db.executemany(REMEMBER_VERIFIED, list(verified.values()))
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

    # -- internals ------------------------------------------------------------------------------

    @property
    def _conn(self) -> sqlite3.Connection:
        """The connection, for a statement: the batch's deferred writes run first, so every
        read and write sees them (in the order they were made)."""
        if self._db is None:
            raise RuntimeError(f"the store at {self._path} is closed")
        if self._later:
            with self._errors():
                self._join_batch(self._db)
                self._run_later(self._db)
        return self._db

    def _join_batch(self, db: sqlite3.Connection) -> None:
        """Inside a batch, its BEGIN, with its first statement (a batch may write nothing)."""
        if self._batching and not self._begun:
            db.execute("BEGIN IMMEDIATE")
            self._begun = True

    def _defer(self, sql: str, params: Sequence[object], key: object) -> None:
        """Run this write with the batch's others, before the next statement of any kind or
        the COMMIT, instead of now. For writes the caller has already decided will succeed (a
        guarded UPDATE whose guard it checked itself, as the store's one writer): each
        statement run on the event loop hands the GIL to the publish threads and waits to
        get it back (~0.2 ms under case 3 of the benchmark, more than the UPDATE), and
        deferred ones of one shape run as one `executemany`. Only inside a batch."""
        if not self._batching:
            raise RuntimeError("a deferred write needs an open batch")
        self._later.append((sql, params, key))

    def _run_later(self, db: sqlite3.Connection) -> None:
        """The deferred writes, in one `executemany` per shape when no row is written twice
        (then their order does not matter), else in order, runs of one shape together."""
        later, self._later = self._later, []
        if not later:
            return
        if len({key for _, _, key in later}) == len(later):
            shapes: dict[str, list[Sequence[object]]] = {}
            for sql, params, _ in later:
                shapes.setdefault(sql, []).append(params)
            for sql, rows in shapes.items():
                db.executemany(sql, rows)
            return
        start = 0
        while start < len(later):
            sql = later[start][0]
            end = start
            while end < len(later) and later[end][0] == sql:
                end += 1
            db.executemany(sql, [params for _, params, _ in later[start:end]])
            start = end

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
            self._join_batch(db)
            return db.execute(sql, params)
        except sqlite3.Error as exc:
            raise self._ours(exc) from exc

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write statement: committed on its own (autocommit), or inside a batch."""
        db = self._conn
        with self._errors():
            self._join_batch(db)
            yield db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT around several statements; ROLLBACK on any error. Inside a
        `batch()` a savepoint instead: all or nothing, committed with the batch."""
        db = self._conn
        if self._batching:
            with self._errors():
                self._join_batch(db)
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
