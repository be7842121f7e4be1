from __future__ import annotations

import asyncio
import dataclasses
import inspect
import itertools
from typing import Any

import pytest

from modelfetch.bus import EventBus, Subscription
from modelfetch.core.events import EVENT_TYPES, Event, Missed, Notice


def fake_clock() -> tuple[list[float], EventBus]:
    ticks = itertools.count(1)
    seen: list[float] = []

    def clock() -> float:
        value = 1_000.0 + next(ticks)
        seen.append(value)
        return value

    return seen, EventBus(clock=clock)


def note(i: int) -> Notice:
    return Notice(message=f"n{i}")


async def take(subscription: Subscription, n: int) -> list[Event]:
    async def collect() -> list[Event]:
        return [await anext(subscription) for _ in range(n)]

    return await asyncio.wait_for(collect(), timeout=5)


async def drain(subscription: Subscription) -> list[Event]:
    async def collect() -> list[Event]:
        return [event async for event in subscription]

    return await asyncio.wait_for(collect(), timeout=5)


def messages(events: list[Event]) -> list[str]:
    out = []
    for event in events:
        if isinstance(event, Notice):
            out.append(event.message)
        elif isinstance(event, Missed):
            out.append(f"missed {event.count}")
        else:
            raise AssertionError(f"unexpected {event!r}")
    return out


async def test_publish_stamps_seq_and_time_in_order() -> None:
    times, bus = fake_clock()
    assert bus.last_seq == 0
    sub = bus.subscribe()
    original = note(1)
    stamped = [bus.publish(note(i)) for i in range(1, 4)]
    assert [e.seq for e in stamped] == [1, 2, 3]
    assert [e.ts for e in stamped] == times
    assert original.seq == 0  # the caller's value is untouched
    assert bus.last_seq == 3
    received = await take(sub, 3)
    assert received == stamped
    assert messages(received) == ["n1", "n2", "n3"]


async def test_two_subscribers_each_get_everything() -> None:
    bus = EventBus()
    a, b = bus.subscribe(), bus.subscribe()
    published = [bus.publish(note(i)) for i in range(5)]
    assert await take(a, 5) == published
    assert await take(b, 5) == published


async def test_a_waiting_subscriber_is_woken_by_publish() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    waiter = asyncio.create_task(take(sub, 2))
    await asyncio.sleep(0)
    assert not waiter.done()
    bus.publish(note(1))
    await asyncio.sleep(0)
    bus.publish(note(2))
    assert messages(await waiter) == ["n1", "n2"]


async def test_a_slow_subscriber_never_blocks_publish_and_is_told_what_it_missed() -> None:
    bus = EventBus()
    assert not inspect.iscoroutinefunction(bus.publish)
    slow = bus.subscribe(maxsize=3)
    fast = bus.subscribe(maxsize=100)
    published = [bus.publish(note(i)) for i in range(1, 11)]  # nobody reads meanwhile
    assert slow.pending == 3
    assert slow.dropped == 7
    received = await take(slow, 4)
    first = received[0]
    assert isinstance(first, Missed)
    assert first.count == 7
    assert first.seq == 7  # the last event it stands for
    assert received[1:] == published[7:]
    assert await take(fast, 10) == published
    assert fast.dropped == 0


def test_ready_hands_over_what_is_buffered_without_waiting_missed_first() -> None:
    bus = EventBus()
    sub = bus.subscribe(maxsize=2)
    assert sub.ready() is None  # nothing yet, and no wait
    for i in range(1, 5):
        bus.publish(note(i))  # n1, n2 fall out
    taken = [sub.ready(), sub.ready(), sub.ready()]
    assert all(e is not None for e in taken)
    assert messages([e for e in taken if e is not None]) == ["missed 2", "n3", "n4"]
    assert sub.ready() is None and sub.pending == 0


async def test_missed_is_reported_between_the_right_events() -> None:
    bus = EventBus()
    sub = bus.subscribe(maxsize=2)
    bus.publish(note(1))
    assert messages(await take(sub, 1)) == ["n1"]
    for i in range(2, 7):
        bus.publish(note(i))  # n2..n4 fall out; n5, n6 stay
    bus.publish(note(7))  # n5 falls out too
    assert messages(await take(sub, 3)) == ["missed 4", "n6", "n7"]
    bus.publish(note(8))
    assert messages(await take(sub, 1)) == ["n8"]  # nothing more to report
    assert sub.dropped == 4


async def test_replay_since_a_seq_then_live_without_gap_or_duplicate() -> None:
    bus = EventBus()
    for i in range(1, 6):
        bus.publish(note(i))
    sub = bus.subscribe(since=2)
    bus.publish(note(6))
    events = await take(sub, 4)
    assert [e.seq for e in events] == [3, 4, 5, 6]
    assert messages(events) == ["n3", "n4", "n5", "n6"]


