"""The store engines the engine-neutral suite runs against, as one fixture param each.

`engine` gives a test its own empty state on one engine: `engine.open()` opens its owner (call
it again after closing to reopen the same state) and `engine.open_reader()` a reader, which sees
only what the owner has committed. `store` is `engine.open()`, open for the test. A test module
uses them by importing the fixture functions (`from .store_impls import engine_fixture,
store_fixture`).

Each engine is one entry in `ENGINES`: a generator that yields a `StoreEngine` for one test and
cleans up after it, calling `pytest.skip` when it cannot run here. `postgres` runs on the
session's throwaway cluster (`tests/pg.py`), a fresh schema per test, and is skipped when
PostgreSQL is not installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from modelfetch.core.models import FileRecord, FileStatus, GroupRecord, PauseReason
from modelfetch.store import SqliteStore, SqliteStoreReader, Store, StoreReader

from .pg import shared_cluster


@dataclass(frozen=True, slots=True)
class StoreEngine:
    """One engine, set up for one test: how to open the owner and a reader of its state."""

    name: str
    open: Callable[[], Store]
    open_reader: Callable[[], StoreReader]


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreEngine]:
    home = tmp_path / "home"
    yield StoreEngine("sqlite", lambda: SqliteStore(home), lambda: SqliteStoreReader(home))


def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreEngine]:
    cluster = shared_cluster(request)  # skips when PostgreSQL is not installed
    from modelfetch.store import PostgresStore, PostgresStoreReader

    with cluster.schema() as url:
        yield StoreEngine("postgres", lambda: PostgresStore(url), lambda: PostgresStoreReader(url))


ENGINES: Final[dict[str, Callable[[pytest.FixtureRequest, Path], Iterator[StoreEngine]]]] = {
    "sqlite": _sqlite,
    "postgres": _postgres,
}


@pytest.fixture(name="engine", params=list(ENGINES))
def engine_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreEngine]:
    yield from ENGINES[request.param](request, tmp_path)


@pytest.fixture(name="store")
def store_fixture(engine: StoreEngine) -> Iterator[Store]:
    with engine.open() as opened:
        yield opened


def committed_statuses(engine: StoreEngine, group_id: int) -> list[str]:
    """A group's file statuses as a reader sees them: what the owner has committed."""
    with engine.open_reader() as reader:
        group = reader.get_group(group_id)
    assert group is not None
    return [f.status.value for f in group.files]


def plain_group(key: str = "k", files: int = 2) -> GroupRecord:
    return GroupRecord(
        key=key,
        spec="owner/model:Q4_K_M",
        name="owner/model:Q4_K_M",
        dest_dir="/models",
        files=[
            FileRecord(
                group_id=0, index=i, url=f"https://h/{i}", dest=f"/models/{i}.gguf", name=f"{i}"
            )
            for i in range(1, files + 1)
        ],
    )


def full_group() -> GroupRecord:
    """Every field set to a value that differs from its default."""

    def file(index: int) -> FileRecord:
        return FileRecord(
            group_id=0,
            index=index,
            url=f"https://hub.test/o/m/resolve/abc123/m-0000{index}-of-00002.gguf",
            dest=f"/models/o_m/m-0000{index}-of-00002.gguf",
            name=f"m-0000{index}-of-00002.gguf",
            status=FileStatus.PAUSED if index == 1 else FileStatus.WAITING_RETRY,
            priority=3,
            order_key=1024 * index,
            bytes_done=100 * index,
            bytes_total=1000 * index,
            expected_size=1000 * index,
            expected_sha256=f"{index:064x}",
            expected_git_oid=f"{index:040x}",
            etag=f'"etag-{index}"',
            last_modified="Wed, 21 Oct 2026 07:28:00 GMT",
            commit="abc123",
            sha256=f"{index + 7:064x}",
            attempts=index,
            error_kind="rate_limited",
            error_message="429 Too Many Requests",
            retry_at=1_800_000_000.25 + index,
            pause_reason=PauseReason.USER.value,
            created_at=1_700_000_000.5,
            started_at=1_700_000_001.0,
            finished_at=1_700_000_002.75,
        )

    return GroupRecord(
        key="o/m:Q4_K_M -> /models",
        spec="o/m:Q4_K_M",
        name="o/m:Q4_K_M",
        dest_dir="/models/o_m",
        priority=3,
        repo_id="o/m",
        revision="main",
        commit="abc123",
        quant="Q4_K_M",
        created_at=1_700_000_000.5,
        finished_at=1_700_000_003.0,
        files=[file(1), file(2)],
    )
