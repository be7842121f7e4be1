"""The fake hub's bandwidth caps: per connection, and per client over all its connections.

Against the real fake hub on 127.0.0.1. Timings are read from the hub's own log (when each body
began and ended) and bounded from below only by what the caps guarantee; the one comparison of
two runs leaves a wide margin, since the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from modelfetch.testing.fakehub import FakeHub, RepoFile
from modelfetch.testing.fakehub.limits import CLIENT_BURST_SECONDS, RateBucket
from modelfetch.testing.fakehub.log import RequestRecord
from modelfetch.testing.fakehub.runner import parse_rate

MiB = 1 << 20
REPO = "acme/capped"
CAP = 4 * MiB  # per client, bytes/s
TOKENS = ("hf_alpha_secret", "hf_bravo_secret")
FILES = ("a.gguf", "b.gguf")  # LFS: served by the CDN
SMALL = "notes.txt"  # a git file: served by the hub itself


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    async with FakeHub(client_rate=CAP) as running:
        running.add_repo(
            REPO,
            [
                RepoFile(FILES[0], size=4 * MiB, seed=1),
                RepoFile(FILES[1], size=4 * MiB, seed=2),
                RepoFile(SMALL, content=b"n" * (512 << 10), lfs=False),
            ],
        )
        running.tokens.update(TOKENS)
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def resolve(http: aiohttp.ClientSession, hub: FakeHub, path: str, token: str | None) -> str:
    async with http.get(
        hub.resolve_url(REPO, path), headers=auth(token), allow_redirects=False
    ) as resp:
        assert resp.status == 302, resp.status
        return resp.headers["Location"]


async def fetch(http: aiohttp.ClientSession, url: str, token: str | None = None) -> bytes:
    async with http.get(url, headers=auth(token)) as resp:
        assert resp.status == 200, resp.status
        return await resp.read()


def bodies(hub: FakeHub) -> list[RequestRecord]:
    return [r for r in hub.log if r.method == "GET" and r.bytes_sent > 0]


def span(records: list[RequestRecord]) -> float:
    """Seconds from the first body's request to the last body's end, as the hub saw them."""
    return max(r.end for r in records) - min(r.time for r in records)


def least_seconds(nbytes: int, rate: float = CAP) -> float:
    """The least time `nbytes` can take through one client bucket (its burst spent at once)."""
    return nbytes / rate - CLIENT_BURST_SECONDS


async def test_one_client_shares_its_cap_and_two_clients_each_get_theirs(
    hub: FakeHub, http: aiohttp.ClientSession
) -> None:
    # One token, two connections (two files at once): together they get one cap.
    urls = [await resolve(http, hub, path, TOKENS[0]) for path in FILES]
    hub.log.clear()
    got = await asyncio.gather(*(fetch(http, u) for u in urls))
    assert got == [hub.content(REPO, p) for p in FILES]
    same = bodies(hub)
    assert len(same) == 2
    alpha = hub.client_id(TOKENS[0])
    assert {r.client for r in same} == {alpha}
    assert hub.client_bytes[alpha] == 8 * MiB
    same_seconds = span(same)
    assert same_seconds >= least_seconds(8 * MiB)  # what the one bucket guarantees
    for r in same:  # fair shares: neither had the bucket to itself (that would take 1 s)
        assert r.end - r.time >= 0.6 * least_seconds(8 * MiB)

    # Two tokens, one connection each: two buckets, each client at its own cap.
    urls = [await resolve(http, hub, p, t) for p, t in zip(FILES, TOKENS, strict=True)]
    hub.log.clear()
    got = await asyncio.gather(*(fetch(http, u) for u in urls))
    assert got == [hub.content(REPO, p) for p in FILES]
    apart = bodies(hub)
    bravo = hub.client_id(TOKENS[1])
    assert {r.client for r in apart} == {alpha, bravo}
    assert hub.client_bytes[bravo] == 4 * MiB
    for r in apart:
        assert r.end - r.time >= least_seconds(4 * MiB)
    # The same bytes in about half the time (ideally 1 s against 2 s): noticeably faster.
    assert span(apart) < 0.8 * same_seconds, (span(apart), same_seconds)
    assert set(hub.client_buckets.buckets) == {alpha, bravo}
    assert hub.client_buckets.buckets[alpha].granted == 12 * MiB


async def test_without_a_token_the_peer_address_is_the_client(
    hub: FakeHub, http: aiohttp.ClientSession
) -> None:
    url = await resolve(http, hub, FILES[0], None)
    peer = hub.client_id(None, "127.0.0.1")
    assert f"client={peer}" in url
    hub.log.clear()
    # A CDN body and a body the hub serves itself, at once: both draw on the address's bucket.
    cdn_body, small_body = await asyncio.gather(
        fetch(http, url), fetch(http, hub.resolve_url(REPO, SMALL))
    )
    assert cdn_body == hub.content(REPO, FILES[0])
    assert small_body == hub.content(REPO, SMALL)
    records = bodies(hub)
    assert {r.client for r in records} == {peer}
    total = 4 * MiB + (512 << 10)
    assert hub.client_bytes == {peer: total}
    assert span(records) >= least_seconds(total)


async def test_the_cdn_url_names_the_client_not_the_token(
    hub: FakeHub, http: aiohttp.ClientSession
) -> None:
    first = await resolve(http, hub, FILES[0], TOKENS[0])
    again = await resolve(http, hub, FILES[1], TOKENS[0])
    other = await resolve(http, hub, FILES[0], TOKENS[1])
    for url in (first, again, other):
        assert not any(t in url for t in TOKENS)
        assert "secret" not in url
    client = re.compile(r"[?&]client=([^&]+)")
    ids = [m[1] for m in map(client.search, (first, again, other)) if m is not None]
    assert ids == [hub.client_id(TOKENS[0]), hub.client_id(TOKENS[0]), hub.client_id(TOKENS[1])]
    assert ids[0] != ids[2]
    assert all(re.fullmatch(r"t-[0-9a-f]{16}", i) for i in ids)


async def test_a_tampered_client_field_is_refused(
    hub: FakeHub, http: aiohttp.ClientSession
) -> None:
    hub.client_rate = None  # nothing to wait for here
    url = await resolve(http, hub, FILES[0], TOKENS[0])
    alpha, bravo = hub.client_id(TOKENS[0]), hub.client_id(TOKENS[1])
    forged = url.replace(f"client={alpha}", f"client={bravo}")
    dropped = url.replace(f"client={alpha}&", "")
    emptied = url.replace(f"client={alpha}", "client=")
    assert len({url, forged, dropped, emptied}) == 4
    for bad in (forged, dropped, emptied):
        async with http.get(bad, headers={"Range": "bytes=0-0"}) as resp:
            assert resp.status == 403, bad
    async with http.get(url, headers={"Range": "bytes=0-0"}) as resp:
        assert resp.status == 206


async def test_the_connection_cap_and_the_client_cap_together() -> None:
    async with (
        FakeHub(connection_rate=2 * MiB, client_rate=3 * MiB) as hub,
        aiohttp.ClientSession() as http,
    ):
        hub.add_repo(REPO, [RepoFile(p, size=MiB, seed=n) for n, p in enumerate(FILES)])
        # One connection alone: its own cap (2 MiB/s) is the lower one.
        await fetch(http, await resolve(http, hub, FILES[0], None))
        (one,) = bodies(hub)
        assert one.end - one.time >= 0.45  # 1 MiB at 2 MiB/s: at least 0.5 s
        # Two at once: together no faster than the client's 3 MiB/s.
        hub.log.clear()
        urls = [await resolve(http, hub, p, None) for p in FILES]
        await asyncio.gather(*(fetch(http, u) for u in urls))
        assert span(bodies(hub)) >= least_seconds(2 * MiB, 3 * MiB)


def test_rates_are_validated_and_parsed() -> None:
    with pytest.raises(ValueError, match="client_rate"):
        FakeHub(client_rate=0)
    with pytest.raises(ValueError, match="connection_rate"):
        FakeHub(connection_rate=-1)
    assert parse_rate("40M") == 40 * MiB
    assert parse_rate("40MiB") == 40 * MiB
    assert parse_rate("512k") == 512 << 10
    assert parse_rate("1.5G") == 1.5 * (1 << 30)
    assert parse_rate("1000") == 1000
    for bad in ("", "0", "fast", "-1M", "3T"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_rate(bad)


async def test_a_bucket_keeps_only_a_little_unused_credit() -> None:
    loop = asyncio.get_running_loop()
    bucket = RateBucket(10 * MiB, burst=0.02)
    began = loop.time()
    await bucket.take(MiB)  # starts empty: 1 MiB at 10 MiB/s waits 0.1 s
    assert loop.time() - began >= 0.095
    await asyncio.sleep(0.3)  # idle: at most 0.02 s of credit accrues, not 0.3 s
    began = loop.time()
    await bucket.take(MiB)
    assert loop.time() - began >= 0.075
    assert bucket.granted == 2 * MiB


async def test_the_standalone_server_takes_the_caps() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "modelfetch.testing.fakehub",
        "--port",
        "0",
        "--connection-rate",
        "40M",
        "--client-rate",
        "60MiB",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        async with asyncio.timeout(20):
            while not lines or not lines[-1].startswith("cap per client"):
                line = (await proc.stdout.readline()).decode()
                assert line, lines
                lines.append(line.strip())
        assert lines[0].startswith("endpoint: http://127.0.0.1:")
        assert "cap per connection: 40 MiB/s" in lines
        assert lines[-1] == "cap per client: 60 MiB/s"
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
