"""Hosts that asked to wait: a 429 or 503 with `Retry-After` holds its host for every request.

`HostHolds` maps a host (`host[:port]`, lower-cased) to the time its hold ends (epoch seconds).
One instance is shared by everything that talks to the network for a manager, so the server's
answer to one request holds all of them: transfers wait in `ConnectionSlots.acquire` (every
request a transfer makes takes a slot), the Hub's API calls and the planner's URL probes wait in
`wait` before each request. `holds` is the plain mapping the pure scheduling step reads.

A hold is announced to the listeners (the manager stores it, so a restart and every worker of a
shared queue wait too, and says so) unless it comes from there (`announce=False`): a hold read
back from the store is not stored again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from urllib.parse import urlsplit

__all__ = ["HoldListener", "HostHolds", "host_key"]

HoldListener = Callable[[str, float, str], None]
"""(host, until, why): a new or longer hold."""


def host_key(url: str) -> str:
    """The key of a hold: the URL's scheme-less `host[:port]`, lower-cased ('' if unparsable)."""
    try:
        return urlsplit(url).netloc.lower()
    except ValueError:
        return ""


class HostHolds:
    """Per-host holds shared by every request of one manager."""

    def __init__(self) -> None:
        self.holds: dict[str, float] = {}
        self._listeners: list[HoldListener] = []

    def listen(self, listener: HoldListener) -> None:
        self._listeners.append(listener)

    def until(self, host: str, now: float | None = None) -> float | None:
        """When the hold on `host` ends, if it is still in force at `now` (default: now)."""
        until = self.holds.get(host)
        if until is None or until <= (time.time() if now is None else now):
            return None
        return until

    def hold(self, host: str, until: float, why: str = "", *, announce: bool = True) -> bool:
        """Hold `host` until `until` (a hold never shortens); True when it is new or longer."""
        if not host or until <= self.holds.get(host, 0.0):
            return False
        self.holds[host] = until
        if announce:
            for listener in list(self._listeners):
                listener(host, until, why)
        return True

    async def wait(self, host: str) -> float:
        """Return once `host` is not held (a hold may grow meanwhile); the seconds waited."""
        waited = 0.0
        while (until := self.until(host)) is not None:
            delay = until - time.time()
            await asyncio.sleep(delay)
            waited += delay
        return waited
