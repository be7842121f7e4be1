"""The contiguous prefix a transfer reports (`fetch_file(on_prefix=)`) and the manager's
arrivals board built on it: what the mirror streams by."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelfetch.core.paths import part_path
from modelfetch.manager.arrivals import Arrivals
from modelfetch.testing.fakehub import FakeHub, RepoFile
from modelfetch.transfer import make_session
from modelfetch.transfer.api import TransferRequest
from modelfetch.transfer.fetch import fetch_file

REPO = "team/prefix"
NAME = "p.gguf"
SIZE = 8 << 20


@pytest.mark.parametrize("connections", [1, 4], ids=["one-stream", "segmented"])
async def test_the_prefix_is_on_disk_monotone_and_ends_at_the_size(
    tmp_path: Path, connections: int
) -> None:
    # Capped so the body takes about half a second or more: reports come while it moves.
    async with FakeHub(connection_rate=4 << 20) as hub:
        hub.add_repo(REPO, [RepoFile(NAME, size=SIZE, seed=4)])
        expected = hub.content(REPO, NAME)
        dest = tmp_path / NAME
        seen: list[int] = []

        def on_prefix(prefix: int) -> None:
            # Whatever is reported is already readable by another file descriptor: in the
            # `.part`, or (the last report may come after the publish) under its own name.
            if prefix:
                where = part_path(dest) if part_path(dest).exists() else dest
                with where.open("rb") as fh:
                    assert fh.read(prefix) == expected[:prefix]
            seen.append(prefix)

        request = TransferRequest(
            url=hub.resolve_url(REPO, NAME),
            dest=dest,
            expected_size=SIZE,
            expected_sha256=hub.file(REPO, NAME).sha256,
            connections=connections,
            segment_threshold=1 << 20,
            min_segment_size=1 << 20,
        )
        async with make_session() as session:
            result = await fetch_file(
                session, request, on_prefix=on_prefix, on_segments=lambda _: None
            )
    assert result.size == SIZE
    assert seen == sorted(seen) and seen[-1] == SIZE
    assert any(0 < p < SIZE for p in seen), seen  # it was reported while bytes moved


async def test_the_board_wakes_readers_and_changes_its_epoch_when_bytes_are_dropped() -> None:
    board = Arrivals()
    key = (1, 1)
    start = board.get(key).epoch
    waiter = asyncio.ensure_future(board.wait(key, 30.0))
    await asyncio.sleep(0)
    board.report(key, 100, 1000)
    await asyncio.wait_for(waiter, 5)  # woken by the report, not by its bound
    assert (board.get(key).prefix, board.get(key).epoch) == (100, start)
    board.report(key, 40, 1000)  # the `.part` started over
    assert board.get(key).epoch == start + 1
    board.broken(key)
    assert board.get(key).epoch == start + 2 and board.get(key).prefix == 0
    board.completed(key, 1000)
    assert board.get(key).completed and board.get(key).prefix == 1000
