"""modelfetch.remote against a live daemon: finding it, every Backend method, errors mapped back."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from modelfetch.backend import Backend, open_backend
from modelfetch.core import events as ev
from modelfetch.core.errors import (
    ConflictError,
    ModelfetchError,
    NotFoundError,
    SpecError,
    StateError,
    UnknownItemError,
)
from modelfetch.core.models import ItemRef
from modelfetch.manager import DownloadManager
from modelfetch.remote import RemoteManager, connect, error_from_response
from modelfetch.testing.fakehub import SAMPLE_REPO, Fault

from .test_server_api import Daemon, run_daemon

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _no_token_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELFETCH_TOKEN", raising=False)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with run_daemon(tmp_path) as running:
        yield running


@pytest.fixture
async def remote(daemon: Daemon) -> AsyncIterator[RemoteManager]:
    found = await connect(daemon.home)
    assert found is not None
    async with found as client:
        yield client


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# -------------------------------------------------------------------------------- finding it


async def test_connect_finds_nothing_without_a_daemon_file(tmp_path: Path) -> None:
    assert await connect(tmp_path) is None


async def test_connect_removes_the_file_of_a_dead_daemon(tmp_path: Path) -> None:
    path = tmp_path / "daemon.json"
    path.write_text(
        json.dumps({"pid": dead_pid(), "url": "http://127.0.0.1:9", "token_required": False})
    )
    assert await connect(tmp_path) is None
    assert not path.exists()


async def test_connect_removes_a_file_whose_url_nobody_listens_on(tmp_path: Path) -> None:
    # Our own pid is alive, but nothing listens there: a pid reused after a crash.
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    await runner.cleanup()
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps({"pid": os.getpid(), "url": f"http://127.0.0.1:{port}"}))
    assert await connect(tmp_path) is None
    assert not path.exists()


async def test_connect_gives_up_quickly_on_a_daemon_that_does_not_answer(tmp_path: Path) -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    app = web.Application()
    app.router.add_get("/api/health", hang)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        path = tmp_path / "daemon.json"
        path.write_text(json.dumps({"pid": os.getpid(), "url": f"http://127.0.0.1:{port}"}))
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await connect(tmp_path, health_timeout=0.3) is None
        assert loop.time() - started < 2
        assert path.exists()  # alive but busy: not ours to delete
    finally:
        await runner.cleanup()


async def test_open_backend_uses_the_running_daemon(daemon: Daemon) -> None:
    async with open_backend(home=daemon.home) as backend:
        assert isinstance(backend, RemoteManager)
        assert await backend.snapshot() == []


async def test_connect_uses_the_token_from_the_daemon_file(tmp_path: Path) -> None:
    async with run_daemon(tmp_path, token="remote-token-0123456789") as daemon:
        found = await connect(daemon.home)
        assert found is not None
        async with found as client:
            await client.set_limits(max_active=4)
        assert daemon.manager.settings.max_active == 4
        async with RemoteManager(daemon.url, token="wrong") as stranger:
            with pytest.raises(StateError, match="refused"):
                await stranger.snapshot()


# --------------------------------------------------------------------- every Backend method


async def test_every_backend_method_round_trips(daemon: Daemon, remote: RemoteManager) -> None:
    backend: Backend = remote  # the type checker holds it to the protocol
    manager = daemon.manager

    quants = await backend.quants(SAMPLE_REPO)
    assert quants == await manager.quants(SAMPLE_REPO)
    assert quants[0].quant.name == "Q4_K_M"

    gid = await backend.add(SAMPLE_REPO)
    async with asyncio.timeout(20):
        await backend.wait([gid])
    remote_view = await backend.group_view(gid)
    assert remote_view == await manager.group_view(gid)
    assert remote_view.status == "completed"
    assert await backend.group_view(f"{gid}.1") == remote_view
    assert await backend.snapshot() == await manager.snapshot()

    daemon.hub.add_fault(Fault("throttle", origin="cdn", rate=256 * 1024))
    await backend.set_limits(max_active=1)
    assert manager.settings.max_active == 1
    q8 = await backend.add(SAMPLE_REPO, quant="Q8_0", priority=1)
    mmproj = await backend.add(f"{SAMPLE_REPO}/mmproj-tiny-F16.gguf")
    extra = await backend.add(
        SAMPLE_REPO, include=["config.json"], models_dir=daemon.home / "other"
    )
    assert (await manager.group_view(extra)).dest_dir.startswith(str(daemon.home / "other"))

    await backend.move(extra, 1)
    assert (await manager.group_view(extra)).position == 1
    await backend.set_priority(ItemRef(mmproj), 3)
    assert (await manager.group_view(mmproj)).position == 1

    await backend.pause(q8)
    assert (await manager.group_view(q8)).status == "paused"
    await backend.resume(str(q8))
    assert (await manager.group_view(q8)).status in ("queued", "active")
    await backend.pause_all()
    assert {v.status for v in await manager.snapshot() if v.id != gid} == {"paused"}
    await backend.resume_all()
    await backend.cancel(mmproj)
    assert (await manager.group_view(mmproj)).status == "cancelled"
    await backend.retry(mmproj)
    assert (await manager.group_view(mmproj)).status in ("queued", "active")
    await backend.cancel(mmproj)
    await backend.forget(f"{mmproj}.1")  # a file id forgets its download, as in-process
    with pytest.raises(UnknownItemError):
        await manager.group_view(mmproj)

    await backend.set_limits(rate_limit=10_000_000, connections_per_file=2)
    assert (manager.settings.rate_limit, manager.settings.connections_per_file) == (10**7, 2)
    await remote.set_rate_limit(f"{q8}.1", 50_000)
    await remote.set_connections(q8, 1)
    assert manager.store.group_limits(q8) == (50_000, 1)

    stray = manager.models_dir / "stray.gguf.part"
    stray.write_bytes(b"x")
    assert await backend.orphan_partials() == [stray]
    assert await backend.remove_orphan_partials() == [stray]
    assert not stray.exists()

    for pending in (q8, extra):
        await backend.cancel(pending)
    assert sorted(await backend.forget_finished()) == sorted([gid, q8, extra])
    assert await backend.snapshot() == []


async def test_events_arrive_typed_and_end_with_the_daemon(
    daemon: Daemon, remote: RemoteManager
) -> None:
    received: list[ev.Event] = []

    async def listen() -> None:
        async for event in remote.events():
            received.append(event)
            if isinstance(event, ev.GroupFinished):
                return

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.1)  # let it connect: events() starts from now, like the manager's
    gid = await remote.add(SAMPLE_REPO)
    async with asyncio.timeout(20):
        await listener
    assert not any(isinstance(e, ev.Snapshot) for e in received)
    assert isinstance(received[0], ev.GroupQueued) and received[0].group_id == gid
    assert any(isinstance(e, ev.FileCompleted) for e in received)
    assert [e.seq for e in received] == sorted(e.seq for e in received)

    # The stream ends when the daemon stops, as the manager's does when it shuts down.
    async def drain() -> int:
        return sum([1 async for _ in remote.events()])

    drainer = asyncio.create_task(drain())
    await asyncio.sleep(0.1)
    daemon.task.cancel()
    async with asyncio.timeout(5):
        await drainer


async def test_wait_returns_when_paused_and_for_unknown_ids(
    daemon: Daemon, remote: RemoteManager
) -> None:
    daemon.hub.add_fault(Fault("throttle", origin="cdn", rate=128 * 1024))
    gid = await remote.add(SAMPLE_REPO)
    waiter = asyncio.create_task(remote.wait([gid, 999]))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    await remote.pause(gid)  # paused counts as settled, as DownloadManager.wait says
    async with asyncio.timeout(5):
        await waiter
    async with asyncio.timeout(5):
        await remote.wait([])
        await remote.wait([12345])


# ----------------------------------------------------------------------------------- errors


async def test_errors_come_back_as_the_same_classes(daemon: Daemon, remote: RemoteManager) -> None:
    with pytest.raises(SpecError, match="Accepted forms"):
        await remote.add("definitely not a spec")
    with pytest.raises(NotFoundError) as not_found:
        await remote.add("nobody/nothing")
    assert not_found.value.status == 404 and not_found.value.error_code == "RepoNotFound"
    with pytest.raises(NotFoundError):
        await remote.quants("nobody/nothing")
    with pytest.raises(UnknownItemError):
        await remote.pause(404)
    with pytest.raises(UnknownItemError):
        await remote.group_view("3.1")
    with pytest.raises(SpecError):
        await remote.cancel("abc")
    with pytest.raises(ValueError):
        await remote.set_limits(max_active=0)
    with pytest.raises(ValueError):
        await remote.add(SAMPLE_REPO, layout="flat")

    daemon.hub.add_fault(Fault("throttle", origin="cdn", rate=128 * 1024))
    live = await remote.add(SAMPLE_REPO)
    with pytest.raises(ModelfetchError, match="cancel it first") as conflict:
        await remote.forget(live)
    assert type(conflict.value) is ConflictError

    # The same calls in-process raise the same classes.
    for call in (
        lambda: daemon.manager.pause(404),
        lambda: daemon.manager.add("definitely not a spec"),
        lambda: daemon.manager.forget(live),
    ):
        with pytest.raises(ModelfetchError) as local:
            await call()
        assert type(local.value) in (UnknownItemError, SpecError, ConflictError)


def test_error_bodies_map_to_exceptions() -> None:
    def body(kind: str, **extra: object) -> dict[str, object]:
        return {"error": {"kind": kind, "message": "m", **extra}}

    limited = error_from_response(429, body("rate_limited", upstream_status=429, retry_after=7.0))
    assert type(limited).__name__ == "RateLimitedError"
    assert getattr(limited, "retry_after", None) == 7.0
    assert type(error_from_response(404, body("unknown_item"))) is UnknownItemError
    assert type(error_from_response(422, body("invalid"))) is ValueError
    assert type(error_from_response(401, body("unauthorized"))) is StateError
    assert type(error_from_response(500, body("internal"))) is RuntimeError
    assert type(error_from_response(418, body("from_the_future"))) is ModelfetchError
    assert type(error_from_response(502, "not json")) is RuntimeError


async def test_an_unreachable_daemon_is_a_state_error(daemon: Daemon) -> None:
    url = daemon.url
    daemon.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await daemon.task
    async with RemoteManager(url) as gone:
        with pytest.raises(StateError, match="not answering"):
            await gone.snapshot()
    with pytest.raises(RuntimeError, match="not open"):
        await RemoteManager(url).snapshot()


# ------------------------------------------------------------- the worker holding a file


def test_a_file_views_worker_round_trips_through_the_api_model() -> None:
    import dataclasses

    from modelfetch.remote_codec import group_view_of
    from modelfetch.server.api_models import FileViewModel, GroupViewModel

    from .test_render import file_view, group_view

    view = group_view(file_view(1, worker="gpu-07/4242/a1b2c3"), file_view(2, status="queued"))
    data = GroupViewModel.model_validate(view.to_dict()).model_dump(mode="json")
    assert data["files"][0]["worker"] == "gpu-07/4242/a1b2c3"
    assert group_view_of(data) == view
    # A daemon from before fleet mode sends no `worker`: the field is optional on both sides.
    old = view.to_dict()
    for f in old["files"]:
        del f["worker"]
    assert "worker" not in FileViewModel.model_json_schema().get("required", [])
    assert GroupViewModel.model_validate(old).files[0].worker is None
    assert group_view_of(old) == dataclasses.replace(
        view, files=[dataclasses.replace(f, worker=None) for f in view.files]
    )


async def test_every_client_of_a_daemon_sees_who_holds_an_active_file(tmp_path: Path) -> None:
    """The REST view, the stream's snapshot and the remote client all carry the holder. The
    daemon runs on one host's queue here, so the holder is planted where a fleet sync puts it."""
    from .test_server_sse import open_stream

    holder = "gpu-07/4242/a1b2c3"

    def plant(manager: DownloadManager) -> None:
        manager._holders[(1, 1)] = holder

    async with run_daemon(tmp_path, manager_setup=plant) as daemon:
        daemon.hub.add_fault(Fault("throttle", origin="cdn", rate=256 * 1024))
        gid = await daemon.manager.add(f"{SAMPLE_REPO}/mmproj-tiny-F16.gguf")
        assert gid == 1
        view = await daemon.wait_status(str(gid), lambda v: v["files"][0]["status"] == "active")
        assert view["files"][0]["worker"] == holder
        async with open_stream(daemon) as reader:
            snapshot = await reader.until("snapshot")
        (item,) = snapshot.data["items"]
        assert item["files"][0]["worker"] == holder
        found = await connect(daemon.home)
        assert found is not None
        async with found as client:
            (seen,) = (await client.group_view(gid)).files
            assert seen.worker == holder
            daemon.hub.clear_faults()
            async with asyncio.timeout(20):
                await client.wait([gid])
            (done,) = (await client.group_view(gid)).files
        assert done.status == "completed" and done.worker is None
