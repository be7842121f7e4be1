"""The SQLite engine of the `StoreReader` protocol: `SqliteStoreReader`, without the lock."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from modelfetch.core.errors import StateError
from modelfetch.store.schema import DB_NAME
from modelfetch.store.sqlite import SqliteStore
from modelfetch.store.sqlite_connect import connect_readonly
from modelfetch.store.sqlite_transactions import SqliteTransactions

__all__ = ["SqliteStoreReader"]


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
        SqliteTransactions.__init__(self, Path(home) / DB_NAME)
        self._lock_fd = None
        if not self._path.is_file():
            raise StateError(f"{self._path} does not exist: there is no queue to show")
        self._db = connect_readonly(self._path)

    @property
    def closed(self) -> bool:
        return self._db is None

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
