"""Shared fixtures: a fake Hub on loopback and helpers to build downloads from its files."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from modelfetch.core import events as ev
from modelfetch.requests import FileRequest, GroupRequest
from modelfetch.testing.fakehub import FakeHub


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


async def next_event(
    events: AsyncIterator[ev.Event], match: Callable[[ev.Event], bool], timeout: float = 20.0
) -> ev.Event:
    """The first event from `events` that matches, or a TimeoutError."""
    async with asyncio.timeout(timeout):
        async for event in events:
            if match(event):
                return event
    raise AssertionError("the event stream ended")
