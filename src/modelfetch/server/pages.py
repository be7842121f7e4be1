"""What the event stream and the listing send, encoded once and shared by every client.

Events: each one's SSE message is encoded once (`EventFrames`), not once per open stream: the
bus hands the same event object to every subscription, and a `queue_changed` on a queue of
10,000 is 150 KB of JSON, which fifty dashboards encoded fifty times.

Pages of the download list:

A page is at most `LIST_PAGE` downloads after an id, read from the manager at one loop turn (so
its items are exactly the state at `as_of`, the bus seq when it was read) and kept as encoded
JSON. The SSE start-up snapshot sends such pages one by one, and the unfiltered first pages of
`GET /api/downloads` are the same pages: fifty dashboards connecting at once to a queue of
10,000 read and encode each page once, hold the loop for one page (tens of ms) at a time rather
than for the whole list, and never hold 10,000 views (or fifty copies of their JSON) at once.

A listing's page and a snapshot's first page are shared while only progress happened since
`as_of` (every status, position and file in it is still current: a client that decides from
it alone, or lists right after an action, is right) and they are young enough: up to
`LIST_REUSE` for the listing, whose byte counts would otherwise lag, and up to
`SNAPSHOT_REUSE` for the event stream, whose client gets every event after `as_of` and so the
progress too (a longer window lets the clients of a reconnect storm, which arrive over seconds,
share one read of each page). A snapshot's later page only has to reflect every event up to the
snapshot's seq (its client replays all those after it), so it is shared while young enough even
when statuses changed since: a storm that meets the start of a download (a few status events)
does not read every page again for each of them. An older later page is shared too when no
event between its `as_of` and the snapshot's seq is about a download on it (by id), so that it
is what a read at that seq would give.

A stream's first page is also shared, for `STORM_REUSE`, however the downloads on it changed,
as long as the bus still holds every event since its `as_of` and not more than a stream's
buffer takes at once: the stream then starts at that `as_of` and replays those events, which is
what it does for progress anyway. Without it, fifty dashboards connecting over a second to a
queue that moves read every page again after each `queue_changed` (twice a second, and it
names every waiting download): under load.py that was 7 s of the loop's 12, and every request
waited behind it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from modelfetch.core import events as ev
from modelfetch.manager import DownloadManager
from modelfetch.server.api_models import LIST_PAGE
from modelfetch.server.responses import dumps

__all__ = [
    "LIST_REUSE",
    "PAGE_SIZE",
    "SNAPSHOT_REUSE",
    "STORM_REUSE",
    "EventFrames",
    "Page",
    "PageCache",
    "sse_message",
]

LIST_REUSE = 1.0
"""Seconds a page may answer `GET /api/downloads` after it was read (while only progress
happened since): its byte counts are at most that old."""
SNAPSHOT_REUSE = 10.0
STORM_REUSE = 2.0
"""Seconds a stream's first page is shared whatever changed since (see the module docstring)."""
REPLAY_MAX = 512
"""Events since a first page's `as_of` beyond which a stream reads a fresh one instead."""
"""Seconds a page may go into an SSE snapshot after it was read (the same condition): the
client replays the progress since from the bus, so nothing it shows is that old."""
PAGE_SIZE = LIST_PAGE
"""Downloads in a page (the listing's default `limit`, so that the two share pages)."""

log = logging.getLogger("modelfetch.server")

_PROGRESS_EVENTS = (ev.FileProgress, ev.GroupProgress)
_KEPT_PAGES = 64  # distinct pages kept at most: the first 64,000 downloads of the list
_STEP = 250  # downloads read per loop turn
_REFRESH_AT = 0.75  # of the listing's reuse: when a listed page is read again in the background


_FRAMES_KEPT = 4 << 20  # bytes of encoded events kept for the streams that are behind


def sse_message(event: ev.Event) -> bytes:
    """One SSE message: `id:` the seq, `event:` the type, `data:` the JSON form (one line)."""
    data = dumps(ev.to_dict(event))
    return f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n".encode()


class EventFrames:
    """The SSE messages of the latest events, by seq (see the module docstring)."""

    def __init__(self, *, kept: int = _FRAMES_KEPT) -> None:
        self._kept = kept
        self._size = 0
        self._frames: dict[int, tuple[ev.Event, bytes]] = {}
        self.encoded = 0  # messages encoded (the others were shared)

    def message(self, event: ev.Event) -> bytes:
        cached = self._frames.get(event.seq)
        if cached is not None and cached[0] is event:  # the very object: same seq, same bus
            return cached[1]
        data = sse_message(event)
        self.encoded += 1
        if isinstance(event, ev.Missed):
            return data  # a subscription's own, not the bus's: nobody else gets it
        old = self._frames.pop(event.seq, None)
        if old is not None:
            self._size -= len(old[1])
        self._frames[event.seq] = (event, data)
        self._size += len(data)
        # Oldest first (they are kept in the order they were first sent): a stream far behind
        # the others encodes its own, which costs time, never correctness.
        while self._size > self._kept and len(self._frames) > 1:
            _, dropped = self._frames.pop(next(iter(self._frames)))
            self._size -= len(dropped)
        return data


