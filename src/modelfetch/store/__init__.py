"""The durable state of modelfetch: the `Store` protocols and their SQLite and PostgreSQL engines.

- `protocol.py`: `StoreReader` and `Store`, what every engine does (the contract), and the
  optional `LeasingStore` (claims with leases, for a queue several workers share);
- `sqlite.py`, `sqlite_reader.py`: the SQLite engine (`home/state.db`), owner and reader;
- `sqlite_transactions.py`: how SQLite writes commit (autocommit, batches, savepoints);
- `sqlite_connect.py`, `lock.py`: opening the file, and the state directory's lock;
- `postgres.py` (`PostgresStore`), `postgres_reader.py` (`PostgresStoreReader`),
  `postgres_leases.py`, `postgres_transactions.py`, `postgres_connect.py`, `postgres_marker.py`:
  the PostgreSQL engine, a queue several workers share;
- `schema.py`: file names, each engine's numbered migrations, `apply_migrations`; `rows.py`: row
  codecs.

Open a store through `modelfetch.recovery.open_store` / `open_reader`, which pick the engine.
The PostgreSQL names are loaded on first use: importing this package never imports psycopg.
"""

from typing import TYPE_CHECKING, Any

from modelfetch.core.segments import SegmentRecord
from modelfetch.store.protocol import (
    KEEP,
    Claim,
    FleetLimits,
    Keep,
    LeaseLostError,
    LeasingStore,
    Store,
    StoreReader,
    StoreUnavailableError,
    WorkerLoad,
    holder_ids,
)
from modelfetch.store.schema import (
    DB_NAME,
    LOCK_NAME,
    MIGRATIONS,
    POSTGRES_MIGRATIONS,
    SCHEMA_VERSION,
    SQLITE_MIGRATIONS,
    apply_migrations,
)
from modelfetch.store.sqlite import SqliteStore
from modelfetch.store.sqlite_reader import SqliteStoreReader

if TYPE_CHECKING:
    from modelfetch.store.postgres import PostgresStore
    from modelfetch.store.postgres_reader import PostgresStoreReader

__all__ = [
    "DB_NAME",
    "KEEP",
    "LOCK_NAME",
    "MIGRATIONS",
    "POSTGRES_MIGRATIONS",
    "SCHEMA_VERSION",
    "SQLITE_MIGRATIONS",
    "Claim",
    "FleetLimits",
    "Keep",
    "LeaseLostError",
    "LeasingStore",
    "PostgresStore",
    "PostgresStoreReader",
    "SegmentRecord",
    "SqliteStore",
    "SqliteStoreReader",
    "Store",
    "StoreReader",
    "StoreUnavailableError",
    "WorkerLoad",
    "apply_migrations",
    "holder_ids",
]

_LAZY = {"PostgresStore": "postgres", "PostgresStoreReader": "postgres_reader"}


def __getattr__(name: str) -> Any:
    # The PostgreSQL engine (and psycopg, a heavy optional dependency) only when asked for.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"modelfetch.store.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
