"""Fault knobs: which misbehaviour applies to which request, and the socket tricks behind them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from aiohttp import web

from modelfetch.testing.fakehub.replies import Reply, error

__all__ = [
    "Fault",
    "FaultBook",
    "FaultKind",
    "FaultOrigin",
    "close_after_flush",
    "reset_connection",
    "status_reply",
]

FaultOrigin = Literal["hub", "cdn", "any", "api"]
FaultKind = Literal[
    "truncate",
    "stall",
    "reset",
    "status",
    "ignore_range",
    "corrupt",
    "throttle",
    "expire",
    "redirect_loop",
    "bad_linked_etag",
]
Hop = Literal["resolve", "cdn", "api"]

_FAULT_KINDS: Final = frozenset(get_args(FaultKind))
_FAULT_ORIGINS: Final = frozenset(get_args(FaultOrigin))
# Faults that shape a body: they only ever apply to GET (a HEAD probe must not use them up).
_BODY_KINDS: Final = frozenset(
    {"truncate", "stall", "reset", "ignore_range", "corrupt", "throttle"}
)


@dataclass(slots=True)
class Fault:
    """A misbehaviour to inject; see docs/dev/fakehub-api.md. `hits` counts the requests it
    changed so far (it stops applying once `hits == times`)."""

    kind: FaultKind
    path: str | None = None
    origin: FaultOrigin = "any"
    times: int | None = None
    after_bytes: int = 0
    seconds: float = 0.0
    status: int = 503
    retry_after: str | int | float | None = None
    rate: float | None = None
    hits: int = field(default=0, init=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in _FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {sorted(_FAULT_KINDS)}")
        if self.origin not in _FAULT_ORIGINS:
            raise ValueError(
                f"unknown fault origin {self.origin!r}; one of {sorted(_FAULT_ORIGINS)}"
            )
        if self.times is not None and self.times < 0:
            raise ValueError("times must be >= 0 (or None for every matching request)")
        if self.after_bytes < 0 or self.seconds < 0:
            raise ValueError("after_bytes and seconds must be >= 0")
        if self.kind == "throttle" and (self.rate is None or self.rate <= 0):
            raise ValueError("a throttle fault needs rate > 0 (bytes per second)")
        if not 100 <= self.status <= 599:
            raise ValueError(f"status {self.status} is not an HTTP status")

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times


class FaultBook:
    """The faults a hub was given, in order, and which of them apply to a request."""

    def __init__(self) -> None:
        self.faults: list[Fault] = []

    def candidates(self, hop: Hop, body_hop: bool, path: str, method: str) -> list[Fault]:
        """Unexhausted faults that target this hop; each is counted only if it takes effect."""
        found = []
        for f in self.faults:
            if f.exhausted or (f.path is not None and f.path not in path):
                continue
            if f.kind in _BODY_KINDS and (method != "GET" or not body_hop):
                continue
            if hop == "api":
                ok = f.origin == "api" and f.kind == "status"
            elif f.kind in ("expire", "bad_linked_etag"):
                ok = hop == "resolve" and f.origin != "api"
            elif f.kind == "redirect_loop":
                ok = f.origin == "cdn" if hop == "cdn" else f.origin in ("hub", "any")
            elif f.origin == "any":
                ok = body_hop
            else:
                ok = f.origin == ("hub" if hop == "resolve" else "cdn")
            if ok:
                found.append(f)
        return found

    @staticmethod
    def take(faults: list[Fault], kind: FaultKind) -> Fault | None:
        """The first of `faults` of this kind, counted as used; None when there is none."""
        for f in faults:
            if f.kind == kind:
                f.hits += 1
                return f
        return None

    def api_faults(self, request: web.Request) -> None:
        """Raise the reply of a `status` fault aimed at this /api request, if any."""
        fault = self.take(self.candidates("api", False, request.path, request.method), "status")
        if fault is not None:
            raise status_reply(fault)


def status_reply(fault: Fault) -> Reply:
    headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
    return error(fault.status, f"injected fault: status {fault.status}", **headers)


def close_after_flush(request: web.Request) -> None:
    """End the connection with a FIN mid-body (asyncio flushes its buffer before closing)."""
    if request.transport is not None:
        request.transport.close()


async def reset_connection(request: web.Request) -> None:
    """Abort with an RST once what was written has reached the kernel."""
    transport = request.transport
    if transport is None:
        return
    # asyncio has no "flushed" notification; poll briefly (bounded) so the peer can get exactly
    # the bytes we counted before the RST discards anything still queued.
    for _ in range(500):
        if transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.002)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            # Linger 0 turns close() into a TCP RST instead of an orderly FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
