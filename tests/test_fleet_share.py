"""How a fleet's workers divide the queue (`core/fleet_share.py`): pure decisions, no I/O."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelfetch.core.fleet_share import WorkerLoad, connection_share, fair_claims, handoff_due
from modelfetch.transfer.limiter import ConnectionSlots


def w(name: str, running: int = 0, max_active: int = 3, accepting: bool = True) -> WorkerLoad:
    return WorkerLoad(name, running=running, max_active=max_active, accepting=accepting)


def test_queued_files_go_to_the_least_loaded_workers_first() -> None:
    roster = [w("a"), w("b"), w("c")]
    assert [fair_claims(n, roster, queued=4, limit=3) for n in "abc"] == [2, 1, 1]
    busy = [w("a", running=2), w("b"), w("c")]
    assert fair_claims("a", busy, queued=2, limit=1) == 0  # b and c are idle: theirs
    assert fair_claims("b", busy, queued=2, limit=3) == 1


def test_a_worker_takes_what_the_others_have_no_room_for() -> None:
    roster = [w("a", max_active=4), w("b", max_active=1), w("c", accepting=False)]
    assert fair_claims("a", roster, queued=4, limit=4) == 3
    assert fair_claims("b", roster, queued=4, limit=1) == 1
    assert fair_claims("c", roster, queued=4, limit=3) == 0  # leaving: takes none of its own
    # Alone, or not in the roster yet: as many as its slots allow.
    assert fair_claims("a", [w("a")], queued=9, limit=3) == 3
    assert fair_claims("z", roster, queued=9, limit=3) == 3
    assert fair_claims("a", roster, queued=0, limit=3) == 0


@given(
    loads=st.lists(st.tuples(st.integers(0, 4), st.integers(1, 5)), min_size=1, max_size=6),
    queued=st.integers(0, 30),
)
def test_fair_claims_from_one_roster_hand_out_every_file_that_fits_and_never_one_twice(
    loads: list[tuple[int, int]], queued: int
) -> None:
    roster = [w(f"w{n}", running=min(r, cap), max_active=cap) for n, (r, cap) in enumerate(loads)]
    given_out = [fair_claims(x.worker, roster, queued, limit=x.room) for x in roster]
    assert sum(given_out) == min(queued, sum(x.room for x in roster))
    assert all(0 <= g <= x.room for g, x in zip(given_out, roster, strict=True))
    after = [x.running + g for g, x in zip(given_out, roster, strict=True)]
    # Nobody ends two files above a worker that still had room.
    for x, n in zip(roster, after, strict=True):
        for y, m in zip(roster, after, strict=True):
            if m < y.max_active:
                assert n <= m + 1 or n == x.running


def test_a_handoff_is_due_only_for_a_gap_of_two_to_a_worker_with_room() -> None:
    assert handoff_due("a", [w("a", running=3), w("b", running=1)], queued=0)
    assert not handoff_due("a", [w("a", running=3), w("b", running=1)], queued=1)
    assert not handoff_due("a", [w("a", running=2), w("b", running=1)], queued=0)
    assert not handoff_due("a", [w("a", running=3), w("b", running=1, max_active=1)], queued=0)
    assert not handoff_due("a", [w("a", running=3), w("b", accepting=False)], queued=0)
    assert not handoff_due("b", [w("a", running=3), w("b", running=1)], queued=0)
    assert not handoff_due("z", [w("a", running=3)], queued=0)


def test_connection_shares_add_up_to_the_cap() -> None:
    workers = ["w1", "w2", "w3"]
    assert [connection_share(8, x, workers) for x in workers] == [3, 3, 2]
    assert connection_share(8, "w9", []) == 8  # alone
    assert connection_share(8, "w9", ["w1"]) == 4  # counted whether listed or not
    assert [connection_share(2, x, workers) for x in workers] == [1, 1, 1]  # never below one
    with pytest.raises(ValueError, match="at least 1"):
        connection_share(0, "w1", workers)


async def test_the_lower_of_the_own_and_the_shared_per_host_cap_holds() -> None:
    slots = ConnectionSlots(total=10, per_host=4)
    slots.set_shared_per_host(2)
    assert slots.host_cap == 2
    held = [await slots.acquire("h") for _ in range(2)]
    third = asyncio.ensure_future(slots.acquire("h"))
    await asyncio.sleep(0.01)
    assert not third.done()  # the share holds it back
    slots.set_shared_per_host(None)  # the cap lifted: the worker's own (4) again
    assert slots.host_cap == 4
    held.append(await asyncio.wait_for(third, 1))
    assert slots.in_use_for("h") == 3
    with pytest.raises(ValueError, match=">= 1"):
        slots.set_shared_per_host(0)
    for slot in held:
        slot.release()
