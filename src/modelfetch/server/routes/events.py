"""The live event stream (Server-Sent Events): a snapshot, then every event, replay by seq."""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiohttp import web

from modelfetch.core import events as ev
from modelfetch.manager import DownloadManager
from modelfetch.server.openapi import Operation
from modelfetch.server.responses import Handler, HTTPError, dumps
from modelfetch.server.state import STATE, DaemonState, OpenStream

__all__ = ["OPERATIONS", "PLAIN_ROUTES", "close_streams", "sse_frame"]

_SSE_WRITE_TIMEOUT = 30.0
_SSE_BUFFER = 1024
_SNAPSHOT_REUSE = 1.0  # seconds a snapshot frame may be shared by connecting clients
_SLICE = 64 << 10  # bytes of a large frame written at a time
_PROGRESS_EVENTS = (ev.FileProgress, ev.GroupProgress)


def sse_frame(event: ev.Event) -> bytes:
    """One SSE message: `id:` the seq, `event:` the type, `data:` the JSON form (one line)."""
    data = dumps(ev.to_dict(event))
    return f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n".encode()


def _last_event_id(request: web.Request) -> int | None:
    """The seq to resume after: `Last-Event-ID` (sent by EventSource on reconnect) or ?since=.
    An unreadable id is treated as none: the client gets a fresh snapshot."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None:
        raw = request.query.get("since")
    if raw is None or not raw.strip().isascii() or not raw.strip().isdigit():
        return None
    return int(raw.strip())


async def _snapshot_event(manager: DownloadManager) -> ev.Snapshot:
    # The snapshot's seq is the last event it already reflects: the client resumes after it.
    seq = manager.bus.last_seq
    items = [view.to_dict() for view in await manager.snapshot()]
    return ev.Snapshot(items=items, seq=seq, ts=time.time())


async def _shared_snapshot(state: DaemonState) -> tuple[int, bytes]:
    """A snapshot frame and the seq it reflects, built at most once per _SNAPSHOT_REUSE while the
    bus still holds every event after it (the client replays those, so nothing is lost)."""
    bus = state.manager.bus
    cached = state.snapshot_frame
    now = time.monotonic()
    if cached is not None and now - cached[1] < _SNAPSHOT_REUSE:
        with contextlib.suppress(ValueError):
            since = bus.history_since(cached[0])
            # Shared only while every status in it is still current: what happened since may
            # be progress (replayed to the client) but nothing that changes a state or a place,
            # so a client that decides from the snapshot alone (RemoteManager.wait) is right.
            if since is not None and all(isinstance(e, _PROGRESS_EVENTS) for e in since):
                return cached[0], cached[2]
    event = await _snapshot_event(state.manager)
    frame = sse_frame(event)
    state.snapshot_frame = (event.seq, now, frame)
    return event.seq, frame


class _ClientGone(Exception):
    pass


async def events(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    manager = state.manager
    bus = manager.bus
    since = _last_event_id(request)
    if bus.closed:
        raise HTTPError(503, "unavailable", "the daemon is shutting down")
    replayable = since is not None
    if since is not None:
        try:
            replayable = bus.history_since(since) is not None
        except ValueError:  # a seq from an earlier run of the daemon
            replayable = False
    snapshot: bytes | None = None
    if not replayable:
        # A (possibly shared) snapshot, then every event after the seq it reflects: replayed
        # from the bus history, so nothing published in between is lost.
        since, snapshot = await _shared_snapshot(state)
    subscription = bus.subscribe(maxsize=_SSE_BUFFER, since=since)
    stream = OpenStream(subscription)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    state.streams.add(stream)
    try:
        await response.prepare(request)
        await _send(response, b"retry: 2000\n\n")
        if snapshot is not None:
            await _send_large(response, snapshot)
        await _pump(request, response, stream, state)
    except _ClientGone:
        # It stopped reading: drop the connection (a graceful close would wait for it to
        # read). EventSource reconnects with Last-Event-ID and catches up.
        if request.transport is not None:
            request.transport.abort()
    except (ConnectionError, RuntimeError):
        # RuntimeError: the manager stopped between two steps; the stream just ends.
        pass
    finally:
        state.streams.discard(stream)
        stream.subscription.close()
    return response


async def _pump(
    request: web.Request, response: web.StreamResponse, stream: OpenStream, state: DaemonState
) -> None:
    manager = state.manager
    keepalive = state.config.keepalive
    while not stream.closing:
        try:
            async with asyncio.timeout(keepalive):
                event = await anext(stream.subscription)
        except TimeoutError:
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            await _send(response, b": keep-alive\n\n")
            continue
        except StopAsyncIteration:  # the bus closed (the manager shut down) or we did
            return
        await _send(response, sse_frame(event))
        if isinstance(event, ev.Missed):
            # This client fell behind and lost events: start it over from a fresh snapshot,
            # with a new subscription (the old buffer holds events the snapshot already has).
            stream.subscription.close()
            if stream.closing or manager.bus.closed:
                return
            stream.subscription = manager.bus.subscribe(maxsize=_SSE_BUFFER)
            await _send_large(response, sse_frame(await _snapshot_event(manager)))


async def _send(response: web.StreamResponse, data: bytes | memoryview) -> None:
    """Write, but never wait forever on a client that stopped reading."""
    try:
        async with asyncio.timeout(_SSE_WRITE_TIMEOUT):
            await response.write(data)
    except TimeoutError:
        raise _ClientGone from None


async def _send_large(response: web.StreamResponse, data: bytes) -> None:
    """A snapshot frame (megabytes on a long queue, one object shared by every client that
    connects within a second) in slices, each written once the last has drained: a client
    that reads slowly holds a slice in its buffers, not its own copy of the whole frame."""
    view = memoryview(data)
    for start in range(0, len(view), _SLICE):
        await _send(response, view[start : start + _SLICE])


async def close_streams(app: web.Application) -> None:
    """On shutdown: end every open stream, so that the site can close."""
    for stream in list(app[STATE].streams):
        stream.close()


OPERATIONS: list[tuple[Operation, Handler]] = [
    (
        Operation(
            "GET",
            "/api/events",
            "events",
            "Live events (Server-Sent Events)",
            None,
            stream="text/event-stream",
            errors=(503,),
            description=(
                "`id:` is the event's seq, `event:` its type, `data:` its JSON form. A new "
                "connection starts with a `snapshot` event (items: every download). Reconnect "
                "with `Last-Event-ID` (or ?since=) to get what was missed; when that is no "
                "longer kept, or from an earlier run, a fresh `snapshot` comes first. A client "
                "that falls behind gets `missed` and then a fresh `snapshot`. Comment lines "
                "keep an idle connection open."
            ),
            extra_parameters=(
                {
                    "name": "since",
                    "in": "query",
                    "required": False,
                    "description": "resume after this seq (like Last-Event-ID)",
                    "schema": {"type": "integer", "minimum": 0},
                },
            ),
        ),
        events,
    ),
]

PLAIN_ROUTES: list[web.RouteDef] = []
