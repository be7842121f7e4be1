"""The chaos proxy itself: each fault does exactly what it says, and a seed replays exactly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from modelfetch.testing.chaosproxy import (
    FAULT_KINDS,
    ChaosConfig,
    ChaosProxy,
    ConnectionPlan,
    plan_for,
)
from modelfetch.testing.fakehub import FakeHub, RepoFile

MiB = 1 << 20
REPO = "o/chaos"
PATH = "blob-Q4_K_M.gguf"
SIZE = 2 * MiB + 17


@pytest.fixture
async def cdn_proxy() -> AsyncIterator[tuple[FakeHub, ChaosProxy]]:
    """A fake hub whose resolve redirects go through a (calm) chaos proxy to its CDN."""
    async with FakeHub() as hub:
        hub.add_repo(REPO, [RepoFile(PATH, size=SIZE, seed=7)])
        async with ChaosProxy(hub.cdn_endpoint, seed=1) as proxy:
            hub.cdn_public_url = proxy.url
            yield hub, proxy


async def _cdn_path(hub: FakeHub) -> str:
    """The signed CDN path + query a resolve redirects to (already pointing at the proxy)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(hub.resolve_url(REPO, PATH), allow_redirects=False) as resp,
    ):
        assert resp.status == 302
        location = resp.headers["Location"]
    return location.split("/", 3)[3]


