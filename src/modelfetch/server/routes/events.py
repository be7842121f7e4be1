"""The live event stream (Server-Sent Events): a snapshot, then every event, replay by seq.

The snapshot goes out a page at a time (`server/pages.py`: each page read and encoded once,
shared by the clients that connect together): a `snapshot` message with the first page, then
`snapshot_page` messages until one has `next: null`, then every event after the snapshot's seq,
in order (buffered by the subscription meanwhile). Pages are read as they are sent, so a later
one may already reflect some of those events; each event carries absolute values, so applying
it again over a page is harmless.

`?types=` narrows the events (never the snapshot, nor `missed`) to those a client uses: a
command following 200 small downloads has no use for their progress and queue events, a
third of them, which are then neither encoded nor sent nor parsed.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from modelfetch.core import events as ev
from modelfetch.server.api_models import EventsQuery
from modelfetch.server.openapi import Operation
from modelfetch.server.pages import SNAPSHOT_REUSE, Page, PageCache
from modelfetch.server.parsing import read_query
from modelfetch.server.responses import Handler, HTTPError
from modelfetch.server.state import STATE, DaemonState, OpenStream

__all__ = ["OPERATIONS", "PLAIN_ROUTES", "close_streams"]

_SSE_WRITE_TIMEOUT = 30.0
_SSE_BUFFER = 1024
_SLICE = 64 << 10  # bytes of a large message written at a time
_COALESCE = 64 << 10  # bytes of waiting events written together, at most
# What every stream gets, whatever its `types`: a snapshot to start from, and word of a gap.
_ALWAYS: frozenset[type[ev.Event]] = frozenset({ev.Snapshot, ev.SnapshotPage, ev.Missed})


def _last_event_id(request: web.Request) -> int | None:
    """The seq to resume after: `Last-Event-ID` (sent by EventSource on reconnect) or ?since=.
    An unreadable id is treated as none: the client gets a fresh snapshot."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None:
        raw = request.query.get("since")
    if raw is None or not raw.strip().isascii() or not raw.strip().isdigit():
        return None
    return int(raw.strip())


class _ClientGone(Exception):
    pass


async def events(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    manager = state.manager
    bus = manager.bus
    since = _last_event_id(request)
    types = read_query(request, EventsQuery).types
    wanted = None if types is None else _ALWAYS | {ev.EVENT_TYPES[t] for t in types}
    if bus.closed:
        raise HTTPError(503, "unavailable", "the daemon is shutting down")
    history = None  # the events to replay after `since`, when the bus still holds them all
    if since is not None:
        with contextlib.suppress(ValueError):  # a seq from an earlier run of the daemon
            history = bus.history_since(since)
    backlog = len(history or ())  # events the replay hands over at once
    first: Page | None = None
    if history is None:
        # A (possibly shared) first page, then the rest, then every event after the seq the
        # first page reflects: replayed from the bus history, so nothing in between is lost.
        first = await state.pages.page(max_age=SNAPSHOT_REUSE, in_steps=True, replay=True)
        since = first.as_of
    # Room for the whole replay on top of the usual buffer: `get -I list` follows from before
    # its batch, and 200 small downloads finish ~1,500 events while the daemon plans the list;
    # a replay that overflowed would end in `missed` and a snapshot instead of the events.
    subscription = bus.subscribe(maxsize=_SSE_BUFFER + backlog, since=since)
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
        if first is not None:
            await _send_snapshot(response, state.pages, first)
        await _pump(request, response, stream, state, wanted)
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
    request: web.Request,
    response: web.StreamResponse,
    stream: OpenStream,
    state: DaemonState,
    wanted: frozenset[type[ev.Event]] | None,
) -> None:
    """Every event of the subscription (of the `wanted` types, all when None) to the client;
    a comment line when nothing was written for `keepalive` seconds."""
    manager = state.manager
    keepalive = state.config.keepalive
    loop = asyncio.get_running_loop()
    written = loop.time()
    while not stream.closing:
        try:
            async with asyncio.timeout(max(0.0, written + keepalive - loop.time())):
                event = await anext(stream.subscription)
        except TimeoutError:
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            await _send(response, b": keep-alive\n\n")
            written = loop.time()
            continue
        except StopAsyncIteration:  # the bus closed (the manager shut down) or we did
            return
        # What piled up meanwhile goes out in the same write (one syscall, one timeout)
        # rather than one write per event: 200 small downloads make ~1,500 events.
        frames: list[bytes] = []
        size = 0
        while True:
            if wanted is None or type(event) in wanted:
                frames.append(state.frames.message(event))
                size += len(frames[-1])
            if isinstance(event, ev.Missed) or size >= _COALESCE:
                break
            ready = stream.subscription.ready()
            if ready is None:
                break
            event = ready
        if not frames:
            continue  # none of the types asked for
        await _send(response, frames[0] if len(frames) == 1 else b"".join(frames))
        written = loop.time()
        if isinstance(event, ev.Missed):
            # This client fell behind and lost events: start it over from a fresh snapshot,
            # with a new subscription (the old buffer holds events the snapshot already has).
            stream.subscription.close()
            if stream.closing or manager.bus.closed:
                return
            first = await state.pages.page(max_age=SNAPSHOT_REUSE, in_steps=True)
            stream.subscription = manager.bus.subscribe(maxsize=_SSE_BUFFER, since=first.as_of)
            await _send_snapshot(response, state.pages, first)
            written = loop.time()


