"""Opening the state: `open_store` (the owner, repaired if need be) and `open_reader` (a look).

They are the one place an engine is chosen (`url`: None or `sqlite:`, the SQLite file in the
state directory; `postgresql://...` or `postgres://...`, a queue in PostgreSQL that several
processes share, `store/postgres.py`) and return the `Store` / `StoreReader` protocols, never an
engine's class. Everything below about files on disk is SQLite's: a PostgreSQL database is
migrated by its store and never moved aside or rebuilt from here.

`SqliteStore(home)` trusts `home/state.db`. `open_store` looks first, under the state directory's
lock:

- another process holds the lock: `StateLockedError` naming its pid (nothing is touched);
- no database, or a modelfetch database at the current schema: opened as is;
- a modelfetch database at an older schema: opened, and so migrated by `SqliteStore`; a message
  says so;
- a database from a newer modelfetch: left alone, `SqliteStore` refuses it with a clear
  `StateError`;
- garbage bytes, a truncated or otherwise damaged file (`PRAGMA quick_check`), or the SQLite
  database of some other program (tables that are not exactly modelfetch's at its version): moved
  aside as `state.db.corrupt-<UTC timestamp>` (with its `-wal`/`-shm`), never deleted, and a fresh
  database is created. The queue is then rebuilt from what is on disk: every `<file>.part.json`
  sidecar (see `transfer/partstate.py` `PartState`: url, total, sha256) under the models dir,
  under the destination directories the damaged database still names, and under `extra_dirs`,
  becomes a queued download again, one group per directory, so those transfers resume from their
  `.part` bytes (a multi-connection `.part` cannot: its segment map was in the database). What
  cannot be rebuilt (finished history, priorities, hf-cache snapshot links, the git blob id of
  small files) is lost; the messages say how much was recovered.

The messages are for a person (the CLI prints them, the daemon logs them).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from modelfetch.core.errors import StateError
from modelfetch.core.models import FileRecord, GroupRecord
from modelfetch.core.paths import PART_SUFFIX, SIDECAR_SUFFIX
from modelfetch.core.queue import SPACING
from modelfetch.core.store_url import store_engine
from modelfetch.requests import FileRequest, GroupRequest
from modelfetch.store import (
    DB_NAME,
    MIGRATIONS,
    SCHEMA_VERSION,
    SqliteStore,
    SqliteStoreReader,
    Store,
    StoreReader,
    apply_migrations,
)
from modelfetch.store.lock import open_lock_file, take_lock, unlock

if TYPE_CHECKING:
    # At run time only a rebuild loads it: `open_reader` (for `ls`) stays clear of the
    # transfer package.
    from modelfetch.transfer.partstate import PartState

__all__ = ["Diagnosis", "diagnose", "open_reader", "open_store", "partials_on_disk"]

_SQLITE_MAGIC = b"SQLite format 3\x00"
_COMPANIONS = ("-wal", "-shm", "-journal")
_HEX64 = frozenset("0123456789abcdef")

Verdict = Literal["missing", "ok", "old", "newer", "damaged", "foreign"]


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """What `diagnose` found in a state database file."""

    verdict: Verdict
    detail: str = ""
    version: int | None = None  # PRAGMA user_version, when it could be read
    dest_dirs: tuple[str, ...] = field(default=())  # salvaged from a damaged modelfetch database

    @property
    def unusable(self) -> bool:
        return self.verdict in ("damaged", "foreign")


def open_store(
    home: Path,
    *,
    models_dir: Path,
    extra_dirs: Iterable[Path] = (),
    clock: Callable[[], float] = time.time,
    url: str | None = None,
) -> tuple[Store, list[str]]:
    """Open the state directory `home` (see the module docstring); returns the store and what a
    person should be told. Raises `StateLockedError` if another process owns `home`, and
    `StateError` if the database cannot be used and cannot be moved aside, or if `url` names an
    engine this modelfetch does not have (None or `sqlite:`: the SQLite file in `home`;
    `postgresql://`: the PostgreSQL store, which takes no lock on `home`)."""
    if store_engine(url) == "postgres":
        assert url is not None
        return _open_postgres(url, Path(models_dir))
    home = Path(home)
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"cannot create the state directory {home}: {exc}") from exc
    db = home / DB_NAME
    messages: list[str] = []
    with _locked(home):
        found = diagnose(db)
        if found.unusable:
            aside = _move_aside(db, clock())
            what = "is damaged" if found.verdict == "damaged" else "is not a modelfetch database"
            messages.append(
                f"{db} {what} ({found.detail}); moved it to {aside.name} and started a new one"
            )
    # The lock is dropped for the moment SqliteStore takes it again: a process starting in
    # between makes it raise StateLockedError, which is the right answer for us too.
    store = SqliteStore(home)
    try:
        if found.verdict == "old":
            messages.append(
                f"upgraded {db} from schema version {found.version} to {SCHEMA_VERSION}"
            )
        if found.unusable:
            roots = [Path(models_dir), *(Path(d) for d in found.dest_dirs), *map(Path, extra_dirs)]
            messages.append(_rebuild(store, roots, clock()))
    except BaseException:
        store.close()
        raise
    return store, messages


def open_reader(home: Path, *, url: str | None = None) -> StoreReader:
    """The stored queue of `home` as its owner last committed it, without taking the lock and
    without writing (for `ls` and `status` while another process works the queue). Raises
    `StateError` when there is no database, or one this modelfetch cannot read as it is (it is
    never repaired or migrated from here), and for an engine `url` it does not have."""
    if store_engine(url) == "postgres":
        assert url is not None
        from modelfetch.store.postgres_reader import PostgresStoreReader  # psycopg when asked

        return PostgresStoreReader(url)
    return SqliteStoreReader(Path(home))


def diagnose(path: Path) -> Diagnosis:
    """Classify a state database file without changing it (see `Verdict`)."""
    try:
        with path.open("rb") as fh:
            magic = fh.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return Diagnosis("missing")
    except IsADirectoryError:
        raise StateError(f"{path} is a directory, not a database: move it away") from None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc}") from exc
    if not magic:
        return Diagnosis("missing", "empty file")  # SQLite treats an empty file as a new one
    if magic != _SQLITE_MAGIC:
        return Diagnosis("damaged", "not an SQLite file")
    try:
        db = sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        return Diagnosis("damaged", f"cannot be opened: {exc}")
    try:
        return _inspect(db)
    finally:
        db.close()


def partials_on_disk(roots: Iterable[Path]) -> list[tuple[Path, PartState]]:
    """Every `(destination, sidecar state)` of an unfinished download under `roots`, sorted by
    path: sidecars that load, whose destination does not exist yet (a sidecar left beside a
    published file by a crash right after the rename is stale, not a download)."""
    from modelfetch.transfer.partstate import PartState

    found: dict[Path, PartState] = {}
    for root in roots:
        if not root.is_dir():
            continue
        for sidecar in root.rglob(f"*{SIDECAR_SUFFIX}"):
            dest = sidecar.with_name(sidecar.name[: -len(SIDECAR_SUFFIX)])
            if dest in found or not sidecar.is_file() or dest.exists():
                continue
            state = PartState.load(sidecar)
            if state is not None:
                found[dest] = state
    return sorted(found.items())


def _open_postgres(url: str, models_dir: Path) -> tuple[Store, list[str]]:
    """The shared queue, migrated, with `models_dir` checked to be the one its workers share."""
    from modelfetch.store.postgres import PostgresStore  # psycopg only when asked

    store = PostgresStore(url)
    try:
        store.check_models_dir(models_dir)
    except BaseException:
        store.close()
        raise
    messages: list[str] = []
    if 0 < store.migrated_from < SCHEMA_VERSION:
        messages.append(
            f"upgraded {store.where} from schema version {store.migrated_from} to {SCHEMA_VERSION}"
        )
    return store, messages


# -- inspection ------------------------------------------------------------------------------


def _inspect(db: sqlite3.Connection) -> Diagnosis:
    try:
        problems = [str(row[0]) for row in db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            first = " ".join(" ".join(problems).split())[:200]
            return Diagnosis("damaged", f"quick_check: {first}", dest_dirs=_salvage(db))
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        found = _schema(db)
    except sqlite3.Error as exc:
        return Diagnosis("damaged", str(exc), dest_dirs=_salvage(db))
    if version == 0:
        if found:
            return Diagnosis("foreign", f"it has tables {_names(found)}", version)
        return Diagnosis("missing", "no tables yet", version)
    expected = _expected_schema(min(version, SCHEMA_VERSION))
    if version > SCHEMA_VERSION:
        ours = all(
            name in found and set(columns) <= set(found[name]) for name, columns in expected.items()
        )
        if ours:
            return Diagnosis("newer", f"schema version {version}", version)
        return Diagnosis(
            "foreign", f"schema version {version} with tables {_names(found)}", version
        )
    if found != expected:
        return Diagnosis(
            "foreign", f"schema version {version} with tables {_names(found)}", version
        )
    if version < SCHEMA_VERSION:
        return Diagnosis("old", f"schema version {version}", version)
    return Diagnosis("ok", version=version)


def _schema(db: sqlite3.Connection) -> dict[str, tuple[str, ...]]:
    """Table name -> column names, leaving out SQLite's own tables."""
    names = [
        str(row[0])
        for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    return {
        name: tuple(str(col[1]) for col in db.execute(f"PRAGMA table_info({_quoted(name)})"))
        for name in names
    }


def _expected_schema(version: int) -> dict[str, tuple[str, ...]]:
    """The tables modelfetch's migrations create up to `version`, from the migrations themselves."""
    mem = sqlite3.connect(":memory:", isolation_level=None)
    try:
        apply_migrations(mem, MIGRATIONS[:version], Path(":memory:"))
        return _schema(mem)
    finally:
        mem.close()


def _salvage(db: sqlite3.Connection) -> tuple[str, ...]:
    """Destination directories a damaged modelfetch database can still name (best effort)."""
    found: set[str] = set()
    # Row by row: a damaged page ends the scan, but what was read before it still counts.
    with contextlib.suppress(sqlite3.Error):
        for (value,) in db.execute("SELECT dest_dir FROM groups ORDER BY id"):
            if isinstance(value, str) and value:
                found.add(value)
    return tuple(sorted(found))


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _names(schema: dict[str, tuple[str, ...]]) -> str:
    return ", ".join(sorted(schema)) or "none"


# -- moving aside and rebuilding ---------------------------------------------------------------


def _move_aside(db: Path, now: float) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    aside = db.with_name(f"{db.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = db.with_name(f"{db.name}.corrupt-{stamp}-{n}")
    try:
        os.replace(db, aside)
        for suffix in _COMPANIONS:
            companion = db.with_name(db.name + suffix)
            if companion.exists():
                os.replace(companion, aside.with_name(aside.name + suffix))
    except OSError as exc:
        raise StateError(f"{db} cannot be used and cannot be moved aside: {exc}") from exc
    return aside


def _rebuild(store: Store, roots: list[Path], now: float) -> str:
    seen: set[Path] = set()
    unique_roots = []
    for root in roots:
        resolved = root.absolute()
        if resolved not in seen:
            seen.add(resolved)
            unique_roots.append(resolved)
    partials = partials_on_disk(unique_roots)
    if not partials:
        where = ", ".join(str(r) for r in unique_roots[:3])
        if len(unique_roots) > 3:
            where += f" and {len(unique_roots) - 3} more directories"
        return (
            f"no unfinished downloads found on disk to rebuild the queue from (looked in {where})"
        )
    by_dir: dict[Path, list[tuple[Path, PartState]]] = {}
    for dest, state in partials:
        by_dir.setdefault(dest.parent, []).append((dest, state))
    order = 0
    names = []
    for directory, members in by_dir.items():
        group = _recovered_group(directory, members, now)
        for record in group.files:
            order += SPACING
            record.order_key = order
        store.add_group(group)
        names.append(group.name)
    shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
    segmented = sum(1 for _, state in partials if state.segmented)
    lost = (
        f"; {segmented} multi-connection file(s) start over (their segment maps were in the"
        " damaged database)"
        if segmented
        else ""
    )
    return (
        f"rebuilt {len(by_dir)} download(s) from {len(partials)} unfinished file(s) found on"
        f" disk ({shown}); they resume from the bytes already downloaded{lost}"
    )


def _recovered_group(
    directory: Path, members: list[tuple[Path, PartState]], now: float
) -> GroupRecord:
    request = GroupRequest(
        name=f"recovered: {directory.name}" if len(members) > 1 else members[0][0].name,
        files=tuple(
            FileRequest(
                url=state.url, path=dest.name, size=state.total, sha256=_sha256(state.sha256)
            )
            for dest, state in members
        ),
        dest_dir=directory,
    )
    files = [
        FileRecord(
            group_id=0,
            index=i,
            url=state.url,
            dest=str(dest),
            name=dest.name,
            bytes_done=_resumable_bytes(dest, state),
            bytes_total=state.total,
            expected_size=state.total,
            expected_sha256=_sha256(state.sha256),
            created_at=now,
        )
        for i, (dest, state) in enumerate(members, start=1)
    ]
    return GroupRecord(
        key=request.dedupe_key(),
        spec=members[0][1].url if len(members) == 1 else request.name,
        name=request.name,
        dest_dir=str(directory),
        created_at=now,
        files=files,
    )


def _sha256(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip().lower()
    return text if len(text) == 64 and set(text) <= _HEX64 else None


def _resumable_bytes(dest: Path, state: PartState) -> int:
    """A front-to-back `.part` resumes from its length. A segmented one is only as good as its
    segment map, which lived in the damaged database: the transfer will start it over."""
    if state.segmented:
        return 0
    try:
        return dest.with_name(dest.name + PART_SUFFIX).stat().st_size
    except OSError:
        return 0


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """The state directory's lock (the same flock `SqliteStore` takes), held while we inspect and
    move files, so a running manager's database is never touched."""
    fd = open_lock_file(home)
    try:
        take_lock(fd, home)
    except BaseException:
        os.close(fd)
        raise
    try:
        yield
    finally:
        unlock(fd)
