"""The manager end to end: real fake Hub on loopback, real SQLite file, real transfers."""

from __future__ import annotations

import asyncio
import email.utils
import time
from pathlib import Path

import pytest

from modelfetch.core import events as ev
from modelfetch.core.errors import StateLockedError
from modelfetch.core.models import FileStatus
from modelfetch.core.policy import RetryPolicy
from modelfetch.manager import DownloadManager, ManagerSettings
from modelfetch.store import SqliteStore
from modelfetch.testing.fakehub import FakeHub, Fault, RepoFile, RequestRecord

from .conftest import group_of, next_event, peak_open

MiB = 1 << 20
FAST_RETRY = RetryPolicy(base_delay=0.05, max_delay=0.2)


def settings(**overrides: object) -> ManagerSettings:
    base: dict[str, object] = {
        "max_active": 3,
        "progress_interval": 0.1,
        "checkpoint_interval": 0.2,
        "policy": FAST_RETRY,
        "stall_timeout": 5.0,
    }
    base.update(overrides)
    return ManagerSettings(**base)  # type: ignore[arg-type]


def manager(tmp_path: Path, **overrides: object) -> DownloadManager:
    return DownloadManager(home=tmp_path / "home", settings=settings(**overrides))


def shards(hub: FakeHub, repo: str, count: int, size: int) -> list[str]:
    paths = [f"M-Q4_K_M-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
    hub.add_repo(repo, [RepoFile(p, size=size, seed=i) for i, p in enumerate(paths, 1)])
    return paths


def assert_published(hub: FakeHub, repo: str, paths: list[str], dest: Path) -> None:
    for path in paths:
        assert (dest / path).read_bytes() == hub.content(repo, path)
        assert not (dest / (path + ".part")).exists()
        assert not (dest / (path + ".part.json")).exists()


def cdn_gets(hub: FakeHub, path: str) -> list[RequestRecord]:
    return [r for r in hub.requests(origin="cdn", path_contains=path, method="GET")]


async def test_a_group_arrives_byte_exact_with_events_in_order(
    hub: FakeHub, tmp_path: Path
) -> None:
    paths = shards(hub, "o/m", 3, 3 * MiB)
    dest = tmp_path / "out"
    async with manager(tmp_path) as m:
        with m.subscribe() as sub:
            gid = await m.enqueue(group_of(hub, "o/m", paths, dest))
            finished = await next_event(sub, lambda e: isinstance(e, ev.GroupFinished))
        assert isinstance(finished, ev.GroupFinished)
        assert (finished.status, finished.completed, finished.failed) == ("completed", 3, 0)
        view = await m.group_view(gid)
    assert_published(hub, "o/m", paths, dest)
    assert view.status == "completed"
    assert view.downloaded == view.total == 9 * MiB
    assert all(f.sha256 == hub.file("o/m", f.name).sha256 for f in view.files)
    # The store agrees, read back through a fresh connection.
    with SqliteStore(tmp_path / "home") as store:
        group = store.get_group(gid)
        assert group is not None
        assert [f.status for f in group.files] == [FileStatus.COMPLETED] * 3
        assert group.finished_at is not None


async def test_the_event_sequence_is_monotonic_and_every_transition_is_announced(
    hub: FakeHub, tmp_path: Path
) -> None:
    paths = shards(hub, "o/m", 2, 2 * MiB)
    seen: list[ev.Event] = []
    async with manager(tmp_path) as m:
        with m.subscribe() as sub:
            await m.enqueue(group_of(hub, "o/m", paths, tmp_path / "out"))
            async with asyncio.timeout(20):
                async for e in sub:
                    seen.append(e)
                    if isinstance(e, ev.GroupFinished):
                        break
    seqs = [e.seq for e in seen]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert isinstance(seen[0], ev.GroupQueued)
    for ref in ("1.1", "1.2"):
        statuses = [e.status for e in seen if isinstance(e, ev.StatusChanged) and e.ref == ref]
        assert statuses == ["active", "completed"]
        started = [e for e in seen if isinstance(e, ev.FileStarted) and e.ref == ref]
        done = [e for e in seen if isinstance(e, ev.FileCompleted) and e.ref == ref]
        assert len(started) == len(done) == 1
    final = [e for e in seen if isinstance(e, ev.GroupProgress)][-1]
    assert final.downloaded == final.total == 4 * MiB


async def test_no_more_than_max_active_transfers_are_seen_by_the_server(
    hub: FakeHub, tmp_path: Path
) -> None:
    paths = shards(hub, "o/m", 6, 1 * MiB)
    hub.add_fault(Fault("throttle", origin="cdn", rate=4 * MiB))  # each takes ~0.25 s
    async with manager(tmp_path, max_active=2) as m:
        gid = await m.enqueue(group_of(hub, "o/m", paths, tmp_path / "out"))
        async with asyncio.timeout(30):
            await m.wait([gid])
    gets = hub.requests(origin="cdn", method="GET")
    assert len(gets) == 6
    assert peak_open(gets) == 2
    assert_published(hub, "o/m", paths, tmp_path / "out")


async def test_the_next_file_starts_while_the_last_one_publishes(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`max_active` bounds downloads, not fsyncs: a file whose bytes are all in gives its slot
    to the next one while its publish runs, up to `max_active` such files at once (a disk
    slower than the network does not pile up the whole queue)."""
    import threading

    from modelfetch.transfer import receive

    real = receive.verify_and_publish_body
    gate = threading.Event()
    entered: list[str] = []

    def held_publish(body: object, part: Path, dest: Path, *args: object, **kw: object) -> object:
        entered.append(dest.name)
        gate.wait(30)  # on a publish thread: the loop goes on
        return real(body, part, dest, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(receive, "verify_and_publish_body", held_publish)
    paths = shards(hub, "o/m", 4, 100_000)  # small bodies: held in memory, published whole
    async with manager(tmp_path, max_active=1) as m:
        gid = await m.enqueue(group_of(hub, "o/m", paths, tmp_path / "out"))
        async with asyncio.timeout(30):
            while len(entered) < 2:
                await asyncio.sleep(0.01)
        view = await m.group_view(gid)
        statuses = sorted(f.status for f in view.files)
        gets = hub.requests(origin="cdn", method="GET")
        gate.set()
        async with asyncio.timeout(30):
            await m.wait([gid])
    assert entered[:2] == paths[:2]
    assert statuses == ["active", "active", "queued", "queued"]  # two publishing, no third
    assert len(gets) == 2
    gets = hub.requests(origin="cdn", method="GET")
    assert len(gets) == 4
    assert peak_open(gets) == 1  # one download at a time, as asked
    assert_published(hub, "o/m", paths, tmp_path / "out")


async def test_pause_keeps_the_partial_and_resume_continues_from_that_byte(
    hub: FakeHub, tmp_path: Path
) -> None:
    paths = shards(hub, "o/m", 1, 8 * MiB)
    hub.add_fault(Fault("throttle", origin="cdn", rate=4 * MiB))
    dest = tmp_path / "out"
    part = dest / (paths[0] + ".part")
    async with manager(tmp_path) as m:
        with m.subscribe() as sub:
            gid = await m.enqueue(group_of(hub, "o/m", paths, dest))
            await next_event(
                sub, lambda e: isinstance(e, ev.FileProgress) and e.downloaded >= 2 * MiB
            )
            await m.pause(gid)
            view = await m.group_view(gid)
            assert view.status == "paused"
            on_disk = part.stat().st_size
            assert 0 < on_disk < 8 * MiB
            assert view.files[0].downloaded == on_disk
            await asyncio.sleep(0.3)
            assert part.stat().st_size == on_disk  # nothing moves while paused
            hub.clear_faults()
            await m.resume(gid)
            await next_event(sub, lambda e: isinstance(e, ev.GroupFinished))
    gets = cdn_gets(hub, paths[0])
    assert gets[-1].range == f"bytes={on_disk}-"
    assert_published(hub, "o/m", paths, dest)


async def test_cancel_leaves_neither_a_partial_nor_a_final_file(
    hub: FakeHub, tmp_path: Path
) -> None:
    paths = shards(hub, "o/m", 2, 8 * MiB)
    hub.add_fault(Fault("throttle", origin="cdn", rate=4 * MiB))
    dest = tmp_path / "out"
    async with manager(tmp_path, max_active=1) as m:
        with m.subscribe() as sub:
            gid = await m.enqueue(group_of(hub, "o/m", paths, dest))
            await next_event(sub, lambda e: isinstance(e, ev.FileProgress) and e.downloaded > 0)
            await m.cancel(gid)
            cancelled = await next_event(
                sub, lambda e: isinstance(e, ev.Cancelled) and e.ref == str(gid)
            )
            finished = await next_event(sub, lambda e: isinstance(e, ev.GroupFinished))
        assert isinstance(cancelled, ev.Cancelled) and cancelled.group_id == gid
        assert isinstance(finished, ev.GroupFinished) and finished.status == "cancelled"
        view = await m.group_view(gid)
    assert [f.status for f in view.files] == ["cancelled", "cancelled"]
    assert list(dest.glob("*")) == []


async def test_a_429_holds_the_host_for_as_long_as_the_server_asks(
    hub: FakeHub, tmp_path: Path
) -> None:
    paths = shards(hub, "o/m", 2, 1 * MiB)
    hub.add_fault(
        Fault("status", origin="hub", path=paths[0], status=429, retry_after="2", times=1)
    )
    async with manager(tmp_path, max_active=1) as m:
        gid = await m.enqueue(group_of(hub, "o/m", paths, tmp_path / "out"))
        async with asyncio.timeout(20):
            await m.wait([gid])
        view = await m.group_view(gid)
    assert view.status == "completed"
    resolves = hub.requests(origin="hub", path_contains="/resolve/")
    limited = [r for r in resolves if r.status == 429]
    assert len(limited) == 1
    after = [r for r in resolves if r.time > limited[0].time]
    assert after, "nothing was retried"
    # Every later request to that host, for either file, waited what the server asked.
    assert min(r.time for r in after) >= limited[0].time + 2.0 - 0.05


async def test_a_503_with_an_http_date_is_honoured(hub: FakeHub, tmp_path: Path) -> None:
    paths = shards(hub, "o/m", 1, 1 * MiB)
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    hub.add_fault(Fault("status", origin="hub", status=503, retry_after=when, times=1))
    async with manager(tmp_path) as m:
        with m.subscribe() as sub:
            gid = await m.enqueue(group_of(hub, "o/m", paths, tmp_path / "out"))
            waiting = await next_event(
                sub, lambda e: isinstance(e, ev.StatusChanged) and e.status == "waiting_retry"
            )
            await next_event(sub, lambda e: isinstance(e, ev.GroupFinished))
        assert isinstance(waiting, ev.StatusChanged)
        assert waiting.error_kind == "server_busy" and waiting.retry_at is not None
        assert (await m.group_view(gid)).status == "completed"
    resolves = hub.requests(origin="hub", path_contains="/resolve/")
    assert [r.status for r in resolves] == [503, 302]
    # An HTTP date has one-second resolution: the retry came no earlier than that allows.
    assert resolves[1].time >= resolves[0].time + 1.0


@pytest.mark.parametrize(
    ("setup", "kind", "words"),
    [
        ("missing", "not_found", "not found"),
        ("gated", "gated", "gated"),
        ("private", "auth_required", "token"),
    ],
)
async def test_404_401_and_gated_403_fail_after_exactly_one_request(
    hub: FakeHub, tmp_path: Path, setup: str, kind: str, words: str
) -> None:
    hub.add_repo(
        "o/m",
        [RepoFile("M-Q4_K_M.gguf", size=MiB)],
        gated=setup == "gated",
        private=setup == "private",
    )
    request = group_of(hub, "o/m", ["M-Q4_K_M.gguf"], tmp_path / "out")
    if setup == "missing":
        request = group_of(hub, "o/m", ["M-Q4_K_M.gguf"], tmp_path / "out")
        hub.commit("o/m", [RepoFile("other.gguf", size=MiB)], replace=True)
    async with manager(tmp_path) as m:
        with m.subscribe() as sub:
            gid = await m.enqueue(request)
            failed = await next_event(sub, lambda e: isinstance(e, ev.FileFailed))
            finished = await next_event(sub, lambda e: isinstance(e, ev.GroupFinished))
    assert isinstance(failed, ev.FileFailed) and failed.error_kind == kind
    assert words in failed.message.lower()
    assert isinstance(finished, ev.GroupFinished) and finished.status == "failed"
    assert len(hub.requests(origin="hub", path_contains="/resolve/")) == 1
    assert gid == 1


async def test_resets_and_stalls_recover_without_user_action(hub: FakeHub, tmp_path: Path) -> None:
    paths = shards(hub, "o/m", 2, 4 * MiB)
    hub.add_fault(Fault("reset", origin="cdn", path=paths[0], after_bytes=MiB, times=2))
    hub.add_fault(Fault("stall", origin="cdn", path=paths[1], after_bytes=MiB, seconds=30, times=1))
    async with manager(tmp_path, stall_timeout=0.5) as m:
        with m.subscribe() as sub:
            gid = await m.enqueue(group_of(hub, "o/m", paths, tmp_path / "out"))
            kinds: list[str] = []
            async with asyncio.timeout(30):
                async for e in sub:
                    if isinstance(e, ev.StatusChanged) and e.status == "waiting_retry":
                        kinds.append(e.error_kind or "")
                    if isinstance(e, ev.GroupFinished):
                        break
        assert (await m.group_view(gid)).status == "completed"
    assert sorted(kinds) == ["network", "network", "stalled"]
    assert_published(hub, "o/m", paths, tmp_path / "out")
    # Each retry resumed where the previous attempt stopped instead of starting over.
    ranges = [r.range for r in cdn_gets(hub, paths[0])]
    assert ranges[0] is None and all(r and r.startswith("bytes=") for r in ranges[1:])


async def test_a_corrupt_download_is_retried_once_from_zero_then_fails(
    hub: FakeHub, tmp_path: Path
) -> None:
    paths = shards(hub, "o/m", 2, 2 * MiB)
    hub.add_fault(Fault("corrupt", origin="cdn", path=paths[0], after_bytes=12345, times=1))
    hub.add_fault(Fault("corrupt", origin="cdn", path=paths[1], after_bytes=999))
    async with manager(tmp_path) as m:
        gid = await m.enqueue(group_of(hub, "o/m", paths, tmp_path / "out"))
        async with asyncio.timeout(20):
            await m.wait([gid])
        view = await m.group_view(gid)
    first, second = view.files
    assert first.status == "completed"
    assert second.status == "failed" and second.error_kind == "integrity"
    assert len(cdn_gets(hub, paths[0])) == 2 and len(cdn_gets(hub, paths[1])) == 2
    assert all(r.range is None for r in cdn_gets(hub, paths[1]))
    assert view.status == "partial"
    assert not (tmp_path / "out" / paths[1]).exists()
    assert not (tmp_path / "out" / (paths[1] + ".part")).exists()


async def test_an_expired_cdn_url_is_resolved_again(hub: FakeHub, tmp_path: Path) -> None:
    paths = shards(hub, "o/m", 1, 1 * MiB)
    hub.add_fault(Fault("expire", seconds=0, times=1))
    async with manager(tmp_path) as m:
        gid = await m.enqueue(group_of(hub, "o/m", paths, tmp_path / "out"))
        async with asyncio.timeout(20):
            await m.wait([gid])
        assert (await m.group_view(gid)).status == "completed"
    assert [r.status for r in cdn_gets(hub, paths[0])] == [403, 200]
    assert len(hub.requests(origin="hub", path_contains="/resolve/")) == 2


async def test_one_failing_file_does_not_stop_the_others_and_can_be_retried_alone(
    hub: FakeHub, tmp_path: Path
) -> None:
    paths = shards(hub, "o/m", 3, 2 * MiB)
    hub.add_fault(Fault("status", origin="cdn", path=paths[1], status=404))
    dest = tmp_path / "out"
    async with manager(tmp_path) as m:
        gid = await m.enqueue(group_of(hub, "o/m", paths, dest))
        async with asyncio.timeout(20):
            await m.wait([gid])
        view = await m.group_view(gid)
        assert view.status == "partial"
        assert [f.status for f in view.files] == ["completed", "failed", "completed"]
        hub.clear_faults()
        served_before = len(hub.requests(origin="cdn", method="GET"))
        await m.retry(f"{gid}.2")
        async with asyncio.timeout(20):
            await m.wait([gid])
        assert (await m.group_view(gid)).status == "completed"
    assert_published(hub, "o/m", paths, dest)
    again = hub.requests(origin="cdn", method="GET")[served_before:]
    assert [paths[1] in r.path for r in again] == [True]  # only the failed file was fetched


async def test_asking_twice_returns_the_same_download(hub: FakeHub, tmp_path: Path) -> None:
    paths = shards(hub, "o/m", 1, 4 * MiB)
    hub.add_fault(Fault("throttle", origin="cdn", rate=8 * MiB))
    request = group_of(hub, "o/m", paths, tmp_path / "out")
    async with manager(tmp_path) as m:
        first = await m.enqueue(request)
        assert await m.enqueue(request) == first  # queued or active: attach
        await m.cancel(first)
        assert (await m.group_view(first)).status == "cancelled"
        hub.clear_faults()
        assert await m.enqueue(request) == first  # cancelled: queued again
        async with asyncio.timeout(20):
            await m.wait([first])
        assert (await m.group_view(first)).status == "completed"
        assert await m.enqueue(request) == first  # completed and on disk: nothing to do
        assert len(await m.snapshot()) == 1
    assert_published(hub, "o/m", paths, tmp_path / "out")


async def test_shutdown_parks_transfers_and_a_new_manager_resumes_them(
    hub: FakeHub, tmp_path: Path
) -> None:
    paths = shards(hub, "o/m", 2, 6 * MiB)
    hub.add_fault(Fault("throttle", origin="cdn", rate=4 * MiB))
    dest = tmp_path / "out"
    async with manager(tmp_path) as m:
        with m.subscribe() as sub:
            gid = await m.enqueue(group_of(hub, "o/m", paths, dest))
            await next_event(
                sub, lambda e: isinstance(e, ev.GroupProgress) and e.downloaded >= 2 * MiB
            )
    sizes = {p: (dest / (p + ".part")).stat().st_size for p in paths}
    assert all(size > 0 for size in sizes.values())
    with SqliteStore(tmp_path / "home") as store:
        assert {f.status for f in store.files()} == {FileStatus.QUEUED}
        assert {f.name: f.bytes_done for f in store.files()} == sizes
    hub.clear_faults()
    async with manager(tmp_path) as m:
        async with asyncio.timeout(20):
            await m.wait([gid])
    for p in paths:
        assert cdn_gets(hub, p)[-1].range == f"bytes={sizes[p]}-"
    assert_published(hub, "o/m", paths, dest)


async def test_moving_a_download_changes_what_starts_next(hub: FakeHub, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        hub.add_repo(f"o/{name}", [RepoFile(f"{name}.gguf", size=MiB)])
    hub.add_fault(Fault("throttle", origin="cdn", rate=4 * MiB))
    started: list[str] = []
    async with manager(tmp_path, max_active=1) as m:
        with m.subscribe() as sub:
            ids = [
                await m.enqueue(group_of(hub, f"o/{n}", [f"{n}.gguf"], tmp_path / n))
                for n in ("a", "b", "c")
            ]
            await next_event(sub, lambda e: isinstance(e, ev.FileStarted))
            positions = {v.id: v.position for v in await m.snapshot()}
            assert positions == {ids[0]: None, ids[1]: 1, ids[2]: 2}
            await m.move(ids[2], 1)
            changed = await next_event(sub, lambda e: isinstance(e, ev.QueueChanged))
            assert isinstance(changed, ev.QueueChanged)
            assert changed.positions == {str(ids[2]): 1, str(ids[1]): 2}
            async with asyncio.timeout(20):
                await m.wait(ids)
        for record in m.store.files():
            started.append(record.name)
    order = sorted(m_files_started(hub), key=lambda pair: pair[0])
    assert [name for _, name in order] == ["a.gguf", "c.gguf", "b.gguf"]


def m_files_started(hub: FakeHub) -> list[tuple[float, str]]:
    return [(r.time, r.path.rsplit("/", 1)[-1]) for r in hub.requests(origin="cdn", method="GET")]


async def test_the_concurrency_limit_can_change_while_running(hub: FakeHub, tmp_path: Path) -> None:
    paths = shards(hub, "o/m", 3, 4 * MiB)
    hub.add_fault(Fault("throttle", origin="cdn", rate=2 * MiB))
    async with manager(tmp_path, max_active=1) as m:
        gid = await m.enqueue(group_of(hub, "o/m", paths, tmp_path / "out"))
        await asyncio.sleep(0.3)
        assert [f.status for f in (await m.group_view(gid)).files].count("active") == 1
        await m.set_limits(max_active=3)
        await asyncio.sleep(0.3)
        assert [f.status for f in (await m.group_view(gid)).files].count("active") == 3
        await m.set_limits(max_active=1)
        statuses = [f.status for f in (await m.group_view(gid)).files]
        assert statuses.count("active") == 1 and statuses.count("queued") == 2
        hub.clear_faults()
        async with asyncio.timeout(20):
            await m.wait([gid])
    assert_published(hub, "o/m", paths, tmp_path / "out")


async def test_a_second_manager_on_the_same_state_directory_is_refused(tmp_path: Path) -> None:
    async with manager(tmp_path):
        with pytest.raises(StateLockedError, match="another modelfetch process"):
            async with manager(tmp_path):
                pass


async def test_a_corrupt_state_database_is_moved_aside_and_the_manager_starts(
    hub: FakeHub, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "state.db").write_bytes(b"this is not a database" * 100)
    paths = shards(hub, "o/m", 1, MiB)
    async with manager(tmp_path) as m:
        notices = [e for e in m.bus.history_since(0) or [] if isinstance(e, ev.Notice)]
        assert notices and "state.db" in notices[0].message
        gid = await m.enqueue(group_of(hub, "o/m", paths, tmp_path / "out"))
        async with asyncio.timeout(20):
            await m.wait([gid])
        assert (await m.group_view(gid)).status == "completed"
    assert list(home.glob("state.db.corrupt-*"))
