"""Fleet-wide policy and bad days (issue 14): what one worker learns holds for all of them, and
a PostgreSQL that restarts under a running worker loses nothing.

Real parts: the session's throwaway PostgreSQL cluster (`pg.py`), the fake hub on loopback and
managers in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from modelfetch.core import events as ev
from modelfetch.core.models import FileStatus
from modelfetch.manager import DownloadManager
from modelfetch.readonly import ReadOnlyBackend
from modelfetch.server import serve
from modelfetch.store import StoreUnavailableError
from modelfetch.store.postgres import PostgresStore
from modelfetch.testing.fakehub import FakeHub, Fault, RepoFile

from .conftest import group_of, next_event
from .pg import (
    TESTS_DB,
    PgCluster,
    own_cluster_fixture,  # noqa: F401 -- the pg fixtures
    pg_cluster_fixture,  # noqa: F401
    pg_url_fixture,  # noqa: F401
)
from .test_fleet import cdn_bytes, worker
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


@contextlib.asynccontextmanager
async def served_by(m: DownloadManager) -> AsyncIterator[str]:
    """`serve(m)` on a free loopback port; yields its URL."""
    info = m.home / "daemon.json"
    info.unlink(missing_ok=True)
    task = asyncio.create_task(serve(m, host="127.0.0.1", port=0, token=None))
    try:
        async with asyncio.timeout(10):
            while not info.exists():
                await asyncio.sleep(0.01)
        yield str(json.loads(info.read_text())["url"])
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_postgresql_restarting_mid_transfer_pauses_it_and_the_worker_carries_on(
    hub: FakeHub, tmp_path: Path, own_cluster: PgCluster
) -> None:
    url = own_cluster.url(TESTS_DB)
    size = 8 * MiB
    hub.add_repo(
        "o/big", [RepoFile("big.bin", size=size, seed=5), RepoFile("small.bin", size=MiB, seed=6)]
    )
    hub.add_fault(Fault("throttle", origin="cdn", rate=2 * MiB))
    models = tmp_path / "models"
    dest = models / "o" / "big"
    async with worker(tmp_path, "a", url, models, max_active=1) as a:
        with a.subscribe() as events:
            gid = await a.enqueue(group_of(hub, "o/big", ["big.bin", "small.bin"], dest))
            await next_event(
                events, lambda e: isinstance(e, ev.FileProgress) and e.downloaded >= 2 * MiB
            )
            await asyncio.to_thread(own_cluster.stop, "fast")
            down = await next_event(
                events, lambda e: isinstance(e, ev.Notice) and "unreachable" in e.message
            )
            assert isinstance(down, ev.Notice) and down.level == "warning"
            assert "s3cret" not in down.message  # the URL's password is never shown
            async with asyncio.timeout(10):
                while a._running:  # the transfer in flight stops...
                    await asyncio.sleep(0.05)
            kept = (dest / "big.bin.part").stat().st_size
            assert kept >= 2 * MiB  # ...keeping its bytes
            await asyncio.sleep(1.0)  # a few reconnection attempts fail meanwhile
            assert not a._running  # nothing starts while the queue cannot be read
            # A change asked for meanwhile is refused at once, never made here alone and lost.
            with pytest.raises(StoreUnavailableError, match="nothing changed"):
                await a.pause(gid)
            with pytest.raises(StoreUnavailableError, match="unreachable"):
                await a.enqueue(group_of(hub, "o/big", ["small.bin"], models / "other"))
            async with served_by(a) as daemon_url, aiohttp.ClientSession() as http:
                async with http.post(f"{daemon_url}/api/downloads/{gid}/pause", json={}) as r:
                    assert r.status == 503 and r.headers["Retry-After"] == "5"
                    assert (await r.json())["error"]["kind"] == "store_unavailable"
                async with http.get(f"{daemon_url}/api/downloads/{gid}") as r:
                    assert r.status == 200  # reads are served from what the worker knows
                async with http.get(f"{daemon_url}/api/downloads") as r:
                    assert r.status == 200
                    assert [g["id"] for g in (await r.json())["downloads"]] == [gid]
            assert [v.id for v in await a.snapshot()] == [gid]  # what `run` polls, too
            await asyncio.to_thread(own_cluster.start)
            back = await next_event(
                events, lambda e: isinstance(e, ev.Notice) and "reachable again" in e.message
            )
            assert isinstance(back, ev.Notice)
            async with asyncio.timeout(30):
                await a.wait([gid])
        assert (await a.group_view(gid)).status == "completed"
    assert_published(hub, "o/big", ["big.bin", "small.bin"], dest)
    sent = cdn_bytes(hub)
    assert sent["big.bin"] < 1.25 * size  # resumed from the .part, not from zero
    assert sent["small.bin"] == MiB
    with PostgresStore(url) as store:
        assert {f.status for f in store.files()} == {FileStatus.COMPLETED}
        assert store.holders() == {}
        group = store.get_group(gid)
        assert group is not None and group.finished_at is not None


async def test_a_worker_follows_the_others_at_once_through_notifications(
    hub: FakeHub, tmp_path: Path, pg_url: str
) -> None:
    """Polls 30 s apart: what `b` learns within seconds it learned from LISTEN/NOTIFY."""
    hub.add_repo("o/n", [RepoFile("n.bin", size=MiB, seed=9)])
    models = tmp_path / "models"
    slow = {"fleet_poll_interval": 30.0, "lease_seconds": 120.0}
    async with (
        worker(tmp_path, "a", pg_url, models, **slow) as a,
        worker(tmp_path, "b", pg_url, models, **slow) as b,
    ):
        await asyncio.sleep(0.5)  # both listening (the first beat, at start, is behind them)
        with b.subscribe() as seen_by_b:
            gid = await a.enqueue(group_of(hub, "o/n", ["n.bin"], models / "o" / "n"))
            queued = await next_event(
                seen_by_b, lambda e: isinstance(e, ev.GroupQueued) and e.group_id == gid, 5.0
            )
            assert isinstance(queued, ev.GroupQueued)
            async with asyncio.timeout(10):
                await a.wait([gid]) if gid in a._groups else await b.wait([gid])
                while not b._book.settled(gid):
                    await asyncio.sleep(0.05)
        assert (await b.group_view(gid)).status == "completed"
    assert_published(hub, "o/n", ["n.bin"], models / "o" / "n")


async def test_a_cap_over_the_fleet_holds_whichever_worker_claims(
    hub: FakeHub, tmp_path: Path, pg_url: str
) -> None:
    paths = [f"c-{n}.bin" for n in range(4)]
    hub.add_repo("o/cap", [RepoFile(p, size=MiB, seed=n) for n, p in enumerate(paths)])
    hub.add_fault(Fault("throttle", origin="cdn", rate=4 * MiB))
    models = tmp_path / "models"
    most = 0
    async with (
        worker(tmp_path, "a", pg_url, models) as a,
        worker(tmp_path, "b", pg_url, models) as b,
    ):
        await a.set_fleet_limits(max_active=1)  # each worker alone would run 3
        gid = await b.enqueue(group_of(hub, "o/cap", paths, models / "o" / "cap"))
        with PostgresStore(pg_url) as peek:
            async with asyncio.timeout(60):
                while not b._book.settled(gid):
                    most = max(most, len(peek.holders()), len(a._running) + len(b._running))
                    await asyncio.sleep(0.02)
            assert peek.fleet_limits().max_active == 1
        await b.wait([gid])
    assert most == 1
    assert_published(hub, "o/cap", paths, models / "o" / "cap")


async def test_every_worker_shows_which_host_holds_each_active_file(
    hub: FakeHub, tmp_path: Path, pg_url: str
) -> None:
    hub.add_repo("o/h", [RepoFile("h.bin", size=4 * MiB, seed=4)])
    throttle = hub.add_fault(Fault("throttle", origin="cdn", rate=1 * MiB))
    models = tmp_path / "models"
    async with (
        worker(tmp_path, "a", pg_url, models) as a,
        worker(tmp_path, "b", pg_url, models) as b,
    ):
        gid = await a.enqueue(group_of(hub, "o/h", ["h.bin"], models / "o" / "h"))
        async with asyncio.timeout(20):
            while (gid, 1) not in a._running and (gid, 1) not in b._running:
                await asyncio.sleep(0.02)
            runner, other = (a, b) if (gid, 1) in a._running else (b, a)
            assert runner._fleet is not None
            while True:  # the other worker learns it at its next sync
                (seen,) = (await other.group_view(gid)).files
                if seen.worker is not None:
                    break
                await asyncio.sleep(0.05)
        assert seen.status == "active" and seen.worker == runner._fleet.worker
        (own,) = (await runner.group_view(gid)).files
        assert own.worker == runner._fleet.worker
        # With no daemon on a host, `ls` and `status` open a manager without workers (it never
        # syncs): it reads the leases from the store. The read-only view does too.
        onlooker = DownloadManager(
            home=tmp_path / "c", models_dir=models, store_url=pg_url, workers=False
        )
        async with onlooker:
            (looked,) = (await onlooker.group_view(gid)).files
            (listed,) = (await onlooker.snapshot())[0].files
        assert looked.worker == listed.worker == runner._fleet.worker
        with ReadOnlyBackend(tmp_path / "c", url=pg_url) as stored:
            (kept,) = (await stored.group_view(gid)).files
            assert kept.worker == runner._fleet.worker
        throttle.rate = None
        hub.clear_faults()
        async with asyncio.timeout(20):
            await runner.wait([gid])
            while not other._book.settled(gid):  # the other learns of the end from the store
                await asyncio.sleep(0.05)
        (done,) = (await other.group_view(gid)).files
        assert done.status == "completed"
        assert done.worker is None  # a finished file is held by no one
