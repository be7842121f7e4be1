"""Shared fixtures: a fake Hub on loopback and helpers to build downloads from its files."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from modelfetch.core import events as ev
from modelfetch.requests import FileRequest, GroupRequest
from modelfetch.testing.fakehub import FakeHub, RequestRecord


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    async with FakeHub() as running:
        yield running


def group_of(
    hub: FakeHub, repo: str, paths: list[str], dest: Path, *, name: str | None = None
) -> GroupRequest:
    """A download of `paths` from `repo` at main, with the digests the Hub lists."""
    files = []
    for path in paths:
        info = hub.file(repo, path)
        files.append(
            FileRequest(
                url=hub.resolve_url(repo, path),
                path=path,
                size=info.size,
                sha256=info.sha256 if info.lfs else None,
                git_oid=None if info.lfs else info.git_oid,
            )
        )
    return GroupRequest(name=name or f"{repo}:{len(paths)}", files=tuple(files), dest_dir=dest)


def write_plan(path: Path, request: GroupRequest, **extra: object) -> Path:
    """`request` as the JSON plan the manager child processes read (`manager_child.py`,
    `batch_child.py`); `extra` keys (e.g. `max_active`) go alongside."""
    files = [
        {"url": f.url, "path": f.path, "size": f.size, "sha256": f.sha256} for f in request.files
    ]
    path.write_text(
        json.dumps(
            {"name": request.name, "dest_dir": str(request.dest_dir), "files": files, **extra}
        )
    )
    return path


@pytest.fixture
def tls_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1 and localhost, made by the openssl CLI."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        capture_output=True,
    )  # fmt: skip
    if made.returncode != 0:
        pytest.skip("openssl cannot make a test certificate here")
    return cert, key


async def next_event(
    events: AsyncIterator[ev.Event], match: Callable[[ev.Event], bool], timeout: float = 20.0
) -> ev.Event:
    """The first event from `events` that matches, or a TimeoutError."""
    async with asyncio.timeout(timeout):
        async for event in events:
            if match(event):
                return event
    raise AssertionError("the event stream ended")


def peak_open(requests: list[RequestRecord]) -> int:
    """The most of these requests the server was answering at once (from its arrival and end
    times)."""
    moments = sorted([(r.time, 1) for r in requests] + [(r.end, -1) for r in requests])
    open_now = peak = 0
    for _, delta in moments:
        open_now += delta
        peak = max(peak, open_now)
    return peak
