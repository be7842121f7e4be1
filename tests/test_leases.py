"""Leases, not locks (issue 14): several workers claim files of one PostgreSQL queue.

Against the session's throwaway cluster (`pg.py`), a schema per test. Time is moved with the
`now` argument (the store's clock otherwise is the server's); no test waits for a lease to lapse.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from modelfetch.core.models import FileStatus
from modelfetch.core.segments import SegmentRecord
from modelfetch.store import Claim, FleetLimits, LeaseLostError, WorkerLoad
from modelfetch.store.postgres import PostgresStore

from .pg import pg_cluster_fixture, pg_url_fixture  # noqa: F401 -- the pg fixtures
from .store_impls import plain_group

LEASE = 30.0
T0 = 1_000_000.0  # a `now` far in the past: leases taken at it lapse in real time too


@pytest.fixture(name="a")
def a_fixture(pg_url: str) -> Iterator[PostgresStore]:
    with PostgresStore(pg_url) as store:
        yield store


@pytest.fixture(name="b")
def b_fixture(pg_url: str, a: PostgresStore) -> Iterator[PostgresStore]:
    with PostgresStore(pg_url) as store:  # another worker: its own connection
        yield store


def test_concurrent_workers_never_claim_a_file_twice(pg_url: str, a: PostgresStore) -> None:
    for n in range(4):
        a.add_group(plain_group(f"g{n}", files=50))
    workers = [PostgresStore(pg_url) for _ in range(4)]
    start = threading.Barrier(len(workers))
    claimed: dict[str, list[Claim]] = {}
    errors: list[BaseException] = []

    def work(name: str, store: PostgresStore) -> None:
        got: list[Claim] = []
        try:
            start.wait()
            while batch := store.claim(name, lease_seconds=LEASE, limit=7):
                got.extend(batch)
        except BaseException as exc:  # collected: a thread's failure must fail the test
            errors.append(exc)
        claimed[name] = got

    threads = [
        threading.Thread(target=work, args=(f"w{n}", store)) for n, store in enumerate(workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for store in workers:
        store.close()
    assert errors == []
    everything = [(c.group_id, c.index) for got in claimed.values() for c in got]
    assert len(everything) == 200
    assert Counter(everything).most_common(1)[0][1] == 1  # each file exactly once
    assert sum(1 for got in claimed.values() if got) >= 2  # the workers really did share it
    fences = [c.fence for got in claimed.values() for c in got]
    assert len(set(fences)) == 200
    holders = a.holders()
    assert len(holders) == 200
    for name, got in claimed.items():
        assert all(holders[c.group_id, c.index][0] == name for c in got)
    assert a.files({FileStatus.QUEUED}) == []


# A worker process: claims until the queue is empty, prints what it got as "group.index" lines.
WORKER = """
import sys
from modelfetch.store import PostgresStore
with PostgresStore(sys.argv[1]) as store:
    print("ready", flush=True)
    sys.stdin.readline()  # every worker is connected: go
    while batch := store.claim(sys.argv[2], lease_seconds=30.0, limit=2):
        for c in batch:
            print(f"{c.group_id}.{c.index}", flush=True)
