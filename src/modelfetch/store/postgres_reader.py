"""The PostgreSQL engine of the `StoreReader` protocol: `PostgresStoreReader`, a look only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelfetch.core.errors import StateError
from modelfetch.store.postgres import PostgresStore
from modelfetch.store.postgres_connect import check_readable, connect
from modelfetch.store.postgres_leases import PostgresLeases
from modelfetch.store.schema import SCHEMA_VERSION

__all__ = ["PostgresStoreReader"]


class PostgresStoreReader(PostgresStore):
    """The shared queue, read: a read-only connection that never migrates (a database of
    another schema version is refused with `StateError`) and refuses every write with
    `StateError` before it reaches the server."""

    def __init__(self, url: str) -> None:
        PostgresLeases.__init__(self, url, read_only=True)
        self._db = connect(url, read_only=True)
        self.migrated_from = SCHEMA_VERSION
        try:
            check_readable(self._db, self._where)
        except BaseException:
            self.close()
            raise

    def begin_batch(self) -> None:
        raise self._read_only()

    def _execute(self, sql: str, params: Sequence[object]) -> Any:
        raise self._read_only()

    def _transaction(self) -> Any:
        raise self._read_only()

    def _read_only(self) -> Exception:
        return StateError(f"{self._where} is open read-only here")
