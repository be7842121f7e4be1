"""Multi-connection transfers: the segment map (pure, property-tested) and segmented fetches
against the fake Hub (stealing, resume, fallback, stalls, connection caps, the manager's map)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import signal
import sqlite3
import ssl
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfetch.core.models import StopReason
from modelfetch.core.paths import journal_path, part_path, sidecar_path
from modelfetch.core.segments import (
    Segment,
    SegmentMap,
    SegmentRecord,
    grow_step,
    keeps_scaling,
)
from modelfetch.manager import DownloadManager, ManagerSettings
from modelfetch.store import SqliteStore
from modelfetch.testing.fakehub import FakeHub, Fault, RepoFile
from modelfetch.transfer import (
    ConnectionSlots,
    StopSignal,
    TransferRequest,
    TransferResult,
    TransferSession,
    fetch_file,
    make_session,
    partial_bytes,
    segment_journal,
    wire,
)
from modelfetch.transfer import segments as segments_module
from modelfetch.transfer.sink import PartState
from modelfetch.transfer.wire import InvalidURLError, Target

from .conftest import group_of, peak_open, write_plan

MiB = 1 << 20
KiB = 1 << 10
REPO = "owner/seg-GGUF"
BIG = "big.gguf"  # LFS: served by the CDN origin
PLAIN = "weights.bin.txt"  # not LFS: served (with ranges) by the Hub origin itself
BIG_SIZE = 8 * MiB + 12_345


# ---------------------------------------------------------------------------------------------
# The segment map (pure)
# ---------------------------------------------------------------------------------------------


def _assert_covers(segmap: SegmentMap) -> None:
    """Segments in order, touching, covering [0, total) exactly once, sanely filled."""
    at = 0
    for s in segmap:
        assert s.start == at and s.end > s.start
        assert 0 <= s.done <= s.end - s.start
        at = s.end
    assert at == segmap.total


def _run_ops(total: int, piece: int, min_steal: int, workers: int, seed: int) -> None:
    """Drive a map with random claims, partial advances and give-ups from several owners,
    tracking every byte written; check the invariants after every step."""
    rng = random.Random(seed)
    segmap = SegmentMap(total)
    written = bytearray(total)
    held: dict[int, Segment] = {}
    for _ in range(10_000):
        if segmap.complete:
            break
        owner = rng.randrange(workers)
        segment = held.get(owner)
        if segment is None:
            help_front = rng.random() < 0.3
            segment = segmap.claim(owner, piece=piece, min_steal=min_steal, help_front=help_front)
            if segment is None:
                if not held:  # nobody works and nothing can be claimed: must be complete
                    assert segmap.complete
                continue
            held[owner] = segment
        action = rng.random()
        if action < 0.8:
            n = rng.randint(0, segment.remaining)
            start = segment.pos
            for i in range(start, start + n):
                assert written[i] == 0, f"byte {i} written twice"
                written[i] = 1
            segmap.advance(segment, n)
        if segment.complete or action > 0.95:
            segmap.release(segment)
            del held[owner]
        _assert_covers(segmap)
        assert segmap.done_bytes == sum(written)
        assert all(written[: segmap.prefix]) and (
            segmap.prefix == total or not written[segmap.prefix]
        )
        # What would be persisted describes the same bytes.
        again = SegmentMap(total, segmap.records())
        assert again.done_bytes == segmap.done_bytes and again.prefix == segmap.prefix
    for segment in list(held.values()):
        segmap.release(segment)
    # Finish with one connection: everything left is claimable and gets written once.
    while (segment := segmap.claim(0, piece=piece, min_steal=min_steal)) is not None:
        for i in range(segment.pos, segment.end):
            assert written[i] == 0, f"byte {i} written twice"
            written[i] = 1
        segmap.advance(segment, segment.remaining)
        segmap.release(segment)
    assert segmap.complete and all(written)
    assert segmap.records() == ((SegmentRecord(0, total, total),) if total else ())


@settings(max_examples=60, deadline=None)
@given(
    total=st.integers(0, 3000),
    piece=st.integers(1, 700),
    min_steal=st.integers(1, 200),
    workers=st.integers(1, 6),
    seed=st.integers(0, 2**32),
)
def test_segments_cover_the_file_exactly_once(
    total: int, piece: int, min_steal: int, workers: int, seed: int
) -> None:
    _run_ops(total, piece, min_steal, workers, seed)


def test_pieces_go_front_to_back_then_the_largest_tail_is_halved() -> None:
    segmap = SegmentMap(100 * MiB)
    a = segmap.claim(1, piece=16 * MiB, min_steal=MiB)
    b = segmap.claim(2, piece=16 * MiB, min_steal=MiB)
    assert a is not None and b is not None
    assert (a.start, a.end, b.start, b.end) == (0, 16 * MiB, 16 * MiB, 32 * MiB)
    # Nearly everything claimed: the last connection steals half of the largest remainder.
    segmap = SegmentMap(10 * MiB)
    slow = segmap.claim(1, piece=16 * MiB, min_steal=MiB)
    assert slow is not None and slow.end == 10 * MiB
    segmap.advance(slow, 2 * MiB)
    thief = segmap.claim(2, piece=16 * MiB, min_steal=MiB)
    assert thief is not None and segmap.steals == 1
    assert slow.end == thief.start == 6 * MiB and thief.end == 10 * MiB
    # Below 2 x min_steal nothing is split.
    assert segmap.claim(3, piece=16 * MiB, min_steal=3 * MiB) is None
    # Helping the front: a new connection takes half of the first unfinished segment (what
    # the hashed prefix waits for) before a fresh piece further on.
    segmap = SegmentMap(100 * MiB)
    front = segmap.claim(1, piece=16 * MiB, min_steal=MiB)
    assert front is not None
    segmap.advance(front, 2 * MiB)
    helper = segmap.claim(2, piece=16 * MiB, min_steal=MiB, help_front=True)
    assert helper is not None and (helper.start, helper.end) == (9 * MiB, 16 * MiB)
    assert front.end == 9 * MiB


def test_connections_grow_only_while_they_add_throughput() -> None:
    # A server capping each connection: 8 -> 16 connections gave ~2x: keep them.
    assert keeps_scaling(200.0, 8, 390.0, 16)
    # CPU- or link-bound: twice the connections, +10% throughput: go back.
    assert not keeps_scaling(200.0, 8, 220.0, 16)
    assert not keeps_scaling(200.0, 8, 400.0, 8)  # nothing was added
    assert [grow_step(n, 16) for n in (1, 2, 8, 12, 16)] == [2, 4, 16, 16, 16]


def test_a_map_that_does_not_cover_the_file_is_refused() -> None:
    with pytest.raises(ValueError):
        SegmentMap(10, [SegmentRecord(0, 4, 4), SegmentRecord(5, 10, 0)])  # gap
    with pytest.raises(ValueError):
        SegmentMap(10, [SegmentRecord(0, 6, 4), SegmentRecord(5, 10, 0)])  # overlap
    with pytest.raises(ValueError):
        SegmentMap(10, [SegmentRecord(0, 10, 11)])  # more done than the segment holds
    with pytest.raises(ValueError):
        SegmentMap(12, [SegmentRecord(0, 10, 0)])  # short of the total
    assert SegmentMap(10, [SegmentRecord(0, 4, 4), SegmentRecord(4, 10, 2)]).prefix == 6


# ---------------------------------------------------------------------------------------------
# Segmented transfers against the fake Hub
# ---------------------------------------------------------------------------------------------


@pytest.fixture
async def seghub() -> AsyncIterator[FakeHub]:
    async with FakeHub() as fake:
        fake.add_repo(
            REPO,
            [
                RepoFile(BIG, size=BIG_SIZE, seed=11),
                RepoFile(PLAIN, size=6 * MiB + 7, seed=12, lfs=False),
            ],
        )
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[TransferSession]:
    async with make_session() as s:
        yield s


@pytest.fixture(params=["whole-buffer", "small-receives"])
def piece_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Pieces are received into the connection's whole buffer, or a few KiB at a time (as on
    a slow link; heads and bodies split at odd places): both must behave the same."""
    if request.param == "small-receives":
        original = wire._Connection.get_buffer

        def small(self: wire._Connection, sizehint: int) -> memoryview:
            return original(self, sizehint)[:4093]

        monkeypatch.setattr(wire._Connection, "get_buffer", small)
    return str(request.param)


