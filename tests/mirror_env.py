"""A mirror under test: a real daemon app with the mirror mounted, on 127.0.0.1, in front of a
fake Hub, with a real manager on a temporary home; and huggingface_hub calls run in threads
(it is synchronous) against it."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web

from modelfetch.hubconfig import HubConfig
from modelfetch.manager import DownloadManager, ManagerSettings
from modelfetch.mirror import MirrorOptions, make_state, mount, public_app
from modelfetch.mirror.state import MirrorState
from modelfetch.server.app import create_app
from modelfetch.server.state import STATE
from modelfetch.testing.fakehub import FakeHub

T = TypeVar("T")


@dataclass
class Mirror:
    endpoint: str
    manager: DownloadManager
    state: MirrorState
    public_endpoint: str | None = None


async def _start(app: web.Application, host: str = "127.0.0.1") -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    return runner, int(runner.addresses[0][1])


@asynccontextmanager
async def running_mirror(
    hub: FakeHub,
    home: Path,
    *,
    token: str | None = None,
    daemon_token: str | None = None,
    options: MirrorOptions | None = None,
    public: bool = False,
    settings: ManagerSettings | None = None,
    endpoint: str | None = None,
) -> AsyncIterator[Mirror]:
    settings = settings or ManagerSettings(allowed_hosts=frozenset({"127.0.0.1", "localhost"}))
    config = HubConfig(endpoint or hub.endpoint, token)
    async with DownloadManager(home=home, hub=config, settings=settings) as manager:
        state = make_state(manager, options or MirrorOptions())
        app = create_app(manager, token=daemon_token)
        app[STATE].config.open_routes.update(mount(app, state))
        runner, port = await _start(app)
        app[STATE].config.port = port
        runners = [runner]
        public_endpoint = None
        try:
            if public:
                prunner, pport = await _start(public_app(state))
                runners.append(prunner)
                public_endpoint = f"http://127.0.0.1:{pport}"
            yield Mirror(f"http://127.0.0.1:{port}", manager, state, public_endpoint)
        finally:
            for r in runners:
                await r.cleanup()


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))


@pytest.fixture(autouse=True, name="hf_env")
def hf_env_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub as a test's client: a cache of its own, no Xet, no telemetry, no token,
    online. Autouse in every test module that imports it."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
