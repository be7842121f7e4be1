"""The manager's bookkeeping stays O(1) per event without changing what it promises: `wait()`
without re-scanning, running totals that equal a recount, batched commits that are still durable
before their events, and an import that leaves the Hub client out."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from modelfetch.core import events as ev
from modelfetch.core.models import LIVE_STATUSES, FileStatus
from modelfetch.manager import DownloadManager
from modelfetch.store import SqliteStore
from modelfetch.testing.fakehub import FakeHub, Fault

from .conftest import group_of, next_event, write_plan
from .test_manager import MiB, manager, shards

BATCH_CHILD = Path(__file__).with_name("batch_child.py")
SRC = Path(__file__).resolve().parent.parent / "src"


def assert_totals_match_a_recount(m: DownloadManager) -> None:
    """Every running total and index the manager keeps equals a recomputation from records."""
    live_dests: dict[str, set[tuple[int, int]]] = {}
    retrying: set[tuple[int, int]] = set()
    queued: dict[int, Counter[int]] = {}
    assert set(m._tallies) == set(m._groups)
    for gid, group in m._groups.items():
        tally = m._tallies[gid]
        statuses = Counter(f.status for f in group.files)
        assert {st: n for st, n in tally.statuses.items() if n} == statuses, gid
        assert tally.bytes_done == sum(f.bytes_done for f in group.files)
        assert tally.total == group.bytes_total
        done = 0
        for f in group.files:
            run = m._running.get((f.group_id, f.index))
            done += run.done if run is not None else f.bytes_done
            if f.status in LIVE_STATUSES:
                live_dests.setdefault(f.dest, set()).add((f.group_id, f.index))
            if f.status is FileStatus.WAITING_RETRY:
                retrying.add((f.group_id, f.index))
            if f.status is FileStatus.QUEUED:
                queued.setdefault(f.priority, Counter())[f.group_id] += 1
        assert m._group_done(group) == done
        unsettled = {FileStatus.QUEUED, FileStatus.ACTIVE, FileStatus.WAITING_RETRY}
        assert m._settled(gid) == (not any(f.status in unsettled for f in group.files))
    assert {d: set(owners) for d, owners in m._live_dests.items()} == live_dests
    assert set(m._retrying) == retrying
    assert m._queued_by_priority == {p: dict(c) for p, c in queued.items()}


async def test_wait_returns_when_files_finish_in_any_order_including_failures(
    hub: FakeHub, tmp_path: Path
) -> None:
    paths = shards(hub, "o/m", 5, MiB)
    other = shards(hub, "o/n", 2, MiB)
    # The first file is slow, so the others finish before it; the third fails for good.
    hub.add_fault(Fault("throttle", origin="cdn", path=paths[0], rate=2 * MiB))
    hub.add_fault(Fault("status", origin="cdn", path=paths[2], status=404))
    async with manager(tmp_path, max_active=5) as m:
        with m.subscribe() as sub:
            gid = await m.enqueue(group_of(hub, "o/m", paths, tmp_path / "out"))
            gid2 = await m.enqueue(group_of(hub, "o/n", other, tmp_path / "out2"))
            async with asyncio.timeout(30):
                await m.wait([gid, gid2])
            # Settled means no file is queued, active or waiting: the wait saw the last change.
            view = await m.group_view(gid)
            assert [f.status for f in view.files] == [
                "completed",
                "completed",
                "failed",
                "completed",
                "completed",
            ]
            assert (await m.group_view(gid2)).status == "completed"
            order = []
            while sub.pending:
                e = await anext(sub)
                if isinstance(e, ev.FileCompleted | ev.FileFailed) and e.group_id == gid:
                    order.append(e.ref)
        assert order[-1] == f"{gid}.1"  # the slow first file finished last
        assert not m._waiters
        # Already settled, and unknown ids: at once.
        async with asyncio.timeout(1):
            await m.wait([gid, gid2, 999])
        assert_totals_match_a_recount(m)


async def test_wait_on_many_groups_checks_each_once_per_settle_whatever_the_order(
    hub: FakeHub, tmp_path: Path
) -> None:
    count = 40
    paths = shards(hub, "o/m", count, 64 * 1024)
    # The first groups are slow, so the groups settle in no particular order of their ids; one
    # is requeued after it settled (a retry), so the wait must look at every group again.
    for path in paths[:4]:
        hub.add_fault(Fault("throttle", origin="cdn", path=path, rate=256 * 1024))
    hub.add_fault(Fault("status", origin="cdn", path=paths[5], status=404, times=1))
    async with manager(tmp_path, max_active=8) as m:
        checks = 0
        settled = m._settled

        def counted(gid: int) -> bool:
            nonlocal checks
            checks += 1
            return settled(gid)

        m._settled = counted  # type: ignore[method-assign]
        gids = [
            await m.enqueue(group_of(hub, "o/m", [path], tmp_path / "out", name=f"g{i}"))
            for i, path in enumerate(paths)
        ]
        waiter = asyncio.create_task(m.wait(gids))
        async with asyncio.timeout(30):
            while (await m.group_view(gids[5])).status != "failed":
                await asyncio.sleep(0.02)
        await m.retry(gids[5])
        async with asyncio.timeout(30):
            await waiter
        assert all(settled(g) for g in gids)
        assert [(await m.group_view(g)).status for g in gids] == ["completed"] * count
        # A re-scan of every pending group on each settle would be ~count**2 / 2 checks.
        assert checks <= 4 * count, checks


async def test_wait_counts_paused_as_settled_and_waits_again_after_a_resume(
    hub: FakeHub, tmp_path: Path
) -> None:
    paths = shards(hub, "o/m", 2, MiB)
    hub.add_fault(Fault("throttle", origin="cdn", rate=MiB))
    async with manager(tmp_path, max_active=1) as m:
        gid = await m.enqueue(group_of(hub, "o/m", paths, tmp_path / "out"))
        waiter = asyncio.create_task(m.wait([gid]))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        await m.pause(gid)
        async with asyncio.timeout(5):
            await waiter
        await m.resume(gid)
        second = asyncio.create_task(m.wait([gid]))
        await asyncio.sleep(0.1)
        assert not second.done()
        hub.clear_faults()
        async with asyncio.timeout(20):
            await second
        assert (await m.group_view(gid)).status == "completed"
        assert_totals_match_a_recount(m)


async def test_wait_returns_when_the_manager_shuts_down(hub: FakeHub, tmp_path: Path) -> None:
    paths = shards(hub, "o/m", 1, 4 * MiB)
    hub.add_fault(Fault("throttle", origin="cdn", rate=256 * 1024))
    m = manager(tmp_path, shutdown_grace=2.0)
    async with m:
        gid = await m.enqueue(group_of(hub, "o/m", paths, tmp_path / "out"))
        waiter = asyncio.create_task(m.wait([gid]))
        await asyncio.sleep(0.2)
        assert not waiter.done()
    async with asyncio.timeout(5):
        await waiter
    assert not m._settled(gid)  # it returned because of the shutdown, not because it settled


async def test_running_totals_equal_a_recount_through_progress_restarts_and_retries(
    hub: FakeHub, tmp_path: Path
) -> None:
    paths = shards(hub, "o/m", 6, 2 * MiB)
    hub.add_fault(Fault("reset", origin="cdn", path=paths[0], after_bytes=MiB, times=2))
    hub.add_fault(Fault("corrupt", origin="cdn", path=paths[1], after_bytes=1000, times=1))
    hub.add_fault(Fault("status", origin="cdn", path=paths[2], status=404))
    hub.add_fault(Fault("throttle", origin="cdn", path=paths[3], rate=4 * MiB))
    checks = 0
    async with manager(tmp_path, max_active=3) as m:
        with m.subscribe(maxsize=100_000) as sub:
            gid = await m.enqueue(group_of(hub, "o/m", paths, tmp_path / "out"))
            paused = False
            async with asyncio.timeout(30):
                async for e in sub:
                    assert_totals_match_a_recount(m)
                    checks += 1
                    if isinstance(e, ev.FileProgress) and e.ref == f"{gid}.4" and not paused:
                        paused = True
                        await m.pause(f"{gid}.4")  # parked with its partial, then resumed
                        assert_totals_match_a_recount(m)
                        await m.resume(f"{gid}.4")
                    if isinstance(e, ev.GroupFinished):
                        break
            view = await m.group_view(gid)
            assert view.downloaded == sum(f.downloaded for f in view.files)
            # The failed file retried, then the finished download forgotten.
            hub.clear_faults()
            await m.retry(f"{gid}.3")
            assert_totals_match_a_recount(m)
            async with asyncio.timeout(20):
                await m.wait([gid])
            assert_totals_match_a_recount(m)
            assert (await m.group_view(gid)).status == "completed"
            await m.forget(gid)
            assert_totals_match_a_recount(m)
            assert gid not in m._tallies
    assert paused and checks > 20


async def test_changes_made_together_commit_once_and_are_announced_after_the_commit(
    hub: FakeHub, tmp_path: Path
) -> None:
    paths = shards(hub, "o/m", 8, MiB)
    hub.add_fault(Fault("throttle", origin="cdn", rate=MiB))
    async with manager(tmp_path, max_active=1) as m:
        gid = await m.enqueue(group_of(hub, "o/m", paths, tmp_path / "out"))
        store = m.store
        commits: list[str] = []
        assert store._db is not None
        store._db.set_trace_callback(
            lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None
        )
        seen_uncommitted: list[ev.Event] = []
        original = m.bus.publish

        def publish(event: ev.Event) -> ev.Event:
            if store.batching:
                seen_uncommitted.append(event)
            return original(event)

        m.bus.publish = publish  # type: ignore[method-assign]
        paused: set[str] = set()
        with m.subscribe() as sub:
            await m.pause_all()  # one active and seven waiting files, one transaction
            async with asyncio.timeout(10):
                while len(paused) < 8:
                    e = await anext(sub)
                    if isinstance(e, ev.StatusChanged) and e.status == "paused":
                        paused.add(e.ref)
        assert paused == {f"{gid}.{i}" for i in range(1, 9)}
        # The seven waiting files in one commit; the active one parks in its own task.
        assert len(commits) <= 3
        assert not seen_uncommitted
    # Read back through another connection: every announced pause is on disk.
    with SqliteStore(tmp_path / "home") as fresh:
        group = fresh.get_group(gid)
        assert group is not None
        assert {f.status for f in group.files} == {FileStatus.PAUSED}


async def test_events_seen_before_a_kill_9_are_in_the_store(hub: FakeHub, tmp_path: Path) -> None:
    paths = shards(hub, "o/m", 40, 64 * 1024)
    dest = tmp_path / "out"
    request = group_of(hub, "o/m", paths, dest)
    plan = tmp_path / "plan.json"
    write_plan(plan, request)
    home = tmp_path / "home"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BATCH_CHILD),
        str(home),
        str(plan),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    announced: dict[str, str] = {}
    try:
        async with asyncio.timeout(30):
            while sum(1 for s in announced.values() if s == "completed") < 12:
                line = await proc.stdout.readline()
                assert line, (await proc.stderr.read()).decode()  # type: ignore[union-attr]
                event = json.loads(line)
                if event.get("type") == "status_changed":
                    announced[event["ref"]] = event["status"]
    finally:
        proc.send_signal(signal.SIGKILL)  # right after the events: no chance to tidy up
        await proc.wait()
    with SqliteStore(home) as store:
        rows = {str(f.ref): f for f in store.files()}
    for ref, status in announced.items():
        stored = rows[ref].status
        if status == "completed":
            assert stored is FileStatus.COMPLETED, ref
            assert rows[ref].sha256 is not None
        elif status == "active":  # announced active: committed active (or further along)
            assert stored in (FileStatus.ACTIVE, FileStatus.COMPLETED), ref
    # And a restart finishes the rest without fetching the completed files again.
    served = len(hub.requests(origin="cdn", method="GET"))
    async with DownloadManager(home=home) as m:
        gid = next(iter(m._groups))
        async with asyncio.timeout(30):
            await m.wait([gid])
        assert (await m.group_view(gid)).status == "completed"
    again = [r.path for r in hub.requests(origin="cdn", method="GET")[served:]]
    completed = {ref for ref, s in announced.items() if s == "completed"}
    names = {rows[ref].name for ref in completed}
    assert names and not [p for p in again if any(n in p for n in names)]


def test_importing_the_manager_leaves_the_hub_client_and_planner_out() -> None:
    probe = (
        "import sys, modelfetch.transfer\n"
        "transfer_brings_aiohttp = 'aiohttp' in sys.modules\n"
        "from modelfetch.manager import DownloadManager\n"
        "from pathlib import Path\n"
        "DownloadManager(home=Path(sys.argv[1]))\n"
        "print(transfer_brings_aiohttp, 'aiohttp' in sys.modules,"
        " 'modelfetch.hub' in sys.modules, 'modelfetch.planner' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, "/nonexistent-home"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    ).stdout.split()
    transfer_brings_aiohttp, has_aiohttp, has_hub, has_planner = (w == "True" for w in out)
    assert not has_hub and not has_planner
    # aiohttp comes only with the transfer layer, if at all: never because of the manager.
    assert has_aiohttp == transfer_brings_aiohttp


async def test_the_hub_session_is_made_on_first_use_and_closed_at_shutdown(
    hub: FakeHub, tmp_path: Path
) -> None:
    shards(hub, "o/m", 1, MiB)
    from modelfetch.hubconfig import HubConfig

    m = DownloadManager(
        home=tmp_path / "home",
        hub=HubConfig(endpoint=hub.endpoint),
        models_dir=tmp_path / "models",
    )
    async with m:
        assert m._api_session is None and m._planner is None
        with m.subscribe() as sub:
            gid = await m.add("o/m")
            await next_event(sub, lambda e: isinstance(e, ev.GroupFinished) and e.group_id == gid)
        session = m._api_session
        assert session is not None and not session.closed
    assert session.closed


async def test_a_new_download_is_announced_at_the_position_the_queue_gives_it(
    tmp_path: Path,
) -> None:
    from modelfetch.requests import FileRequest, GroupRequest

    def request(i: int, priority: int, files: int = 2) -> GroupRequest:
        return GroupRequest(
            name=f"d{i}",
            dest_dir=tmp_path / "out" / str(i),
            priority=priority,
            files=tuple(
                FileRequest(url=f"http://127.0.0.1:9/{i}/{n}", path=f"f{n}.bin", size=10)
                for n in range(files)
            ),
        )

    async with DownloadManager(home=tmp_path / "home", workers=False) as m:
        with m.subscribe() as sub:
            gids = []
            for i, priority in enumerate([0, 0, 5, -1, 0, 5, 3, -1, 0]):
                gid = await m.enqueue(request(i, priority))
                gids.append(gid)
                queued = await next_event(sub, lambda e: isinstance(e, ev.GroupQueued))
                assert queued.group_id == gid  # type: ignore[attr-defined]
                assert isinstance(queued, ev.GroupQueued)
                assert queued.position == m._queue.group_positions()[gid]
                assert_totals_match_a_recount(m)
                if i == 4:  # a paused group, one with a paused file, and a reprioritised one
                    await m.pause(gids[0])
                    await m.pause(f"{gids[1]}.1")
                    await m.set_priority(gids[2], -3)
                    assert_totals_match_a_recount(m)


async def test_transfers_ending_together_share_a_commit_and_are_announced_after_it(
    hub: FakeHub, tmp_path: Path
) -> None:
    paths = shards(hub, "o/m", 30, 64 * 1024)
    async with manager(tmp_path, max_active=8) as m:
        store = m.store
        assert store._db is not None
        commits: list[str] = []
        file_writes: list[str] = []

        def trace(sql: str) -> None:
            if sql.strip().upper() == "COMMIT":
                commits.append(sql)
            elif sql.startswith("UPDATE files SET status"):
                file_writes.append(sql)

        store._db.set_trace_callback(trace)
        published_uncommitted: list[ev.Event] = []
        announced: list[ev.Event] = []
        original = m.bus.publish

        def publish(event: ev.Event) -> ev.Event:
            if store.batching:
                published_uncommitted.append(event)
            announced.append(event)
            return original(event)

        m.bus.publish = publish  # type: ignore[method-assign]
        gid = await m.enqueue(group_of(hub, "o/m", paths, tmp_path / "out"))
        async with asyncio.timeout(30):
            await m.wait([gid])
        finished = [e for e in announced if isinstance(e, ev.GroupFinished)]
        assert len(finished) == 1 and finished[0].status == "completed"
    assert not published_uncommitted
    # At most one commit per finished transfer (plus the enqueue and the first starts).
    assert len(commits) <= len(paths) + 3
    # Per file: its start and its completion, one status statement each (SQLite traces a
    # statement again for its trigger, hence the set).
    assert len(set(file_writes)) == 2 * len(paths)
    with SqliteStore(tmp_path / "home") as fresh:
        group = fresh.get_group(gid)
        assert group is not None
        assert {f.status for f in group.files} == {FileStatus.COMPLETED}
        # The verified digests were committed with the completions they belong to.
        for f in group.files:
            st = os.stat(f.dest)
            assert fresh.verified_digest(f.dest, st.st_size, st.st_mtime_ns) == f.sha256
