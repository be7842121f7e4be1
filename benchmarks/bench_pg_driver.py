"""Which PostgreSQL driver for the shared queue: psycopg 3 against asyncpg, on the lease statements.

    python benchmarks/bench_pg_driver.py [--runs 2000] [--files 8000]

Starts the tests' throwaway cluster (`tests/pg.py`: initdb + pg_ctl on 127.0.0.1), fills one
queue, and times the three statements a worker makes all day, exactly as
`store/postgres_leases.py` writes them: `claim` (one file, FOR UPDATE SKIP LOCKED), `renew` (one
lease) and the fenced `progress` checkpoint (one row), plus `select 1`, a bare round trip, as
the floor (for `PostgresStore`, its cheapest read, `group_limits`). Each statement is timed on

- psycopg 3, synchronous, prepared (`prepare=True`): what `PostgresStore` does;
- psycopg 3, AsyncConnection, prepared, awaited on a running event loop;
- asyncpg, a prepared statement, awaited on the same loop;
- `PostgresStore`'s method itself (psycopg sync plus building the `Claim` records);

interleaved run by run (every driver does run i before any does run i+1), over TCP with
scram-sha-256 like a real deployment. Prints median and p99 latency in microseconds.
asyncpg is a measurement-only dependency: nothing in src/ imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the cluster helper lives in tests/

import asyncpg  # type: ignore[import-untyped]  # noqa: E402
import psycopg  # noqa: E402
from tests.pg import find_bin_dir, start_cluster  # noqa: E402

from modelfetch.core.models import FileRecord, GroupRecord  # noqa: E402
from modelfetch.store.postgres import PostgresStore  # noqa: E402
from modelfetch.store.postgres_leases import CLAIM, PROGRESS, RENEW  # noqa: E402

LEASE = 60.0
FINISH_CLAIMED = (
    "UPDATE files SET status = 'completed', holder = NULL, fence = NULL, lease_expires = NULL"
    " WHERE holder LIKE 'w-%'"
)


def numbered(sql: str) -> str:
    """psycopg's `%s` placeholders as asyncpg's `$1, $2, ...`."""
    count = iter(range(1, 1000))
    return re.sub(r"%s", lambda _: f"${next(count)}", sql)


def fill(store: PostgresStore, files: int) -> None:
    per_group = 500
    for g in range(0, files, per_group):
        store.add_group(
            GroupRecord(
                key=f"k{g}",
                spec="o/m",
                name=f"o/m {g}",
                dest_dir="/models",
                files=[
                    FileRecord(
                        group_id=0,
                        index=i,
                        url=f"https://h/{g}/{i}",
                        dest=f"/models/{g}/{i}",
                        name=f"{i}",
                        order_key=(g + i) * 1024,
                    )
                    for i in range(1, min(per_group, files - g) + 1)
                ],
            )
        )


def quantiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1e6, p99 * 1e6


async def measure(url: str, runs: int) -> dict[str, dict[str, list[float]]]:
    sync = psycopg.connect(url, autocommit=True)
    apsy = await psycopg.AsyncConnection.connect(url, autocommit=True)
    apg = await asyncpg.connect(url)
    store = PostgresStore(url)
    claim_a, renew_a, progress_a = (
        await apg.prepare(numbered(CLAIM)),
        await apg.prepare(numbered(RENEW)),
        await apg.prepare(numbered(PROGRESS)),
    )

    # One lease per driver to renew and checkpoint again and again.
    def first_claim(worker: str) -> tuple[int, str]:
        row = sync.execute(CLAIM, [None, 1, worker, LEASE], prepare=True).fetchone()
        assert row is not None
        return int(row[0]), worker

    held = {name: first_claim(name) for name in ("sync", "async", "asyncpg", "store")}
    [store_claim] = store.claim("store-held", lease_seconds=LEASE, limit=1)

    def timed_sync(call: Callable[[], object]) -> Callable[[], Awaitable[float]]:
        async def run() -> float:
            start = time.perf_counter()
            call()
            return time.perf_counter() - start

        return run

    def timed_async(call: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[float]]:
        async def run() -> float:
            start = time.perf_counter()
            await call()
            return time.perf_counter() - start

        return run

    done = iter(range(1, 10**9))

    def renew_args(name: str) -> list[Any]:
        fence, worker = held[name]
        return [None, [fence], [worker], [LEASE]]

    def progress_args(name: str) -> list[Any]:
        fence, worker = held[name]
        return [[fence], [worker], [next(done)], [None]]

    async def psy_async(sql: str, params: list[Any]) -> object:
        cursor = await apsy.execute(sql, params, prepare=True)
        return await cursor.fetchall()

    select_a = await apg.prepare("SELECT 1")
    cases: dict[str, dict[str, Callable[[], Awaitable[float]]]] = {
        # The floor: one round trip that does no work (no row, no commit).
        "select 1": {
            "psycopg sync": timed_sync(lambda: sync.execute("SELECT 1", prepare=True).fetchall()),
            "psycopg async": timed_async(lambda: psy_async("SELECT 1", [])),
            "asyncpg": timed_async(lambda: select_a.fetch()),
            "PostgresStore": timed_sync(lambda: store.group_limits(1)),
        },
        "claim": {
            "psycopg sync": timed_sync(
                lambda: sync.execute(CLAIM, [None, 1, "w-sync", LEASE], prepare=True).fetchall()
            ),
            "psycopg async": timed_async(lambda: psy_async(CLAIM, [None, 1, "w-async", LEASE])),
            "asyncpg": timed_async(lambda: claim_a.fetch(None, 1, "w-asyncpg", LEASE)),
            "PostgresStore": timed_sync(
                lambda: store.claim("w-store", lease_seconds=LEASE, limit=1)
            ),
        },
        "renew": {
            "psycopg sync": timed_sync(
                lambda: sync.execute(RENEW, renew_args("sync"), prepare=True).fetchall()
            ),
            "psycopg async": timed_async(lambda: psy_async(RENEW, renew_args("async"))),
            "asyncpg": timed_async(lambda: renew_a.fetch(*renew_args("asyncpg"))),
            "PostgresStore": timed_sync(lambda: store.renew([store_claim])),
        },
        "progress": {
            "psycopg sync": timed_sync(
                lambda: sync.execute(PROGRESS, progress_args("sync"), prepare=True).fetchall()
            ),
            "psycopg async": timed_async(lambda: psy_async(PROGRESS, progress_args("async"))),
            "asyncpg": timed_async(lambda: progress_a.fetch(*progress_args("asyncpg"))),
            "PostgresStore": timed_sync(
                lambda: store.save_claimed_progress([(store_claim, next(done), None)])
            ),
        },
    }
    results: dict[str, dict[str, list[float]]] = {
        stmt: {name: [] for name in drivers} for stmt, drivers in cases.items()
    }
    for warm in (True, False):
        for i in range(50 if warm else runs):
            for stmt, drivers in cases.items():
                names = list(drivers)
                shift = i % len(names)  # rotate who goes first, so no driver always leads
                for name in names[shift:] + names[:shift]:
                    elapsed = await drivers[name]()
                    if not warm:
                        results[stmt][name].append(elapsed)
            # Untimed: the claimed files finish, so the queue keeps a fleet's handful of active
            # files rather than piling up thousands (claim walks the active ones, by design).
            sync.execute(FINISH_CLAIMED, prepare=True)
    sync.close()
    await apsy.close()
    await apg.close()
    store.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--files", type=int, default=0, help="queued files (default: enough)")
    args = parser.parse_args()
    bin_dir = find_bin_dir()
    if bin_dir is None:
        sys.exit("PostgreSQL is not installed (.ci/run installs the postgresql package)")
    cluster = start_cluster(bin_dir)
    try:
        name = cluster.create_database()
        url = cluster.url(name)
        with PostgresStore(url) as store:
            fill(store, args.files or 4 * (args.runs + 50) + 100)
        results = asyncio.run(measure(url, args.runs))
        with psycopg.connect(url) as db:
            version = db.execute("SHOW server_version").fetchone()
    finally:
        cluster.stop("immediate")
        shutil.rmtree(cluster.base, ignore_errors=True)
    print(
        f"PostgreSQL {version[0] if version else '?'}, psycopg {psycopg.__version__}"
        f" ({psycopg.pq.__impl__}), asyncpg {asyncpg.__version__}; {args.runs} runs each,"
        " interleaved, TCP loopback, latency in microseconds"
    )
    drivers = list(next(iter(results.values())))
    print(f"{'statement':<10}" + "".join(f"{d:>24}" for d in drivers))
    print(f"{'':<10}" + "".join(f"{'median / p99':>24}" for _ in drivers))
    for stmt, by_driver in results.items():
        cells = []
        for d in drivers:
            median, p99 = quantiles(by_driver[d])
            cells.append(f"{median:>12.0f} / {p99:<8.0f}")
        print(f"{stmt:<10}" + "".join(f"{c:>24}" for c in cells))


if __name__ == "__main__":
    main()