@pytest.fixture(autouse=True)
def no_leaked_digest_threads() -> Iterator[None]:
    yield
    leaked = [t.name for t in threading.enumerate() if t.name == "modelfetch-digest"]
    assert leaked == [], "a transfer left its digest thread running"


def seg_request(hub: FakeHub, dest: Path, path: str = BIG, **extra: Any) -> TransferRequest:
    info = hub.file(REPO, path)
    options: dict[str, Any] = {
        "connections": 4,
        "segment_threshold": MiB,
        "min_segment_size": MiB,
        "min_steal_size": 128 * KiB,
        "stall_timeout": 5.0,
    }
    options.update(extra)
    return TransferRequest(
        url=hub.resolve_url(REPO, path),
        dest=dest / path,
        expected_size=info.size,
        expected_sha256=info.sha256 if info.lfs else None,
        expected_git_oid=None if info.lfs else info.git_oid,
        **options,
    )


def body_requests(hub: FakeHub, path: str = BIG) -> list[tuple[int, int]]:
    """(first byte, bytes sent) of each ranged GET that served a body of `path`."""
    found = []
    for r in hub.log:
        if r.method == "GET" and path in r.path and r.status == 206 and r.range:
            first = int(r.range.removeprefix("bytes=").split("-")[0])
            found.append((first, r.bytes_sent))
    return found


