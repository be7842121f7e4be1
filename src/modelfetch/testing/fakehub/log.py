"""The request log: one `RequestRecord` per finished exchange, written by a middleware."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from modelfetch.testing.fakehub.replies import Reply

__all__ = ["EXCHANGE", "Exchange", "Origin", "RequestRecord", "recorder", "select"]

Origin = Literal["hub", "cdn"]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished exchange. `time` is when the request arrived (epoch seconds); `bytes_sent`
    counts body bytes handed to the socket, also for truncated or reset responses. A request
    whose client went away before any response has status 499."""

    time: float
    origin: Origin
    method: str
    path: str
    query: str
    range: str | None
    if_range: str | None
    authorization: bool
    status: int
    bytes_sent: int
    end: float = 0.0  # when the response finished (epoch seconds): with `time`, its lifetime
    client: str | None = None  # the opaque client id a file body was counted to (limits.py)


@dataclass(slots=True)
class Exchange:
    """What a handler reports about its response while it streams (for the log)."""

    status: int = 499  # nginx's "client closed request" until a response is chosen
    bytes_sent: int = 0
    client: str | None = None  # set by a handler that serves a file body


EXCHANGE: Final = web.RequestKey("fakehub_exchange", Exchange)


def recorder(
    origin: Origin, log: list[RequestRecord], in_flight: set[asyncio.Task[object]]
) -> Middleware:
    """A middleware that appends every exchange on `origin` to `log` and tracks its task in
    `in_flight` (so that closing the hub can end stalled bodies at once)."""

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        arrived = time.time()
        exchange = request[EXCHANGE] = Exchange()
        task = asyncio.current_task()
        if task is not None:
            in_flight.add(task)
        try:
            try:
                response = await handler(request)
            except Reply as reply:
                response = reply.response
            exchange.status = response.status
            if not response.prepared and request.method != "HEAD":
                exchange.bytes_sent = response.content_length or 0
            return response
        except web.HTTPException as exc:
            exchange.status = exc.status
            raise
        except Exception:
            exchange.status = 500
            raise
        finally:
            in_flight.discard(task)
            log.append(
                RequestRecord(
                    time=arrived,
                    origin=origin,
                    method=request.method,
                    path=request.path,
                    query=request.query_string,
                    range=request.headers.get("Range"),
                    if_range=request.headers.get("If-Range"),
                    authorization="Authorization" in request.headers,
                    status=exchange.status,
                    bytes_sent=exchange.bytes_sent,
                    end=time.time(),
                    client=exchange.client,
                )
            )

    return record


def select(
    log: Sequence[RequestRecord],
    origin: Origin | None = None,
    path_contains: str | None = None,
    method: str | None = None,
) -> list[RequestRecord]:
    """The records that match every filter given (`method` case-insensitively)."""
    return [
        r
        for r in log
        if (origin is None or r.origin == origin)
        and (path_contains is None or path_contains in r.path)
        and (method is None or r.method == method.upper())
    ]
