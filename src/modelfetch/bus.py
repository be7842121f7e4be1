"""Fan-out of events to every subscriber, without ever letting a slow one hold up the rest.

`EventBus.publish` stamps an event with the next sequence number and the time, keeps it in a
bounded history, and hands it to each subscription's buffer; it never awaits. A subscription whose
buffer is full drops its oldest buffered events and, before the next event it yields, yields one
`Missed(count)` for them. Its `seq` is the seq of the last event it stands for, so seq still only
grows along what a subscriber sees.

Replay (`subscribe(since=seq)`): the subscription first yields the kept history after `seq`, then
live events, with no gap and no duplicate. If `seq` is older than the history, it first yields
`Missed(count)` for the events that fell out of the history, then all of the history. A `seq`
ahead of the bus (from an earlier run of the process) is a ValueError.

Everything runs on the event loop's thread: publish from anywhere in the loop (including plain
callbacks), iterate a subscription from one task.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Callable
from itertools import islice
from types import TracebackType
from typing import Self

from modelfetch.core.events import Event, Missed

__all__ = ["EventBus", "Subscription"]


class EventBus:
    def __init__(self, *, history: int = 2048, clock: Callable[[], float] = time.time) -> None:
        if history < 0:
            raise ValueError("history must be >= 0")
        self._history: deque[Event] = deque(maxlen=history)
        self._clock = clock
        self._last_seq = 0
        self._subscriptions: set[Subscription] = set()
        self._closed = False

    @property
    def last_seq(self) -> int:
        """The seq of the last published event; 0 before the first."""
        return self._last_seq

    @property
    def closed(self) -> bool:
        return self._closed

    def publish(self, event: Event) -> Event:
        """Stamp `event` with the next seq and the time, keep it, deliver it; return the stamped
        event. Never blocks. After `close` it is still stamped and kept, but nobody hears it."""
        self._last_seq += 1
        stamped = _stamped(event, self._last_seq, self._clock())
        self._history.append(stamped)
        for subscription in self._subscriptions:
            subscription._deliver(stamped)
        return stamped

    def subscribe(self, *, maxsize: int = 1024, since: int | None = None) -> Subscription:
        """A new subscription to events published from now on (and, with `since`, the kept
        history after that seq first). `maxsize` bounds its buffer; see the module docstring."""
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        subscription = Subscription(self, maxsize)
        if since is not None:
            replay = self.history_since(since)
            if replay is None:
                replay = list(self._history)
                lost_until = replay[0].seq - 1 if replay else self._last_seq
                subscription._deliver(
                    Missed(count=lost_until - since, seq=lost_until, ts=self._clock())
                )
            for event in replay:
                subscription._deliver(event)
        if self._closed:
            subscription._end()
        else:
            self._subscriptions.add(subscription)
        return subscription

    def history_since(self, seq: int) -> list[Event] | None:
        """The kept events with a seq above `seq`, in order; None if some of them are no longer
        kept. ValueError for a negative seq or one this bus has not reached."""
        if seq < 0 or seq > self._last_seq:
            raise ValueError(f"no event {seq} on this bus (last is {self._last_seq})")
        first_kept = self._history[0].seq if self._history else self._last_seq + 1
        if seq < first_kept - 1:
            return None
        # The history holds consecutive seqs, so the position follows from the seq.
        return list(islice(self._history, seq - first_kept + 1, None))

    def close(self) -> None:
        """End every subscription: each yields what it already holds, then stops."""
        self._closed = True
        subscriptions, self._subscriptions = self._subscriptions, set()
        for subscription in subscriptions:
            subscription._end()

    def _unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)


_setattr = object.__setattr__
# Event class -> the fields a stamped copy takes from the original (every one but seq and ts),
# or None when the class is not a plain slotted dataclass and `dataclasses.replace` must do it.
_COPIED: dict[type[Event], tuple[str, ...] | None] = {}


def _copied_fields(cls: type[Event]) -> tuple[str, ...] | None:
    fields = dataclasses.fields(cls)
    slotted = all("__slots__" in vars(k) for k in cls.__mro__ if k is not object)
    if not slotted or hasattr(cls, "__post_init__") or not all(f.init for f in fields):
        return None
    return tuple(f.name for f in fields if f.name not in ("seq", "ts"))


def _stamped(event: Event, seq: int, ts: float) -> Event:
    """`dataclasses.replace(event, seq=seq, ts=ts)` at a quarter of its cost: the bus stamps
    every event, and events are frozen, slotted, validated by nothing but their types."""
    cls = type(event)
    try:
        names = _COPIED[cls]
    except KeyError:
        names = _COPIED[cls] = _copied_fields(cls)
    if names is None:
        return dataclasses.replace(event, seq=seq, ts=ts)
    stamped = object.__new__(cls)
    for name in names:
        _setattr(stamped, name, getattr(event, name))
    _setattr(stamped, "seq", seq)
    _setattr(stamped, "ts", ts)
    return stamped


class Subscription:
    """An async iterator of events from one bus; `with` / `async with` unsubscribes on exit.

    Iterate it from one task at a time.
    """

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self._maxsize = maxsize
        self._buffer: deque[Event] = deque()
        self._wakeup = asyncio.Event()
        self._ended = False
        self._unreported = 0  # dropped events not yet announced by a Missed
        self._last_dropped: Event | None = None
        self.dropped = 0
        """How many events this subscription lost because its buffer was full."""

    @property
    def pending(self) -> int:
        """Events buffered and not yet yielded."""
        return len(self._buffer)

    def _deliver(self, event: Event) -> None:
        if self._ended:
            return
        if len(self._buffer) >= self._maxsize:
            lost = self._buffer.popleft()
            if isinstance(lost, Missed):  # a Missed from replay: fold its count into ours
                self._unreported += lost.count
            else:
                self._unreported += 1
                self.dropped += 1
            self._last_dropped = lost
        self._buffer.append(event)
        self._wakeup.set()

    def _end(self) -> None:
        self._ended = True
        self._wakeup.set()

    def close(self) -> None:
        """Unsubscribe now: iteration stops, what was buffered is discarded."""
        self._bus._unsubscribe(self)
        self._buffer.clear()
        self._unreported = 0
        self._end()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        while True:
            event = self.ready()
            if event is not None:
                return event
            if self._ended:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    def ready(self) -> Event | None:
        """The next event if one is already here (a Missed first, as iteration yields it),
        else None, without waiting: a stream writes what piled up in one go."""
        if self._unreported:
            assert self._last_dropped is not None
            missed = Missed(
                count=self._unreported, seq=self._last_dropped.seq, ts=self._bus._clock()
            )
            self._unreported = 0
            return missed
        if self._buffer:
            return self._buffer.popleft()
        return None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
