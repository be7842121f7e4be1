"""The durable state of modelfetch: the `Store` protocols and their SQLite engine.

- `protocol.py`: `StoreReader` and `Store`, what every engine does (the contract);
- `sqlite.py`, `sqlite_reader.py`: the SQLite engine (`home/state.db`), owner and reader;
- `sqlite_transactions.py`: how SQLite writes commit (autocommit, batches, savepoints);
- `sqlite_connect.py`, `lock.py`: opening the file, and the state directory's lock;
- `schema.py`: file names, numbered migrations, `apply_migrations`; `rows.py`: row codecs.

Open a store through `modelfetch.recovery.open_store` / `open_reader`, which pick the engine.
"""

from modelfetch.core.segments import SegmentRecord
from modelfetch.store.protocol import KEEP, Keep, Store, StoreReader
from modelfetch.store.schema import (
    DB_NAME,
    LOCK_NAME,
    MIGRATIONS,
    SCHEMA_VERSION,
    SQLITE_MIGRATIONS,
    apply_migrations,
)
from modelfetch.store.sqlite import SqliteStore
from modelfetch.store.sqlite_reader import SqliteStoreReader

__all__ = [
    "DB_NAME",
    "KEEP",
    "LOCK_NAME",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SQLITE_MIGRATIONS",
    "Keep",
    "SegmentRecord",
    "SqliteStore",
    "SqliteStoreReader",
    "Store",
    "StoreReader",
    "apply_migrations",
]
