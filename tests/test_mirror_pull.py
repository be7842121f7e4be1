"""Pull-through under load: many clients, one upstream fetch; a client joining mid-download;
a body that fails verification is never handed out whole."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from huggingface_hub import hf_hub_download

from modelfetch.core.queue import FileKey
from modelfetch.manager import DownloadManager, ManagerSettings
from modelfetch.testing.fakehub import FakeHub, RepoFile
from modelfetch.testing.fakehub.faults import Fault
from tests.mirror_env import (
    hf_env_fixture,  # noqa: F401 -- autouse
    in_thread,
    running_mirror,
)

REPO = "team/big-GGUF"
BIG = "big-Q8_0.gguf"
SIZE = 6 << 20
RATE = 12 << 20  # bytes/s per upstream connection: the fetch takes about half a second

LOCAL = frozenset({"127.0.0.1", "localhost"})


@pytest.fixture
async def slow_hub() -> AsyncIterator[FakeHub]:
    async with FakeHub(connection_rate=RATE) as running:
        running.add_repo(REPO, [RepoFile(BIG, size=SIZE, seed=3)])
        yield running


def _cdn_bytes(hub: FakeHub) -> int:
    return sum(r.bytes_sent for r in hub.requests("cdn", path_contains=BIG))


def _settings(segmented: bool) -> ManagerSettings:
    if not segmented:
        return ManagerSettings(allowed_hosts=LOCAL, connections_per_file=1)
    # Pieces of 1 MiB over 4 connections: the prefix is the segment map's, not a byte count.
    return ManagerSettings(
        allowed_hosts=LOCAL,
        connections_per_file=4,
        segment_threshold=1 << 20,
        min_segment_size=1 << 20,
    )


async def _key_of(manager: DownloadManager) -> FileKey:
    async with asyncio.timeout(20):
        while True:
            for view in await manager.snapshot():
                if view.name == f"{REPO}/{BIG}":
                    return (view.id, 1)
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("segmented", [False, True], ids=["one-stream", "segmented"])
async def test_three_concurrent_clients_fetch_upstream_once(
    slow_hub: FakeHub, tmp_path: Path, segmented: bool
) -> None:
    expected = slow_hub.content(REPO, BIG)
    async with running_mirror(
        slow_hub, tmp_path / "mirror", settings=_settings(segmented)
    ) as mirror:
        paths = await asyncio.gather(
            *(
                in_thread(
                    hf_hub_download,
                    REPO,
                    BIG,
                    endpoint=mirror.endpoint,
                    cache_dir=tmp_path / f"c{i}",
                )
                for i in range(3)
            )
        )
        for path in paths:
            assert Path(path).read_bytes() == expected
    # Every byte crossed the upstream link once, however many clients asked.
    assert _cdn_bytes(slow_hub) == SIZE


async def test_a_client_joining_mid_download_streams_what_has_arrived(
    slow_hub: FakeHub, tmp_path: Path
) -> None:
    expected = slow_hub.content(REPO, BIG)
    async with running_mirror(slow_hub, tmp_path / "mirror", settings=_settings(False)) as mirror:
        first = asyncio.ensure_future(
            in_thread(
                hf_hub_download, REPO, BIG, endpoint=mirror.endpoint, cache_dir=tmp_path / "a"
            )
        )
        key = await _key_of(mirror.manager)
        board = mirror.manager.arrivals
        async with asyncio.timeout(20):
            while board.get(key).prefix == 0:
                await board.wait(key, 1.0)
        joined_at = board.get(key).prefix
        async with aiohttp.ClientSession() as http:
            url = f"{mirror.endpoint}/{REPO}/resolve/main/{BIG}"
            async with http.get(url) as r:
                assert r.status == 200
                first_chunk = await r.content.readexactly(joined_at)
                # The bytes on disk came at once; the rest streams as it lands upstream.
                assert board.get(key).completed is False
                body = first_chunk + await r.read()
        assert joined_at < SIZE
        assert body == expected
        assert Path(await first).read_bytes() == expected
    assert _cdn_bytes(slow_hub) == SIZE


async def test_a_range_beyond_what_has_arrived_waits_for_it(
    slow_hub: FakeHub, tmp_path: Path
) -> None:
    async with (
        running_mirror(slow_hub, tmp_path / "mirror", settings=_settings(False)) as mirror,
        aiohttp.ClientSession() as http,
    ):
        url = f"{mirror.endpoint}/{REPO}/resolve/main/{BIG}"
        tail = (SIZE - 4096, SIZE - 1)
        async with http.get(url, headers={"Range": f"bytes={tail[0]}-{tail[1]}"}) as r:
            assert r.status == 206
            assert r.headers["Content-Range"] == f"bytes {tail[0]}-{tail[1]}/{SIZE}"
            assert await r.read() == slow_hub.content(REPO, BIG, start=tail[0], end=tail[1] + 1)
        key = await _key_of(mirror.manager)
        assert mirror.manager.arrivals.get(key).completed  # the last byte waited for the publish
    assert _cdn_bytes(slow_hub) == SIZE


async def test_a_body_that_fails_verification_is_cut_never_served_whole(
    slow_hub: FakeHub, tmp_path: Path
) -> None:
    # The first upstream body has one flipped byte late in the file: the client is sent it
    # before the digest can know, so its stream must end short when the digest fails.
    slow_hub.add_fault(
        Fault("corrupt", path=BIG, origin="cdn", after_bytes=SIZE - 300_000, times=1)
    )
    expected = slow_hub.content(REPO, BIG)
    async with (
        running_mirror(slow_hub, tmp_path / "mirror", settings=_settings(False)) as mirror,
        aiohttp.ClientSession() as http,
    ):
        url = f"{mirror.endpoint}/{REPO}/resolve/main/{BIG}"
        received = bytearray()
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.get(url) as r:
                assert r.status == 200
                async for chunk in r.content.iter_any():
                    received += chunk
        assert len(received) < SIZE
        # The manager fetched it again from zero; now it is whole and verified.
        async with http.get(url) as r:
            body = await r.read()
        assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest()
        assert _cdn_bytes(slow_hub) == 2 * SIZE  # the bad body, then the good one


async def test_a_cut_client_resuming_with_a_range_gets_the_whole_file(
    slow_hub: FakeHub, tmp_path: Path
) -> None:
    """A client that resumes a cut body with a bare Range (curl -C -, older huggingface_hub)
    would keep the bad byte it already holds: that resume is answered with the whole file."""
    slow_hub.add_fault(Fault("corrupt", path=BIG, origin="cdn", after_bytes=1000, times=1))
    expected = slow_hub.content(REPO, BIG)
    async with (
        running_mirror(slow_hub, tmp_path / "mirror", settings=_settings(False)) as mirror,
        aiohttp.ClientSession() as http,
    ):
        url = f"{mirror.endpoint}/{REPO}/resolve/main/{BIG}"
        received = bytearray()
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.get(url) as r:
                async for chunk in r.content.iter_any():
                    received += chunk
        assert received[1000] != expected[1000]  # it was sent the bad byte, then cut
        async with http.get(url, headers={"Range": f"bytes={len(received)}-"}) as r:
            assert r.status == 200
            assert await r.read() == expected
        # Having had the whole file, its ranges are answered as ranges again.
        async with http.get(url, headers={"Range": "bytes=10-19"}) as r:
            assert r.status == 206
            assert await r.read() == expected[10:20]


async def test_huggingface_hub_cut_by_a_failed_digest_ends_with_the_right_file(
    slow_hub: FakeHub, tmp_path: Path
) -> None:
    slow_hub.add_fault(Fault("corrupt", path=BIG, origin="cdn", after_bytes=1000, times=1))
    expected = slow_hub.content(REPO, BIG)
    async with running_mirror(slow_hub, tmp_path / "mirror", settings=_settings(False)) as mirror:
        got = await in_thread(
            hf_hub_download, REPO, BIG, endpoint=mirror.endpoint, cache_dir=tmp_path / "hf"
        )
        assert Path(got).read_bytes() == expected
    assert _cdn_bytes(slow_hub) == 2 * SIZE  # the bad body, then the good one


async def test_a_pull_cut_by_a_daemon_restart_resumes_from_its_part(
    slow_hub: FakeHub, tmp_path: Path
) -> None:
    expected = slow_hub.content(REPO, BIG)
    home = tmp_path / "mirror"
    url_path = f"/{REPO}/resolve/main/{BIG}"
    received = bytearray()
    async with (
        running_mirror(slow_hub, home, settings=_settings(False)) as mirror,
        aiohttp.ClientSession() as http,
        http.get(mirror.endpoint + url_path) as r,
    ):
        key = await _key_of(mirror.manager)
        while len(received) < SIZE // 4:
            received += await r.content.readany()
        at_stop = mirror.manager.arrivals.get(key).prefix
    assert 0 < at_stop < SIZE  # stopped mid-file; the `.part` stays
    async with (
        running_mirror(slow_hub, home, settings=_settings(False)) as mirror,
        aiohttp.ClientSession() as http,
        http.get(mirror.endpoint + url_path, headers={"Range": f"bytes={len(received)}-"}) as r,
    ):
        assert r.status == 206
        rest = await r.read()
    assert bytes(received) + rest == expected
    # The second daemon resumed the `.part` rather than fetching from zero.
    assert _cdn_bytes(slow_hub) < SIZE + at_stop
    resumed = slow_hub.requests("cdn", path_contains=BIG)[-1].range or ""
    assert resumed.startswith("bytes=") and int(resumed[6:].split("-")[0]) >= at_stop


async def test_files_clients_wait_on_start_at_once_beyond_max_active(
    tmp_path: Path,
) -> None:
    """A Hub client gives up on a body silent for 10 s; a pulled file queued behind max_active
    is silent. Files a client waits on start at once (up to max_expedited more)."""
    names = [f"part-{n}.bin" for n in range(3)]
    async with FakeHub(connection_rate=2 << 20) as hub:
        hub.add_repo(REPO, [RepoFile(n, size=2 << 20, seed=n, lfs=True) for n in names])
        settings = ManagerSettings(allowed_hosts=LOCAL, max_active=1, connections_per_file=1)
        async with running_mirror(hub, tmp_path / "mirror", settings=settings) as mirror:
            most = 0

            async def watch() -> None:
                nonlocal most
                while True:
                    most = max(most, len(mirror.manager._running))
                    await asyncio.sleep(0.02)

            watcher = asyncio.create_task(watch())
            try:
                paths = await asyncio.gather(
                    *(
                        in_thread(
                            hf_hub_download,
                            REPO,
                            name,
                            endpoint=mirror.endpoint,
                            cache_dir=tmp_path / f"client-{name}",
                        )
                        for name in names
                    )
                )
            finally:
                watcher.cancel()
    assert most == 3  # all three at once, though max_active is 1
    for name, path in zip(names, paths, strict=True):
        assert Path(path).read_bytes() == hub.content(REPO, name)
