"""Reaching a PostgreSQL state database: URLs shown without secrets, connections, migrations.

Every message here is one line and never repeats the URL or its password: `describe` rebuilds a
URL from its harmless parts (user, host, port, database) and `redacted` scrubs the password out
of whatever libpq says, which can quote a part of the URL it could not parse.

Migrations (`store/schema.py` `POSTGRES_MIGRATIONS`) run under a session advisory lock, so two
processes opening a fresh database at once take turns: the second finds the schema up to date.
The version lives in a one-row table, `modelfetch_schema`, written in the same transaction as
each migration.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any, Final

import psycopg
from psycopg import conninfo

from modelfetch.core.errors import StateError
from modelfetch.store.rows import FILE_SELECT, GROUP_SELECT
from modelfetch.store.schema import POSTGRES_MIGRATIONS

__all__ = [
    "MIGRATION_LOCK",
    "Connection",
    "connect",
    "connection_string",
    "describe",
    "migrate",
    "one_line",
    "redacted",
    "schema_version",
]

Connection = psycopg.Connection[tuple[Any, ...]]

# The advisory lock key migrations hold ("mfschema" as a bigint); advisory locks are per database.
MIGRATION_LOCK: Final = int.from_bytes(b"mfschema", "big")
CONNECT_TIMEOUT: Final = 10  # seconds, unless the URL says otherwise
_KEEPALIVE: Final = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
    "tcp_user_timeout": 15_000,  # ms unacknowledged before the connection is dropped
}
_SPACE = re.compile(r"\s+")


def one_line(text: str) -> str:
    """libpq's messages span lines (a hint on the second): ours are one line."""
    return _SPACE.sub(" ", text).strip()


def redacted(text: str, url: str) -> str:
    """`text` with the URL and its password (as written and decoded) replaced by `***`."""
    secrets = {url, url.strip()}
    try:
        password = urllib.parse.urlsplit(url.strip()).password
    except ValueError:
        password = None
    if password:
        secrets |= {password, urllib.parse.unquote(password)}
    with_password = re.search(r"password\s*=\s*(\S+)", url)  # key=value conninfo strings
    if with_password:
        secrets.add(with_password.group(1))
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return one_line(text)


def describe(url: str) -> str:
    """The URL as a person may see it: postgresql://user@host:port/dbname, never the password."""
    try:
        parts = conninfo.conninfo_to_dict(url.strip())
    except psycopg.Error:
        return "postgresql://(a URL that does not parse)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = str(parts.get("host") or "localhost")
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{host}{port}/{parts.get('dbname') or ''}"


def connection_string(url: str) -> str:
    """The URL as libpq connection parameters, with our defaults (timeouts, keepalives, the
    application name) where the URL sets none; StateError, one line, if it does not parse."""
    try:
        params = conninfo.conninfo_to_dict(url.strip())
    except psycopg.Error as exc:
        raise StateError(
            f"the state database URL is not a valid postgresql:// URL: {redacted(str(exc), url)}"
        ) from None
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    # The driver is synchronous: a statement sent into a network partition must fail in
    # seconds (and the worker ride the outage out), not after the kernel's minutes of retries.
    for key, value in _KEEPALIVE.items():
        params.setdefault(key, value)
    params.setdefault("application_name", "modelfetch")
    return conninfo.make_conninfo("", **params)


def connect(url: str, *, read_only: bool = False) -> Connection:
    """An autocommit connection (transactions are explicit); StateError, one line, otherwise."""
    where = describe(url)
    dsn = connection_string(url)
    try:
        db: Connection = psycopg.connect(dsn, autocommit=True)
    except psycopg.Error as exc:
        # `from None`: the chained libpq error would print the unredacted text again.
        raise StateError(
            f"cannot connect to the state database {where}: {redacted(str(exc), url)}"
        ) from None
    try:
        if read_only:
            db.execute("SET default_transaction_read_only = on")
    except psycopg.Error as exc:
        db.close()
        raise StateError(f"state database {where}: {redacted(str(exc), url)}") from None
    return db


def schema_version(db: Connection) -> int:
    """The version in `modelfetch_schema`; 0 when there is no such table (a new database)."""
    row = db.execute("SELECT to_regclass('modelfetch_schema') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    found = db.execute("SELECT version FROM modelfetch_schema").fetchone()
    return 0 if found is None else int(found[0])


def _newer(where: str, found: int) -> StateError:
    return StateError(
        f"{where} was written by a newer modelfetch (schema version {found}; this one"
        f" understands up to {len(POSTGRES_MIGRATIONS)}): upgrade modelfetch or use another"
        " database"
    )


def migrate(db: Connection, where: str) -> int:
    """Bring the database up to `len(POSTGRES_MIGRATIONS)`; return the version found before.
    A database from a newer modelfetch is refused; two processes migrating take turns."""
    target = len(POSTGRES_MIGRATIONS)
    try:
        found = schema_version(db)
        if found > target:
            raise _newer(where, found)
        if found == target:  # the usual case: no lock taken
            return found
        db.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK])
        try:
            found = schema_version(db)  # another process may have migrated while we waited
            if found > target:
                raise _newer(where, found)
            for version in range(found + 1, target + 1):
                try:
                    with db.transaction():
                        db.execute(
                            "CREATE TABLE IF NOT EXISTS modelfetch_schema ("
                            " id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
                        )
                        db.execute(POSTGRES_MIGRATIONS[version - 1])  # no parameters: one script
                        db.execute(
                            "INSERT INTO modelfetch_schema (id, version) VALUES (1, %s)"
                            " ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                            [version],
                        )
                except psycopg.Error as exc:
                    raise StateError(
                        f"cannot upgrade {where} to schema version {version}: {one_line(str(exc))}"
                    ) from None
        finally:
            if not db.closed:
                db.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK])
    except psycopg.Error as exc:
        raise StateError(f"state database {where}: {one_line(str(exc))}") from None
    return found


def check_readable(db: Connection, where: str) -> None:
    """A reader's check: the schema is exactly this modelfetch's (it never migrates)."""
    target = len(POSTGRES_MIGRATIONS)
    try:
        found = schema_version(db)
        if found > target:
            raise _newer(where, found)
        if found == 0:
            raise StateError(f"{where} has no modelfetch queue yet: there is no queue to show")
        if found < target:
            raise StateError(
                f"{where} has schema version {found}, older than this modelfetch's {target}:"
                " an older modelfetch is using it; look again once a newer one has opened it"
            )
        db.execute(f"SELECT {GROUP_SELECT} FROM groups LIMIT 0").fetchall()
        db.execute(f"SELECT {FILE_SELECT} FROM files LIMIT 0").fetchall()
    except psycopg.Error as exc:
        raise StateError(
            f"{where} cannot be used as a modelfetch database: {one_line(str(exc))}"
        ) from None
