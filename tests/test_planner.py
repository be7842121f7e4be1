"""The planner's plain-URL side: probes through the transfers' own HTTP client (no aiohttp, no
Hub client made), a list planned concurrently with its order kept, and errors naming their URL.
A real aiohttp server on 127.0.0.1 answers the HEADs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp import web

from modelfetch.core.errors import ModelfetchError, NotFoundError
from modelfetch.hub import HubClient
from modelfetch.hubconfig import HubConfig
from modelfetch.planner import PLAN_CONCURRENCY, Planner, PlanOptions
from modelfetch.requests import GroupRequest
from modelfetch.transfer import TransferSession, make_session

HOSTILE_DISPOSITION = 'attachment; filename="../../etc/evil:name.gguf"'


@dataclass
class Origin:
    """What the probed server saw."""

    base: str
    heads: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Authorization)
    in_flight: int = 0
    most_in_flight: int = 0


def _routes(origin: Origin) -> web.Application:
    async def file(request: web.Request) -> web.StreamResponse:
        origin.heads.append((request.path, request.headers.get("Authorization")))
        origin.in_flight += 1
        origin.most_in_flight = max(origin.most_in_flight, origin.in_flight)
        try:
            # Later files answer sooner: the order of the plans cannot come from the server.
            await asyncio.sleep(float(request.query.get("delay", "0")))
        finally:
            origin.in_flight -= 1
        name = request.match_info["name"]
        if name.startswith("missing"):
            return web.Response(status=404)
        headers = {"Content-Length": request.query.get("size", "1234")}
        if "cd" in request.query:
            headers["Content-Disposition"] = HOSTILE_DISPOSITION
        return web.Response(status=200, headers=headers)

    async def hop(request: web.Request) -> web.StreamResponse:
        origin.heads.append((request.path, request.headers.get("Authorization")))
        left = int(request.match_info["n"])
        to = request.query["to"]
        where = to if left <= 1 else f"/hop/{left - 1}?to={quote(to, safe='')}"
        return web.Response(status=302, headers={"Location": where})

    app = web.Application()
    app.router.add_route("*", "/files/{name}", file)
    app.router.add_route("*", "/hop/{n}", hop)
    return app


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    found = Origin(base="")
    runner = web.AppRunner(_routes(found))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    found.base = f"http://127.0.0.1:{port}"
    yield found
    await runner.cleanup()


@pytest.fixture
async def wire() -> AsyncIterator[TransferSession]:
    async with make_session() as session:
        yield session


def never_the_hub() -> tuple[object, HubClient]:
    raise AssertionError("a plain URL must not make the Hub client (nor import aiohttp for it)")


def url_planner(wire: TransferSession) -> Planner:
    return Planner(
        None,
        never_the_hub,  # type: ignore[arg-type]
        hub_config=HubConfig(endpoint="https://hub.invalid"),
        probe_session=wire,
    )


def planned(outcomes: list[GroupRequest | ModelfetchError]) -> list[GroupRequest]:
    assert all(isinstance(o, GroupRequest) for o in outcomes), outcomes
    return [o for o in outcomes if isinstance(o, GroupRequest)]


async def test_a_list_is_probed_concurrently_bounded_and_planned_in_its_order(
    origin: Origin, wire: TransferSession, tmp_path: Path
) -> None:
    count = 2 * PLAN_CONCURRENCY + 5
    urls = [
        f"{origin.base}/files/f{i:02d}.bin?size={1000 + i}&delay={0.002 * (count - i):.3f}"
        for i in range(count)
    ]
    outcomes = await url_planner(wire).plan_many(urls, PlanOptions(models_dir=tmp_path))

    requests = planned(outcomes)
    assert [r.name for r in requests] == [f"f{i:02d}.bin" for i in range(count)]
    assert [r.files[0].size for r in requests] == [1000 + i for i in range(count)]
    assert [r.files[0].url for r in requests] == urls
    assert all(r.files[0].dest == tmp_path / r.name for r in requests)
    assert 1 < origin.most_in_flight <= PLAN_CONCURRENCY
    assert len(origin.heads) == count


async def test_a_smaller_bound_is_kept(
    origin: Origin, wire: TransferSession, tmp_path: Path
) -> None:
    urls = [f"{origin.base}/files/g{i}.bin?delay=0.01" for i in range(8)]
    outcomes = await url_planner(wire).plan_many(
        urls, PlanOptions(models_dir=tmp_path), concurrency=3
    )
    assert [r.name for r in planned(outcomes)] == [f"g{i}.bin" for i in range(8)]
    assert origin.most_in_flight <= 3


async def test_redirects_are_followed_to_a_content_disposition_name_sanitised(
    origin: Origin, wire: TransferSession, tmp_path: Path
) -> None:
    target = "/files/blob?size=4096&cd=1"
    url = f"{origin.base}/hop/3?to={quote(target, safe='')}"
    request = await url_planner(wire).plan(url, PlanOptions(models_dir=tmp_path))

    (file,) = request.files
    assert file.size == 4096
    assert file.url == url  # the transfer starts from what was asked for
    assert "/" not in file.path and ".." not in file.path and ":" not in file.path
    assert file.path.endswith(".gguf") and "evil" in file.path
    assert file.dest == tmp_path / file.path
    assert [p for p, _ in origin.heads] == ["/hop/3", "/hop/2", "/hop/1", "/files/blob"]
    assert all(auth is None for _, auth in origin.heads)  # no token to a plain URL, any hop


async def test_without_content_disposition_the_name_is_the_last_hops(
    origin: Origin, wire: TransferSession, tmp_path: Path
) -> None:
    url = f"{origin.base}/hop/1?to=/files/real-name.bin"
    request = await url_planner(wire).plan(url, PlanOptions(models_dir=tmp_path))
    assert request.name == "real-name.bin" and request.files[0].size == 1234


@pytest.mark.parametrize(
    ("make_url", "name"),
    [
        (lambda base: f"{base}/hop/12?to=/files/never.bin", "12"),  # too many redirects
        (lambda base: f"{base}/hop/1?to=ftp://127.0.0.1/elsewhere.bin", "1"),  # a foreign scheme
    ],
)
async def test_a_probe_that_cannot_finish_falls_back_to_the_urls_name(
    origin: Origin,
    wire: TransferSession,
    tmp_path: Path,
    make_url: Callable[[str], str],
    name: str,
) -> None:
    request = await url_planner(wire).plan(make_url(origin.base), PlanOptions(models_dir=tmp_path))
    assert request.files[0].size is None  # the transfer finds out and says so
    assert request.name == name
    assert len(origin.heads) <= 10  # the count limit


async def test_an_unreachable_host_is_not_fatal(wire: TransferSession, tmp_path: Path) -> None:
    request = await url_planner(wire).plan(
        "http://127.0.0.1:9/files/offline.bin", PlanOptions(models_dir=tmp_path)
    )
    assert request.name == "offline.bin" and request.files[0].size is None


async def test_one_missing_url_of_a_list_is_an_error_naming_it_and_the_rest_are_planned(
    origin: Origin, wire: TransferSession, tmp_path: Path
) -> None:
    urls = [
        f"{origin.base}/files/a.bin",
        f"{origin.base}/files/missing.bin",
        f"{origin.base}/files/c.bin",
    ]
    first, error, last = await url_planner(wire).plan_many(urls, PlanOptions(models_dir=tmp_path))
    assert isinstance(first, GroupRequest) and first.name == "a.bin"
    assert isinstance(last, GroupRequest) and last.name == "c.bin"
    assert isinstance(error, NotFoundError)
    assert error.status == 404 and urls[1] in str(error)


async def test_leaving_plan_each_early_cancels_the_rest(
    origin: Origin, wire: TransferSession, tmp_path: Path
) -> None:
    urls = [f"{origin.base}/files/h{i}.bin?delay=0.05" for i in range(40)]
    outcomes = url_planner(wire).plan_each(urls, PlanOptions(models_dir=tmp_path), concurrency=4)
    async for outcome in outcomes:
        assert isinstance(outcome, GroupRequest) and outcome.name == "h0.bin"
        break
    await outcomes.aclose()
    await asyncio.sleep(0.1)
    assert len(origin.heads) < len(urls)
    assert origin.in_flight == 0


def test_a_hub_made_on_first_use_needs_its_config() -> None:
    with pytest.raises(TypeError):
        Planner(None, never_the_hub)  # type: ignore[arg-type]
