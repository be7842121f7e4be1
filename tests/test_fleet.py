"""Fleet mode (issue 14): several workers drain one queue kept in PostgreSQL.

Real parts only: the session's throwaway PostgreSQL cluster (`pg.py`), the fake hub on loopback,
managers in this process and worker processes killed with SIGKILL. Leases are short here (1-2 s)
so that a dead worker's files are taken over within the test's time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from modelfetch.core import events as ev
from modelfetch.core.models import FileStatus
from modelfetch.manager import DownloadManager
from modelfetch.store.postgres import PostgresStore
from modelfetch.testing.fakehub import FakeHub, Fault, RepoFile

from .conftest import group_of, next_event, write_plan
from .pg import (  # noqa: F401 -- the pg fixtures
    TESTS_DB,
    PgCluster,
    own_cluster_fixture,
    pg_cluster_fixture,
    pg_url_fixture,
)
from .test_cli import Cli, pycache  # noqa: F401 -- the CLI fixture's cache
from .test_manager import MiB, assert_published, settings

CHILD = Path(__file__).with_name("fleet_child.py")


def fleet_settings(**overrides: object) -> Any:
    base: dict[str, object] = {"lease_seconds": 2.0, "fleet_poll_interval": 0.1}
    base.update(overrides)
    return settings(**base)


def worker(
    tmp_path: Path, name: str, url: str, models: Path, **overrides: object
) -> DownloadManager:
    return DownloadManager(
        home=tmp_path / name,
        settings=fleet_settings(**overrides),
        models_dir=models,
        store_url=url,
    )


def cdn_bytes(hub: FakeHub) -> Counter[str]:
    """Bytes the CDN sent, per file name."""
    sent: Counter[str] = Counter()
    for r in hub.requests(origin="cdn", method="GET"):
        sent[r.path.rsplit("/", 1)[-1]] += r.bytes_sent
    return sent


async def _collect(events: Any, into: list[ev.Event]) -> None:
    async for event in events:
        into.append(event)


async def test_two_workers_share_one_queue_and_each_file_is_fetched_once(
    hub: FakeHub, tmp_path: Path, pg_url: str
) -> None:
    paths = [f"part-{n}.bin" for n in range(8)]
    hub.add_repo("o/fleet", [RepoFile(p, size=2 * MiB + n, seed=n) for n, p in enumerate(paths)])
    hub.add_fault(Fault("throttle", origin="cdn", rate=4 * MiB))  # so that both get work
    models = tmp_path / "models"
    dest = models / "o" / "fleet"
    seen: dict[str, list[ev.Event]] = {"a": [], "b": []}
    async with (
        worker(tmp_path, "a", pg_url, models) as a,
        worker(tmp_path, "b", pg_url, models) as b,
    ):
        assert a.shares_queue and b.shares_queue
        tasks = []
        for name, m in (("a", a), ("b", b)):
            sub = m.subscribe()
            tasks.append(asyncio.create_task(_collect(sub, seen[name])))
        gid = await a.enqueue(group_of(hub, "o/fleet", paths, dest))
        async with asyncio.timeout(60):
            await a.wait([gid])
            while b._groups.get(gid) is None or not b._book.settled(gid):
                await asyncio.sleep(0.1)  # b learns of the end from the store
        for t in tasks:
            t.cancel()
        view_b = await b.group_view(gid)  # the other worker's view of the whole group
        assert view_b.status == "completed"
        assert {f.status for f in view_b.files} == {"completed"}
    assert_published(hub, "o/fleet", paths, dest)
    started = {n: {e.ref for e in seen[n] if isinstance(e, ev.FileStarted)} for n in seen}
    assert started["a"] and started["b"], started  # both worked it
    assert not started["a"] & started["b"]  # no file was started by both
    sent = cdn_bytes(hub)
    for n, p in enumerate(paths):
        assert sent[p] == 2 * MiB + n  # every byte sent once
    with PostgresStore(pg_url) as store:
        assert {f.status for f in store.files()} == {FileStatus.COMPLETED}
        assert store.holders() == {}


async def test_a_worker_whose_lease_was_taken_stops_writing_and_the_holder_finishes(
    hub: FakeHub, tmp_path: Path, pg_url: str
) -> None:
    hub.add_repo("o/big", [RepoFile("big.bin", size=8 * MiB, seed=3)])
    throttle = hub.add_fault(Fault("throttle", origin="cdn", rate=2 * MiB))
    models = tmp_path / "models"
    dest = models / "o" / "big"
    async with worker(tmp_path, "a", pg_url, models, lease_seconds=30.0) as a:
        with a.subscribe() as events:
            gid = await a.enqueue(group_of(hub, "o/big", ["big.bin"], dest))
            await next_event(events, lambda e: isinstance(e, ev.FileProgress) and e.downloaded > 0)
            with PostgresStore(pg_url) as thief:
                # Seen from a clock past its lease, the file is free: another worker takes it.
                (taken,) = thief.claim("thief", lease_seconds=600, limit=1, now=time.time() + 60)
                notice = await next_event(
                    events,
                    lambda e: isinstance(e, ev.Notice) and "another worker holds it" in e.message,
                )
                assert notice.ref == f"{gid}.1"
                async with asyncio.timeout(10):
                    while (gid, 1) in a._running:
                        await asyncio.sleep(0.05)
                row = thief.get_file(gid, 1)
                assert row is not None and row.status is FileStatus.ACTIVE
                assert thief.holders()[gid, 1][0] == "thief"
                frozen = row.bytes_done
                await asyncio.sleep(0.6)  # several checkpoints and syncs of `a`
                row = thief.get_file(gid, 1)
                assert row is not None and row.bytes_done == frozen  # `a` wrote nothing more
                assert thief.holders()[gid, 1][0] == "thief"
                # The thief hands it back; `a` claims it again and resumes from the .part.
                throttle.rate = None
                hub.clear_faults()
                thief.release(taken, FileStatus.QUEUED)
            async with asyncio.timeout(30):
                await a.wait([gid])
    assert_published(hub, "o/big", ["big.bin"], dest)
    ranged = [r.range for r in hub.requests(origin="cdn", method="GET") if r.range]
    assert ranged  # the second claim resumed, it did not start over


async def _spawn(tmp_path: Path, name: str, url: str, models: Path, *plan: Path) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODELFETCH_"))}
    env.update(FLEET_LEASE="1.5", NO_PROXY="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        str(tmp_path / name),
        url,
        str(models),
        *map(str, plan),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _read_lines(proc: Any, into: list[dict[str, Any]]) -> None:
    assert proc.stdout is not None
    async for line in proc.stdout:
        into.append(json.loads(line))


async def test_three_worker_processes_one_killed_mid_transfer_the_others_finish_its_files(
    hub: FakeHub, tmp_path: Path, pg_url: str
) -> None:
    shards = [f"M-Q4_K_M-{i:05d}-of-00003.gguf" for i in range(1, 4)]
    small = [f"small-{n}.json" for n in range(6)]
    sizes = {p: 6 * MiB + i for i, p in enumerate(shards)} | {
        p: 40_000 + n for n, p in enumerate(small)
    }
    hub.add_repo(
        "o/m", [RepoFile(p, size=s, seed=i, lfs=True) for i, (p, s) in enumerate(sizes.items())]
    )
    rate = 3 * MiB
    hub.add_fault(Fault("throttle", origin="cdn", rate=rate, path="gguf"))
    models = tmp_path / "models"
    dest = models / "o" / "m"
    plan = write_plan(tmp_path / "plan.json", group_of(hub, "o/m", [*shards, *small], dest))
    out: dict[str, list[dict[str, Any]]] = {"w1": [], "w2": [], "w3": []}
    w1 = await _spawn(tmp_path, "w1", pg_url, models, plan)
    readers = [asyncio.create_task(_read_lines(w1, out["w1"]))]
    async with asyncio.timeout(30):
        while not any(e.get("type") == "enqueued" for e in out["w1"]):
            await asyncio.sleep(0.05)
    others = [await _spawn(tmp_path, n, pg_url, models) for n in ("w2", "w3")]
    readers += [
        asyncio.create_task(_read_lines(p, out[n]))
        for p, n in zip(others, ("w2", "w3"), strict=True)
    ]
    # Kill w1 once it is mid-transfer on a shard (bytes of it on disk, not finished).
    async with asyncio.timeout(30):
        while not any(
            e.get("type") == "file_progress" and e["name"] in shards and e["downloaded"] > MiB
            for e in out["w1"]
        ):
            await asyncio.sleep(0.05)
    w1.send_signal(signal.SIGKILL)
    await w1.wait()
    killed_running = {e["ref"] for e in out["w1"] if e.get("type") == "file_started"} - {
        e["ref"] for e in out["w1"] if e.get("type") == "file_completed"
    }
    assert killed_running  # what the killed worker left half done
    try:
        async with asyncio.timeout(90):
            codes = [await p.wait() for p in others]
    finally:
        for p in others:
            if p.returncode is None:
                p.kill()
    await asyncio.gather(*readers, return_exceptions=True)
    errors = [(await p.stderr.read()).decode() for p in others if p.stderr is not None]
    assert codes == [0, 0], errors
    assert_published(hub, "o/m", [*shards, *small], dest)
    finished_by_others = {
        e["ref"] for n in ("w2", "w3") for e in out[n] if e.get("type") == "file_completed"
    }
    assert killed_running <= finished_by_others
    with PostgresStore(pg_url) as store:
        assert {f.status for f in store.files()} == {FileStatus.COMPLETED}
        assert store.holders() == {}
    # About once: beyond one copy, only what was in flight when w1 died (it had at most two
    # throttled transfers, its last checkpoint at most 0.2 s old; the .part itself is resumed).
    sent = cdn_bytes(hub)
    extra = sum(sent.values()) - sum(sizes.values())
    assert 0 <= extra <= 2 * rate


async def test_worker_processes_ride_out_a_postgresql_restart_and_finish_every_file(
    hub: FakeHub, tmp_path: Path, own_cluster: PgCluster
) -> None:
    url = own_cluster.url(TESTS_DB)
    shards = [f"R-Q8_0-{i:05d}-of-00002.gguf" for i in range(1, 3)]
    small = [f"small-{n}.json" for n in range(4)]
    sizes = {p: 6 * MiB + i for i, p in enumerate(shards)} | {
        p: 30_000 + n for n, p in enumerate(small)
    }
    hub.add_repo(
        "o/r", [RepoFile(p, size=s, seed=i, lfs=True) for i, (p, s) in enumerate(sizes.items())]
    )
    rate = 2 * MiB
    hub.add_fault(Fault("throttle", origin="cdn", rate=rate, path="gguf"))
    models = tmp_path / "models"
    dest = models / "o" / "r"
    plan = write_plan(tmp_path / "plan.json", group_of(hub, "o/r", [*shards, *small], dest))
    out: dict[str, list[dict[str, Any]]] = {"w1": [], "w2": []}
    procs = [
        await _spawn(tmp_path, "w1", url, models, plan),
        await _spawn(tmp_path, "w2", url, models),
    ]
    readers = [asyncio.create_task(_read_lines(p, out[n])) for p, n in zip(procs, out, strict=True)]
    try:
        async with asyncio.timeout(30):
            while not any(
                e.get("type") == "file_progress" and e["name"] in shards and e["downloaded"] > MiB
                for e in out["w1"] + out["w2"]
            ):
                await asyncio.sleep(0.05)
        await asyncio.to_thread(own_cluster.stop, "fast")  # mid-transfer, under both workers
        await asyncio.sleep(1.5)
        await asyncio.to_thread(own_cluster.start)
        async with asyncio.timeout(90):
            codes = [await p.wait() for p in procs]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
    await asyncio.gather(*readers, return_exceptions=True)
    errors = [(await p.stderr.read()).decode() for p in procs if p.stderr is not None]
    assert codes == [0, 0], errors
    notices = [e["message"] for n in out for e in out[n] if e.get("type") == "notice"]
    assert any("unreachable" in m for m in notices) and any("reachable again" in m for m in notices)
    assert_published(hub, "o/r", [*shards, *small], dest)
    with PostgresStore(url) as store:
        assert {f.status for f in store.files()} == {FileStatus.COMPLETED}
        assert store.holders() == {}
    # The transfers stopped with their bytes and segment maps kept: about once on the wire.
    sent = cdn_bytes(hub)
    extra = sum(sent.values()) - sum(sizes.values())
    assert 0 <= extra <= 2 * rate


async def test_the_cli_works_a_shared_queue_from_any_home(
    hub: FakeHub,
    tmp_path: Path,
    pg_url: str,
    pycache: Path,  # noqa: F811
) -> None:
    hub.add_repo("o/cli", [RepoFile("weights.bin", size=3 * MiB, seed=5)])
    url = hub.resolve_url("o/cli", "weights.bin")
    one = Cli(tmp_path / "one", hub, pycache)
    two = Cli(tmp_path / "two", hub, pycache)
    models = tmp_path / "shared-models"
    for c in (one, two):
        c.env["MODELFETCH_MODELS_DIR"] = str(models)
    added = await one("--store", pg_url, "add", url)
    assert added.code == 0, added.err
    listed = await two("--store", pg_url, "ls", "--json")  # another home, the same queue
    assert listed.code == 0, listed.err
    (row,) = json.loads(listed.out)
    assert row["status"] == "queued"
    ran = await two("run", env={"MODELFETCH_STORE": pg_url})
    assert ran.code == 0, ran.err
    assert (models / "o" / "cli" / "weights.bin").read_bytes() == hub.content(
        "o/cli", "weights.bin"
    )
    shown = await one("--store", pg_url, "config")
    assert shown.code == 0, shown.err
    store_row = next(line for line in shown.out.splitlines() if line.startswith("store"))
    assert "postgresql://" in store_row and "--store" in store_row
    assert "@" in pg_url and pg_url.split("@")[0].rsplit(":", 1)[-1] not in store_row  # password
    wrong = await one("--store", "mysql://db/queue", "ls")
    assert wrong.code == 2 and "mysql" in wrong.err and "Traceback" not in wrong.err
    assert len(wrong.err.strip().splitlines()) == 1


async def test_ls_and_status_name_the_host_running_each_active_file(
    hub: FakeHub,
    tmp_path: Path,
    pg_url: str,
    pycache: Path,  # noqa: F811
) -> None:
    """From a home with no daemon and no worker: the CLI shows the fleet's queue as stored,
    with the host that holds each active file."""
    hub.add_repo("o/on", [RepoFile("on.bin", size=4 * MiB, seed=7)])
    hub.add_fault(Fault("throttle", origin="cdn", rate=512 * 1024))
    models = tmp_path / "models"
    onlooker = Cli(tmp_path / "onlooker", hub, pycache)
    onlooker.env["MODELFETCH_MODELS_DIR"] = str(models)
    async with worker(tmp_path, "a", pg_url, models) as a:
        gid = await a.enqueue(group_of(hub, "o/on", ["on.bin"], models / "o" / "on"))
        async with asyncio.timeout(20):
            while (gid, 1) not in a._running:
                await asyncio.sleep(0.02)
        assert a._fleet is not None
        holder = a._fleet.worker
        host = holder.split("/", 1)[0]
        listed = await onlooker("--store", pg_url, "ls")
        assert listed.code == 0, listed.err
        (row,) = [line for line in listed.out.splitlines() if line.split()[:1] == [str(gid)]]
        assert f"active on {host}" in row
        shown = await onlooker("--store", pg_url, "status", str(gid))
        assert shown.code == 0, shown.err
        (line,) = [line for line in shown.out.splitlines() if line.startswith(f"{gid}.1 ")]
        assert f"active on {host}" in line and holder not in line
        as_json = await onlooker("--store", pg_url, "status", str(gid), "--json")
        assert as_json.code == 0, as_json.err
        assert json.loads(as_json.out)["files"][0]["worker"] == holder  # the whole id
        hub.clear_faults()
        async with asyncio.timeout(30):
            await a.wait([gid])
    done = await onlooker("--store", pg_url, "status", str(gid), "--json")
    assert done.code == 0, done.err
    assert json.loads(done.out)["files"][0]["worker"] is None


async def test_a_worker_on_another_models_directory_is_refused(
    hub: FakeHub, tmp_path: Path, pg_url: str
) -> None:
    async with worker(tmp_path, "a", pg_url, tmp_path / "models"):
        pass
    from modelfetch.core.errors import StateError

    with pytest.raises(StateError, match="is not the models directory"):
        async with worker(tmp_path, "b", pg_url, tmp_path / "elsewhere"):
            pass