async def _send(response: web.StreamResponse, data: bytes | memoryview) -> None:
    """Write, but never wait forever on a client that stopped reading."""
    try:
        async with asyncio.timeout(_SSE_WRITE_TIMEOUT):
            await response.write(data)
    except TimeoutError:
        raise _ClientGone from None


async def _send_snapshot(response: web.StreamResponse, pages: PageCache, first: Page) -> None:
    """The snapshot at `first.as_of`, page after page. Each page is read (or shared) only when
    the last one has been written: one client never holds the loop for more than a page, and
    the list is never materialized whole."""
    seq = first.as_of
    page = first
    while True:
        for part in page.sse_parts(seq):
            await _send_large(response, part)
        if page.next is None:
            return
        # A later page must reflect at least the snapshot's seq: the client replays only
        # the events after it.
        page = await pages.page(page.next, max_age=SNAPSHOT_REUSE, at_least=seq, in_steps=True)


async def _send_large(response: web.StreamResponse, data: bytes) -> None:
    """A page's bytes (shared by every client that connects within a second) in slices, each
    written once the last has drained: a client that reads slowly holds a slice in its
    buffers, not its own copy of the page."""
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
            errors=(422, 503),
            description=(
                "`id:` is the event's seq, `event:` its type, `data:` its JSON form. A new "
                "connection starts with a snapshot of every download in id order, a page "
                "(up to 1,000) at a time: a `snapshot` event (`seq`, `items`, `next`), then, "
                "while `next` is not null, `snapshot_page` events (`seq` the snapshot's, "
                "`as_of` the last event the page reflects, `items`, `next`). Then come the "
                "events after the snapshot's `seq`, in order: apply them after the last page "
                "(they carry absolute values, so one a page already reflects does no harm); "
                "once applied up to the largest `as_of`, the view is the daemon's. Only a "
                "snapshot's last message has an `id:` (the others send an empty one), so a "
                "client cut off mid-snapshot reconnects to a whole new one. Reconnect with "
                "`Last-Event-ID` (or ?since=) to get what was missed; when that is no longer "
                "kept, or from an earlier run, a fresh snapshot comes first. A client that "
                "falls behind gets `missed` and then a fresh snapshot. Comment lines keep an "
                "idle connection open. `types` narrows the events to those named (the "
                "snapshot and `missed` still come); an unknown type is refused (422)."
            ),
            query=EventsQuery,
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
