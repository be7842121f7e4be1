"""Multi-connection (segmented) transfer of one file: running the connections.

http.py decides whether a file goes segmented, makes the first ranged request (redirects, the
plan's cross-checks, validators) and sets up the `.part`; `SegmentedFetch` then runs the
connections over the segment map (core/segments.py): each takes a piece front to back, streams
it into the `.part` with `pwrite` at its offset, and, when no piece is left, steals half of the
largest remaining segment. http.py verifies and publishes when the map is complete.

Where the truth is. A segmented `.part` is allocated to its full size at once and filled out of
order, so its length says nothing. What is on disk is the segment map: per segment its start,
end and how many bytes from the start are written. `done` grows only after `pwrite` returned, so
a map never counts bytes that were not handed to the kernel. (A power cut can still lose page
cache the map already counted; the SHA-256 check at the end catches that and the retry policy
starts over.) The transfer passes the map to its caller's `on_segments` about once a second and
whenever it stops; the caller persists it (the manager: in the store) and hands it back as
`TransferRequest.segments`, and the next attempt resumes each segment at start + done. A
segmented `.part` without its map is worthless and is deleted. `partial_bytes` is how anyone
else (the manager's recovery and progress) counts the bytes on disk of a partial download.

How many connections. 8 at first (START_CONNECTIONS); then `_steer` probes like TCP does for
bandwidth: twice as many, kept only if throughput grew nearly in proportion (a server or path
that caps each connection), up to the request's `connections`. Where the link or the CPU is the
limit, the probe fails and the extra connections leave after their piece.

Hashing. The digest thread reads the contiguous prefix back from the `.part` as it grows (while
it is still in the page cache). Pieces go out in file order, a connection that finds the digest
thread idle first helps the segment the prefix waits for (`claim(help_front=True)`), and when
the digest thread falls behind (the CPU is the limit) reading pauses until it catches up
(`hash_gate`), so little is left to hash after the last byte. On a resume the prefix already on
disk is read back and hashed first, on the same thread.

The fast path. Pieces after the first go over our own keep-alive HTTP/1.1 connections
(`RawRange`): the kernel copies body bytes into one reusable buffer and they are written from
there, with none of aiohttp's per-chunk allocations and copies. Any answer but a plain 206 is
handed back to aiohttp and http.py's rules (errors, redirects, a changed file).

Connection trouble. A connection that receives nothing for the stall timeout is replaced by a
fresh one for the same remaining range; that is not an error and spends no retry. If the fresh
one also receives nothing, the transfer fails with StalledError (then the manager's retry policy
decides). A connection that breaks (reset, early end of body) after delivering bytes is likewise
reopened at once; one that breaks before delivering any byte fails the transfer.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from yarl import URL

from modelfetch.core.errors import NetworkError, StalledError
from modelfetch.core.headers import parse_content_length, parse_content_range
from modelfetch.core.paths import part_path, sidecar_path
from modelfetch.core.segments import (
    Segment,
    SegmentMap,
    SegmentRecord,
    grow_step,
    keeps_scaling,
)
from modelfetch.transfer.limiter import ConnectionSlots, Slot, TokenBucket, read_size_for
from modelfetch.transfer.sink import MAX_PENDING, WRITEBACK_STEP, PartState, SegmentedPartFile

__all__ = [
    "MAX_PIECE",
    "FirstPiece",
    "OpenRange",
    "RawRange",
    "RawTarget",
    "SegmentSettings",
    "SegmentedFetch",
    "partial_bytes",
    "piece_size",
]

MAX_PIECE = 64 << 20
PIECES_PER_CONNECTION = 4
START_CONNECTIONS = 8
GROW_INTERVAL = 0.5
HASH_BUSY_NO_PROBE = 0.5  # the digest thread's share of time above which probing stops

OpenRange = Callable[[int, int], Awaitable[aiohttp.ClientResponse]]
"""open_range(start, end) -> a response whose body is bytes [start, end) of the file (a checked
206), or a typed TransferError."""

# A connection that breaks after delivering bytes is reopened rather than failing the transfer.
_REOPENABLE = (
    aiohttp.ClientPayloadError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
    ConnectionError,
)


def piece_size(total: int, connections: int, min_segment: int) -> int:
    """How much one connection takes at a time: about a quarter of its share of the file, at
    least `min_segment` (so requests stay few) and at most MAX_PIECE (the hash trails the
    newest byte by about connections x piece: that is what is left to hash at the end)."""
    share = total // max(1, connections * PIECES_PER_CONNECTION)
    return max(min_segment, min(share, MAX_PIECE))


def partial_bytes(dest: Path, segments: Sequence[SegmentRecord] | None) -> int:
    """Bytes of `dest`'s partial download that are really on disk: the `.part`'s length for a
    front-to-back partial, the segment map's count for a segmented one (0 without its map)."""
    try:
        size = part_path(dest).stat().st_size
    except FileNotFoundError:
        return 0
    state = PartState.load(sidecar_path(dest))
    if state is not None and state.segmented:
        return sum(r.done for r in segments) if segments else 0
    return size


