"""Shared limits for transfers: bandwidth (`TokenBucket`) and connection counts (`ConnectionSlots`).

The manager owns these objects and hands the same instances to every transfer, so one bucket or
one slot pool spans every connection of every download that uses it. Both can be changed while
transfers run; waiters re-read the new limit at once.

Bandwidth. A transfer calls `consume(n)` after it has read `n` bytes and before it reads more:
the call returns when those bytes fit the rate. Buckets are FIFO and exact over time: each call
takes a ticket (the running total of bytes granted) and waits until the bucket has "paid" up to
it at `rate` bytes per second, so the long-run average equals the rate whatever the chunk sizes.
An idle bucket saves up at most `burst` seconds' worth, so a download that starts (or a rate
that is lowered) never gets a large free burst. Not reading is how a client slows a TCP sender
down: the kernel's receive window closes and the server waits.

Connections. `ConnectionSlots` bounds concurrent requests in total and per host. A slot is held
for the lifetime of one response body (a segment's request, or a whole single-stream transfer).
Waiters are served first come, first served, except that a waiter for a host at its cap does not
block a waiter for another host. A host that asked to wait (`HostHolds`, a 429/503 with
Retry-After) gets no new connection until its hold ends; connections already open go on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable

from modelfetch.transfer.holds import HostHolds

__all__ = ["DEFAULT_BURST", "ConnectionSlots", "Slot", "TokenBucket", "read_size_for"]

DEFAULT_BURST = 0.05  # seconds of rate an idle bucket may save up
MIN_READ = 16 << 10


class TokenBucket:
    """A bandwidth cap in bytes per second shared by any number of readers; `rate=None` means
    unlimited (and costs nothing). Change it with `set_rate` at any time."""

    def __init__(
        self,
        rate: float | None = None,
        *,
        burst: float = DEFAULT_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._burst = burst
        self._rate: float | None = None
        self._owed = 0.0  # bytes granted so far
        self._paid = 0.0  # bytes the rate has covered so far (may run `burst` ahead of owed)
        self._stamp = clock()
        self._changed = asyncio.Event()
        self.set_rate(rate)

    @property
    def rate(self) -> float | None:
        return self._rate

    def set_rate(self, rate: float | None) -> None:
        """A new limit in bytes per second (None or 0: unlimited); waiting readers adopt it."""
        if rate is not None and (math.isnan(rate) or rate < 0):
            raise ValueError(f"a rate must be a number of bytes per second >= 0, not {rate}")
        now = self._clock()
        self._settle(now)
        if self._rate is None:
            self._paid = self._owed  # no credit saved up while unlimited
        self._rate = rate or None
        self._stamp = now
        self._changed.set()
        self._changed = asyncio.Event()

    async def consume(self, n: int) -> None:
        """Return once `n` more bytes fit the rate (at once when unlimited)."""
        if self._rate is None or n <= 0:
            return
        self._settle(self._clock())
        self._owed += n
        ticket = self._owed
        while (rate := self._rate) is not None:
            missing = ticket - self._paid
            if missing <= 0:
                return
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(missing / rate):
                    await changed.wait()
            self._settle(self._clock())

    def _settle(self, now: float) -> None:
        rate = self._rate
        if rate is not None:
            credit = self._paid + (now - self._stamp) * rate
            self._paid = min(self._owed + rate * self._burst, credit)
        self._stamp = now


def read_size_for(chunk_size: int, buckets: Iterable[TokenBucket]) -> int:
    """How much to read at once: `chunk_size`, or about 1/16 s of the tightest limit, so a
    limited transfer moves smoothly instead of in multi-MiB lurches."""
    size = chunk_size
    for bucket in buckets:
        rate = bucket.rate
        if rate is not None:
            size = min(size, max(MIN_READ, int(rate / 16)))
    return size


class Slot:
    """One held connection slot; `release` is idempotent."""

    __slots__ = ("_host", "_owner", "_released")

    def __init__(self, owner: ConnectionSlots, host: str) -> None:
        self._owner = owner
        self._host = host
        self._released = False

    @property
    def host(self) -> str:
        return self._host

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._owner._release(self._host)


class ConnectionSlots:
    """At most `total` connections at once over every transfer sharing this object, and at most
    `per_host` to any one host (None: no per-host cap). Limits may change at any time; lowering
    one never interrupts a connection, it only holds back new ones."""

    def __init__(
        self, total: int, per_host: int | None = None, *, holds: HostHolds | None = None
    ) -> None:
        # Hosts that asked to wait (429/503): no new connection to one until its hold ends.
        self._holds = holds
        self._hold_timers: dict[str, asyncio.TimerHandle] = {}
        self._total = 0
        self._per_host: int | None = None
        # This worker's share of a fleet-wide per-host cap (`core/fleet_share.py`); None: none.
        self._shared_per_host: int | None = None
        self._used = 0
        self._by_host: collections.Counter[str] = collections.Counter()
        self._waiters: collections.deque[tuple[str, asyncio.Future[None]]] = collections.deque()
        self.set_limits(total=total, per_host=per_host)

    @property
    def total(self) -> int:
        return self._total

    @property
    def per_host(self) -> int | None:
        return self._per_host

    @property
    def host_cap(self) -> int | None:
        """The cap in force on connections to one host: the lower of the two, or None."""
        caps = [c for c in (self._per_host, self._shared_per_host) if c is not None]
        return min(caps) if caps else None

    def set_shared_per_host(self, cap: int | None) -> None:
        """This worker's share of a per-host cap over a fleet (None: no such cap)."""
        if cap is not None and cap < 1:
            raise ValueError(f"a share of the fleet's per-host cap must be >= 1, not {cap}")
        self._shared_per_host = cap
        self._grant()

    @property
    def in_use(self) -> int:
        return self._used

    def in_use_for(self, host: str) -> int:
        return self._by_host[host]

    def set_limits(self, *, total: int | None = None, per_host: int | None = None) -> None:
        """Change the caps (None: keep that one; `per_host=0` removes the per-host cap)."""
        if total is not None:
            if total < 1:
                raise ValueError(f"the connection cap must be at least 1, not {total}")
            self._total = total
        if per_host is not None:
            if per_host < 0:
                raise ValueError(f"the per-host cap must be >= 0 (0: none), not {per_host}")
            self._per_host = per_host or None
        self._grant()

    async def acquire(self, host: str) -> Slot:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((host, waiter))
        self._grant()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(host)  # granted just as we were cancelled: give it back
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove((host, waiter))
            raise
        return Slot(self, host)

    @contextlib.asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[Slot]:
        held = await self.acquire(host)
        try:
            yield held
        finally:
            held.release()

    def _fits(self, host: str) -> bool:
        if self._used >= self._total:
            return False
        if self._holds is not None and (until := self._holds.until(host)) is not None:
            self._grant_when_released(host, until)
            return False
        cap = self.host_cap
        return cap is None or self._by_host[host] < cap

    def hold(self, host: str, seconds: float, why: str) -> bool:
        """A server asked `host` to be left alone for `seconds` (429/503 with Retry-After): no
        new connection to it before then, here and for everything sharing the holds. False
        when these slots keep no holds (the caller waits as it can)."""
        if self._holds is None:
            return False
        self._holds.hold(host, time.time() + seconds, why)
        return True

    def _grant_when_released(self, host: str, until: float) -> None:
        """Wake the waiters for `host` when its hold ends (one timer per host, the latest)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, until - time.time())
        timer = self._hold_timers.get(host)
        if timer is None or timer.when() < when:
            if timer is not None:
                timer.cancel()
            self._hold_timers[host] = loop.call_at(when, self._hold_ended, host)

    def _hold_ended(self, host: str) -> None:
        self._hold_timers.pop(host, None)
        self._grant()

    def _grant(self) -> None:
        for entry in list(self._waiters):
            host, waiter = entry
            if waiter.done():
                self._waiters.remove(entry)
            elif self._fits(host):
                self._used += 1
                self._by_host[host] += 1
                self._waiters.remove(entry)
                waiter.set_result(None)
            if self._used >= self._total:
                break

    def _release(self, host: str) -> None:
        self._used -= 1
        self._by_host[host] -= 1
        if self._by_host[host] <= 0:
            del self._by_host[host]
        self._grant()