async def test_replay_from_before_the_history_starts_with_missed() -> None:
    bus = EventBus(history=4)
    for i in range(1, 11):
        bus.publish(note(i))
    assert bus.history_since(3) is None
    sub = bus.subscribe(since=3)
    events = await take(sub, 5)
    first = events[0]
    assert isinstance(first, Missed)
    assert first.count == 3  # seqs 4, 5, 6 are gone
    assert first.seq == 6
    assert [e.seq for e in events[1:]] == [7, 8, 9, 10]
    assert sub.dropped == 0  # nothing was lost to its own buffer


async def test_replay_larger_than_the_buffer_keeps_the_newest() -> None:
    bus = EventBus()
    for i in range(1, 11):
        bus.publish(note(i))
    sub = bus.subscribe(since=0, maxsize=4)
    events = await take(sub, 5)
    assert messages(events) == ["missed 6", "n7", "n8", "n9", "n10"]


async def test_a_replayed_missed_that_falls_out_is_folded_into_the_next() -> None:
    bus = EventBus(history=3)
    for i in range(1, 11):
        bus.publish(note(i))
    sub = bus.subscribe(since=2, maxsize=2)  # Missed(5) then n8, n9, n10 into a buffer of 2
    events = await take(sub, 3)
    first = events[0]
    assert isinstance(first, Missed)
    assert first.count == 6  # seqs 3..8: five out of history, one out of the buffer
    assert [e.seq for e in events[1:]] == [9, 10]


def test_history_since() -> None:
    bus = EventBus(history=3)
    assert bus.history_since(0) == []
    for i in range(1, 6):
        bus.publish(note(i))
    assert bus.history_since(5) == []
    assert [e.seq for e in bus.history_since(2) or []] == [3, 4, 5]
    assert [e.seq for e in bus.history_since(4) or []] == [5]
    assert bus.history_since(1) is None
    assert bus.history_since(0) is None
    with pytest.raises(ValueError, match="no event 6"):
        bus.history_since(6)  # from another run of the bus
    with pytest.raises(ValueError):
        bus.history_since(-1)
    with pytest.raises(ValueError):
        bus.subscribe(since=99)


def test_a_bus_without_history() -> None:
    bus = EventBus(history=0)
    bus.publish(note(1))
    assert bus.history_since(1) == []
    assert bus.history_since(0) is None


async def test_close_ends_every_iteration_after_what_was_buffered() -> None:
    bus = EventBus()
    idle = bus.subscribe()
    busy = bus.subscribe()
    idle_reader = asyncio.create_task(drain(idle))
    await asyncio.sleep(0)
    bus.publish(note(1))
    await asyncio.sleep(0)
    bus.publish(note(2))
    bus.close()
    assert bus.closed
    assert messages(await idle_reader) == ["n1", "n2"]
    assert messages(await drain(busy)) == ["n1", "n2"]
    # Publishing after close still numbers the event; nobody is listening any more.
    assert bus.publish(note(3)).seq == 3
    late = bus.subscribe(since=1)
    assert messages(await drain(late)) == ["n2", "n3"]


async def test_unsubscribe_with_a_context_manager() -> None:
    bus = EventBus()
    with bus.subscribe() as sub:
        bus.publish(note(1))
        assert messages(await take(sub, 1)) == ["n1"]
        bus.publish(note(2))
    bus.publish(note(3))
    assert sub.pending == 0
    assert await drain(sub) == []


async def test_unsubscribe_with_an_async_context_manager_wakes_a_waiting_reader() -> None:
    bus = EventBus()
    async with bus.subscribe() as sub:
        reader = asyncio.create_task(drain(sub))
        await asyncio.sleep(0)
    assert await reader == []
    bus.publish(note(1))
    assert sub.pending == 0


def test_invalid_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        EventBus(history=-1)
    with pytest.raises(ValueError):
        EventBus().subscribe(maxsize=0)


def sample_event(cls: type[Event]) -> Event:
    """An instance of `cls` with a distinct value in every field but seq and ts."""
    values: dict[str, Any] = {}
    for n, field in enumerate(dataclasses.fields(cls)):
        if field.name in ("seq", "ts"):
            continue
        kind = str(field.type)
        if "dict" in kind:
            values[field.name] = {"7": n}
        elif "list" in kind:
            values[field.name] = [{"n": n}]
        elif kind.startswith("int") or kind.startswith("float"):
            values[field.name] = n
        else:
            values[field.name] = f"v{n}"
    return cls(**values)


@pytest.mark.parametrize("cls", list(EVENT_TYPES.values()), ids=list(EVENT_TYPES))
def test_a_stamped_event_is_the_original_with_seq_and_ts_only(cls: type[Event]) -> None:
    _, bus = fake_clock()
    original = sample_event(cls)
    stamped = bus.publish(original)
    assert stamped == dataclasses.replace(original, seq=1, ts=1_001.0)
    assert type(stamped) is cls and stamped is not original
    assert (original.seq, original.ts) == (0, 0.0)  # untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        stamped.seq = 5  # type: ignore[misc]