@dataclass(frozen=True, slots=True)
class SegmentSettings:
    connections: int  # at most this many at once
    piece: int
    min_steal: int
    stall_timeout: float | None
    chunk_size: int
    checkpoint_interval: float
    start_connections: int = START_CONNECTIONS  # opened at once; more while they help
    grow_interval: float = GROW_INTERVAL


@dataclass(slots=True)
class FirstPiece:
    """The response http.py already opened (and checked) for the first claimed segment."""

    segment: Segment
    response: aiohttp.ClientResponse
    slot: Slot | None


class _Stall(Exception):
    """No bytes (or no response head) for the stall timeout."""


class _EarlyEnd(Exception):
    """The body ended cleanly before the range did."""


class SegmentedFetch:
    """Runs the connections of one segmented transfer until the map is complete."""

    def __init__(
        self,
        *,
        segmap: SegmentMap,
        part: SegmentedPartFile,
        open_range: OpenRange,
        host: str,
        settings: SegmentSettings,
        slots: ConnectionSlots | None,
        limits: Sequence[TokenBucket],
        on_progress: Callable[[int], None],
        on_checkpoint: Callable[[], None],
        url: str,
        raw: RawTarget | None = None,
    ) -> None:
        self.segmap = segmap
        self.raw = raw  # where the fast path connects; None: every piece through aiohttp
        self.part = part
        self.open_range = open_range
        self.host = host
        self.settings = settings
        self.slots = slots
        self.limits = tuple(limits)
        self.on_progress = on_progress
        self.on_checkpoint = on_checkpoint
        self.url = url  # redacted, for error messages
        self.bytes_fetched = 0
        self.reopened = 0  # connections replaced after a stall or a break
        self.workers = 0  # connections started so far
        self._done = segmap.done_bytes
        self._last_checkpoint = time.monotonic()
        self._running = 0  # workers that have not returned yet
        self._target = 1  # how many workers should run; those above it leave between pieces
        self.peak = 0  # the most workers that ran at once
        self._steerer: asyncio.Task[None] | None = None

    async def run(self, first: FirstPiece) -> None:
        self._advance_hash()
        settings = self.settings
        try:
            async with asyncio.TaskGroup() as group:
                self._target = min(settings.connections, settings.start_connections)
                self._spawn(group, first)
                self._add_workers(group)
                self._steerer = group.create_task(self._steer(group))
        except BaseExceptionGroup as failed:
            raise _first_error(failed) from None
        if not self.segmap.complete:  # every connection quit with bytes missing: a bug
            missing = self.segmap.total - self.segmap.done_bytes
            raise NetworkError(f"{missing} bytes were never fetched", url=self.url)

    # -- how many connections -----------------------------------------------------------------

    def _add_workers(self, group: asyncio.TaskGroup) -> None:
        """Start connections until `_target` run (they leave on their own when above it)."""
        while self._running < self._target:
            self._spawn(group, None)

    def _spawn(self, group: asyncio.TaskGroup, first: FirstPiece | None) -> None:
        group.create_task(self._worker(self.workers, first))
        self.workers += 1
        self._running += 1
        self.peak = max(self.peak, self._running)

    async def _steer(self, group: asyncio.TaskGroup) -> None:
        """Add connections while they add throughput, the way TCP probes for bandwidth.

        Every `grow_interval` after a baseline: try twice as many; keep them if throughput grew
        by at least half of what linear scaling would give (each connection is what limits: a
        server or path that caps every connection, like a CDN's per-connection share), else
        go back (the extra ones leave after their piece) and stop: the link, the CPU, a
        bandwidth limit or the connection caps are what limits. Never above `connections`.
        No probe while the digest thread is busy more than half the time: then throughput can
        no longer grow by half, and more connections would only scatter bytes further ahead of
        the hashed prefix (read back and hashed after the last byte)."""
        interval = self.settings.grow_interval
        await asyncio.sleep(interval / 2)  # let the connections get going
        done, busy = self._done, self.part.hash_busy
        baseline: tuple[float, int] | None = None  # (rate, connections) before a probe
        while self._target < self.settings.connections or baseline is not None:
            await asyncio.sleep(interval)
            rate = (self._done - done) / interval
            hashing = (self.part.hash_busy - busy) / interval
            done, busy = self._done, self.part.hash_busy
            if baseline is not None:
                if not keeps_scaling(*baseline, rate, self._target):
                    self._target = baseline[1]
                    return
                baseline = None
            if (
                hashing > HASH_BUSY_NO_PROBE
                or self._target >= self.settings.connections
                or not self._unclaimed()
            ):
                return
            baseline = (rate, self._target)
            self._target = grow_step(self._target, self.settings.connections)
            self._add_workers(group)

    def hash_gate(self) -> int | None:
        """The digest backlog to wait down to before reading more, or None to read on.

        When the CPU is the limit (a fast link, a small machine), reading on only takes CPU
        from the digest thread and leaves more to hash after the last byte; waiting hands it
        over. The backlog may jump by about one piece per connection when the prefix catches
        up with pieces finished out of order, which is not the hash falling behind: the gate
        sits above twice that, so the download and the hash keep overlapping."""
        gate = max(MAX_PENDING, 2 * (self._running + 1) * self.settings.piece)
        if self.part.hash_pending <= gate:
            return None
        return gate // 2

    def _unclaimed(self) -> bool:
        return any(s.owner is None and not s.complete for s in self.segmap)

    # -- one connection ---------------------------------------------------------------------

    async def _worker(self, worker: int, first: FirstPiece | None) -> None:
        lane = _Lane()
        try:
            if first is not None:
                try:
                    await self._fetch(lane, first.segment, first.response, first.slot)
                finally:
                    self.segmap.release(first.segment)
            while self._running <= self._target:
                segment = self.segmap.claim(
                    worker,
                    piece=self.settings.piece,
                    min_steal=self.settings.min_steal,
                    # The digest thread has started and has nothing to do: the first
                    # unfinished segment is what it waits for, so help that one first.
                    help_front=self.part.size > 0 and self.part.hash_pending == 0,
                )
                if segment is None:
                    return
                try:
                    await self._fetch(lane, segment, None, None)
                finally:
                    self.segmap.release(segment)
        finally:
            if lane.conn is not None:
                lane.conn.close()
            self._running -= 1
            if self._running == 0 and self._steerer is not None:
                self._steerer.cancel()  # nothing left to steer; do not wait for its timer

    async def _fetch(
        self,
        lane: _Lane,
        segment: Segment,
        response: aiohttp.ClientResponse | None,
        slot: Slot | None,
    ) -> None:
        """Fill `segment` (whose end may move down while we work: a thief took the rest)."""
        idle_stalls = 0
        use_raw = self.raw is not None
        while not segment.complete:
            before = segment.done
            try:
                if slot is None and self.slots is not None:
                    slot = await self.slots.acquire(self.host)
                if response is None and use_raw and self.raw is not None:
                    try:
                        await self._raw_fetch(lane, segment)
                    except _NotPartial as answer:
                        use_raw = False  # an answer for the general path to judge
                        if answer.odd:
                            self.raw = None
                        continue
                else:
                    if response is None:
                        response = await self._open(segment)
                    await self._stream(segment, response)
                if not segment.complete:
                    raise _EarlyEnd
            except _Stall:
                idle_stalls = 0 if segment.done > before else idle_stalls + 1
                if idle_stalls >= 2:
                    stall = self.settings.stall_timeout or 0.0
                    raise StalledError(
                        f"no data for {stall:g} s, twice in a row", url=self.url
                    ) from None
                self.reopened += 1
            except (_EarlyEnd, *_REOPENABLE) as exc:
                if segment.done == before:
                    if isinstance(exc, _EarlyEnd):
                        raise NetworkError(
                            f"the body ended before byte {segment.end}", url=self.url
                        ) from None
                    raise
                idle_stalls = 0
                self.reopened += 1
            finally:
                if response is not None:
                    if response.content.at_eof():
                        response.release()  # the connection can serve the next piece
                    else:
                        response.close()  # unread bytes (a stolen tail, a stall): drop it
                    response = None
                if slot is not None:
                    slot.release()
                    slot = None

    async def _raw_fetch(self, lane: _Lane, segment: Segment) -> None:
        """The fast path for a piece: our own keep-alive HTTP/1.1 connection per lane, whose
        body bytes go from the one receive buffer straight into the `.part` (see RawRange)."""
        raw = self.raw
        assert raw is not None
        conn = lane.conn
        if conn is not None and conn.reusable:
            try:
                await conn.fetch(segment, raw.request(segment.pos, segment.end))
                return
            except (_EarlyEnd, ConnectionError):
                if conn.answered:
                    raise
                # The server closed the kept-alive connection as we reused it: a fresh one.
        if conn is not None:
            conn.close()
        lane.conn = None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.settings.stall_timeout) as deadline:
                _, conn = await loop.create_connection(
                    lambda: RawRange(self),
                    raw.host,
                    raw.port,
                    ssl=raw.ssl,
                    server_hostname=raw.host if raw.ssl is not None else None,
                )
        except TimeoutError:
            if deadline.expired():
                raise _Stall from None
            raise
        except OSError as exc:  # refused, unreachable, a TLS failure: as aiohttp reports them
            raise NetworkError(
                f"cannot connect to {raw.host}:{raw.port}: {exc}", url=self.url
            ) from exc
        lane.conn = conn
        await conn.fetch(segment, raw.request(segment.pos, segment.end))

    async def _open(self, segment: Segment) -> aiohttp.ClientResponse:
        try:
            async with asyncio.timeout(self.settings.stall_timeout) as deadline:
                return await self.open_range(segment.pos, segment.end)
        except TimeoutError:
            if deadline.expired():
                raise _Stall from None
            raise

    async def _stream(self, segment: Segment, response: aiohttp.ClientResponse) -> None:
        """Copy the body into the `.part` until the segment is complete or the body ends."""
        content = response.content
        loop = asyncio.get_running_loop()
        stall = self.settings.stall_timeout
        flushed = segment.pos
        try:
            async with asyncio.timeout(None) as deadline:
                while not segment.complete:
                    size = read_size_for(self.settings.chunk_size, self.limits)
                    if stall is not None:
                        deadline.reschedule(loop.time() + stall)
                    data = await content.read(size)
                    deadline.reschedule(None)  # the stall clock measures the network only
                    if not data:
                        return
                    for bucket in self.limits:
                        await bucket.consume(len(data))
                    take = min(len(data), segment.remaining)  # the end may have moved down
                    if take <= 0:
                        return
                    self.write(segment, memoryview(data)[:take])
                    if segment.pos - flushed >= WRITEBACK_STEP:
                        self.part.write_back(flushed, segment.pos - flushed)
                        flushed = segment.pos
                    if (limit := self.hash_gate()) is not None:
                        await self.part.hash_catch_up(limit)
        except TimeoutError:
            if deadline.expired():
                raise _Stall from None
            raise
        finally:
            if segment.pos > flushed:
                self.part.write_back(flushed, segment.pos - flushed)

    # -- bookkeeping ------------------------------------------------------------------------

    def write(self, segment: Segment, data: memoryview) -> None:
        """Bytes for `segment` at its current position: on disk, then counted."""
        self.part.write_at(segment.pos, data)
        self.segmap.advance(segment, len(data))
        self._moved(len(data))

    def _moved(self, n: int) -> None:
        self._done += n
        self.bytes_fetched += n
        self.on_progress(self._done)
        self._advance_hash()
        now = time.monotonic()
        if now - self._last_checkpoint >= self.settings.checkpoint_interval:
            self._last_checkpoint = now
            self.on_checkpoint()

    def _advance_hash(self) -> None:
        self.part.hash_upto(self.segmap.prefix)


