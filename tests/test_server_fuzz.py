"""Property-based fuzzing of the API from its own OpenAPI description (schemathesis).

The daemon runs in a thread with its own event loop (schemathesis calls it synchronously over
HTTP). Every operation gets schema-valid and schema-violating requests; no answer may be a 5xx,
and every answer must be one the document describes, with a body that matches its schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck
from schemathesis import APIOperation
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from modelfetch.server.routes import OPERATIONS

from .test_server_api import run_daemon

TOKEN = "fuzz-token-0123456789abcdef"
MAX_EXAMPLES = 25
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
# The event stream never ends by itself: it is tested in test_server_sse.py.
SKIPPED = {("GET", "/api/events")}


async def _stay_on_loopback(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestStartParams,
) -> None:
    # A fuzzed spec may be any http(s) URL: the engine must not fetch it from the internet.
    if params.url.host not in LOOPBACK:
        raise aiohttp.ClientConnectionError(f"this test stays on loopback: {params.url.host}")


def _loopback_session() -> aiohttp.ClientSession:
    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(_stay_on_loopback)
    return aiohttp.ClientSession(auto_decompress=False, trace_configs=[trace])


class ThreadedDaemon:
    """run_daemon() in a thread with its own loop, for synchronous HTTP clients."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fuzzed-daemon", daemon=True)

    def __enter__(self) -> ThreadedDaemon:
        self._thread.start()
        if not self._ready.wait(15) or self._error is not None:
            raise RuntimeError("the daemon did not start") from self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by __enter__
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with (
            _loopback_session() as session,
            run_daemon(self.tmp_path, token=TOKEN, session=session) as daemon,
        ):
            self.url = daemon.url
            self._ready.set()
            await self._stop.wait()


@pytest.fixture(scope="module")
def daemon_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with ThreadedDaemon(tmp_path_factory.mktemp("fuzz")) as daemon:
        yield daemon.url


def _operations(url: str) -> list[APIOperation[Any, Any, Any, Any]]:
    document = requests.get(
        f"{url}/api/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    ).json()
    schema = schemathesis.openapi.from_dict(document)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the document itself must be valid
        operation = result.ok()
        if (operation.method.upper(), operation.path) not in SKIPPED:
            operations.append(operation)
    return operations


def _fuzz(
    operation: APIOperation[Any, Any, Any, Any],
    mode: schemathesis.GenerationMode,
    base_url: str,
    session: requests.Session,
    calls: dict[str, int],
) -> None:
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    if mode is schemathesis.GenerationMode.NEGATIVE:
        checks.append(negative_data_rejection)  # what the schema forbids must be refused

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(base_url=base_url, session=session, checks=checks, timeout=10)
        calls[operation.label] = calls.get(operation.label, 0) + 1

    with contextlib.suppress(hypothesis.errors.Unsatisfiable):
        run()


def test_fuzzing_the_api_finds_no_server_error(daemon_url: str) -> None:
    operations = _operations(daemon_url)
    assert len(operations) == len(OPERATIONS) - len(SKIPPED)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    calls: dict[str, int] = {}
    started = time.monotonic()
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            _fuzz(operation, mode, daemon_url, session, calls)
    # Every operation was exercised, in a bounded time.
    assert set(calls) == {op.label for op in operations}
    assert time.monotonic() - started < 90
