"""Sharing the queue among workers (issue 14): claims leave files to idle workers, a worker that
took too many hands one back, and a fleet-wide per-host connection cap is divided among them.

Real parts: the session's throwaway PostgreSQL cluster (`pg.py`), the fake hub on loopback,
managers in this process.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import aiohttp

from modelfetch.core import events as ev
from modelfetch.remote import connect
from modelfetch.store.postgres import PostgresStore
from modelfetch.testing.fakehub import FakeHub, Fault, RepoFile
from modelfetch.views import FleetView

from .conftest import group_of
from .pg import pg_cluster_fixture, pg_url_fixture  # noqa: F401 -- the pg fixtures
from .test_cli import Cli, pycache  # noqa: F401 -- the CLI fixture's cache
from .test_fleet import cdn_bytes, worker
from .test_fleet_policy import served_by
from .test_manager import MiB, assert_published
from .test_server_api import run_daemon

SIZE = 8 * MiB


def _shards(hub: FakeHub, repo: str, n: int) -> list[str]:
    paths = [f"s-{i:05d}-of-{n:05d}.bin" for i in range(1, n + 1)]
    hub.add_repo(repo, [RepoFile(p, size=SIZE, seed=i) for i, p in enumerate(paths)])
    return paths


def _held_by(pg_url: str) -> Counter[str]:
    with PostgresStore(pg_url) as peek:
        return Counter(holder for holder, _ in peek.holders().values())


async def _until(condition: object, timeout: float = 20.0) -> None:
    assert callable(condition)
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_workers_that_are_up_share_a_model_evenly_from_the_first_claim(
    hub: FakeHub, tmp_path: Path, pg_url: str
) -> None:
    paths = _shards(hub, "o/even", 4)
    hub.add_fault(Fault("throttle", origin="cdn", rate=4 * MiB))
    models = tmp_path / "models"
    async with (
        worker(tmp_path, "a", pg_url, models, connections_per_file=1) as a,
        worker(tmp_path, "b", pg_url, models, connections_per_file=1) as b,
    ):
        assert a._fleet is not None and b._fleet is not None
        await _until(lambda: len(a._fleet.roster) == 2 == len(b._fleet.roster))
        gid = await a.enqueue(group_of(hub, "o/even", paths, models / "o" / "even"))
        await _until(lambda: sum(_held_by(pg_url).values()) == 4)
        # Each worker alone would take 3 of the 4: with the other in the roster, 2 each.
        assert sorted(_held_by(pg_url).values()) == [2, 2]
        await _until(lambda: a._book.settled(gid) and b._book.settled(gid), 60.0)
        assert a._fleet.handed_off_at == 0.0 == b._fleet.handed_off_at  # none needed
    assert_published(hub, "o/even", paths, models / "o" / "even")


async def test_a_worker_that_took_too_many_hands_one_to_a_worker_that_joins(
    hub: FakeHub, tmp_path: Path, pg_url: str
) -> None:
    paths = _shards(hub, "o/late", 4)
    hub.add_fault(Fault("throttle", origin="cdn", rate=1 * MiB))
    models = tmp_path / "models"
    knobs = {"connections_per_file": 1, "fleet_handoff_min_left": 2 * MiB}
    async with worker(tmp_path, "a", pg_url, models, **knobs) as a:
        with a.subscribe() as events:
            gid = await a.enqueue(group_of(hub, "o/late", paths, models / "o" / "late"))
            await _until(lambda: len(a._running) == 3)  # alone: it takes all it may run
            async with worker(tmp_path, "b", pg_url, models, **knobs) as b:
                # b claims the fourth file; a, two files above it, hands one back; b takes it.
                await _until(lambda: sorted(_held_by(pg_url).values()) == [2, 2])
                handed = await _notice(events, "handed back")
                assert "bytes are kept" in handed.message
                await _until(lambda: a._book.settled(gid) and b._book.settled(gid), 60.0)
    assert_published(hub, "o/late", paths, models / "o" / "late")
    sent = cdn_bytes(hub)
    # The handed file resumed from its .part: each file crossed the wire about once.
    assert all(SIZE <= sent[p] <= SIZE * 1.1 for p in paths), sent


async def _notice(events: object, text: str) -> ev.Notice:
    async with asyncio.timeout(20):
        async for event in events:  # type: ignore[attr-defined]
            if isinstance(event, ev.Notice) and text in event.message:
                return event
    raise AssertionError(f"no notice with {text!r}")


async def test_a_fleet_cap_on_connections_per_host_is_divided_among_the_workers(
    hub: FakeHub, tmp_path: Path, pg_url: str
) -> None:
    paths = _shards(hub, "o/conn", 2)
    hub.add_fault(Fault("throttle", origin="cdn", rate=2 * MiB))  # per connection
    models = tmp_path / "models"
    knobs = {
        "connections_per_file": 4,
        "segment_threshold": MiB,
        "min_segment_size": 256 * 1024,
        "max_active": 1,
    }
    async with (
        worker(tmp_path, "a", pg_url, models, **knobs) as a,
        worker(tmp_path, "b", pg_url, models, **knobs) as b,
    ):
        view = await a.set_fleet_limits(max_connections_per_host=2)
        assert view.max_connections_per_host == 2 and len(view.workers) == 2
        await _until(lambda: b._slots.host_cap == 2)  # b's share, read at its next beat
        gid = await a.enqueue(group_of(hub, "o/conn", paths, models / "o" / "conn"))
        await _until(lambda: len(a._running) == 1 == len(b._running))
        # Both transfer: one connection each to any one host, 2 over the fleet.
        await _until(lambda: a._slots.host_cap == 1 == b._slots.host_cap)
        settled = time.time() + 0.5  # pieces begun under the first shares have ended
        await _until(lambda: a._book.settled(gid) and b._book.settled(gid), 60.0)
        fleet = await b.fleet()
        assert {w.host for w in fleet.workers} and fleet.max_connections_per_host == 2
    assert_published(hub, "o/conn", paths, models / "o" / "conn")
    gets = [r for r in hub.requests(origin="cdn", method="GET") if r.end > settled]
    # Connections open at once to the CDN once both shares held: never above the cap.
    edges = sorted([(max(r.time, settled), 1) for r in gets] + [(r.end, -1) for r in gets])
    open_now = most = 0
    for _, step in edges:
        open_now += step
        most = max(most, open_now)
    assert most <= 2, most


async def test_the_fleet_is_shown_and_capped_through_the_daemon_the_remote_client_and_the_cli(
    hub: FakeHub,
    tmp_path: Path,
    pg_url: str,
    pycache: Path,  # noqa: F811
) -> None:
    models = tmp_path / "models"
    async with (
        worker(tmp_path, "a", pg_url, models, max_active=2) as a,
        worker(tmp_path, "b", pg_url, models, max_active=5) as b,
    ):
        assert a._fleet is not None and b._fleet is not None
        async with served_by(a) as url, aiohttp.ClientSession() as http:
            async with http.get(f"{url}/api/fleet") as got:
                assert got.status == 200
                shown = await got.json()
            assert {w["worker"]: w["max_active"] for w in shown["workers"]} == {
                a._fleet.worker: 2,
                b._fleet.worker: 5,
            }
            assert shown["max_active"] is None and shown["max_connections_per_host"] is None
            async with http.put(f"{url}/api/fleet", json={"max_active": 4}) as put:
                assert put.status == 200
                assert (await put.json())["max_active"] == 4
            async with http.put(f"{url}/api/fleet", json={"max_active": 0}) as bad:
                assert bad.status == 422  # refused, nothing changed
            remote = await connect(a.home)
            assert remote is not None
            async with remote:
                view = await remote.set_fleet_limits(max_connections_per_host=6)
                assert (view.max_active, view.max_connections_per_host) == (4, 6)  # kept, set
                assert {w.host for w in view.workers} == {a._fleet.worker.split("/")[0]}
                assert (await remote.set_fleet_limits(max_active=None)).max_active is None
        # From a home with no daemon: the CLI reads and sets the same caps in the store.
        cli = Cli(tmp_path / "cli", hub, pycache)
        cli.env["MODELFETCH_MODELS_DIR"] = str(models)
        listed = await cli("--store", pg_url, "fleet")
        assert listed.code == 0, listed.err
        assert "Connections to one host over the fleet: 6" in listed.out
        assert f"{b._fleet.worker}  0 of 5 files" in listed.out
        capped = await cli("--store", pg_url, "fleet", "--max-active", "3", "--json")
        assert capped.code == 0, capped.err
        assert json.loads(capped.out)["max_active"] == 3
        assert (await b.fleet()).max_active == 3
        wrong = await cli("--store", pg_url, "fleet", "--max-active", "zero")
        assert wrong.code == 2 and "--max-active takes a number" in wrong.err
        await cli(
            "--store", pg_url, "fleet", "--max-active", "none", "--max-connections-per-host", "off"
        )
        assert await b.fleet() == FleetView(
            workers=(await b.fleet()).workers, max_active=None, max_connections_per_host=None
        )
    private = await Cli(tmp_path / "private", hub, pycache)("fleet")
    assert private.code != 0 and "postgresql://" in private.err


async def test_a_private_daemon_answers_the_fleet_routes_with_a_conflict(tmp_path: Path) -> None:
    async with run_daemon(tmp_path) as daemon:
        status, body = await daemon.call("GET", "/api/fleet")
        assert status == 409 and body["error"]["kind"] == "conflict"
        assert "postgresql://" in body["error"]["message"]