@dataclass(frozen=True, slots=True)
class Page:
    after: int | None  # the id the page starts after (None: the first page)
    as_of: int  # its items reflect every event up to this seq (replay from here)...
    until: int  # ...and none after this one (equal unless events came while it was read)
    read_at: float  # time.monotonic() when it was read
    ts: float  # time.time() when it was read, for the wire
    items: bytes  # the JSON array of its GroupViews
    next: int | None  # the id the following page starts after; None: this is the last

    def listing(self) -> bytes:
        """The `GET /api/downloads` body (DownloadList) of this page: its `seq` is `as_of`, the
        seq to follow the event stream from."""
        return b"".join(
            (b'{"seq":%d,"downloads":' % self.as_of, self.items, b',"next":%s}' % _id(self.next))
        )

    def sse_parts(self, seq: int) -> tuple[bytes, bytes, bytes]:
        """This page as the SSE message of a snapshot at `seq` (`snapshot` for the first page,
        `snapshot_page` after it), in three parts so the items are written without a copy;
        its `as_of` is `until`, the seq up to which a client applies the events that follow
        to see one moment of the daemon.

        Only a snapshot's last message carries `id: seq`; the others reset the id (an empty
        `id:`), so a client cut off in the middle of the pages reconnects without
        Last-Event-ID and gets a whole snapshot again, not events on top of half a list."""
        kind = "snapshot" if self.after is None else "snapshot_page"
        event_id = str(seq) if self.next is None else ""
        head = (
            f"id: {event_id}\nevent: {kind}\n"
            f'data: {{"type":"{kind}","seq":{seq},"ts":{dumps(self.ts)},"as_of":{self.until},'
            f'"next":{_id(self.next).decode()},"items":'
        ).encode()
        return head, self.items, b"}\n\n"


def _id(value: int | None) -> bytes:
    return b"null" if value is None else b"%d" % value


