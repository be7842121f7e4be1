"""Changes of a shared queue as they are committed: `LISTEN` on the channel the schema's
triggers notify (`store/schema.py`, version 4).

A worker or daemon on a PostgreSQL queue follows the other workers by polling the store; this
wakes it as soon as any of them commits a change instead. It is a second connection of its own
(a listening connection must not run the store's statements), asynchronous, so waiting for a
notification costs the event loop nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import psycopg

from modelfetch.store.postgres_connect import connection_string, describe, redacted
from modelfetch.store.protocol import StoreUnavailableError

__all__ = ["CHANNEL", "queue_changes"]

CHANNEL: Final = "modelfetch_queue"


async def queue_changes(url: str) -> AsyncIterator[None]:
    """Yield once listening, then once per notification (a committed transaction that changed
    the queue; several may fold into one). Never ends by itself; StoreUnavailableError when the
    connection cannot be made or is lost (the caller listens again later)."""
    where = describe(url)
    try:
        db = await psycopg.AsyncConnection.connect(connection_string(url), autocommit=True)
    except psycopg.Error as exc:
        raise StoreUnavailableError(
            f"cannot listen to the state database {where}: {redacted(str(exc), url)}"
        ) from None
    async with db:
        try:
            await db.execute(f"LISTEN {CHANNEL}")
            yield None  # from here on, every commit is announced
            async for _ in db.notifies():
                yield None
        except psycopg.Error as exc:
            raise StoreUnavailableError(
                f"stopped listening to the state database {where}: {redacted(str(exc), url)}"
            ) from None
