"""Shared limits: the bandwidth bucket (its rate over a few seconds is the behaviour under test)
and the connection slots (counts, fairness, live changes)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelfetch.testing.fakehub import FakeHub, RepoFile
from modelfetch.transfer import (
    ConnectionSlots,
    TokenBucket,
    TransferRequest,
    TransferSession,
    fetch_file,
    make_session,
)
from modelfetch.transfer.limiter import read_size_for

MiB = 1 << 20
KiB = 1 << 10
REPO = "owner/limits"
FILE = "model.gguf"
SIZE = 6 * MiB + 321


@pytest.fixture
async def limhub() -> AsyncIterator[FakeHub]:
    async with FakeHub() as fake:
        fake.add_repo(REPO, [RepoFile(FILE, size=SIZE, seed=5)])
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[TransferSession]:
    async with make_session() as s:
        yield s


def request_for(hub: FakeHub, dest: Path, connections: int) -> TransferRequest:
    info = hub.file(REPO, FILE)
    return TransferRequest(
        url=hub.resolve_url(REPO, FILE),
        dest=dest / FILE,
        expected_size=info.size,
        expected_sha256=info.sha256,
        connections=connections,
        segment_threshold=MiB,
        min_segment_size=MiB,
        min_steal_size=256 * KiB,
    )


# ---------------------------------------------------------------------------------------------
# TokenBucket
# ---------------------------------------------------------------------------------------------


async def test_the_bucket_keeps_several_readers_to_the_rate() -> None:
    rate = 4 * MiB
    bucket = TokenBucket(rate)
    moved = 0
    began = time.monotonic()
    until = began + 2.0

    async def reader(chunk: int) -> None:
        nonlocal moved
        while time.monotonic() < until:
            await bucket.consume(chunk)
            moved += chunk

    await asyncio.gather(reader(64 * KiB), reader(200 * KiB), reader(1 * MiB))
    elapsed = time.monotonic() - began
    assert moved / elapsed == pytest.approx(rate, rel=0.10)


async def test_unlimited_costs_nothing_and_a_new_rate_reaches_waiting_readers() -> None:
    bucket = TokenBucket(None)
    await asyncio.wait_for(bucket.consume(1 << 40), 0.1)  # no limit: never waits
    bucket.set_rate(1 * MiB)
    waiter = asyncio.create_task(bucket.consume(4 * MiB))  # ~4 s at this rate...
    await asyncio.sleep(0.1)
    assert not waiter.done()
    bucket.set_rate(None)  # ...but the limit is lifted while it waits
    await asyncio.wait_for(waiter, 0.5)
    bucket.set_rate(0)  # 0 also means unlimited
    assert bucket.rate is None
    with pytest.raises(ValueError):
        bucket.set_rate(-1)


def test_limited_reads_get_smaller_so_the_rate_is_smooth() -> None:
    assert read_size_for(4 * MiB, []) == 4 * MiB
    assert read_size_for(4 * MiB, [TokenBucket(None)]) == 4 * MiB
    assert read_size_for(4 * MiB, [TokenBucket(1.6 * MiB), TokenBucket(None)]) == MiB // 10
    assert read_size_for(4 * MiB, [TokenBucket(100)]) == 16 * KiB


@pytest.mark.parametrize("connections", [1, 4])
async def test_a_limited_transfer_averages_the_limit(
    limhub: FakeHub, session: TransferSession, tmp_path: Path, connections: int
) -> None:
    rate = 3 * MiB
    began = time.monotonic()
    result = await fetch_file(
        session, request_for(limhub, tmp_path, connections), limits=[TokenBucket(rate)]
    )
    elapsed = time.monotonic() - began
    assert result.verified
    assert result.size / elapsed == pytest.approx(rate, rel=0.10)


async def test_a_rate_change_applies_to_a_running_transfer(
    limhub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    bucket = TokenBucket(1 * MiB)
    seen: list[tuple[float, int]] = []
    task = asyncio.create_task(
        fetch_file(
            session,
            request_for(limhub, tmp_path, 4),
            limits=[bucket],
            on_progress=lambda done, total: seen.append((time.monotonic(), done)),
        )
    )
    await asyncio.sleep(1.0)
    slow_done = seen[-1][1]
    changed_at = time.monotonic()
    bucket.set_rate(4 * MiB)
    await asyncio.sleep(0.75)
    fast_done = seen[-1][1] - slow_done
    fast_rate = fast_done / (time.monotonic() - changed_at)
    bucket.set_rate(None)
    result = await asyncio.wait_for(task, 10)
    assert result.verified
    # Short windows: loose bounds, but far apart (1 MiB/s before, 4 MiB/s after).
    assert 0.7 * MiB <= slow_done <= 1.3 * MiB
    assert 3 * MiB <= fast_rate <= 5 * MiB


# ---------------------------------------------------------------------------------------------
# ConnectionSlots
# ---------------------------------------------------------------------------------------------


async def test_slots_cap_the_total_and_each_host_and_serve_in_order() -> None:
    slots = ConnectionSlots(3, per_host=2)
    a1 = await slots.acquire("a")
    a2 = await slots.acquire("a")
    third_a = asyncio.create_task(slots.acquire("a"))
    b1 = await asyncio.wait_for(slots.acquire("b"), 0.1)  # host a is full, b is not
    blocked_b = asyncio.create_task(slots.acquire("b"))
    await asyncio.sleep(0.01)
    assert not third_a.done() and not blocked_b.done()
    assert slots.in_use == 3 and slots.in_use_for("a") == 2
    a1.release()
    a1.release()  # idempotent
    await asyncio.sleep(0.01)
    assert third_a.done() and not blocked_b.done()  # first come, first served
    b1.release()
    got_b = await asyncio.wait_for(blocked_b, 0.1)
    for held in (a2, await third_a, got_b):
        held.release()
    assert slots.in_use == 0


async def test_slot_limits_change_live_and_a_cancelled_waiter_leaks_nothing() -> None:
    slots = ConnectionSlots(1)
    held = await slots.acquire("h")
    waiters = [asyncio.create_task(slots.acquire("h")) for _ in range(3)]
    await asyncio.sleep(0.01)
    waiters[0].cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiters[0]
    slots.set_limits(total=3)  # raised while two are waiting: both get in
    got = [await asyncio.wait_for(w, 0.1) for w in waiters[1:]]
    assert slots.in_use == 3
    slots.set_limits(total=1)  # lowered: nothing is taken away, new ones wait
    late = asyncio.create_task(slots.acquire("h"))
    for slot in (held, *got[:1]):
        slot.release()
    await asyncio.sleep(0.01)
    assert not late.done()  # still 1 in use, cap 1
    got[1].release()
    (await asyncio.wait_for(late, 0.1)).release()
    assert slots.in_use == 0
    with pytest.raises(ValueError):
        slots.set_limits(total=0)
