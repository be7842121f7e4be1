"""Every request honours Retry-After and the host hold (issue 15): a 429 or 503 that says how
long to wait, answered to any kind of request (a URL probe, a Hub API call, a transfer's GET or
ranged GET), holds that host for every request until then, and the wait is shown.

Real parts: an HTTP server on loopback whose own log is the evidence, the fake hub, a manager
with a real SQLite state file.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from modelfetch.core import events as ev
from modelfetch.hubconfig import HubConfig
from modelfetch.manager import DownloadManager
from modelfetch.store import SqliteStore
from modelfetch.testing.fakehub import FakeHub, Fault, RepoFile

from .conftest import next_event
from .test_manager import MiB, settings

WAIT = 2.0  # the Retry-After every first answer carries
SLACK = 0.05  # the server's clock and ours are one; this is scheduling jitter only


@dataclass
class Asked:
    time: float
    method: str
    ranged: bool
    status: int


@dataclass
class BusyOnce:
    """A plain file server whose first answer to each kind of request (HEAD, GET, ranged GET)
    is 429 with Retry-After: 2. `log` is every request it answered, in order."""

    body: bytes
    log: list[Asked] = field(default_factory=list)
    seen: set[tuple[str, bool]] = field(default_factory=set)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ranged = "Range" in request.headers
        kind = (request.method, ranged)
        if kind not in self.seen:
            self.seen.add(kind)
            self.log.append(Asked(time.time(), request.method, ranged, 429))
            return web.Response(status=429, headers={"Retry-After": str(int(WAIT))})
        self.log.append(Asked(time.time(), request.method, ranged, 200))
        size = len(self.body)
        headers = {"Accept-Ranges": "bytes", "ETag": '"v1"'}
        if ranged:
            start_text, _, end_text = request.headers["Range"].removeprefix("bytes=").partition("-")
            start = int(start_text)
            end = min(int(end_text) if end_text else size - 1, size - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            part = self.body[start : end + 1]
            if request.method == "HEAD":
                return web.Response(
                    status=206, headers=headers | {"Content-Length": str(len(part))}
                )
            return web.Response(status=206, body=part, headers=headers)
        if request.method == "HEAD":
            return web.Response(headers=headers | {"Content-Length": str(size)})
        return web.Response(body=self.body, headers=headers)


@pytest.fixture
async def busy() -> AsyncIterator[tuple[BusyOnce, str]]:
    server = BusyOnce(hashlib.sha256(b"seed").digest() * (3 * MiB // 32))
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield server, f"http://127.0.0.1:{port}/files/weights.bin"
    finally:
        await runner.cleanup()


def assert_nothing_sooner_than_asked(log: list[Asked]) -> None:
    for refused in [a for a in log if a.status == 429]:
        later = [a for a in log if a.time > refused.time]
        assert later, "nothing was asked again after a 429"
        assert min(a.time for a in later) >= refused.time + WAIT - SLACK, (refused, later[0])


async def test_a_plain_url_whose_every_first_answer_is_429_is_waited_out_every_time(
    busy: tuple[BusyOnce, str], tmp_path: Path
) -> None:
    server, url = busy
    models = tmp_path / "models"
    # Segmented, so the transfer asks whole and ranged: each kind meets its own first 429.
    async with DownloadManager(
        home=tmp_path / "home",
        settings=settings(segment_threshold=MiB, min_segment_size=256 * 1024),
        models_dir=models,
    ) as m:
        with m.subscribe() as events:
            gid = await m.add(url)  # the probe's 429: waited out before the plan is done
            shown = await next_event(
                events, lambda e: isinstance(e, ev.Notice) and "asked to wait" in e.message
            )
            assert isinstance(shown, ev.Notice) and "127.0.0.1" in shown.message
            async with asyncio.timeout(30):
                await m.wait([gid])
        view = await m.group_view(gid)
    assert view.status == "completed", view
    assert (models / "weights.bin").read_bytes() == server.body
    assert view.total == len(server.body)  # the probe learned the size after its wait
    kinds = {(a.method, a.ranged) for a in server.log if a.status == 429}
    assert ("HEAD", False) in kinds and len(kinds) >= 2  # the probe and the transfer's first GET
    assert_nothing_sooner_than_asked(server.log)


async def test_a_hub_api_429_holds_the_hub_for_the_transfers_too_and_across_a_restart(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.add_repo("o/r", [RepoFile("model-Q4_K_M.gguf", size=MiB, seed=3, lfs=True)])
    hub.add_fault(Fault("status", origin="api", status=429, retry_after="2", times=1))
    home = tmp_path / "home"
    async with DownloadManager(
        home=home,
        hub=HubConfig(endpoint=hub.endpoint),
        settings=settings(),
        models_dir=tmp_path / "models",
    ) as m:
        gid = await m.add("o/r:Q4_K_M")
        async with asyncio.timeout(30):
            await m.wait([gid])
        assert (await m.group_view(gid)).status == "completed"
    on_hub = hub.requests(origin="hub")
    (refused,) = [r for r in on_hub if r.status == 429]
    after = [r for r in on_hub if r.time > refused.time]
    assert after and min(r.time for r in after) >= refused.time + WAIT - SLACK
    with SqliteStore(home) as store:  # kept, so a restart would wait as well
        (until,) = store.host_holds(refused.time).values()
        assert until == pytest.approx(refused.time + WAIT, abs=0.5)
