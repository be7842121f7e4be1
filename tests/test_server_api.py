"""The daemon's REST API against a real daemon on loopback: a DownloadManager over a fake Hub,
served by `serve()` on port 0, called over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modelfetch.core.errors import ERROR_KINDS, SpecError
from modelfetch.core.spec import ACCEPTED_FORMS
from modelfetch.hub import HubConfig
from modelfetch.manager import DownloadManager, ManagerSettings
from modelfetch.server import serve
from modelfetch.server.api_models import FileViewModel, GroupViewModel
from modelfetch.server.responses import STATUS_BY_KIND, status_for
from modelfetch.server.routes import OPERATIONS
from modelfetch.server.security import ServerConfig
from modelfetch.testing.fakehub import SAMPLE_REPO, FakeHub, Fault, add_sample_repo
from modelfetch.views import FileView, GroupView

MiB = 1 << 20
HUB_TOKEN = "hf_daemon_test_secret_0123456789"
SAMPLE_Q8 = f"{SAMPLE_REPO}:Q8_0"


@dataclass
class Daemon:
    """A running daemon and a client session for it."""

    url: str
    port: int
    home: Path
    manager: DownloadManager
    hub: FakeHub
    session: aiohttp.ClientSession
    info: dict[str, Any]
    task: asyncio.Task[None]

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        data: Any = None,
        allow_redirects: bool = True,
    ) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"headers": headers, "allow_redirects": allow_redirects}
        if data is not None:
            kwargs["data"] = data
        elif method in ("POST", "PUT") or body is not None:
            kwargs["json"] = body if body is not None else {}
        async with self.session.request(method, self.url + path, **kwargs) as response:
            raw = await response.read()
            if response.content_type == "application/json" and raw:
                return response.status, json.loads(raw)
            return response.status, raw.decode("utf-8", "replace")

    async def wait_status(
        self, ref: str, accept: Callable[[dict[str, Any]], bool], timeout: float = 20.0
    ) -> dict[str, Any]:
        """Poll the view until `accept` holds (tests only: the dashboard uses the stream)."""
        async with asyncio.timeout(timeout):
            while True:
                status, view = await self.call("GET", f"/api/downloads/{ref}")
                assert status == 200, view
                assert isinstance(view, dict)
                if accept(view):
                    return view
                await asyncio.sleep(0.05)


def fast_settings(**overrides: Any) -> ManagerSettings:
    values: dict[str, Any] = {"progress_interval": 0.1, "checkpoint_interval": 0.2}
    values.update(overrides)
    return ManagerSettings(**values)


@contextlib.asynccontextmanager
async def run_daemon(
    tmp_path: Path,
    *,
    token: str | None = None,
    keepalive: float = 15.0,
    settings: ManagerSettings | None = None,
    hub: FakeHub | None = None,
    manager_setup: Callable[[DownloadManager], None] | None = None,
    session: aiohttp.ClientSession | None = None,
) -> AsyncIterator[Daemon]:
    """A fake Hub (with the sample repo and a token), a manager whose home is under
    `tmp_path`, and `serve()` on a free loopback port."""
    async with contextlib.AsyncExitStack() as stack:
        if hub is None:
            hub = await stack.enter_async_context(FakeHub())
            add_sample_repo(hub)
            hub.tokens.add(HUB_TOKEN)
        home = tmp_path / "home"
        manager = DownloadManager(
            home=home,
            hub=HubConfig(endpoint=hub.endpoint, token=HUB_TOKEN),
            settings=settings or fast_settings(),
            session=session,
        )
        if manager_setup is not None:
            manager_setup(manager)
        await stack.enter_async_context(manager)
        task = asyncio.create_task(
            serve(manager, host="127.0.0.1", port=0, token=token, keepalive=keepalive)
        )
        info_path = manager.home / "daemon.json"
        async with asyncio.timeout(10):
            while not info_path.exists():
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        info = json.loads(info_path.read_text())
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = await stack.enter_async_context(aiohttp.ClientSession(headers=headers))
        url = info["url"]
        daemon = Daemon(
            url=url,
            port=int(url.rsplit(":", 1)[1]),
            home=manager.home,
            manager=manager,
            hub=hub,
            session=client,
            info=info,
            task=task,
        )
        try:
            yield daemon
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture(autouse=True)
def _no_token_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELFETCH_TOKEN", raising=False)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with run_daemon(tmp_path) as running:
        yield running


def slow_cdn(hub: FakeHub, rate: int = 512 * 1024) -> Fault:
    return hub.add_fault(Fault("throttle", origin="cdn", rate=rate))


# ---------------------------------------------------------------------------- the happy path


async def test_add_list_get_and_complete(daemon: Daemon) -> None:
    status, view = await daemon.call("POST", "/api/downloads", {"spec": SAMPLE_REPO})
    assert status == 201, view
    gid = view["id"]
    assert view["name"] == f"{SAMPLE_REPO}:Q4_K_M"
    assert [f["ref"] for f in view["files"]] == [f"{gid}.1", f"{gid}.2"]
    assert view["total"] == sum(daemon.hub.file(SAMPLE_REPO, f["name"]).size for f in view["files"])

    done = await daemon.wait_status(str(gid), lambda v: v["status"] == "completed")
    assert done["downloaded"] == done["total"]
    assert all(f["sha256"] for f in done["files"])
    for f in done["files"]:
        assert Path(f["dest"]).read_bytes() == daemon.hub.content(SAMPLE_REPO, f["name"])

    status, listing = await daemon.call("GET", "/api/downloads")
    assert status == 200
    assert [g["id"] for g in listing["downloads"]] == [gid]
    assert listing["seq"] >= 1

    status, one_file = await daemon.call("GET", f"/api/downloads/{gid}.2")
    assert (status, one_file["id"]) == (200, gid)

    # Asking again for a completed download answers with it: 200, same id.
    status, again = await daemon.call("POST", "/api/downloads", {"spec": SAMPLE_REPO})
    assert (status, again["id"]) == (200, gid)


async def test_list_filters_by_status_and_text(daemon: Daemon) -> None:
    slow_cdn(daemon.hub, rate=64 * 1024)
    _, q4 = await daemon.call("POST", "/api/downloads", {"spec": SAMPLE_REPO})
    _, q8 = await daemon.call("POST", "/api/downloads", {"spec": SAMPLE_REPO, "quant": "Q8_0"})
    await daemon.call("POST", f"/api/downloads/{q8['id']}/pause")

    status, paused = await daemon.call("GET", "/api/downloads?status=paused")
    assert status == 200
    assert [g["id"] for g in paused["downloads"]] == [q8["id"]]
    _, both = await daemon.call("GET", "/api/downloads?status=paused,active&status=queued")
    assert {g["id"] for g in both["downloads"]} == {q4["id"], q8["id"]}
    _, by_text = await daemon.call("GET", "/api/downloads?q=q8_0")
    assert [g["id"] for g in by_text["downloads"]] == [q8["id"]]
    _, by_file = await daemon.call("GET", "/api/downloads?q=00002-OF-00002")
    assert [g["id"] for g in by_file["downloads"]] == [q4["id"]]
    status, error = await daemon.call("GET", "/api/downloads?status=sleeping")
    assert (status, error["error"]["kind"]) == (422, "invalid")


async def test_the_list_comes_in_pages_that_follow_next(daemon: Daemon) -> None:
    slow_cdn(daemon.hub, rate=64 * 1024)
    ids = []
    for spec in (SAMPLE_REPO, f"{SAMPLE_REPO}:Q8_0", f"{SAMPLE_REPO}/mmproj-tiny-F16.gguf"):
        _, view = await daemon.call("POST", "/api/downloads", {"spec": spec})
        ids.append(view["id"])
    await daemon.call("POST", f"/api/downloads/{ids[1]}/pause")
    _, first = await daemon.call("GET", "/api/downloads?limit=2")
    assert [g["id"] for g in first["downloads"]] == ids[:2] and first["next"] == ids[1]
    _, rest = await daemon.call("GET", f"/api/downloads?limit=2&after={first['next']}")
    assert [g["id"] for g in rest["downloads"]] == ids[2:] and rest["next"] is None
    _, whole = await daemon.call("GET", "/api/downloads")  # one page of up to 1000
    assert [g["id"] for g in whole["downloads"]] == ids and whole["next"] is None
    # A filter fills its page from as many store pages as it takes.
    _, unpaused = await daemon.call("GET", "/api/downloads?limit=1&status=queued,active")
    assert [g["id"] for g in unpaused["downloads"]] == ids[:1]
    after = unpaused["next"]
    _, more = await daemon.call("GET", f"/api/downloads?limit=1&status=queued,active&after={after}")
    assert [g["id"] for g in more["downloads"]] == ids[2:]
    status, error = await daemon.call("GET", "/api/downloads?limit=0")
    assert (status, error["error"]["kind"]) == (422, "invalid")


async def test_pause_resume_cancel_retry(daemon: Daemon) -> None:
    slow_cdn(daemon.hub, rate=256 * 1024)
    _, view = await daemon.call("POST", "/api/downloads", {"spec": SAMPLE_Q8})
    gid = view["id"]
    await daemon.wait_status(str(gid), lambda v: v["status"] == "active" and v["downloaded"] > 0)

    status, paused = await daemon.call("POST", f"/api/downloads/{gid}/pause")
    assert (status, paused["status"]) == (200, "paused")
    assert paused["files"][0]["pause_reason"] == "user"
    kept = paused["downloaded"]
    assert kept > 0

    status, resumed = await daemon.call("POST", f"/api/downloads/{gid}/resume", {})
    assert status == 200 and resumed["status"] in ("queued", "active")

    status, cancelled = await daemon.call("POST", f"/api/downloads/{gid}/cancel")
    assert (status, cancelled["status"]) == (200, "cancelled")

    daemon.hub.clear_faults()
    status, retried = await daemon.call("POST", f"/api/downloads/{gid}/retry")
    assert status == 200 and retried["status"] in ("queued", "active", "completed")
    done = await daemon.wait_status(str(gid), lambda v: v["status"] == "completed")
    assert done["files"][0]["sha256"] == daemon.hub.file(SAMPLE_REPO, "tiny-Q8_0.gguf").sha256


async def test_pause_all_and_resume_all(daemon: Daemon) -> None:
    slow_cdn(daemon.hub, rate=128 * 1024)
    _, view = await daemon.call("POST", "/api/downloads", {"spec": SAMPLE_Q8})
    status, body = await daemon.call("POST", "/api/pause-all")
    assert (status, body) == (200, {"ok": True})
    _, paused = await daemon.call("GET", f"/api/downloads/{view['id']}")
    assert paused["status"] == "paused"
    status, body = await daemon.call("POST", "/api/resume-all", {})
    assert status == 200
    _, resumed = await daemon.call("GET", f"/api/downloads/{view['id']}")
    assert resumed["status"] in ("queued", "active")


async def test_move_and_priority(daemon: Daemon) -> None:
    slow_cdn(daemon.hub, rate=64 * 1024)
    status, limits = await daemon.call("PUT", "/api/limits", {"max_active": 1})
    assert (status, limits["max_active"]) == (200, 1)
    _, first = await daemon.call("POST", "/api/downloads", {"spec": SAMPLE_Q8})
    _, second = await daemon.call("POST", "/api/downloads", {"spec": f"{SAMPLE_REPO}:Q4_K_M"})
    _, third = await daemon.call(
        "POST", "/api/downloads", {"spec": f"{SAMPLE_REPO}/mmproj-tiny-F16.gguf"}
    )
    await daemon.wait_status(str(first["id"]), lambda v: v["status"] == "active")
    _, listing = await daemon.call("GET", "/api/downloads?status=queued")
    before = {g["id"]: g["position"] for g in listing["downloads"]}
    assert before == {second["id"]: 1, third["id"]: 2}

    status, moved = await daemon.call("POST", f"/api/downloads/{third['id']}/move", {"position": 1})
    assert (status, moved["position"]) == (200, 1)
    _, after = await daemon.call("GET", f"/api/downloads/{second['id']}")
    assert after["position"] == 2

    status, raised = await daemon.call(
        "POST", f"/api/downloads/{second['id']}/priority", {"priority": 5}
    )
    assert (status, raised["position"]) == (200, 1)

    # A file of a download moves too.
    status, _ = await daemon.call("POST", f"/api/downloads/{second['id']}.2/move", {"position": 1})
    assert status == 200

    # Moving what is not waiting in the queue any more is a conflict; an unknown id is a 404.
    await daemon.call("POST", f"/api/downloads/{third['id']}/cancel")
    status, error = await daemon.call("POST", f"/api/downloads/{third['id']}/move", {"position": 1})
    assert (status, error["error"]["kind"]) == (409, "conflict")
    status, error = await daemon.call("POST", "/api/downloads/77/move", {"position": 1})
    assert (status, error["error"]["kind"]) == (404, "unknown_item")
    status, error = await daemon.call("POST", "/api/downloads/77/priority", {"priority": 1})
    assert status == 404
    status, error = await daemon.call("POST", f"/api/downloads/{second['id']}/move", {})
    assert (status, error["error"]["kind"]) == (422, "invalid")


async def test_limits(daemon: Daemon) -> None:
    settings = daemon.manager.settings
    status, limits = await daemon.call("GET", "/api/limits")
    assert status == 200
    assert limits == {
        "max_active": 3,
        "rate_limit": None,
        "max_connections": settings.max_connections,
        "max_connections_per_host": settings.max_connections_per_host,
        "connections_per_file": settings.connections_per_file,
    }
    status, limits = await daemon.call("PUT", "/api/limits", {"max_active": 2})
    assert (status, limits["max_active"]) == (200, 2)
    assert settings.max_active == 2
    status, limits = await daemon.call(
        "PUT",
        "/api/limits",
        {
            "rate_limit": 5_000_000,
            "max_connections": 6,
            "max_connections_per_host": 0,
            "connections_per_file": 2,
        },
    )
    assert status == 200
    assert limits == {
        "max_active": 2,  # omitted: unchanged
        "rate_limit": 5_000_000,
        "max_connections": 6,
        "max_connections_per_host": 0,
        "connections_per_file": 2,
    }
    assert (settings.rate_limit, settings.max_connections) == (5_000_000, 6)
    status, limits = await daemon.call("PUT", "/api/limits", {"rate_limit": 0})
    assert (status, limits["rate_limit"]) == (200, None)  # 0 lifts the limit
    for bad in (
        {"max_active": 0},
        {"rate_limit": -1},
        {"connections_per_file": 0},
        {"max_connections": 0},
        {"max_active": "many"},
        {"bandwidth": 1},
    ):
        status, error = await daemon.call("PUT", "/api/limits", bad)
        assert (status, error["error"]["kind"]) == (422, "invalid"), bad
    assert settings.max_active == 2


async def test_limits_of_one_download(daemon: Daemon) -> None:
    slow_cdn(daemon.hub, rate=128 * 1024)
    _, view = await daemon.call("POST", "/api/downloads", {"spec": SAMPLE_Q8})
    gid = view["id"]
    path = f"/api/downloads/{gid}/limits"
    status, body = await daemon.call("PUT", path, {"rate_limit": 64_000, "connections": 2})
    assert (status, body["id"]) == (200, gid)
    assert daemon.manager.store.group_limits(gid) == (64_000, 2)
    status, _ = await daemon.call("PUT", path, {"connections": None})  # back to the default
    assert status == 200
    assert daemon.manager.store.group_limits(gid) == (64_000, None)
    status, _ = await daemon.call("PUT", f"/api/downloads/{gid}.1/limits", {"rate_limit": 0})
    assert daemon.manager.store.group_limits(gid) == (None, None)
    status, error = await daemon.call("PUT", "/api/downloads/99/limits", {"rate_limit": 1})
    assert (status, error["error"]["kind"]) == (404, "unknown_item")
    status, error = await daemon.call("PUT", path, {"connections": 0})
    assert status == 422


async def test_quants(daemon: Daemon) -> None:
    status, body = await daemon.call("GET", f"/api/quants?repo={SAMPLE_REPO}")
    assert status == 200
    by_name = {q["name"]: q for q in body["quants"]}
    assert set(by_name) == {"Q4_K_M", "Q8_0"}
    assert by_name["Q4_K_M"]["shard_count"] == 2 and by_name["Q4_K_M"]["complete"]
    assert by_name["Q8_0"]["total_size"] == daemon.hub.file(SAMPLE_REPO, "tiny-Q8_0.gguf").size
    assert "Q8_0" in by_name["Q8_0"]["description"]

    status, error = await daemon.call("GET", "/api/quants?repo=nobody/nothing")
    assert (status, error["error"]["kind"]) == (404, "not_found")
    assert "nobody/nothing" in error["error"]["message"]
    status, error = await daemon.call("GET", "/api/quants?repo=not a repo")
    assert (status, error["error"]["kind"]) == (400, "spec")
    status, error = await daemon.call("GET", "/api/quants")
    assert (status, error["error"]["kind"]) == (422, "invalid")


async def test_health_and_openapi(daemon: Daemon) -> None:
    status, health = await daemon.call("GET", "/api/health")
    assert status == 200
    assert health["status"] == "ok" and health["pid"] == os.getpid()
    assert health["home"] == str(daemon.home)
    status, doc = await daemon.call("GET", "/api/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == {(op.method, op.path) for op, _ in OPERATIONS}
    assert "GroupViewModel" in doc["components"]["schemas"]


# ------------------------------------------------------------------------------ error codes


async def test_error_codes(daemon: Daemon) -> None:
    status, error = await daemon.call("POST", "/api/downloads", {"spec": "not a spec at all"})
    assert (status, error["error"]["kind"]) == (400, "spec")
    assert error["error"]["accepted_forms"] == ACCEPTED_FORMS

    status, error = await daemon.call("POST", "/api/downloads", {"spec": "nobody/nothing"})
    assert (status, error["error"]["kind"]) == (404, "not_found")
    assert error["error"]["upstream_status"] == 404
    assert "nobody/nothing" in error["error"]["message"]

    status, error = await daemon.call("POST", "/api/downloads", {"spec": f"{SAMPLE_REPO}:Q2_K"})
    assert (status, error["error"]["kind"]) == (400, "spec")

    status, error = await daemon.call("GET", "/api/downloads/41")
    assert (status, error["error"]["kind"]) == (404, "unknown_item")
    status, error = await daemon.call("POST", "/api/downloads/41/pause")
    assert status == 404
    status, error = await daemon.call("GET", "/api/downloads/zero")
    assert (status, error["error"]["kind"]) == (400, "spec")
    huge = "9" * 30  # beyond the store's integers: still just an unknown id
    for method, path in (("GET", huge), ("POST", f"{huge}/pause"), ("DELETE", f"1.{huge}")):
        status, error = await daemon.call(method, f"/api/downloads/{path}")
        assert (status, error["error"]["kind"]) == (404, "unknown_item"), path

    _, view = await daemon.call("POST", "/api/downloads", {"spec": SAMPLE_Q8})
    gid = view["id"]
    status, error = await daemon.call("GET", f"/api/downloads/{gid}.9")
    assert (status, error["error"]["kind"]) == (404, "unknown_item")

    for body in ({}, {"spec": ""}, {"spec": 5}, {"spec": "a/b", "layout": "flat"}, [1]):
        status, error = await daemon.call("POST", "/api/downloads", body)
        assert (status, error["error"]["kind"]) == (422, "invalid"), body
    status, error = await daemon.call(
        "POST", "/api/downloads", {"spec": "a/b", "dest_dir": "relative/dir"}
    )
    assert status == 422 and "absolute" in error["error"]["message"]
    status, error = await daemon.call(
        "POST", "/api/downloads", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert (status, error["error"]["kind"]) == (422, "invalid")
    status, error = await daemon.call("POST", f"/api/downloads/{gid}/pause", {"surprise": 1})
    assert status == 422

    status, error = await daemon.call("GET", "/api/no-such-thing")
    assert (status, error["error"]["kind"]) == (404, "route_not_found")
    status, error = await daemon.call("PATCH", "/api/limits", {})
    assert (status, error["error"]["kind"]) == (405, "method_not_allowed")


async def test_forget(daemon: Daemon) -> None:
    slow_cdn(daemon.hub, rate=128 * 1024)
    _, view = await daemon.call("POST", "/api/downloads", {"spec": SAMPLE_Q8})
    gid = view["id"]
    status, error = await daemon.call("DELETE", f"/api/downloads/{gid}")
    assert (status, error["error"]["kind"]) == (409, "conflict")
    assert "cancel it first" in error["error"]["message"]
    status, error = await daemon.call("DELETE", f"/api/downloads/{gid}.1")
    assert (status, error["error"]["kind"]) == (400, "spec")

    await daemon.call("POST", f"/api/downloads/{gid}/cancel")
    status, body = await daemon.call("DELETE", f"/api/downloads/{gid}")
    assert (status, body) == (204, "")
    status, _ = await daemon.call("GET", f"/api/downloads/{gid}")
    assert status == 404
    status, _ = await daemon.call("DELETE", f"/api/downloads/{gid}")
    assert status == 404

    daemon.hub.clear_faults()
    _, view = await daemon.call("POST", "/api/downloads", {"spec": SAMPLE_REPO})
    await daemon.wait_status(str(view["id"]), lambda v: v["status"] == "completed")
    status, body = await daemon.call("POST", "/api/forget-finished")
    assert (status, body) == (200, {"forgotten": [view["id"]]})


async def test_orphan_partials(daemon: Daemon) -> None:
    stray = daemon.manager.models_dir / "left" / "over.gguf.part"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"x")
    status, body = await daemon.call("GET", "/api/orphan-partials")
    assert (status, body) == (200, {"paths": [str(stray)]})
    status, body = await daemon.call("DELETE", "/api/orphan-partials")
    assert (status, body) == (200, {"paths": [str(stray)]})
    assert not stray.exists()


async def test_an_unexpected_exception_is_a_logged_json_500(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(repo: str, revision: str | None = None) -> list[Any]:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(daemon.manager, "quants", broken)
    status, error = await daemon.call("GET", f"/api/quants?repo={SAMPLE_REPO}")
    assert status == 500
    assert error["error"]["kind"] == "internal"
    assert "ZeroDivisionError" in error["error"]["message"]
    assert any("unexpected error" in r.getMessage() for r in caplog.records)


def test_every_error_kind_has_a_status() -> None:
    assert set(STATUS_BY_KIND) == set(ERROR_KINDS)
    for kind, cls in ERROR_KINDS.items():
        assert 400 <= STATUS_BY_KIND[kind] < 600
        assert status_for(cls.__new__(cls)) == STATUS_BY_KIND[kind]
    assert STATUS_BY_KIND["unknown_item"] == 404 and STATUS_BY_KIND["spec"] == 400


def test_the_dashboard_ships_inside_the_package() -> None:
    static = resources.files("modelfetch.server").joinpath("static")
    index = static.joinpath("index.html").read_text(encoding="utf-8")
    assert '<script src="/static/app.js"' in index and "/static/style.css" in index
    for name in ("app.js", "style.css"):
        assert static.joinpath(name).read_bytes()
    # Nothing from the network: no absolute URLs to load (the CSP forbids them anyway).
    for name in ("index.html", "app.js", "style.css"):
        text = static.joinpath(name).read_text(encoding="utf-8")
        assert "http://" not in text and "//cdn" not in text, name
        assert "fonts.googleapis" not in text and "@import" not in text, name


def test_response_models_mirror_the_views() -> None:
    assert set(FileViewModel.model_fields) == {f.name for f in dataclasses.fields(FileView)}
    assert set(GroupViewModel.model_fields) == {f.name for f in dataclasses.fields(GroupView)}


def test_a_views_wire_form_is_what_asdict_gives() -> None:
    """GroupView.to_dict is hand-written for speed: same keys, order and values as asdict."""
    file = FileView(
        ref="3.0", name="a.gguf", status="active", dest="/m/a.gguf", url="https://x/a",
        position=None, downloaded=5, total=9, speed=1.5, eta=2.0, attempts=1,
        error_kind=None, error_message=None, retry_at=None, pause_reason=None, sha256=None,
        verified=False, idle_for=0.1, worker="h/1/ab",
    )  # fmt: skip
    view = GroupView(
        id=3, name="a", spec="o/r", status="active", dest_dir="/m", position=None, downloaded=5,
        total=9, speed=1.5, eta=2.0, created_at=1.0, finished_at=None, files=[file, file],
    )  # fmt: skip
    wire = view.to_dict()
    assert wire == dataclasses.asdict(view)
    assert list(wire) == list(dataclasses.asdict(view))
    assert list(wire["files"][0]) == [f.name for f in dataclasses.fields(FileView)]
    assert wire["files"][0] is not wire["files"][1]


# -------------------------------------------------------------------------------- security


async def test_host_header_must_name_the_daemon(daemon: Daemon) -> None:
    for host in ("evil.example", f"evil.example:{daemon.port}", f"127.0.0.1:{daemon.port + 1}"):
        status, error = await daemon.call("GET", "/api/health", headers={"Host": host})
        assert (status, error["error"]["kind"]) == (403, "forbidden_host"), host
    status, _ = await daemon.call(
        "POST", "/api/pause-all", headers={"Host": f"attacker.test:{daemon.port}"}
    )
    assert status == 403
    for host in (f"localhost:{daemon.port}", f"127.0.0.1:{daemon.port}", f"[::1]:{daemon.port}"):
        status, _ = await daemon.call("GET", "/api/health", headers={"Host": host})
        assert status == 200, host


def test_host_rules_for_other_binds() -> None:
    lan = ServerConfig(host="192.168.7.20", port=9000, token="t")
    assert lan.host_allowed("192.168.7.20:9000")
    assert not lan.host_allowed("localhost:9000")
    assert not lan.host_allowed("192.168.7.20:9001")
    anywhere = ServerConfig(host="0.0.0.0", port=80, token="t", allowed_hosts=frozenset({"nas"}))
    assert anywhere.host_allowed("10.1.2.3")  # an address cannot be a rebinding attack
    assert anywhere.host_allowed("nas")
    assert not anywhere.host_allowed("rebind.attacker.test")
    assert not anywhere.host_allowed("")
    assert not anywhere.host_allowed(None)
    assert not anywhere.host_allowed("[::1")


async def test_state_changing_requests_need_json(daemon: Daemon) -> None:
    _, view = await daemon.call("POST", "/api/downloads", {"spec": SAMPLE_REPO})
    form = {"spec": "someone/else"}
    status, error = await daemon.call("POST", "/api/downloads", data=form)
    assert (status, error["error"]["kind"]) == (415, "unsupported_media_type")
    for content_type in ("text/plain", "multipart/form-data; boundary=x"):
        status, _ = await daemon.call(
            "POST", "/api/pause-all", data=b"{}", headers={"Content-Type": content_type}
        )
        assert status == 415, content_type
    # A no-cors fetch can send a body without any Content-Type at all.
    async with daemon.session.post(daemon.url + "/api/pause-all", data=b"") as response:
        assert response.status == 415
    status, _ = await daemon.call(
        "DELETE", f"/api/downloads/{view['id']}", data=b"x", headers={"Content-Type": "text/plain"}
    )
    assert status == 415


async def test_token_is_checked_everywhere(tmp_path: Path) -> None:
    token = "tok_" + "x" * 28
    async with run_daemon(tmp_path, token=token) as daemon:
        info_path = daemon.home / "daemon.json"
        assert daemon.info["token_required"] is True and daemon.info["token"] == token
        assert stat.S_IMODE(info_path.stat().st_mode) == 0o600
        async with aiohttp.ClientSession() as anonymous:
            for method, path in [
                ("GET", "/api/health"),
                ("GET", "/api/events"),
                ("GET", "/"),
                ("GET", "/static/app.js"),
                ("GET", "/api/openapi.json"),
                ("POST", "/api/pause-all"),
            ]:
                async with anonymous.request(method, daemon.url + path, json={}) as response:
                    assert response.status == 401, path
                    assert (await response.json())["error"]["kind"] == "unauthorized"
                    assert response.headers["WWW-Authenticate"].startswith("Bearer")
            async with anonymous.get(
                daemon.url + "/api/health", headers={"Authorization": "Bearer wrong"}
            ) as response:
                assert response.status == 401
            async with anonymous.get(daemon.url + f"/api/health?token={token}") as response:
                assert response.status == 200
        # The dashboard trades ?token= for a cookie its own requests then carry.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            async with browser.get(
                daemon.url + f"/?token={token}", allow_redirects=False
            ) as response:
                assert response.status == 303 and response.headers["Location"] == "/"
                cookie = response.cookies[f"modelfetch_token_{daemon.port}"]
                assert cookie["httponly"] and cookie["samesite"] == "Strict"
            async with browser.get(daemon.url + "/api/limits") as response:
                assert response.status == 200
        status, _ = await daemon.call("GET", "/api/health")
        assert status == 200


async def test_a_non_loopback_bind_needs_a_token(tmp_path: Path) -> None:
    async with DownloadManager(home=tmp_path / "home", workers=False) as manager:
        for host in ("0.0.0.0", "::", "192.168.1.10", "example.org"):
            with pytest.raises(SpecError, match="without a token"):
                await serve(manager, host=host, port=0, token=None)
        assert not (manager.home / "daemon.json").exists()


async def test_the_hub_token_is_never_returned(daemon: Daemon) -> None:
    seen: list[str] = []

    async def grab(method: str, path: str, body: Any = None) -> Any:
        _, data = await daemon.call(method, path, body)
        seen.append(json.dumps(data) if not isinstance(data, str) else data)
        return data

    view = await grab("POST", "/api/downloads", {"spec": SAMPLE_REPO})
    await daemon.wait_status(str(view["id"]), lambda v: v["status"] == "completed")
    # A failing file too: its error message must not carry the token either.
    daemon.hub.add_fault(Fault("status", path="Q8_0", status=401, origin="hub"))
    await grab("POST", "/api/downloads", {"spec": SAMPLE_Q8})
    for method, path in [
        ("GET", "/api/downloads"),
        ("GET", f"/api/downloads/{view['id']}"),
        ("GET", f"/api/quants?repo={SAMPLE_REPO}"),
        ("GET", "/api/quants?repo=nobody/nothing"),
        ("POST", "/api/downloads"),
        ("GET", "/api/limits"),
        ("GET", "/api/health"),
        ("GET", "/api/openapi.json"),
        ("GET", "/"),
        ("GET", "/static/app.js"),
    ]:
        await grab(method, path)
    async with daemon.session.get(daemon.url + "/api/events") as response:
        seen.append((await response.content.readuntil(b"\n\n")).decode())
        seen.append((await response.content.readuntil(b"\n\n")).decode())
    assert any("snapshot" in text for text in seen)
    for text in seen:
        assert HUB_TOKEN not in text
    # The Hub did get it, so the check above was not vacuous.
    assert any(r.authorization for r in daemon.hub.log)


async def test_daemon_file_lifecycle(tmp_path: Path) -> None:
    async with run_daemon(tmp_path) as daemon:
        path = daemon.home / "daemon.json"
        info = json.loads(path.read_text())
        assert set(info) == {"pid", "url", "token_required", "started_at"}
        assert info["pid"] == os.getpid() and info["token_required"] is False
        assert info["url"] == f"http://127.0.0.1:{daemon.port}"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        daemon.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await daemon.task
        assert not path.exists()
        with pytest.raises(aiohttp.ClientConnectionError):
            async with daemon.session.get(daemon.url + "/api/health"):
                pass


async def test_a_client_mistake_never_reaches_the_bus_as_a_failure(daemon: Daemon) -> None:
    """Bad requests change nothing: no event is published for them."""
    before = daemon.manager.bus.last_seq
    await daemon.call("POST", "/api/downloads", {"spec": "??"})
    await daemon.call("POST", "/api/downloads/5/pause")
    await daemon.call("PUT", "/api/limits", {"max_active": -1})
    assert daemon.manager.bus.last_seq == before
