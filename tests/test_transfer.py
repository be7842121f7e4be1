"""transfer/: one file over HTTP against the fake Hub (and a few scripted servers) on loopback."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest
from aiohttp import web

from modelfetch.core.errors import (
    AuthRequiredError,
    DiskFullError,
    ForbiddenError,
    GatedError,
    IntegrityError,
    NetworkError,
    NotFoundError,
    RateLimitedError,
    SchemeError,
    ServerBusyError,
    StalledError,
    TooManyRedirectsError,
    UnsafePathError,
)
from modelfetch.core.models import StopReason
from modelfetch.core.paths import part_path, safe_join, sidecar_path
from modelfetch.testing.fakehub import FakeHub, Fault, RepoFile
from modelfetch.transfer import (
    Credentials,
    StopSignal,
    TransferRequest,
    TransferResult,
    TransferSession,
    fetch_file,
    hashing,
    make_session,
    publish,
    receive,
    sink,
)
from modelfetch.transfer.sink import PartState

REPO = "owner/model-GGUF"
BIG = "model-Q4_K_M.gguf"  # LFS: resolve redirects to the CDN
SMALL = "config.json"  # plain git file: served by the Hub itself
BIG_SIZE = (4 << 20) + 12_345  # not a multiple of any chunk size
SMALL_CONTENT = b'{"architectures": ["LlamaForCausalLM"], "pad": "' + b"x" * 3000 + b'"}'
MiB = 1 << 20

Progress = list[tuple[int, int | None]]


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    async with FakeHub() as fake:
        fake.add_repo(REPO, [RepoFile(BIG, size=BIG_SIZE, seed=7), RepoFile(SMALL, SMALL_CONTENT)])
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[TransferSession]:
    async with make_session() as s:
        yield s


@pytest.fixture(autouse=True)
def no_leaked_digest_threads() -> Iterator[None]:
    yield
    leaked = [t.name for t in threading.enumerate() if t.name == "modelfetch-digest"]
    assert leaked == [], "a transfer left its digest thread running"


def big_request(hub: FakeHub, dest: Path, **kw: object) -> TransferRequest:
    return TransferRequest(url=hub.resolve_url(REPO, BIG), dest=dest, **kw)  # type: ignore[arg-type]


def leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in (part_path(dest), sidecar_path(dest)) if p.exists())


async def fetch(
    session: TransferSession,
    request: TransferRequest,
    progress: Progress | None = None,
    stop: StopSignal | None = None,
) -> TransferResult:
    def report(done: int, total: int | None) -> None:
        if progress is not None:
            progress.append((done, total))

    return await fetch_file(session, request, on_progress=report, stop=stop)


async def truncated_partial(
    hub: FakeHub, session: TransferSession, dest: Path, after: int = 3 * MiB + 17
) -> int:
    """Leave a resumable `.part` of at most `after` bytes, the way a dropped connection does."""
    hub.add_fault(Fault("truncate", path=BIG, after_bytes=after, times=1))
    with pytest.raises(NetworkError):
        await fetch(session, big_request(hub, dest))
    size = part_path(dest).stat().st_size
    # Everything received before the early close is kept: at most what was sent.
    assert 0 < size <= after
    return size


# -- the happy path ---------------------------------------------------------------------------


async def test_publishes_byte_exact_atomically(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    dest = tmp_path / "deep" / "dir" / BIG
    progress: Progress = []
    result = await fetch(session, big_request(hub, dest), progress)
    info = hub.file(REPO, BIG)
    assert dest.read_bytes() == hub.content(REPO, BIG)
    assert leftovers(dest) == []
    assert progress[0] == (0, None)
    assert progress[-1] == (BIG_SIZE, BIG_SIZE)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert len(progress) < 30
    assert result.path == dest and result.size == BIG_SIZE
    assert result.sha256 == info.sha256 and result.verified
    assert result.repo_commit == info.commit
    assert result.resumed_from == 0 and result.bytes_fetched == BIG_SIZE


async def test_the_digest_comes_from_the_redirect_not_the_cdn_decoy(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    result = await fetch(session, big_request(hub, tmp_path / BIG))
    assert [r.origin for r in hub.log] == ["hub", "cdn"]
    assert result.verified and result.sha256 == hub.file(REPO, BIG).sha256
    assert result.etag is not None and hub.file(REPO, BIG).sha256 not in result.etag


async def test_a_small_file_is_verified_against_its_git_oid(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    info = hub.file(REPO, SMALL)
    dest = tmp_path / SMALL
    result = await fetch(
        session,
        TransferRequest(url=hub.resolve_url(REPO, SMALL), dest=dest, expected_git_oid=info.git_oid),
    )
    assert dest.read_bytes() == SMALL_CONTENT
    assert result.verified and result.sha256 == info.sha256
    assert [r.origin for r in hub.log] == ["hub"]


async def test_a_wrong_git_oid_fails_and_publishes_nothing(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    dest = tmp_path / SMALL
    request = TransferRequest(
        url=hub.resolve_url(REPO, SMALL), dest=dest, expected_git_oid="1" * 40
    )
    with pytest.raises(IntegrityError) as info:
        await fetch(session, request)
    assert info.value.expected == "1" * 40
    assert info.value.actual == hub.file(REPO, SMALL).git_oid
    assert not dest.exists() and leftovers(dest) == []


async def test_digests_keep_up_under_backpressure(
    hub: FakeHub, session: TransferSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny limits so the digest thread's backlog bound and the early writeback both engage.
    monkeypatch.setattr(hashing, "MAX_PENDING", 64 << 10)
    monkeypatch.setattr(sink, "WRITEBACK_STEP", 1 << 20)
    monkeypatch.setattr(hashing, "REHASH_READ_SIZE", 256 << 10)
    dest = tmp_path / BIG
    await truncated_partial(hub, session, dest)
    result = await fetch(session, big_request(hub, dest))
    assert result.verified and result.resumed_from > 0
    assert dest.read_bytes() == hub.content(REPO, BIG)


async def test_the_digester_matches_hashlib() -> None:
    data = [os.urandom(n) for n in (0, 1, 4095, 1 << 20, 3 << 20)]
    digester = hashing.Digester(git_blob_size=sum(map(len, data)))
    for block in data:
        digester.feed(block)
    await digester.drain(1 << 20)
    digests = await digester.finish()
    joined = b"".join(data)
    assert digests.size == len(joined)
    assert digests.sha256 == hashlib.sha256(joined).hexdigest()
    assert digests.git_oid == hashlib.sha1(b"blob %d\0" % len(joined) + joined).hexdigest()


# -- resume -----------------------------------------------------------------------------------


async def test_resumes_after_a_truncated_body(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    dest = tmp_path / BIG
    partial = await truncated_partial(hub, session, dest)
    assert leftovers(dest) == [f"{BIG}.part", f"{BIG}.part.json"]
    progress: Progress = []
    result = await fetch(session, big_request(hub, dest), progress)
    last = hub.requests(origin="cdn")[-1]
    assert last.range == f"bytes={partial}-"
    assert last.if_range is not None and last.status == 206
    assert hub.requests(origin="hub")[-1].range == f"bytes={partial}-"  # re-sent on every hop
    # Byte-exact and verified: the hasher was seeded with the prefix already on disk.
    assert dest.read_bytes() == hub.content(REPO, BIG)
    assert result.verified and result.resumed_from == partial
    assert result.bytes_fetched == BIG_SIZE - partial
    assert progress[0][0] == partial and progress[-1] == (BIG_SIZE, BIG_SIZE)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert leftovers(dest) == []


async def test_restarts_when_the_server_ignores_the_range(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    dest = tmp_path / BIG
    partial = await truncated_partial(hub, session, dest)
    part_path(dest).write_bytes(b"\xff" * partial)  # a stale prefix of the wrong bytes
    hub.add_fault(Fault("ignore_range", path=BIG, times=1))
    result = await fetch(session, big_request(hub, dest))
    last = hub.requests(origin="cdn")[-1]
    assert last.range == f"bytes={partial}-" and last.status == 200
    assert dest.read_bytes() == hub.content(REPO, BIG)
    assert result.resumed_from == 0 and result.bytes_fetched == BIG_SIZE


async def test_a_changed_validator_restarts_from_zero(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    dest = tmp_path / BIG
    partial = await truncated_partial(hub, session, dest)
    state = PartState.load(sidecar_path(dest))
    assert state is not None and state.validator is not None
    PartState(state.url, '"not-the-current-etag"', state.total, state.sha256).save(
        sidecar_path(dest)
    )
    result = await fetch(session, big_request(hub, dest))
    last = hub.requests(origin="cdn")[-1]
    assert last.if_range == '"not-the-current-etag"' and last.range == f"bytes={partial}-"
    assert last.status == 200
    assert dest.read_bytes() == hub.content(REPO, BIG)
    assert result.resumed_from == 0


async def test_a_new_commit_during_a_resume_yields_the_new_file(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    dest = tmp_path / BIG
    await truncated_partial(hub, session, dest)
    hub.commit(REPO, [RepoFile(BIG, size=BIG_SIZE, seed=8)])
    result = await fetch(session, big_request(hub, dest))
    assert dest.read_bytes() == hub.content(REPO, BIG)
    assert result.sha256 == hub.file(REPO, BIG).sha256 and result.resumed_from == 0


async def test_a_complete_partial_is_published_without_refetching(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    dest = tmp_path / BIG
    info = hub.file(REPO, BIG)
    part_path(dest).write_bytes(hub.content(REPO, BIG))
    PartState(hub.resolve_url(REPO, BIG), None, BIG_SIZE, info.sha256).save(sidecar_path(dest))
    result = await fetch(session, big_request(hub, dest))
    last = hub.requests(origin="cdn")[-1]
    assert last.status == 416
    assert sum(r.bytes_sent for r in hub.log) < 100  # a short error body, none of the file
    assert dest.read_bytes() == hub.content(REPO, BIG)
    assert result.verified and result.resumed_from == BIG_SIZE and result.bytes_fetched == 0
    assert leftovers(dest) == []


async def test_a_416_for_a_too_long_partial_restarts_from_zero(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    dest = tmp_path / BIG
    part_path(dest).write_bytes(b"\x00" * (BIG_SIZE + 10))
    PartState(hub.resolve_url(REPO, BIG), None, None, None).save(sidecar_path(dest))
    result = await fetch(session, big_request(hub, dest))
    cdn = hub.requests(origin="cdn")
    assert [(r.range, r.status) for r in cdn] == [(f"bytes={BIG_SIZE + 10}-", 416), (None, 200)]
    assert dest.read_bytes() == hub.content(REPO, BIG) and result.resumed_from == 0


async def test_a_partial_without_its_sidecar_is_not_trusted(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    dest = tmp_path / BIG
    part_path(dest).write_bytes(b"\x00" * MiB)
    await fetch(session, big_request(hub, dest))
    assert all(r.range is None for r in hub.log)
    assert dest.read_bytes() == hub.content(REPO, BIG)


# -- integrity --------------------------------------------------------------------------------


async def test_a_bad_linked_etag_fails_and_clears_the_partial(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    dest = tmp_path / BIG
    hub.add_fault(Fault("bad_linked_etag", path=BIG))
    with pytest.raises(IntegrityError) as info:
        await fetch(session, big_request(hub, dest))
    assert info.value.actual == hub.file(REPO, BIG).sha256
    assert info.value.expected is not None and info.value.expected != info.value.actual
    assert not dest.exists() and leftovers(dest) == []


async def test_corrupted_bytes_fail_and_clear_the_partial(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    dest = tmp_path / BIG
    hub.add_fault(Fault("corrupt", path=BIG, after_bytes=2 * MiB + 5))
    with pytest.raises(IntegrityError):
        await fetch(session, big_request(hub, dest))
    assert not dest.exists() and leftovers(dest) == []


async def test_a_wrong_expected_sha256_fails_before_downloading(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    dest = tmp_path / BIG
    with pytest.raises(IntegrityError) as info:
        await fetch(session, big_request(hub, dest, expected_sha256="0" * 64))
    assert info.value.expected == "0" * 64
    assert info.value.actual == hub.file(REPO, BIG).sha256  # what X-Linked-Etag said
    assert hub.requests(origin="cdn") == []
    assert not dest.exists() and leftovers(dest) == []


async def test_a_wrong_expected_sha256_on_a_plain_file_clears_the_partial(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    dest = tmp_path / SMALL
    request = TransferRequest(url=hub.resolve_url(REPO, SMALL), dest=dest, expected_sha256="e" * 64)
    with pytest.raises(IntegrityError) as info:
        await fetch(session, request)
    assert info.value.actual == hub.file(REPO, SMALL).sha256
    assert hub.log[-1].bytes_sent == len(SMALL_CONTENT)
    assert not dest.exists() and leftovers(dest) == []


async def test_a_wrong_expected_size_fails_before_downloading(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    with pytest.raises(IntegrityError):
        await fetch(session, big_request(hub, tmp_path / BIG, expected_size=BIG_SIZE - 1))
    assert hub.requests(origin="cdn") == []


# -- redirects, statuses, auth ----------------------------------------------------------------


async def test_a_redirect_loop_ends(hub: FakeHub, session: TransferSession, tmp_path: Path) -> None:
    dest = tmp_path / BIG
    hub.add_fault(Fault("redirect_loop", path=BIG))
    with pytest.raises(TooManyRedirectsError):
        await fetch(session, big_request(hub, dest, max_redirects=3))
    assert len(hub.log) == 4
    assert not dest.exists() and leftovers(dest) == []


async def test_a_missing_file_is_not_found(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    dest = tmp_path / "nope.gguf"
    url = hub.resolve_url(REPO, "nope.gguf")
    with pytest.raises(NotFoundError) as info:
        await fetch(session, TransferRequest(url=url, dest=dest))
    assert info.value.status == 404 and info.value.error_code == "EntryNotFound"
    assert info.value.redirected is False
    assert not dest.exists() and leftovers(dest) == []


async def test_a_503_keeps_its_status_and_retry_after_seconds(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    hub.add_fault(Fault("status", path=BIG, origin="hub", status=503, retry_after=7))
    with pytest.raises(ServerBusyError) as info:
        await fetch(session, big_request(hub, tmp_path / BIG))
    assert info.value.status == 503 and info.value.retry_after == 7.0


async def test_a_503_retry_after_may_be_an_http_date(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    when = format_datetime(datetime.fromtimestamp(time.time() + 120, UTC), usegmt=True)
    hub.add_fault(Fault("status", path=BIG, origin="cdn", status=503, retry_after=when))
    with pytest.raises(ServerBusyError) as info:
        await fetch(session, big_request(hub, tmp_path / BIG))
    assert info.value.retry_after is not None and 60 < info.value.retry_after <= 121
    assert info.value.redirected is True


async def test_a_429_is_rate_limited(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    hub.add_fault(Fault("status", path=BIG, origin="hub", status=429, retry_after=3))
    with pytest.raises(RateLimitedError) as info:
        await fetch(session, big_request(hub, tmp_path / BIG))
    assert info.value.status == 429 and info.value.retry_after == 3.0


async def test_an_expired_cdn_url_is_forbidden_not_an_auth_problem(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    hub.add_fault(Fault("expire", path=BIG, seconds=0))
    await asyncio.sleep(0.01)
    with pytest.raises(ForbiddenError) as info:
        await fetch(session, big_request(hub, tmp_path / BIG))
    assert info.value.status == 403 and info.value.redirected is True
    assert info.value.url is not None and "signature" not in info.value.url  # no signed query


async def test_a_gated_repo_is_gated(session: TransferSession, tmp_path: Path) -> None:
    async with FakeHub() as hub:
        hub.add_repo("owner/gated", [RepoFile(BIG, size=MiB)], gated=True)
        hub.tokens.add("hf_tok")
        creds = Credentials("hf_tok", hub.endpoint)
        request = TransferRequest(
            url=hub.resolve_url("owner/gated", BIG), dest=tmp_path / BIG, credentials=creds
        )
        with pytest.raises(GatedError) as info:
            await fetch(session, request)
        assert info.value.error_code == "GatedRepo"


async def test_the_token_reaches_the_hub_but_never_the_cdn(
    session: TransferSession, tmp_path: Path
) -> None:
    async with FakeHub() as hub:
        hub.add_repo("owner/private", [RepoFile(BIG, size=MiB, seed=3)], private=True)
        hub.tokens.add("hf_secret")
        request = TransferRequest(
            url=hub.resolve_url("owner/private", BIG),
            dest=tmp_path / BIG,
            credentials=Credentials("hf_secret", hub.endpoint + "/"),
        )
        await fetch(session, request)
        assert [(r.origin, r.authorization) for r in hub.log] == [("hub", True), ("cdn", False)]
        assert "hf_secret" not in repr(request)


async def test_a_token_for_another_origin_is_not_sent(
    session: TransferSession, tmp_path: Path
) -> None:
    async with FakeHub() as hub:
        hub.add_repo("owner/private", [RepoFile(BIG, size=MiB)], private=True)
        hub.tokens.add("hf_secret")
        port = int(hub.endpoint.rsplit(":", 1)[1])
        for origin in ("https://huggingface.co", f"https://127.0.0.1:{port}", hub.cdn_endpoint):
            request = TransferRequest(
                url=hub.resolve_url("owner/private", BIG),
                dest=tmp_path / BIG,
                credentials=Credentials("hf_secret", origin),
            )
            with pytest.raises(AuthRequiredError) as info:
                await fetch(session, request)
            assert info.value.status == 401
        assert hub.log and not any(r.authorization for r in hub.log)


async def test_a_refused_port_is_a_network_error(session: TransferSession, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "x.bin"
    with pytest.raises(NetworkError) as info:
        await fetch(session, TransferRequest(url=f"http://127.0.0.1:{port}/x.bin", dest=dest))
    assert not isinstance(info.value, StalledError)
    assert not dest.exists() and leftovers(dest) == []


async def test_a_disallowed_scheme_is_refused(session: TransferSession, tmp_path: Path) -> None:
    with pytest.raises(SchemeError):
        await fetch(session, TransferRequest(url="ftp://example.invalid/x", dest=tmp_path / "x"))


def test_a_path_traversal_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafePathError):
        safe_join(tmp_path, "../../etc/passwd")
    assert safe_join(tmp_path, "Q4/x.gguf") == tmp_path / "Q4" / "x.gguf"


# -- interrupted bodies -----------------------------------------------------------------------


async def test_a_stall_raises_stalled_and_keeps_the_partial(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    dest = tmp_path / BIG
    hub.add_fault(Fault("stall", path=BIG, after_bytes=MiB + 3, seconds=20, times=1))
    with pytest.raises(StalledError):
        await fetch(session, big_request(hub, dest, stall_timeout=0.5))
    assert part_path(dest).stat().st_size == MiB + 3
    assert sidecar_path(dest).exists() and not dest.exists()


async def test_a_stalled_response_head_is_stalled_too(
    session: TransferSession, tmp_path: Path
) -> None:
    async def never_answer(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    app = web.Application()
    app.router.add_get("/slow", never_answer)
    async with serve(app) as base:
        with pytest.raises(StalledError):
            await fetch(
                session,
                TransferRequest(url=f"{base}/slow", dest=tmp_path / "slow", stall_timeout=0.3),
            )


async def test_a_reset_mid_body_keeps_the_partial(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    dest = tmp_path / BIG
    hub.add_fault(Fault("reset", path=BIG, after_bytes=2 * MiB, times=1))
    with pytest.raises(NetworkError):
        await fetch(session, big_request(hub, dest))
    assert 0 < part_path(dest).stat().st_size <= 2 * MiB
    assert not dest.exists()
    result = await fetch(session, big_request(hub, dest))
    assert result.resumed_from > 0 and dest.read_bytes() == hub.content(REPO, BIG)


async def _start_throttled_and_stop(
    hub: FakeHub, session: TransferSession, dest: Path, reason: StopReason
) -> None:
    hub.add_fault(Fault("throttle", path=BIG, rate=4 * MiB, times=1))
    moving = asyncio.Event()
    stop = StopSignal()

    def report(done: int, total: int | None) -> None:
        if done >= MiB:
            moving.set()

    task = asyncio.create_task(
        fetch_file(session, big_request(hub, dest), on_progress=report, stop=stop)
    )
    await asyncio.wait_for(moving.wait(), 10)
    stop.stop(reason)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancel_deletes_the_partial(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    dest = tmp_path / BIG
    await _start_throttled_and_stop(hub, session, dest, StopReason.CANCEL)
    assert leftovers(dest) == [] and not dest.exists()


async def test_pause_keeps_the_partial_and_a_second_fetch_resumes(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    dest = tmp_path / BIG
    await _start_throttled_and_stop(hub, session, dest, StopReason.PAUSE)
    partial = part_path(dest).stat().st_size
    assert partial >= MiB and not dest.exists()
    result = await fetch(session, big_request(hub, dest))
    assert hub.requests(origin="cdn")[-1].range == f"bytes={partial}-"
    assert result.resumed_from == partial
    assert dest.read_bytes() == hub.content(REPO, BIG)


async def test_a_resumed_prefix_is_read_back_off_the_loop(
    hub: FakeHub, session: TransferSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-hashing the bytes already on disk reads them on a worker thread: the stand-in read
    waits for the loop to run a callback, which it could not if it ran on the loop (it would
    give up after 10 s and the test would see it)."""
    dest = tmp_path / BIG
    await _start_throttled_and_stop(hub, session, dest, StopReason.PAUSE)
    partial = part_path(dest).stat().st_size
    loop = asyncio.get_running_loop()
    reads: list[bool] = []

    def pread(fd: int, size: int, offset: int) -> bytes:
        ran = threading.Event()
        loop.call_soon_threadsafe(ran.set)
        reads.append(ran.wait(10))
        return os.pread(fd, size, offset)

    monkeypatch.setattr(sink, "pread", pread)
    result = await fetch(session, big_request(hub, dest))
    assert result.resumed_from == partial and dest.read_bytes() == hub.content(REPO, BIG)
    assert reads and all(reads)  # every read-back ran while the loop was free