class PageCache:
    """The pages read lately, by the id they start after (see the module docstring)."""

    def __init__(self, manager: DownloadManager, *, size: int | None = None) -> None:
        self.manager = manager
        self.size = PAGE_SIZE if size is None else size
        self.list_reuse = LIST_REUSE
        self._pages: dict[int | None, Page] = {}
        # One read of a page at a time: a second reader of it waits and shares what the first
        # read. Reads of different pages interleave (a listing's first page never waits for
        # the streams' reads of the tenth).
        self._reading: dict[int | None, asyncio.Lock] = {}
        self._refreshing: dict[int | None, asyncio.TimerHandle] = {}  # see listing()
        self._reads: set[asyncio.Task[None]] = set()  # the background reads under way
        self.reads = 0  # pages read from the manager (the others were shared)

    async def listing(self, after: int | None = None) -> Page:
        """A page for `GET /api/downloads`: `page(after)`, and a fresh one read in the
        background once it is 3/4 of its reuse old (about as often as listings would read it
        themselves, so no more work for the loop), so that a client listing again (a
        dashboard refreshing, `modelfetch ls --watch`) finds it ready instead of waiting for
        the read: ~50 ms of views and JSON for 1,000 downloads on an idle machine, several
        times that on a busy loop. Only a page that a listing asked for since it was read is
        read again this way, so a daemon nobody lists reads nothing. What a listing answers is
        never older than `list_reuse`, as without this."""
        page = await self.page(after)
        if after not in self._refreshing:
            due = max(0.0, page.read_at + self.list_reuse * _REFRESH_AT - time.monotonic())
            loop = asyncio.get_running_loop()
            self._refreshing[after] = loop.call_later(due, self._refresh, after)
        return page

    def _refresh(self, after: int | None) -> None:
        async def read() -> None:
            try:
                # In steps: a listing being written meanwhile would wait for a whole read.
                await self.page(after, max_age=self.list_reuse * _REFRESH_AT, in_steps=True)
            except Exception:  # the manager stopped, the store is away: a listing says so
                log.debug("background read of the page after %s failed", after, exc_info=True)
            finally:
                self._refreshing.pop(after, None)

        self._reads.add(task := asyncio.get_running_loop().create_task(read()))
        task.add_done_callback(self._reads.discard)

    async def page(
        self,
        after: int | None = None,
        *,
        max_age: float | None = None,
        at_least: int | None = None,
        in_steps: bool = False,
        replay: bool = False,
    ) -> Page:
        """The page after `after`: a shared one younger than `max_age` if there is one that
        is current (only progress since it was read) or, given `at_least`, one that reflects
        every event up to that seq (a snapshot's later page: its client replays every event
        after `at_least`, so the page need not be current); else one read now, `in_steps`
        of a few hundred downloads with the loop free between them (a stream's snapshot, so
        that fifty of them never hold the loop for long) or in one turn (a listing, whose
        client is waiting: between steps the loop would run everything else first).
        `max_age` is the listing's `LIST_REUSE` unless given. `replay`: a stream's first page,
        whose client replays every event after the page's `as_of` (see STORM_REUSE)."""
        if max_age is None:
            max_age = self.list_reuse
        found = self._shared(after, max_age, at_least, replay)
        if found is not None:
            return found
        lock = self._reading.setdefault(after, asyncio.Lock())
        try:
            async with lock:
                # Whoever held the lock may just have read this very page.
                found = self._shared(after, max_age, at_least, replay)
                if found is None:
                    found = await self._read(after, _STEP if in_steps else self.size)
                    self._keep(found)
                return found
        finally:
            # At worst a page is read twice at once (a reader came as the lock was let go).
            if not lock.locked() and self._reading.get(after) is lock:
                del self._reading[after]

    def _shared(
        self, after: int | None, max_age: float, at_least: int | None, replay: bool = False
    ) -> Page | None:
        page = self._pages.get(after)
        if page is None:
            return None
        age = time.monotonic() - page.read_at
        if age >= max_age:
            return None
        if at_least is not None:
            return page if page.as_of >= at_least or self._untouched(page, at_least) else None
        since = self._events_since(page)
        if since is None:
            return None
        if replay and age < STORM_REUSE and len(since) <= REPLAY_MAX:
            return page  # its stream replays `since`
        if not all(isinstance(e, _PROGRESS_EVENTS) for e in since):
            return None
        return page

    def _events_since(self, page: Page) -> list[ev.Event] | None:
        """The events after the page's `as_of`, or None when the bus no longer holds them all
        (then nothing can be said about what changed since)."""
        try:
            return self.manager.bus.history_since(page.as_of)
        except ValueError:
            return None

    def _untouched(self, page: Page, seq: int) -> bool:
        """Whether no event from the page's `as_of` to `seq` is about a download the page
        holds (by id: those after `page.after`, up to its last one; the last page holds every
        later id): then it is what a read at `seq` would give, and a snapshot at `seq` may
        send it (50 clients meeting a busy queue would otherwise read every page again for
        each new snapshot seq, as downloads on the first page finish one after another)."""
        since = self._events_since(page)
        if since is None:
            return False
        low = page.after if page.after is not None else -1
        high = page.next  # None: no bound
        for event in since:
            if event.seq > seq:
                break
            if isinstance(event, ev.Notice | ev.Missed):
                continue  # in no view
            if isinstance(event, ev.QueueChanged):
                ids = [int(key) for key in event.positions]
            else:
                group_id = getattr(event, "group_id", None)
                if not isinstance(group_id, int):
                    return False  # a kind this does not know: not shared
                ids = [group_id]
            if any(low < gid and (high is None or gid <= high) for gid in ids):
                return False
        return True

    async def _read(self, after: int | None, step: int) -> Page:
        # `step` downloads per loop turn (the manager builds views without yielding): a page of
        # 1,000 holds the loop for ~50 ms on an idle machine, and every request and stream
        # waits behind it. Events may come between two steps: `as_of` is the seq before the
        # first and `until` the seq after the last.
        as_of = self.manager.bus.last_seq
        chunks: list[bytes] = []
        count = 0
        cursor = after
        while True:
            want = min(step, self.size - count)
            views = await self.manager.snapshot(after=cursor, limit=want)
            if views:
                chunks.append(dumps([view.to_dict() for view in views])[1:-1].encode())
                count += len(views)
                cursor = views[-1].id
            if len(views) < want or count == self.size:
                break
            await asyncio.sleep(0)
        self.reads += 1
        return Page(
            after=after,
            as_of=as_of,
            until=self.manager.bus.last_seq,
            read_at=time.monotonic(),
            ts=time.time(),
            items=b"[" + b",".join(chunks) + b"]",
            next=cursor if count == self.size else None,
        )

    def _keep(self, page: Page) -> None:
        self._pages[page.after] = page
        # Pages past their reuse serve nobody: drop them so an idle daemon keeps no copy of a
        # long list. (A page is dropped whole, never trimmed: a sender still holds its bytes.)
        now = time.monotonic()
        for key in [k for k, p in self._pages.items() if now - p.read_at >= SNAPSHOT_REUSE]:
            if key != page.after:
                del self._pages[key]
        while len(self._pages) > _KEPT_PAGES:
            del self._pages[next(iter(self._pages))]