def assert_published(result: TransferResult, hub: FakeHub, path: str = BIG) -> None:
    assert result.verified
    assert result.path.read_bytes() == hub.content(REPO, path)
    assert not part_path(result.path).exists() and not sidecar_path(result.path).exists()


async def test_a_large_file_arrives_over_several_ranged_connections(
    seghub: FakeHub, session: TransferSession, tmp_path: Path, piece_path: str
) -> None:
    maps: list[tuple[SegmentRecord, ...] | None] = []
    progress: list[int] = []
    result = await fetch_file(
        session,
        seg_request(seghub, tmp_path),
        on_segments=maps.append,
        on_progress=lambda done, total: progress.append(done),
    )
    assert_published(result, seghub)
    starts = body_requests(seghub)
    assert len(starts) >= 4
    assert sum(sent for _, sent in starts) >= BIG_SIZE
    assert progress[0] == 0 and progress[-1] == BIG_SIZE and progress == sorted(progress)
    assert maps[-1] is None  # published: the map is forgotten
    assert result.bytes_fetched == BIG_SIZE
    # A piece read to its end leaves its connection alive for the next piece.
    assert session.connections_opened < len(starts)


async def test_pieces_are_written_from_the_receive_buffer_and_an_odd_answer_is_asked_again(
    seghub: FakeHub,
    session: TransferSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast: list[int] = []
    original = segments_module.SegmentedFetch._receive

    async def counted(
        self: segments_module.SegmentedFetch, segment: Segment, response: wire.Response
    ) -> None:
        fast.append(segment.pos)
        await original(self, segment, response)

    monkeypatch.setattr(segments_module.SegmentedFetch, "_receive", counted)
    seghub.add_fault(Fault("throttle", path=BIG, origin="cdn", rate=4 * MiB))  # ~0.5 s in all
    busy = Fault("status", path=BIG, origin="cdn", status=503, times=1)

    def on_progress(done: int, total: int | None) -> None:
        if done > 0 and busy not in seghub.faults:
            seghub.add_fault(busy)  # once the first piece flows: the next request gets a 503

    result = await fetch_file(
        session, seg_request(seghub, tmp_path, min_steal_size=8 * MiB), on_progress=on_progress
    )
    assert_published(result, seghub)
    assert len(fast) >= 4  # every piece was written straight from a connection's buffer
    refused = [r for r in seghub.log if r.origin == "cdn" and r.status == 503]
    assert busy.hits == 1 and len(refused) == 1
    # The piece that got a 503 was asked for again and arrived.
    again = [r for r in seghub.log if r.range == refused[0].range and r.status == 206]
    assert len(again) == 1 and again[0].time > refused[0].time


def test_piece_requests_are_plain_http11_for_plain_urls() -> None:
    target = Target.of("http://127.0.0.1:8080/a/b%20c?x=1&y=%2F")
    assert target.scheme == "http"
    piece = {"Range": "bytes=10-19", "If-Range": '"e"'}
    assert wire._request_head("GET", target, {}, piece) == (
        b"GET /a/b%20c?x=1&y=%2F HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        b'Range: bytes=10-19\r\nIf-Range: "e"\r\n\r\n'
    )
    tls = Target.of("https://[::1]/f")
    assert tls.scheme == "https" and tls.port == 443
    assert tls.host_header == "[::1]"
    # Credentials in the URL are sent as Basic authorization (as aiohttp did), never as-is.
    assert Target.of("https://user:pw@host/f").authorization == "Basic dXNlcjpwdw=="
    with pytest.raises(InvalidURLError):
        Target.of("ftp://host/f")
    with pytest.raises(ValueError, match="cannot be sent"):
        wire._request_head("GET", target, {}, {"X": "a\r\nInjected: 1"})


async def test_a_plain_small_file_stays_a_single_stream(
    seghub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    result = await fetch_file(session, seg_request(seghub, tmp_path, segment_threshold=64 * MiB))
    assert_published(result, seghub)
    gets = seghub.requests(origin="cdn", method="GET")
    assert [r.range for r in gets] == [None]


async def test_one_throttled_connection_has_its_tail_stolen(
    seghub: FakeHub, session: TransferSession, tmp_path: Path, piece_path: str
) -> None:
    # Only the first body request is slow (and would need ~8 s alone for its 1 MiB piece).
    seghub.add_fault(Fault("throttle", path=BIG, origin="cdn", rate=128 * KiB, times=1))
    result = await fetch_file(session, seg_request(seghub, tmp_path, min_steal_size=32 * KiB))
    assert_published(result, seghub)
    requests = body_requests(seghub)
    pieces = -(-BIG_SIZE // MiB)
    assert len(requests) > pieces  # more requests than pieces: someone stole
    assert result.steals >= 1 and result.connections == 4
    slow = [sent for start, sent in requests if start == 0]
    assert len(slow) == 1 and slow[0] < MiB  # the slow connection did not finish its piece
    assert any(0 < start < MiB for start, _ in requests)  # others took over inside it


async def test_a_server_that_ignores_range_gets_one_stream(
    seghub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    seghub.add_fault(Fault("ignore_range", path=BIG, origin="cdn"))
    maps: list[tuple[SegmentRecord, ...] | None] = []
    result = await fetch_file(session, seg_request(seghub, tmp_path), on_segments=maps.append)
    assert_published(result, seghub)
    gets = seghub.requests(origin="cdn", method="GET")
    assert [(r.status, r.bytes_sent) for r in gets] == [(200, BIG_SIZE)]
    assert maps and maps[-1] is None


async def test_a_stalled_connection_is_replaced_without_failing(
    seghub: FakeHub, session: TransferSession, tmp_path: Path, piece_path: str
) -> None:
    seghub.add_fault(
        Fault("stall", path=BIG, origin="cdn", after_bytes=300 * KiB, seconds=30, times=1)
    )
    request = seg_request(seghub, tmp_path, stall_timeout=0.4, min_steal_size=8 * MiB)
    result = await fetch_file(session, request)
    assert_published(result, seghub)
    starts = [start for start, _ in body_requests(seghub)]
    # The stalled first piece was asked for again from where its bytes stopped.
    assert 0 in starts and any(0 < s <= 300 * KiB for s in starts)


async def test_a_transfer_stopped_mid_segment_resumes_every_segment_where_it_stopped(
    seghub: FakeHub, session: TransferSession, tmp_path: Path, piece_path: str
) -> None:
    seghub.add_fault(Fault("throttle", path=BIG, origin="cdn", rate=1 * MiB))
    maps: list[tuple[SegmentRecord, ...] | None] = []
    stop = StopSignal()
    request = seg_request(seghub, tmp_path, min_steal_size=8 * MiB)
    task = asyncio.create_task(fetch_file(session, request, on_segments=maps.append, stop=stop))
    await asyncio.sleep(1.2)
    stop.stop(StopReason.SHUTDOWN)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    saved = maps[-1]
    assert saved is not None
    state = PartState.load(sidecar_path(request.dest))
    assert state is not None and state.segmented
    on_disk = partial_bytes(request.dest, saved)
    assert 0 < on_disk < BIG_SIZE
    # Every byte the map counts is the real content.
    content = seghub.content(REPO, BIG)
    data = part_path(request.dest).read_bytes()
    for r in saved:
        assert data[r.start : r.start + r.done] == content[r.start : r.start + r.done]
    partial = [r for r in saved if r.done < r.end - r.start]
    assert sum(1 for r in partial if r.done > 0) >= 2  # several segments stopped midway

    seghub.clear_faults()
    seghub.log.clear()
    resumed = await fetch_file(
        session, seg_request(seghub, tmp_path, segments=saved), on_segments=maps.append
    )
    assert_published(resumed, seghub)
    starts = sorted(start for start, _ in body_requests(seghub))
    # The first request of each unfinished segment starts exactly where its bytes stopped.
    assert {r.start + r.done for r in partial} <= set(starts)
    assert resumed.bytes_fetched == BIG_SIZE - on_disk
    assert resumed.resumed_from == on_disk


async def test_a_segmented_partial_without_its_map_is_not_trusted(
    seghub: FakeHub, session: TransferSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seghub.add_fault(Fault("throttle", path=BIG, origin="cdn", rate=2 * MiB))
    stop = StopSignal()
    request = seg_request(seghub, tmp_path)
    task = asyncio.create_task(fetch_file(session, request, stop=stop))
    await asyncio.sleep(0.5)
    stop.stop(StopReason.PAUSE)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert part_path(request.dest).exists()
    # The volatile map beside it was written by this kernel: on the same boot it counts (what a
    # restart resumes from, tests/test_kill_resend.py); after a reboot it is not trusted.
    assert journal_path(request.dest).exists()
    assert 0 < partial_bytes(request.dest, None) < BIG_SIZE
    monkeypatch.setattr(segment_journal, "stamp", lambda: (b"\x01" * 16, b"\0" * 64))
    assert partial_bytes(request.dest, None) == 0
    seghub.clear_faults()
    seghub.log.clear()
    result = await fetch_file(session, request)  # no map handed back: start from zero
    assert_published(result, seghub)
    assert result.bytes_fetched == BIG_SIZE


async def test_connection_caps_hold_as_the_servers_see_them(
    seghub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    # Two files on two hosts (the CDN, the Hub itself), 4 connections each, slowed down so
    # connections overlap; caps: 3 in all, 2 per host.
    seghub.add_fault(Fault("throttle", rate=8 * MiB))
    slots = ConnectionSlots(3, per_host=2)
    # No steals here: a stolen tail's connection is dropped early, and the server notices
    # that later than the client, which would blur the overlap count.
    no_steal = 64 * MiB
    results = await asyncio.gather(
        fetch_file(session, seg_request(seghub, tmp_path, min_steal_size=no_steal), slots=slots),
        fetch_file(
            session, seg_request(seghub, tmp_path, PLAIN, min_steal_size=no_steal), slots=slots
        ),
    )
    assert_published(results[0], seghub)
    assert_published(results[1], seghub, PLAIN)
    assert slots.in_use == 0
    bodies = [r for r in seghub.log if r.method == "GET" and r.status in (200, 206)]
    assert len(bodies) > 6

    assert peak_open(bodies) == 3
    for origin in ("cdn", "hub"):
        assert peak_open([r for r in bodies if r.origin == origin]) == 2


# ---------------------------------------------------------------------------------------------
# Through the manager: the map lives in the store
# ---------------------------------------------------------------------------------------------


def seg_settings(**extra: Any) -> ManagerSettings:
    options: dict[str, Any] = {
        "connections_per_file": 4,
        "segment_threshold": MiB,
        "min_segment_size": MiB,
        "progress_interval": 0.05,
        "checkpoint_interval": 0.2,
    }
    options.update(extra)
    return ManagerSettings(**options)


async def test_the_manager_persists_the_map_and_resumes_each_segment_after_a_shutdown(
    seghub: FakeHub, tmp_path: Path
) -> None:
    home, dest = tmp_path / "home", tmp_path / "out"
    seghub.add_fault(Fault("throttle", path=BIG, origin="cdn", rate=1 * MiB))
    async with DownloadManager(home=home, settings=seg_settings()) as manager:
        gid = await manager.enqueue(group_of(seghub, REPO, [BIG], dest))
        await asyncio.sleep(1.2)
    # Stopped by the shutdown: the store holds the map the transfer last reported.
    with SqliteStore(home) as store:
        saved = store.segments(gid, 1)
    assert saved is not None
    partial = [r for r in saved if r.done < r.end - r.start]
    on_disk = partial_bytes(dest / BIG, saved)
    assert 0 < on_disk < BIG_SIZE and len(partial) >= 2
    seghub.clear_faults()
    seghub.log.clear()
    async with DownloadManager(home=home, settings=seg_settings()) as manager:
        await asyncio.wait_for(manager.wait([gid]), 20)
        view = await manager.group_view(gid)
        assert view.status == "completed"
        assert manager.store.segments(gid, 1) is None  # forgotten once complete
    assert (dest / BIG).read_bytes() == seghub.content(REPO, BIG)
    starts = {start for start, _ in body_requests(seghub)}
    assert {r.start + r.done for r in partial} <= starts
    assert sum(sent for _, sent in body_requests(seghub)) < BIG_SIZE  # nothing twice


async def test_limits_can_change_while_the_manager_runs(seghub: FakeHub, tmp_path: Path) -> None:
    home, dest = tmp_path / "home", tmp_path / "out"
    async with DownloadManager(home=home, settings=seg_settings()) as manager:
        gid = await manager.enqueue(group_of(seghub, REPO, [BIG], dest))
        await manager.set_rate_limit(gid, 512 * KiB)  # this download alone: slow...
        await manager.set_limits(rate_limit=4 * MiB, max_connections=2)
        assert manager.store.group_limits(gid) == (512 * KiB, None)
        await asyncio.sleep(0.8)
        view = await manager.group_view(gid)
        assert view.status == "active" and view.downloaded < 2 * MiB
        await manager.set_rate_limit(gid, None)  # ...then lifted while it runs
        await asyncio.wait_for(manager.wait([gid]), 20)
        assert (await manager.group_view(gid)).status == "completed"
        assert manager.store.group_limits(gid) == (None, None)
        with pytest.raises(ValueError):
            await manager.set_limits(max_connections=0)
    assert (dest / BIG).read_bytes() == seghub.content(REPO, BIG)
    bodies = [r for r in seghub.log if r.origin == "cdn" and r.status == 206]
    assert len(bodies) >= 2


_CHILD = """
import asyncio, json, sys
from pathlib import Path
from modelfetch.manager import DownloadManager, ManagerSettings
from modelfetch.requests import FileRequest, GroupRequest

async def main() -> None:
    plan = json.loads(Path(sys.argv[2]).read_text())
    request = GroupRequest(
        name=plan["name"],
        dest_dir=Path(plan["dest_dir"]),
        files=tuple(FileRequest(**f) for f in plan["files"]),
    )
    settings = ManagerSettings(
        connections_per_file=4,
        segment_threshold=1 << 20,
        min_segment_size=1 << 20,
        checkpoint_interval=0.2,
    )
    async with DownloadManager(home=Path(sys.argv[1]), settings=settings) as manager:
        await manager.wait([await manager.enqueue(request)])

asyncio.run(main())
"""


def _saved_bytes(home: Path) -> int:
    """What the running child's store says is on disk (read alongside it: WAL allows that)."""
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{home / 'state.db'}?mode=ro", uri=True)
        ) as db:
            row = db.execute("SELECT coalesce(sum(done), 0) FROM file_segments").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0])


async def test_after_a_sigkill_each_segment_resumes_where_the_store_says(
    seghub: FakeHub, tmp_path: Path
) -> None:
    home, dest = tmp_path / "home", tmp_path / "out"
    request = group_of(seghub, REPO, [BIG], dest)
    plan = tmp_path / "plan.json"
    write_plan(plan, request)
    seghub.add_fault(Fault("throttle", path=BIG, origin="cdn", rate=1 * MiB))
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, str(home), str(plan), stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(20):
            # A quarter of the way into every connection's first piece: the durable map is
            # saved after an fdatasync on a worker thread, so under load it may lag the bytes
            # by a checkpoint or two, and the kill must still land mid-piece.
            while _saved_bytes(home) < MiB:
                await asyncio.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    with SqliteStore(home) as store:
        durable = store.segments(1, 1)
    assert durable is not None and sum(r.done for r in durable) >= MiB
    # The restart resumes from the union of the store's map and the volatile one the killed
    # process left beside the `.part` (this kernel wrote it: trusted).
    state = PartState.load(sidecar_path(dest / BIG))
    assert state is not None
    volatile = segment_journal.read_journal(
        journal_path(dest / BIG), token=state.token, total=BIG_SIZE
    )
    assert volatile is not None
    saved = segment_journal.merge_records(BIG_SIZE, durable, volatile)
    on_disk = sum(r.done for r in saved)
    partial = [r for r in saved if r.done < r.end - r.start]
    assert on_disk >= sum(r.done for r in durable)
    assert MiB <= on_disk < BIG_SIZE and sum(1 for r in partial if r.done) >= 2
    seghub.clear_faults()
    seghub.log.clear()
    async with DownloadManager(home=home, settings=seg_settings()) as manager:
        await asyncio.wait_for(manager.wait([1]), 20)
        assert (await manager.group_view(1)).status == "completed"
    assert (dest / BIG).read_bytes() == seghub.content(REPO, BIG)
    requests = body_requests(seghub)
    # Each unfinished segment is asked for from where its bytes stopped (a never-started one
    # may also be cut into pieces), and only the missing bytes are fetched.
    assert {r.start + r.done for r in partial} <= {start for start, _ in requests}
    assert sum(sent for _, sent in requests) == BIG_SIZE - on_disk


# ---------------------------------------------------------------------------------------------
# The fast path over TLS (a CDN is https)
# ---------------------------------------------------------------------------------------------


async def test_pieces_arrive_over_tls_with_the_sessions_context(
    tls_cert: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tls_cert
    body = random.Random(3).randbytes(5 * MiB + 17)
    served = tmp_path / "served.bin"
    served.write_bytes(body)
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Range"))
        return web.FileResponse(served)

    app = web.Application()
    app.router.add_get("/f.bin", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fast: list[int] = []  # pieces after the first (each asked for on a connection of its own)
    original = segments_module.SegmentedFetch._open

    async def counted(self: segments_module.SegmentedFetch, segment: Segment) -> wire.Response:
        fast.append(segment.pos)
        return await original(self, segment)

    monkeypatch.setattr(segments_module.SegmentedFetch, "_open", counted)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    try:
        async with make_session(ssl_context=client_ctx) as session:
            result = await fetch_file(
                session,
                TransferRequest(
                    url=f"https://127.0.0.1:{port}/f.bin",
                    dest=tmp_path / "out" / "f.bin",
                    expected_size=len(body),
                    expected_sha256=hashlib.sha256(body).hexdigest(),
                    connections=4,
                    segment_threshold=MiB,
                    min_segment_size=MiB,
                    min_steal_size=8 * MiB,
                ),
            )
    finally:
        await runner.cleanup()
    assert result.verified and result.path.read_bytes() == body
    assert len(fast) >= 4 and len(seen) == len(fast) + 1
    assert all(r is not None and r.startswith("bytes=") for r in seen)
