"""How the PostgreSQL store writes: autocommit statements, batches, savepoints, its error seam.

`PostgresTransactions` is the base of `PostgresStore`: it owns the connection and decides, for
each write, whether it commits on its own or joins the open batch's one transaction.

Unlike SQLite, PostgreSQL aborts the whole transaction at the first failing statement. A batch
promises that a failed write leaves no trace while the batch's other writes still commit, so
inside a batch every write runs in its own savepoint (psycopg's nested `transaction()`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Final

import psycopg
from psycopg import pq

from modelfetch.core.errors import StateError
from modelfetch.store.postgres_connect import Connection, connect, describe, one_line
from modelfetch.store.protocol import StoreUnavailableError

__all__ = ["REMEMBER_VERIFIED", "REMEMBER_VERIFIED_MANY", "PostgresTransactions"]

REMEMBER_VERIFIED: Final = (
    "INSERT INTO verified_files (path, size, mtime_ns, sha256) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (path) DO UPDATE SET size = excluded.size,"
    " mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256"
)
# A batch's digests in one statement (paths are unique: ON CONFLICT may touch a row only once).
REMEMBER_VERIFIED_MANY: Final = (
    "INSERT INTO verified_files (path, size, mtime_ns, sha256)"
    " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::text[])"
    " ON CONFLICT (path) DO UPDATE SET size = excluded.size,"
    " mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256"
)
# SQLSTATE classes of a value the database rejects: data exceptions, integrity violations, and
# a parameter of the wrong type (datatype_mismatch).
_REJECTED: Final = ("22", "23", "42804")
# SQLSTATEs of a server that went away or is not taking connections yet: connection exceptions,
# admin/crash shutdown, "the database system is starting up".
_UNAVAILABLE: Final = ("08", "57P01", "57P02", "57P03")


class PostgresTransactions:
    """One connection to a PostgreSQL state database and the transaction discipline of writes."""

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        self._url = url  # kept in memory only, to reconnect; never shown
        self._read_only_connection = read_only
        self._where = describe(url)  # the URL without its password, for messages
        self._db: Connection | None = None
        self._batching = False
        self._begun = False  # inside a batch: its BEGIN has been issued
        self._verified: dict[str, tuple[str, int, int, str]] = {}

    # -- batches --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Every write inside the block joins one transaction, committed when the block ends;
        a nested `batch` joins the outer one. See `Store.batch`."""
        if self._batching:
            yield
            return
        self.begin_batch()
        try:
            yield
        finally:
            self.end_batch()

    def begin_batch(self) -> None:
        if self._batching:
            raise RuntimeError("a batch is already open")
        if self._db is None:  # a closed store refuses now (an unreachable one: at the writes)
            raise RuntimeError(f"the store at {self._where} is closed")
        self._batching = True  # BEGIN comes with the first write: a batch may write nothing

    def end_batch(self) -> None:
        """Commit the open batch (if it wrote anything); a failed commit is a StateError and
        keeps nothing of the batch."""
        if not self._batching:
            return
        self._batching = False
        verified, self._verified = self._verified, {}
        if not self._begun and not verified:
            return
        try:
            db = self._conn  # StateError when the connection, and so the batch, was lost
        finally:
            self._begun = False
        try:
            if db.info.transaction_status == pq.TransactionStatus.IDLE:
                db.execute("BEGIN")
            if verified:
                db.execute(
                    REMEMBER_VERIFIED_MANY,
                    [list(col) for col in zip(*verified.values(), strict=True)],
                )
            if db.info.transaction_status != pq.TransactionStatus.INTRANS:
                # An aborted transaction "commits" as a silent rollback: say so instead.
                raise StateError(f"state database {self._where}: the batch was aborted")
            db.execute("COMMIT")
        except psycopg.Error as exc:
            self._rollback(db)
            error = StoreUnavailableError if self._unavailable(exc) else StateError
            raise error(
                f"state database {self._where}: a batch failed to commit: {one_line(str(exc))}"
            ) from exc
        except BaseException:
            self._rollback(db)
            raise

    @property
    def batching(self) -> bool:
        return self._batching

    # -- internals ------------------------------------------------------------------------------

    @property
    def _conn(self) -> Connection:
        """The connection; a new one when the old one broke (the server restarted, the network
        dropped): the call that hit the break raised StateError, the next one reconnects (and
        raises StateError again while the server cannot be reached). A batch whose transaction
        died with the connection is not replayed: its writes are gone, and every call until
        `end_batch` says so."""
        db = self._db
        if db is None:
            raise RuntimeError(f"the store at {self._where} is closed")
        if db.closed:
            if self._begun:
                raise StoreUnavailableError(
                    f"state database {self._where}: the connection was lost in the middle of a"
                    " batch; its writes were not kept"
                )
            try:
                db = connect(self._url, read_only=self._read_only_connection)
            except StateError as exc:  # one line, without the password, already
                raise StoreUnavailableError(str(exc)) from None
            self._db = db
        return db

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """The one seam where psycopg errors become ours: a rejected value is the caller's bug
        (ValueError), anything else means the database cannot be used (StateError)."""
        try:
            yield
        except psycopg.Error as exc:
            raise self._ours(exc) from exc

    def _ours(self, exc: psycopg.Error) -> Exception:
        state = exc.sqlstate
        client_side = state is None and isinstance(
            exc, (psycopg.DataError, psycopg.ProgrammingError)
        )
        if client_side or (state is not None and state.startswith(_REJECTED)):
            return ValueError(f"rejected by the state database: {one_line(str(exc))}")
        if self._unavailable(exc):
            return StoreUnavailableError(
                f"state database {self._where} unreachable: {one_line(str(exc))}"
            )
        return StateError(f"state database {self._where}: {one_line(str(exc))}")

    def _unavailable(self, exc: psycopg.Error) -> bool:
        """The error is the connection's, not the statement's: it broke, or the server is
        shutting down or starting up."""
        db = self._db
        if db is not None and (db.closed or db.broken):
            return True
        state = exc.sqlstate
        if state is None:
            return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
        return state.startswith(_UNAVAILABLE)

    def _begin(self, db: Connection) -> None:
        if self._batching and not self._begun:
            db.execute("BEGIN")
            self._begun = True

    def _execute(self, sql: str, params: Sequence[object]) -> psycopg.Cursor[tuple[Any, ...]]:
        """One write statement, prepared: committed on its own, or in a savepoint of the batch."""
        db = self._conn
        try:
            if not self._batching:
                return db.execute(sql, params, prepare=True)
            self._begin(db)
            with db.transaction():
                return db.execute(sql, params, prepare=True)
        except psycopg.Error as exc:
            raise self._ours(exc) from exc

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """BEGIN ... COMMIT around several statements, ROLLBACK on any error; inside a batch a
        savepoint instead: all or nothing, committed with the batch."""
        db = self._conn
        with self._errors():
            self._begin(db)
            with db.transaction():
                yield db

    def _rollback(self, db: Connection) -> None:
        if not db.closed and db.info.transaction_status != pq.TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                db.execute("ROLLBACK")