"""


def test_worker_processes_never_claim_a_file_twice(pg_url: str, a: PostgresStore) -> None:
    for n in range(3):
        a.add_group(plain_group(f"p{n}", files=100))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, pg_url, f"proc{n}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    for proc in procs:  # every worker connected (imports take a while)...
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
    for proc in procs:  # ...then all go at once
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outputs = [proc.communicate(timeout=60)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0]
    everything = [line for out in outputs for line in out.split()]
    assert len(everything) == 300 and len(set(everything)) == 300
    assert sum(1 for out in outputs if out) >= 2  # they really did work the queue together
    holders = a.holders()
    for n, out in enumerate(outputs):
        for ref in out.split():
            group_id, index = map(int, ref.split("."))
            assert holders[group_id, index][0] == f"proc{n}"


def test_claims_follow_priority_then_order(a: PostgresStore) -> None:
    group = a.add_group(plain_group(files=5))
    a.set_order({(group.id, 1): 500, (group.id, 2): 100, (group.id, 3): 300})
    a.set_order({(group.id, 4): 900, (group.id, 5): 200}, priority=2)
    first = a.claim("w", lease_seconds=LEASE, limit=3)
    assert [c.index for c in first] == [5, 4, 2]  # priority 2 first, then by order key
    rest = [a.claim("w", lease_seconds=LEASE, limit=1) for _ in range(3)]
    assert [[c.index for c in got] for got in rest] == [[3], [1], []]
    assert all(c.file.status is FileStatus.ACTIVE for c in first)
    assert all(c.worker == "w" for c in first)
    assert first[0].fence < first[1].fence or first[0].fence > first[1].fence  # distinct
    assert max(c.fence for c in first) < min(c.fence for got in rest for c in got)


def test_an_expired_lease_is_taken_over_keeping_progress_and_segments(
    a: PostgresStore, b: PostgresStore
) -> None:
    group = a.add_group(plain_group(files=1))
    [mine] = a.claim("a", lease_seconds=LEASE, limit=5, now=T0)
    assert mine.expires_at == T0 + LEASE
    a.save_claimed_progress([(mine, 4096, 10_000)])
    a.save_claimed_segments(mine, [SegmentRecord(0, 5000, 4096), SegmentRecord(5000, 10_000, 0)])
    assert b.claim("b", lease_seconds=LEASE, limit=5, now=T0 + LEASE - 1) == []  # still held
    [theirs] = b.claim("b", lease_seconds=LEASE, limit=5, now=T0 + LEASE + 1)
    assert (theirs.group_id, theirs.index) == (group.id, 1)
    assert theirs.fence > mine.fence
    assert (theirs.file.bytes_done, theirs.file.bytes_total) == (4096, 10_000)
    assert b.segments(group.id, 1) == (SegmentRecord(0, 5000, 4096), SegmentRecord(5000, 10_000, 0))
    assert b.holders() == {(group.id, 1): ("b", T0 + 2 * LEASE + 1)}


def test_a_stale_holder_can_no_longer_write(a: PostgresStore, b: PostgresStore) -> None:
    group = a.add_group(plain_group(files=2))
    stale = a.claim("a", lease_seconds=LEASE, limit=1, now=T0)[0]
    [fresh] = b.claim("b", lease_seconds=LEASE, limit=1, now=T0 + LEASE + 1)
    assert (fresh.group_id, fresh.index) == (stale.group_id, stale.index)
    b.save_claimed_progress([(fresh, 100, 1000)])

    with pytest.raises(LeaseLostError, match="lease lost") as caught:
        a.save_claimed_progress([(stale, 999, 1000)])
    assert caught.value.claims == (stale,)
    with pytest.raises(LeaseLostError):
        a.transition_claimed(
            stale, FileStatus.FAILED, allowed_from={FileStatus.ACTIVE}, error_kind="x"
        )
    with pytest.raises(LeaseLostError):
        a.release(stale, FileStatus.COMPLETED)
    with pytest.raises(LeaseLostError):
        a.save_claimed_segments(stale, [SegmentRecord(0, 10, 10)])
    assert a.renew([stale]) == []

    record = b.get_file(group.id, stale.index)
    assert record is not None
    assert (record.status, record.bytes_done, record.error_kind) == (FileStatus.ACTIVE, 100, None)
    assert b.segments(group.id, stale.index) is None
    b.release(fresh, FileStatus.COMPLETED, finished_at=5.0)  # the new holder still can
    done = b.get_file(group.id, stale.index)
    assert done is not None and done.status is FileStatus.COMPLETED and b.holders() == {}


def test_progress_for_several_claims_writes_the_held_and_names_the_lost(
    a: PostgresStore, b: PostgresStore
) -> None:
    group = a.add_group(plain_group(files=2))
    first, second = a.claim("a", lease_seconds=LEASE, limit=2, now=T0)
    b.transition(group.id, 2, FileStatus.QUEUED, allowed_from={FileStatus.ACTIVE})  # requeued
    with pytest.raises(LeaseLostError) as caught:
        a.save_claimed_progress([(first, 10, None), (second, 20, None)])
    assert caught.value.claims == (second,)
    assert [f.bytes_done for f in a.files()] == [10, 0]


def test_renew_keeps_a_lease_alive_past_its_first_expiry(
    a: PostgresStore, b: PostgresStore
) -> None:
    a.add_group(plain_group(files=1))
    [mine] = a.claim("a", lease_seconds=LEASE, limit=1, now=T0)
    [renewed] = a.renew([mine], now=T0 + LEASE - 5)
    assert renewed.expires_at == T0 + 2 * LEASE - 5 and renewed.fence == mine.fence
    assert b.claim("b", lease_seconds=LEASE, limit=1, now=T0 + LEASE + 1) == []
    a.save_claimed_progress([(renewed, 50, None)])  # still the holder
    assert a.transition_claimed(
        renewed, FileStatus.ACTIVE, allowed_from={FileStatus.ACTIVE}, attempts=2
    )
    assert (
        a.transition_claimed(  # held, but not in that status: refused without an error
            renewed, FileStatus.PAUSED, allowed_from={FileStatus.QUEUED}
        )
        is False
    )
    [later] = b.claim("b", lease_seconds=LEASE, limit=1, now=T0 + 2 * LEASE)
    assert later.fence > mine.fence and later.file.attempts == 2


def test_expire_and_recover_requeue_only_what_nobody_holds(
    a: PostgresStore, b: PostgresStore
) -> None:
    group = a.add_group(plain_group(files=3))
    a.set_order({(group.id, 1): 1, (group.id, 2): 2, (group.id, 3): 3})
    [live] = a.claim("a", lease_seconds=3600, limit=1)  # the server's clock: live
    [lapsed] = a.claim("a", lease_seconds=LEASE, limit=1, now=T0)  # long lapsed by now
    assert (live.index, lapsed.index) == (1, 2)
    assert b.transition(group.id, 3, FileStatus.ACTIVE, allowed_from={FileStatus.QUEUED})
    a.save_claimed_segments(lapsed, [SegmentRecord(0, 10, 5)])

    assert [f.index for f in b.expire(now=T0 + 1)] == []  # not lapsed yet at that time
    [expired] = b.expire()
    assert (expired.index, expired.status) == (lapsed.index, FileStatus.QUEUED)
    assert b.segments(group.id, lapsed.index) == (SegmentRecord(0, 10, 5),)
    recovered = b.recover()  # at start: the unleased active file, never a live lease
    assert [f.index for f in recovered] == [3]
    assert b.holders() == {(group.id, live.index): ("a", live.expires_at)}
    with pytest.raises(LeaseLostError):
        a.save_claimed_progress([(lapsed, 1, None)])
    a.save_claimed_progress([(live, 7, None)])


def test_claim_checks_its_arguments(a: PostgresStore) -> None:
    a.add_group(plain_group(files=1))
    with pytest.raises(ValueError):
        a.claim("", lease_seconds=LEASE, limit=1)
    with pytest.raises(ValueError):
        a.claim("w", lease_seconds=0, limit=1)
    assert a.claim("w", lease_seconds=LEASE, limit=0) == []
    [claim] = a.claim("w", lease_seconds=LEASE, limit=1)
    with pytest.raises(ValueError, match="leaves active"):
        a.release(claim, FileStatus.ACTIVE)
    assert a.renew([]) == []
    a.save_claimed_progress([])


# -- the fleet's cap ------------------------------------------------------------------------------


def test_a_fleet_cap_holds_over_concurrent_claimers(pg_url: str, a: PostgresStore) -> None:
    a.add_group(plain_group("g", files=40))
    assert a.fleet_limits() == FleetLimits()
    assert a.set_fleet_limits(max_active=5) == FleetLimits(max_active=5)
    workers = [PostgresStore(pg_url) for _ in range(4)]
    start = threading.Barrier(len(workers))
    got: list[Claim] = []
    errors: list[BaseException] = []

    def work(name: str, store: PostgresStore) -> None:
        try:
            start.wait()
            for _ in range(40):  # each asks, again and again, for more than the cap leaves
                got.extend(store.claim(name, lease_seconds=LEASE, limit=3))
                time.sleep(0.001)  # a claim that found another's turn claims nothing
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{n}", s)) for n, s in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for store in workers:
        store.close()
    assert errors == []
    assert len(got) == 5 == len(a.holders())  # never more active than the cap, all at once
    # One finishes: one more may start. A lapsed lease counts for nothing (its file is free).
    a.release(got[0], FileStatus.COMPLETED)
    assert len(a.claim("late", lease_seconds=LEASE, limit=3)) == 1
    assert a.claim("late", lease_seconds=LEASE, limit=3) == []
    later = a.claim("later", lease_seconds=LEASE, limit=10, now=time.time() + 2 * LEASE)
    assert len(later) == 5  # every lease lapsed by then: the cap is free again
    a.set_fleet_limits(max_connections_per_host=8)  # the other cap, the first one kept
    assert a.fleet_limits() == FleetLimits(max_active=5, max_connections_per_host=8)
    assert a.set_fleet_limits(max_active=None) == FleetLimits(max_connections_per_host=8)
    assert len(a.claim("free", lease_seconds=LEASE, limit=10)) == 10
    with pytest.raises(ValueError, match="at least 1"):
        a.set_fleet_limits(max_active=0)
    with pytest.raises(ValueError, match="max_connections_per_host must be at least 1"):
        a.set_fleet_limits(max_connections_per_host=0)


# -- the roster and fair claims -------------------------------------------------------------------


def test_the_roster_lists_live_workers_with_what_each_runs(
    a: PostgresStore, b: PostgresStore
) -> None:
    a.add_group(plain_group("g", files=3))
    assert a.roster() == []
    assert a.heartbeat("w1", max_active=3, accepting=True, lapse_seconds=LEASE) == [
        WorkerLoad("w1", running=0, max_active=3)
    ]
    a.claim("w1", lease_seconds=LEASE, limit=2)  # alone in the roster: claims greedily
    roster = b.heartbeat("w2", max_active=1, accepting=False, lapse_seconds=LEASE)
    assert roster == [
        WorkerLoad("w1", running=2, max_active=3),
        WorkerLoad("w2", running=0, max_active=1, accepting=False),
    ]
    assert roster[1].room == 0  # not accepting: no room, whatever its max_active
    b.leave("w2")
    assert a.roster() == [WorkerLoad("w1", running=2, max_active=3)]
    a.heartbeat("w1", max_active=3, accepting=True, lapse_seconds=0.05)
    time.sleep(0.1)  # lapsed: out of the roster (its leases are its own affair)
    assert a.roster() == []
    with pytest.raises(ValueError, match="heartbeat needs"):
        a.heartbeat("w1", max_active=0, accepting=True, lapse_seconds=LEASE)


def test_claims_leave_queued_files_to_idle_workers(
    pg_url: str, a: PostgresStore, b: PostgresStore
) -> None:
    a.add_group(plain_group("g", files=4))
    with PostgresStore(pg_url) as c:
        for name, store in (("w1", a), ("w2", b), ("w3", c)):
            store.heartbeat(name, max_active=3, accepting=True, lapse_seconds=LEASE)
        a.heartbeat("w1", max_active=3, accepting=True, lapse_seconds=LEASE)  # sees w2, w3
        # Four files, three workers with three slots each: w1 takes two, not three.
        assert len(a.claim("w1", lease_seconds=LEASE, limit=3)) == 2
        b.heartbeat("w2", max_active=3, accepting=True, lapse_seconds=LEASE)
        assert len(b.claim("w2", lease_seconds=LEASE, limit=3)) == 1  # w3 is still at none
        c.heartbeat("w3", max_active=3, accepting=True, lapse_seconds=LEASE)
        assert len(c.claim("w3", lease_seconds=LEASE, limit=3)) == 1
    assert Counter(holder for holder, _ in a.holders().values()) == {"w1": 2, "w2": 1, "w3": 1}


def test_a_worker_claims_what_the_others_have_no_room_for(
    a: PostgresStore, b: PostgresStore
) -> None:
    a.add_group(plain_group("g", files=4))
    b.heartbeat("small", max_active=1, accepting=True, lapse_seconds=LEASE)
    b.heartbeat("gone", max_active=3, accepting=False, lapse_seconds=LEASE)
    a.heartbeat("big", max_active=4, accepting=True, lapse_seconds=LEASE)
    # `small` can take one, `gone` none: `big` takes the other three at once.
    assert len(a.claim("big", lease_seconds=LEASE, limit=4)) == 3
    assert len(b.claim("small", lease_seconds=LEASE, limit=1)) == 1


def test_a_host_hold_ends_on_the_database_clock_whatever_the_workers_clocks(
    a: PostgresStore, b: PostgresStore
) -> None:
    a.heartbeat("w1", max_active=1, accepting=True, lapse_seconds=LEASE)  # measures the offset
    # Host A's clock runs 100 s ahead of B's: a 5 s hold it computes ends at its time + 5 ...
    a._offset = a._clock_offset() - 100.0
    a.hold_host("hub.example", time.time() + 100.0 + 5.0)
    # ... which B, on its own clock, reads as 5 s from its now, not 105.
    (until,) = b.host_holds(time.time()).values()
    assert 4.0 < until - time.time() <= 5.5
    assert a.host_holds(time.time() + 100.0 + 6.0) == {}  # over for A too, on its own clock
