"""Fleet-wide policy and bad days (issue 14): what one worker learns holds for all of them, and
a PostgreSQL that restarts under a running worker loses nothing.

Real parts: the session's throwaway PostgreSQL cluster (`pg.py`), the fake hub on loopback and
managers in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from modelfetch.core import events as ev
from modelfetch.core.models import FileStatus
from modelfetch.store.postgres import PostgresStore
from modelfetch.testing.fakehub import FakeHub, Fault, RepoFile

from .conftest import group_of, next_event
from .pg import pg_cluster_fixture, pg_url_fixture  # noqa: F401 -- the pg fixtures
from .test_fleet import worker
from .test_manager import MiB, assert_published


async def test_a_429_seen_by_one_worker_holds_the_host_for_every_worker(
    hub: FakeHub, tmp_path: Path, pg_url: str
) -> None:
    hub.add_repo("o/x", [RepoFile("x.bin", size=1 * MiB, seed=1)])
    hub.add_repo("o/y", [RepoFile("y.bin", size=1 * MiB, seed=2)])
    hub.add_fault(Fault("status", origin="hub", path="x.bin", status=429, retry_after="3", times=1))
    models = tmp_path / "models"
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(worker(tmp_path, "a", pg_url, models, max_active=1))
        with a.subscribe() as events:
            gx = await a.enqueue(group_of(hub, "o/x", ["x.bin"], models / "o" / "x"))
            await next_event(
                events, lambda e: isinstance(e, ev.StatusChanged) and e.status == "waiting_retry"
            )
    # `a` saw the 429 and has left; `b` never saw it, yet waits as the server asked, for the
    # file `a` left and for a new one on the same host.
    async with worker(tmp_path, "b", pg_url, models, max_active=2) as b:
        gy = await b.enqueue(group_of(hub, "o/y", ["y.bin"], models / "o" / "y"))
        async with asyncio.timeout(30):
            await b.wait([gx, gy])
        assert {(await b.group_view(g)).status for g in (gx, gy)} == {"completed"}
    assert_published(hub, "o/x", ["x.bin"], models / "o" / "x")
    assert_published(hub, "o/y", ["y.bin"], models / "o" / "y")
    resolves = hub.requests(origin="hub", path_contains="/resolve/")
    (limited,) = [r for r in resolves if r.status == 429]
    after = [r for r in resolves if r.time > limited.time]
    assert {r.path.rsplit("/", 1)[-1] for r in after} == {"x.bin", "y.bin"}
    assert min(r.time for r in after) >= limited.time + 3.0 - 0.05
    with PostgresStore(pg_url) as store:
        assert {f.status for f in store.files()} == {FileStatus.COMPLETED}