async def _raw_get(url: str, path: str, extra: str = "") -> tuple[bytes, float | None]:
    """One HTTP/1.1 GET over a raw socket: every byte until EOF or reset (headers included),
    and how long the first byte took."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode())
    began = time.monotonic()
    first: float | None = None
    got = bytearray()
    try:
        while data := await reader.read(1 << 16):
            if first is None:
                first = time.monotonic() - began
            got += data
    except ConnectionResetError:
        pass
    finally:
        writer.close()
    return bytes(got), first


def _body(raw: bytes) -> bytes:
    return raw.partition(b"\r\n\r\n")[2]


def only(kind: str, **params: object) -> ChaosConfig:
    return ChaosConfig(**{kind: 1.0}, **params)  # type: ignore[arg-type]


async def test_a_calm_proxy_relays_every_byte_and_logs_the_connection(
    cdn_proxy: tuple[FakeHub, ChaosProxy],
) -> None:
    hub, proxy = cdn_proxy
    async with (
        aiohttp.ClientSession() as session,
        session.get(hub.resolve_url(REPO, PATH)) as resp,
    ):
        assert resp.status == 200
        assert str(resp.url).startswith(proxy.url)  # the redirect went through the proxy
        body = await resp.read()
    assert body == hub.content(REPO, PATH)
    (record,) = proxy.log
    assert record.plan == ConnectionPlan(None)
    assert record.key.startswith(f"GET /cdn/{REPO}/") and record.key.endswith("- #0")
    assert record.bytes_down == record.bytes_from_origin > SIZE
    zero: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
    assert proxy.summary() == {"connections": 1, **zero}


async def test_reset_forwards_exactly_n_bytes_then_an_rst(
    cdn_proxy: tuple[FakeHub, ChaosProxy],
) -> None:
    hub, proxy = cdn_proxy
    proxy.config = only("reset", cut_bytes=(100_000, 100_000))
    path = await _cdn_path(hub)
    host, port = proxy.address
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    got = 0
    with pytest.raises(ConnectionResetError):
        while data := await reader.read(1 << 16):
            got += len(data)
    writer.close()
    assert got <= 100_000  # an RST may discard what the kernel had not handed over yet
    (record,) = proxy.log
    assert record.fired and record.outcome == "reset by chaos"
    assert record.bytes_down == 100_000


async def test_truncate_closes_cleanly_after_n_bytes(
    cdn_proxy: tuple[FakeHub, ChaosProxy],
) -> None:
    hub, proxy = cdn_proxy
    proxy.config = only("truncate", cut_bytes=(54_321, 54_321))
    raw, _ = await _raw_get(proxy.url, await _cdn_path(hub))
    assert len(raw) == 54_321
    assert _body(raw) == hub.content(REPO, PATH, end=len(_body(raw)))
    assert proxy.fired("truncate")


async def test_flip_changes_exactly_one_byte_and_nothing_else(
    cdn_proxy: tuple[FakeHub, ChaosProxy],
) -> None:
    hub, proxy = cdn_proxy
    proxy.config = only("flip", cut_bytes=(1 * MiB, 1 * MiB))
    raw, _ = await _raw_get(proxy.url, await _cdn_path(hub))
    body = _body(raw)
    expected = hub.content(REPO, PATH)
    assert len(body) == len(expected)
    diffs = [i for i, (a, b) in enumerate(zip(body, expected, strict=True)) if a != b]
    head_len = len(raw) - len(body)
    assert diffs == [1 * MiB - head_len]
    (record,) = proxy.log
    assert body[diffs[0]] ^ expected[diffs[0]] == record.plan.mask


async def test_stall_and_delayed_head_hold_bytes_back_then_deliver_everything(
    cdn_proxy: tuple[FakeHub, ChaosProxy],
) -> None:
    hub, proxy = cdn_proxy
    path = await _cdn_path(hub)
    proxy.config = only("delay_head", head_delay=(0.4, 0.4))
    raw, first = await _raw_get(proxy.url, path)
    assert first is not None and first >= 0.35
    assert _body(raw) == hub.content(REPO, PATH)
    proxy.config = only("stall", cut_bytes=(1000, 1000), stall_seconds=(0.4, 0.4))
    began = time.monotonic()
    raw, first = await _raw_get(proxy.url, path)
    assert first is not None and first < 0.3  # the head came at once, the rest after the stall
    assert time.monotonic() - began >= 0.35
    assert _body(raw) == hub.content(REPO, PATH)
    assert [r.plan.kind for r in proxy.fired()] == ["delay_head", "stall"]


async def test_drip_trickles_then_finishes_intact(cdn_proxy: tuple[FakeHub, ChaosProxy]) -> None:
    hub, proxy = cdn_proxy
    proxy.config = only(
        "drip", cut_bytes=(500, 500), drip_seconds=(0.3, 0.3), drip_rate=(20_000, 20_000)
    )
    raw, _ = await _raw_get(proxy.url, await _cdn_path(hub))
    assert _body(raw) == hub.content(REPO, PATH)
    (record,) = proxy.fired("drip")
    assert record.outcome == "origin closed"


async def test_a_plan_beyond_the_response_never_fires(
    cdn_proxy: tuple[FakeHub, ChaosProxy],
) -> None:
    hub, proxy = cdn_proxy
    proxy.config = only("reset", cut_bytes=(SIZE * 2, SIZE * 2))
    raw, _ = await _raw_get(proxy.url, await _cdn_path(hub))
    assert _body(raw) == hub.content(REPO, PATH)
    assert proxy.log[0].plan.kind == "reset" and not proxy.log[0].fired
    assert "(not reached)" in proxy.describe()


async def test_an_unreachable_origin_closes_the_client_connection() -> None:
    async with FakeHub() as hub:
        dead = hub.cdn_endpoint
    async with ChaosProxy(dead, seed=3) as proxy:
        raw, _ = await _raw_get(proxy.url, "anything")
        assert raw == b""
        assert proxy.log[0].outcome.startswith("origin unreachable")


def test_plans_are_a_pure_function_of_seed_and_request() -> None:
    config = ChaosConfig(reset=0.2, truncate=0.2, stall=0.1, drip=0.1, flip=0.2, delay_head=0.1)
    keys = [f"GET /cdn/o/m/{i} bytes={i * 7}- #0" for i in range(300)]
    first = [plan_for(42, k, config) for k in keys]
    assert first == [plan_for(42, k, config) for k in keys]
    assert first != [plan_for(43, k, config) for k in keys]
    kinds = {p.kind for p in first}
    assert kinds == {*FAULT_KINDS, None}  # every kind shows up at these rates
    for plan in first:
        if plan.kind in ("reset", "truncate", "stall", "drip", "flip"):
            assert 0 <= plan.at <= config.cut_bytes[1]
        if plan.kind == "flip":
            assert 1 <= plan.mask <= 255


def test_config_refuses_impossible_probabilities() -> None:
    with pytest.raises(ValueError):
        ChaosConfig(reset=0.7, flip=0.5)
    with pytest.raises(ValueError):
        ChaosConfig(stall=-0.1)
    with pytest.raises(ValueError):
        ChaosConfig(cut_bytes=(10, 5))
    assert ChaosConfig().calm and not ChaosConfig(flip=0.1).calm


async def test_the_same_seed_replays_the_same_faults_whatever_the_interleaving() -> None:
    config = ChaosConfig(reset=0.3, truncate=0.3, flip=0.3, cut_bytes=(0, 64 << 10))
    async with FakeHub() as hub:
        paths = [f"f{i}-Q4_K_M.gguf" for i in range(6)]
        hub.add_repo(REPO, [RepoFile(p, size=200_000, seed=i) for i, p in enumerate(paths)])
        runs = []
        for order in (paths, paths[::-1]):
            async with ChaosProxy(hub.cdn_endpoint, seed=99, config=config) as proxy:
                hub.cdn_public_url = proxy.url
                # One connection per request: the proxy plans its faults per connection, and which
                # request a kept-alive connection carries next depends on the interleaving.
                connector = aiohttp.TCPConnector(force_close=True)
                async with aiohttp.ClientSession(connector=connector) as session:

                    async def fetch(path: str, s: aiohttp.ClientSession = session) -> None:
                        try:
                            async with s.get(hub.resolve_url(REPO, path)) as resp:
                                await resp.read()
                        except aiohttp.ClientError:
                            pass

                    await asyncio.gather(*(fetch(p) for p in order))
                runs.append({r.key: (r.plan, r.fired, r.bytes_down) for r in proxy.log})
        assert runs[0] == runs[1]
        assert any(fired for _, fired, _ in runs[0].values())


async def test_the_fake_hub_redirects_to_its_public_cdn_url_when_given_one() -> None:
    async with FakeHub(cdn_public_url="http://127.0.0.1:9") as hub:
        hub.add_repo(REPO, [RepoFile(PATH, size=10, seed=1)])
        async with (
            aiohttp.ClientSession() as session,
            session.head(hub.resolve_url(REPO, PATH), allow_redirects=False) as resp,
        ):
            assert resp.headers["Location"].startswith("http://127.0.0.1:9/cdn/o/chaos/")
        hub.cdn_public_url = None
        async with (
            aiohttp.ClientSession() as session,
            session.head(hub.resolve_url(REPO, PATH), allow_redirects=False) as resp,
        ):
            assert resp.headers["Location"].startswith(f"{hub.cdn_endpoint}/cdn/")