# ---------------------------------------------------------------------------------------------
# The fast path: ranged GETs on our own HTTP/1.1 connections
# ---------------------------------------------------------------------------------------------


class _NotPartial(Exception):
    """The server did not answer a ranged GET with a plain 206: let aiohttp and http.py's
    rules judge the answer (errors, redirects, a changed file). `odd`: it was a 206 the fast
    path does not understand, so it is not used again for this file."""

    def __init__(self, *, odd: bool) -> None:
        super().__init__()
        self.odd = odd


_FRAMING = frozenset({"content-length", "content-range", "transfer-encoding", "content-encoding"})


@dataclass(frozen=True, slots=True)
class RawTarget:
    """Where and how the fast path asks for pieces: the URL the first request ended at, and
    the headers that request carried (User-Agent, Accept-Encoding, If-Range, Authorization
    only when that origin may have it)."""

    host: str
    port: int
    ssl: ssl_module.SSLContext | None
    host_header: str
    target: str  # path and query, exactly as encoded in the URL
    headers: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, url: str, headers: dict[str, str]) -> RawTarget | None:
        """None when the fast path cannot speak for this URL (the general path will)."""
        try:
            parsed = URL(url, encoded=True)
        except ValueError:
            return None
        scheme = parsed.scheme.lower()
        host = parsed.raw_host
        if scheme not in ("http", "https") or not host or parsed.raw_user is not None:
            return None
        if any("\r" in v or "\n" in v for kv in headers.items() for v in kv):
            return None
        port = parsed.port or (443 if scheme == "https" else 80)
        authority = f"[{host}]" if ":" in host else host
        if parsed.explicit_port is not None and parsed.explicit_port != parsed.port:
            authority = f"{authority}:{parsed.explicit_port}"
        elif parsed.explicit_port is not None:
            authority = f"{authority}:{port}"
        return cls(
            host=host,
            port=port,
            ssl=ssl_module.create_default_context() if scheme == "https" else None,
            host_header=authority,
            target=parsed.raw_path_qs or "/",
            headers=tuple(headers.items()),
        )

    def request(self, start: int, end: int) -> bytes:
        lines = [
            f"GET {self.target} HTTP/1.1",
            f"Host: {self.host_header}",
            f"Range: bytes={start}-{end - 1}",
            *(f"{name}: {value}" for name, value in self.headers),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Lane:
    """What one worker keeps between pieces: its fast-path connection (kept alive)."""

    __slots__ = ("conn",)

    def __init__(self) -> None:
        self.conn: RawRange | None = None


_HEAD_LIMIT = 64 << 10
RAW_BUFFER = 1 << 20


class RawRange(asyncio.BufferedProtocol):
    """One keep-alive HTTP/1.1 connection that fetches pieces for a SegmentedFetch.

    Why not aiohttp here: per received chunk it allocates a fresh bytes object, copies the body
    out of the parser's slice, joins buffered chunks, and runs a few coroutine steps; for a
    multi-GB file on a fast link that was most of the client's CPU (and CPU is what a verified
    download runs out of on a small machine). With asyncio's BufferedProtocol the kernel copies
    each body byte into this connection's one reusable buffer and `buffer_updated` pwrites it
    at its offset right from there: the same two copies curl makes.

    It only handles the expected answer: a 206 with Content-Length and a Content-Range for the
    bytes asked, without transfer or content coding. Anything else raises _NotPartial and the
    piece is asked for again through aiohttp, where http.py's rules decide what it means.
    """

    def __init__(self, owner: SegmentedFetch) -> None:
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self._buffer = memoryview(bytearray(RAW_BUFFER))
        self._transport: asyncio.Transport | None = None
        self._closed = False
        self._reusable = False
        self._head = bytearray()
        self._in_head = False
        self._body_left = 0
        self._segment: Segment | None = None
        self._start = 0
        self._flushed = 0
        self._waiter: asyncio.Future[None] | None = None
        self._keep_alive = False
        self._answered = False  # any byte of the current response arrived
        self._paying: asyncio.Task[None] | None = None
        self._unpaid = 0  # bytes written but not yet passed through the bandwidth limits
        self._last = 0.0  # when bytes last arrived (the stall clock)

    @property
    def reusable(self) -> bool:
        return self._reusable and not self._closed

    @property
    def answered(self) -> bool:
        """Whether the last request got any byte back (a kept-alive connection the server
        closed just as we reused it got none: worth one more try on a fresh one)."""
        return self._answered

    def close(self) -> None:
        self._reusable = False
        if self._paying is not None:
            self._paying.cancel()
        if self._transport is not None and not self._closed:
            self._transport.close()

    async def fetch(self, segment: Segment, request: bytes) -> None:
        """Ask for [segment.pos, segment.end) and write what arrives until the segment is
        complete (its end may move down meanwhile) or the response ends."""
        if self._transport is None or not self.reusable:
            raise ConnectionResetError("the connection is closed")
        self._segment = segment
        self._start = self._flushed = segment.pos
        self._head.clear()
        self._in_head = True
        self._answered = False
        self._reusable = False
        waiter = self._waiter = self._loop.create_future()
        self._transport.write(request)
        self._last = self._loop.time()
        stall = self._owner.settings.stall_timeout
        try:
            while not waiter.done():
                if stall is None:
                    await asyncio.wait([waiter])
                    break
                if self._paying is not None:  # waiting for a limit or the hash is not a stall
                    await asyncio.wait([waiter], timeout=stall)
                    continue
                left = self._last + stall - self._loop.time()
                if left <= 0:
                    raise _Stall
                await asyncio.wait([waiter], timeout=left)
            waiter.result()
            if self._paying is not None:
                await self._paying
        except BaseException:
            self.close()
            raise
        finally:
            self._waiter = None
            if segment.pos > self._flushed:
                self._owner.part.write_back(self._flushed, segment.pos - self._flushed)

    # -- protocol callbacks (on the loop; must never raise) ----------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._reusable = True

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer[: read_size_for(RAW_BUFFER, self._owner.limits)]

    def buffer_updated(self, nbytes: int) -> None:
        try:
            if self._waiter is None or self._waiter.done():
                raise NetworkError("the server sent bytes nobody asked for")
            self._last = self._loop.time()
            self._answered = True
            data = self._buffer[:nbytes]
            if self._in_head:
                self._read_head(data)
            else:
                self._read_body(data)
        except BaseException as exc:  # handed to fetch(), which closes the connection
            self._fail(exc)

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._fail(exc if exc is not None else _EarlyEnd())

    # -- parsing and writing ----------------------------------------------------------------

    def _read_head(self, data: memoryview) -> None:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > _HEAD_LIMIT:
                raise NetworkError("a response head over 64 KiB")
            return
        lines = bytes(self._head[:end]).decode("latin-1").split("\r\n")
        body = memoryview(bytes(self._head[end + 4 :]))
        self._head.clear()
        version, _, rest = lines[0].partition(" ")
        status = rest[:3]
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            key = name.lower()
            if not colon or name != name.strip() or not name:
                raise _NotPartial(odd=True)  # obsolete folding or garbage: not ours to judge
            if key in fields and key in _FRAMING:
                raise _NotPartial(odd=True)  # a repeated framing field: not ours to judge
            fields[key] = value.strip()
        segment = self._segment
        assert segment is not None
        length = parse_content_length(fields.get("content-length"))
        parsed = parse_content_range(fields.get("content-range"))
        if status != "206":
            raise _NotPartial(odd=False)
        if (
            not version.startswith("HTTP/1.")
            or length is None
            or "transfer-encoding" in fields
            or fields.get("content-encoding", "identity").lower() != "identity"
            or parsed is None
            or parsed.start != self._start
            or parsed.total != self._owner.segmap.total
        ):
            raise _NotPartial(odd=True)
        keep_alive = version == "HTTP/1.1" and "close" not in fields.get("connection", "").lower()
        self._keep_alive = keep_alive
        self._in_head = False
        self._body_left = length
        if body:
            self._read_body(body)
        elif length == 0:
            self._finish()

    def _read_body(self, data: memoryview) -> None:
        n = len(data)
        if n > self._body_left:
            raise NetworkError("the server sent more than it announced")
        self._body_left -= n
        segment = self._segment
        assert segment is not None
        take = min(n, segment.remaining)  # a thief may have moved the end down
        if take > 0:
            self._owner.write(segment, data[:take])
            if segment.pos - self._flushed >= WRITEBACK_STEP:
                self._owner.part.write_back(self._flushed, segment.pos - self._flushed)
                self._flushed = segment.pos
            if self._owner.hash_gate() is not None or any(
                b.rate is not None for b in self._owner.limits
            ):
                self._pay(take)
        if segment.complete or self._body_left == 0:
            self._finish()

    def _finish(self) -> None:
        # Reusable only if the response was read to its end (not a stolen tail).
        self._reusable = self._body_left == 0 and self._keep_alive and not self._closed
        if not self._reusable and self._transport is not None:
            self._transport.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _pay(self, n: int) -> None:
        """Stop reading until these bytes fit the bandwidth limits and the digest thread has
        caught up (reading on would only take CPU from it: see SegmentedFetch)."""
        self._unpaid += n
        if self._transport is None or self._paying is not None:
            return
        self._transport.pause_reading()
        self._paying = self._loop.create_task(self._pay_then_resume())

    async def _pay_then_resume(self) -> None:
        try:
            while self._unpaid:
                n, self._unpaid = self._unpaid, 0
                for bucket in self._owner.limits:
                    await bucket.consume(n)
            if (limit := self._owner.hash_gate()) is not None:
                await self._owner.part.hash_catch_up(limit)
        finally:
            self._paying = None
            self._last = self._loop.time()  # waiting for the limit is not a stall
            if self._transport is not None and not self._closed:
                self._transport.resume_reading()

    def _fail(self, exc: BaseException) -> None:
        self._reusable = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self._transport is not None and not self._closed:
            self._transport.close()


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a failed group of connections: the first that is not a
    cancellation (the others were cancelled because of it)."""
    errors = [e for e in _leaves(group) if not isinstance(e, asyncio.CancelledError)]
    if errors:
        return errors[0]
    return asyncio.CancelledError()


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found