async def test_disk_full_while_writing_keeps_the_partial(
    hub: FakeHub, session: TransferSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = [2 * MiB + 1]

    def pwrite_until_full(fd: int, data: memoryview, offset: int) -> int:
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = os.pwrite(fd, data[: budget[0]], offset)
        budget[0] -= n
        return n

    monkeypatch.setattr(sink, "pwrite", pwrite_until_full)
    dest = tmp_path / BIG
    with pytest.raises(DiskFullError):
        await fetch(session, big_request(hub, dest))
    assert part_path(dest).stat().st_size == 2 * MiB + 1
    assert sidecar_path(dest).exists() and not dest.exists()


async def test_too_little_free_space_fails_before_the_body(
    hub: FakeHub, session: TransferSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = shutil.disk_usage

    def tiny(path: str | os.PathLike[str]) -> object:
        usage = real(path)
        return type(usage)(usage.total, usage.used, MiB)

    monkeypatch.setattr(shutil, "disk_usage", tiny)
    with pytest.raises(DiskFullError) as info:
        await fetch(session, big_request(hub, tmp_path / BIG))
    assert info.value.needed == BIG_SIZE and info.value.free == MiB


# -- scripted servers: lies and protocol oddities ---------------------------------------------


class serve:
    """An aiohttp app on a free loopback port, as an async context manager yielding its URL."""

    def __init__(self, app: web.Application) -> None:
        self.runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.2)

    async def __aenter__(self) -> str:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def scripted(routes: dict[str, Handler]) -> web.Application:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    return app


async def _redirect_with_linked_size(request: web.Request) -> web.Response:
    return web.Response(status=302, headers={"Location": "body", "X-Linked-Size": "1000"})


async def _body_2000(request: web.Request) -> web.Response:
    return web.Response(body=b"a" * 2000)


async def _chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for _ in range(int(request.query.get("n", "3"))):
        await response.write(b"b" * MiB)
    return response


async def _no_location(request: web.Request) -> web.Response:
    return web.Response(status=302)


async def _to_ftp(request: web.Request) -> web.Response:
    return web.Response(status=307, headers={"Location": "ftp://example.invalid/x"})


async def test_a_body_longer_than_announced_is_an_integrity_error(
    session: TransferSession, tmp_path: Path
) -> None:
    app = scripted({"/d/start": _redirect_with_linked_size, "/d/body": _body_2000})
    dest = tmp_path / "f.bin"
    async with serve(app) as base:
        with pytest.raises(IntegrityError) as info:
            await fetch(session, TransferRequest(url=f"{base}/d/start", dest=dest))
    assert info.value.expected == "1000" and info.value.actual == "2000"
    assert not dest.exists() and leftovers(dest) == []


async def test_a_body_longer_than_expected_stops_at_the_expected_size(
    session: TransferSession, tmp_path: Path
) -> None:
    dest = tmp_path / "f.bin"
    async with serve(scripted({"/chunked": _chunked})) as base:
        request = TransferRequest(url=f"{base}/chunked", dest=dest, expected_size=MiB + 5)
        with pytest.raises(IntegrityError):
            await fetch(session, request)
    assert not dest.exists()
    assert not part_path(dest).exists() or part_path(dest).stat().st_size <= MiB + 5


async def test_a_body_shorter_than_expected_is_resumable(
    session: TransferSession, tmp_path: Path
) -> None:
    dest = tmp_path / "f.bin"
    async with serve(scripted({"/chunked": _chunked})) as base:
        request = TransferRequest(url=f"{base}/chunked?n=2", dest=dest, expected_size=3 * MiB)
        with pytest.raises(NetworkError):
            await fetch(session, request)
    assert part_path(dest).stat().st_size == 2 * MiB and not dest.exists()


async def test_an_unknown_length_body_is_published_when_complete(
    session: TransferSession, tmp_path: Path
) -> None:
    dest = tmp_path / "f.bin"
    progress: Progress = []
    async with serve(scripted({"/chunked": _chunked})) as base:
        result = await fetch(session, TransferRequest(url=f"{base}/chunked", dest=dest), progress)
    assert dest.read_bytes() == b"b" * 3 * MiB
    assert result.verified is False and progress[-1] == (3 * MiB, 3 * MiB)


async def test_a_redirect_without_location_is_a_network_error(
    session: TransferSession, tmp_path: Path
) -> None:
    async with serve(scripted({"/r": _no_location})) as base:
        with pytest.raises(NetworkError):
            await fetch(session, TransferRequest(url=f"{base}/r", dest=tmp_path / "f"))


async def test_a_redirect_to_another_scheme_is_refused(
    session: TransferSession, tmp_path: Path
) -> None:
    async with serve(scripted({"/r": _to_ftp})) as base:
        with pytest.raises(SchemeError):
            await fetch(session, TransferRequest(url=f"{base}/r", dest=tmp_path / "f"))


# -- small files: the sidecar only when a partial outlives the attempt -------------------------


async def test_a_small_file_that_completes_never_writes_a_sidecar(
    hub: FakeHub, session: TransferSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved: list[Path] = []
    original = PartState.save

    def counted(self: PartState, path: Path) -> None:
        saved.append(path)
        original(self, path)

    monkeypatch.setattr(PartState, "save", counted)
    dest = tmp_path / "small.json"
    result = await fetch(session, TransferRequest(url=hub.resolve_url(REPO, SMALL), dest=dest))
    assert result.path.read_bytes() == SMALL_CONTENT and saved == []
    assert leftovers(dest) == []


async def test_a_small_file_that_stops_early_keeps_a_resumable_prefix(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    hub.add_repo("o/s", [RepoFile("s.bin", size=300_000, seed=5)])
    info = hub.file("o/s", "s.bin")
    request = TransferRequest(
        url=hub.resolve_url("o/s", "s.bin"),
        dest=tmp_path / "s.bin",
        expected_size=info.size,
        expected_sha256=info.sha256,
    )
    hub.add_fault(Fault("truncate", path="s.bin", after_bytes=100_000, times=1))
    with pytest.raises(NetworkError):
        await fetch(session, request)
    kept = part_path(request.dest).stat().st_size
    assert 0 < kept <= 100_000
    assert PartState.load(sidecar_path(request.dest)) is not None  # written as it stopped
    result = await fetch(session, request)
    assert result.verified and result.resumed_from == kept
    assert leftovers(request.dest) == []


async def test_a_small_part_without_its_sidecar_is_fetched_again(
    hub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    # What a crash in the middle of a small file leaves: a `.part` and no record of it.
    dest = tmp_path / "small.json"
    part_path(dest).write_bytes(b"garbage that is not the file's beginning")
    result = await fetch(session, TransferRequest(url=hub.resolve_url(REPO, SMALL), dest=dest))
    assert result.resumed_from == 0 and result.path.read_bytes() == SMALL_CONTENT


# -- the publish step -------------------------------------------------------------------------


async def test_the_part_is_closed_before_it_takes_the_final_name(
    hub: FakeHub, session: TransferSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / BIG
    seen: list[list[str]] = []
    real_publish = publish.publish

    def watching_publish(part: Path, final: Path, side: Path) -> None:
        # What has the `.part` open at the moment of the rename: nothing of ours may.
        fds = Path("/proc/self/fd")
        seen.append([str(p.resolve()) for p in fds.iterdir() if p.resolve() == part.resolve()])
        real_publish(part, final, side)

    monkeypatch.setattr(publish, "publish", watching_publish)
    await fetch(session, big_request(hub, dest))
    assert seen == [[]]
    assert dest.read_bytes() == hub.content(REPO, BIG)


async def test_a_cancel_during_the_publish_is_too_late(
    hub: FakeHub, session: TransferSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop that lands while the verified file is being renamed into place does not make a
    complete file look cancelled: the transfer returns it as done."""
    dest = tmp_path / BIG
    entered = threading.Event()
    release = threading.Event()
    real_publish = publish.publish

    def slow_publish(part: Path, final: Path, side: Path) -> None:
        entered.set()
        release.wait(10)
        real_publish(part, final, side)

    monkeypatch.setattr(publish, "publish", slow_publish)
    task = asyncio.create_task(fetch(session, big_request(hub, dest)))
    assert await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # waits for the publish rather than abandoning it half done
    release.set()
    result = await task
    assert result.verified and dest.read_bytes() == hub.content(REPO, BIG)
    assert leftovers(dest) == []


# -- small bodies: received into memory, published by one worker-thread call ------------------

SMALL_BODY = 300_000  # below SMALL_BODY_LIMIT: the in-memory path; a .bin is LFS (the CDN hop)


@pytest.fixture
def small(hub: FakeHub, tmp_path: Path) -> TransferRequest:
    hub.add_repo("o/s", [RepoFile("s.bin", size=SMALL_BODY, seed=5)])
    info = hub.file("o/s", "s.bin")
    return TransferRequest(
        url=hub.resolve_url("o/s", "s.bin"),
        dest=tmp_path / "s.bin",
        expected_size=info.size,
        expected_sha256=info.sha256,
    )


def test_the_small_body_limit_keeps_big_files_streaming() -> None:
    assert SMALL_BODY < receive.SMALL_BODY_LIMIT < BIG_SIZE
    assert receive.SMALL_BODY_LIMIT <= receive.SMALL_PART_LIMIT


async def test_a_small_body_is_published_only_complete_verified_and_closed(
    hub: FakeHub,
    session: TransferSession,
    small: TransferRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    content = hub.content("o/s", "s.bin")
    seen: list[tuple[bytes, bool, list[str]]] = []
    real_publish = publish.publish

    def watching_publish(part: Path, final: Path, side: Path | None) -> None:
        # At the rename: the `.part` is whole, the final name is not there yet, nothing of
        # ours holds the `.part` open.
        open_on_part = [
            str(fd) for fd in Path("/proc/self/fd").iterdir() if fd.resolve() == part.resolve()
        ]
        seen.append((part.read_bytes(), final.exists(), open_on_part))
        real_publish(part, final, side)

    monkeypatch.setattr(publish, "publish", watching_publish)
    progress: Progress = []
    result = await fetch(session, small, progress)
    assert seen == [(content, False, [])]
    assert small.dest.read_bytes() == content and leftovers(small.dest) == []
    assert result.verified and result.size == SMALL_BODY and result.sha256 == sha256_of(content)
    assert result.resumed_from == 0 and result.bytes_fetched == SMALL_BODY
    assert progress[0] == (0, SMALL_BODY) and progress[-1] == (SMALL_BODY, SMALL_BODY)


async def test_a_small_body_with_a_wrong_digest_leaves_nothing(
    hub: FakeHub, session: TransferSession, small: TransferRequest
) -> None:
    hub.add_fault(Fault("corrupt", path="s.bin", after_bytes=1000, times=1))
    with pytest.raises(IntegrityError) as info:
        await fetch(session, small)
    assert info.value.expected == small.expected_sha256
    assert not small.dest.exists() and leftovers(small.dest) == []


async def test_a_small_body_cut_midway_leaves_its_prefix_and_resumes_from_it(
    hub: FakeHub, session: TransferSession, small: TransferRequest
) -> None:
    hub.add_fault(Fault("truncate", path="s.bin", after_bytes=100_000, times=1))
    with pytest.raises(NetworkError):
        await fetch(session, small)
    content = hub.content("o/s", "s.bin")
    kept = part_path(small.dest).read_bytes()
    assert 0 < len(kept) <= 100_000 and kept == content[: len(kept)]
    state = PartState.load(sidecar_path(small.dest))
    assert state is not None and state.total == SMALL_BODY
    assert not small.dest.exists()
    result = await fetch(session, small)
    assert hub.requests(origin="cdn", path_contains="s.bin")[-1].range == f"bytes={len(kept)}-"
    assert result.verified and result.resumed_from == len(kept)
    assert result.bytes_fetched == SMALL_BODY - len(kept)
    assert small.dest.read_bytes() == content and leftovers(small.dest) == []


async def _stop_small_midway(
    hub: FakeHub, session: TransferSession, request: TransferRequest, reason: StopReason
) -> int:
    """Start a throttled small body, stop it with `reason` once 60 KB arrived; the count the
    last progress report gave."""
    hub.add_fault(Fault("throttle", path="s.bin", rate=400_000, times=1))
    moving = asyncio.Event()
    reported = [0]
    stop = StopSignal()

    def report(done: int, total: int | None) -> None:
        reported[0] = done
        if done >= 60_000:
            moving.set()

    task = asyncio.create_task(fetch_file(session, request, on_progress=report, stop=stop))
    await asyncio.wait_for(moving.wait(), 10)
    stop.stop(reason)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return reported[0]


async def test_a_paused_small_body_keeps_what_arrived_and_resumes_there(
    hub: FakeHub, session: TransferSession, small: TransferRequest
) -> None:
    reported = await _stop_small_midway(hub, session, small, StopReason.PAUSE)
    content = hub.content("o/s", "s.bin")
    kept = part_path(small.dest).read_bytes()
    assert len(kept) >= reported >= 60_000 and kept == content[: len(kept)]
    assert PartState.load(sidecar_path(small.dest)) is not None and not small.dest.exists()
    result = await fetch(session, small)
    assert hub.requests(origin="cdn", path_contains="s.bin")[-1].range == f"bytes={len(kept)}-"
    assert result.resumed_from == len(kept) and small.dest.read_bytes() == content


async def test_a_cancelled_small_body_leaves_nothing(
    hub: FakeHub, session: TransferSession, small: TransferRequest
) -> None:
    await _stop_small_midway(hub, session, small, StopReason.CANCEL)
    assert leftovers(small.dest) == [] and not small.dest.exists()


async def test_a_cancel_while_the_worker_publishes_a_small_body_is_too_late(
    hub: FakeHub, session: TransferSession, small: TransferRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered = threading.Event()
    release = threading.Event()
    real_publish = publish.publish

    def slow_publish(part: Path, final: Path, side: Path | None) -> None:
        entered.set()
        release.wait(10)
        real_publish(part, final, side)

    monkeypatch.setattr(publish, "publish", slow_publish)
    stop = StopSignal()
    task = asyncio.create_task(fetch(session, small, stop=stop))
    assert await asyncio.to_thread(entered.wait, 10)
    stop.stop(StopReason.CANCEL)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # waits for the worker rather than abandoning it half done
    release.set()
    result = await task
    assert result.verified and small.dest.read_bytes() == hub.content("o/s", "s.bin")
    assert leftovers(small.dest) == []


async def test_a_cancel_while_the_worker_fails_still_cancels_and_cleans_up(
    hub: FakeHub, session: TransferSession, small: TransferRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered = threading.Event()
    release = threading.Event()

    def failing_publish(part: Path, final: Path, side: Path | None) -> None:
        entered.set()
        release.wait(10)
        raise OSError(errno.EIO, "the rename failed")

    monkeypatch.setattr(publish, "publish", failing_publish)
    stop = StopSignal()
    task = asyncio.create_task(fetch(session, small, stop=stop))
    assert await asyncio.to_thread(entered.wait, 10)
    stop.stop(StopReason.CANCEL)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers(small.dest) == [] and not small.dest.exists()


async def test_a_full_disk_under_a_small_body_keeps_what_landed(
    session: TransferSession, small: TransferRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = [100_001]

    def pwrite_until_full(fd: int, data: memoryview, offset: int) -> int:
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = os.pwrite(fd, data[: budget[0]], offset)
        budget[0] -= n
        return n

    monkeypatch.setattr(sink, "pwrite", pwrite_until_full)
    with pytest.raises(DiskFullError):
        await fetch(session, small)
    assert part_path(small.dest).stat().st_size == 100_001
    assert sidecar_path(small.dest).exists() and not small.dest.exists()
    monkeypatch.undo()
    result = await fetch(session, small)
    assert result.verified and result.resumed_from == 100_001


async def test_too_little_space_for_a_small_body_is_disk_full(
    session: TransferSession, small: TransferRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = shutil.disk_usage

    def tiny(path: str | os.PathLike[str]) -> object:
        usage = real(path)
        return type(usage)(usage.total, usage.used, 1000)

    monkeypatch.setattr(shutil, "disk_usage", tiny)
    with pytest.raises(DiskFullError) as info:
        await fetch(session, small)
    assert info.value.needed == SMALL_BODY and info.value.free == 1000
    assert not small.dest.exists() and leftovers(small.dest) == []


async def test_a_small_body_sent_whole_instead_of_resumed_replaces_the_prefix(
    hub: FakeHub, session: TransferSession, small: TransferRequest
) -> None:
    hub.add_fault(Fault("truncate", path="s.bin", after_bytes=100_000, times=1))
    with pytest.raises(NetworkError):
        await fetch(session, small)
    assert part_path(small.dest).exists()
    hub.add_fault(Fault("ignore_range", path="s.bin", times=1))
    progress: Progress = []
    result = await fetch(session, small, progress)
    assert result.resumed_from == 0 and result.bytes_fetched == SMALL_BODY
    assert (0, SMALL_BODY) in progress[1:]  # the dropped prefix is reported as gone
    assert small.dest.read_bytes() == hub.content("o/s", "s.bin")
    assert leftovers(small.dest) == []


async def test_a_stray_sidecar_without_its_part_is_gone_once_the_file_is_in_place(
    hub: FakeHub, session: TransferSession, small: TransferRequest
) -> None:
    # What a crash between the two unlinks of a partial leaves: a record without a `.part`.
    for request in (small, big_request(hub, small.dest.with_name(BIG))):
        PartState(url="http://elsewhere.invalid/x", validator=None, total=7, sha256=None).save(
            sidecar_path(request.dest)
        )
        result = await fetch(session, request)
        assert result.resumed_from == 0 and result.verified
        assert leftovers(request.dest) == []


# -- the end of the download, before the publish ----------------------------------------------


@pytest.mark.parametrize("path", ["held in memory", "streamed to the .part"])
async def test_on_received_comes_once_with_every_byte_in_and_before_the_publish(
    hub: FakeHub, session: TransferSession, small: TransferRequest, tmp_path: Path, path: str
) -> None:
    """What lets the manager start the next file while this one's fsync runs: the callback
    comes when the body is complete, its connection slot already given back, and the final
    name not there yet."""
    from modelfetch.transfer.limiter import ConnectionSlots

    request = small if path == "held in memory" else big_request(hub, tmp_path / BIG)
    slots = ConnectionSlots(4)
    seen: list[tuple[bool, int]] = []
    result = await fetch_file(
        session,
        request,
        slots=slots,
        on_received=lambda: seen.append((request.dest.exists(), slots.in_use)),
    )
    assert seen == [(False, 0)]
    assert request.dest.stat().st_size == result.size and slots.in_use == 0


async def test_on_received_is_not_called_for_a_body_cut_short(
    hub: FakeHub, session: TransferSession, small: TransferRequest
) -> None:
    hub.add_fault(Fault("truncate", path="s.bin", after_bytes=100_000, times=1))
    seen: list[None] = []
    with pytest.raises(NetworkError):
        await fetch_file(session, small, on_received=lambda: seen.append(None))
    assert seen == []
