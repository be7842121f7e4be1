"""Multi-connection (segmented) transfer of one file: running the connections.

segment_setup.py decides whether a file goes segmented, makes the first ranged request
(redirects, the plan's cross-checks, validators) and sets up the `.part`; `SegmentedFetch` then
runs the connections over the segment map (core/segments.py): each takes a piece front to back,
streams it into the `.part` with `pwrite` at its offset, and, when no piece is left, steals half
of the largest remaining segment. receive.py verifies and publishes when the map is complete.

Where the truth is. A segmented `.part` is allocated to its full size at once and filled out of
order, so its length says nothing. What is on disk is the segment map: per segment its start,
end and how many bytes from the start are written. `done` grows only after `pwrite` returned, so
a map never counts bytes that were not handed to the kernel. The map is kept at two levels
(transfer/checkpoints.py): the durable one goes to the caller's `on_segments` about once a
second and whenever the transfer stops, each time only after an fdatasync of the bytes it
claims, so it is true even after a power cut; the caller persists it (the manager: in the
store) and hands it back as `TransferRequest.segments`. The volatile one
(transfer/segment_journal.py) is rewritten beside the `.part` every `checkpoint_bytes` or
`checkpoint_interval` (the connections' `on_checkpoint`), without fsync, and is trusted only by
the kernel that wrote it: after a `kill -9` the next attempt resumes from the union of both, so
a kill costs the bytes in flight; after a reboot only the durable map counts. Each segment
resumes at start + done. A segmented `.part` without a map is worthless and is deleted.
`partial_bytes` is how anyone else (the manager's recovery and progress) counts the bytes on
disk of a partial download (the durable map's count: the conservative one).

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

Zero copies. Every piece's request goes through `open_range` (segment_setup.py: redirects, its
checks of the answer), and its body is written into the `.part` straight from the connection's
one reusable receive buffer (`Response.stream`, transfer/wire/): the kernel copies each byte
into that buffer, `pwrite` copies it to the page cache, and nothing is allocated per chunk.
A piece whose request gets an unusable status (a 503 from one CDN node) is asked for once more
before the status fails the transfer.

Connection trouble. A connection that receives nothing for the stall timeout is replaced by a
fresh one for the same remaining range; that is not an error and spends no retry. If the fresh
one also receives nothing, the transfer fails with StalledError (then the manager's retry policy
decides). A connection that breaks (reset, early end of body) after delivering bytes is likewise
reopened at once; one that breaks before delivering any byte fails the transfer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from modelfetch.core.errors import HTTPStatusError, NetworkError, StalledError
from modelfetch.core.paths import journal_path, part_path, sidecar_path
from modelfetch.core.segments import (
    Segment,
    SegmentMap,
    SegmentRecord,
    grow_step,
    keeps_scaling,
)
from modelfetch.transfer.limiter import ConnectionSlots, Slot, TokenBucket, read_size_for
from modelfetch.transfer.segment_journal import resumable_map
from modelfetch.transfer.sink import MAX_PENDING, WRITEBACK_STEP, PartState, SegmentedPartFile
from modelfetch.transfer.wire import (
    ConnectError,
    IncompleteBodyError,
    Response,
    ServerDisconnectedError,
    StallError,
)

__all__ = [
    "MAX_PIECE",
    "FirstPiece",
    "OpenRange",
    "SegmentSettings",
    "SegmentedFetch",
    "partial_bytes",
    "piece_size",
]

MAX_PIECE = 64 << 20
PIECES_PER_CONNECTION = 4
START_CONNECTIONS = 8
GROW_INTERVAL = 0.3  # long enough to measure a rate, short enough to reach 32 within a second
RECV_STEP = 1 << 20  # the most one receive takes under a bandwidth limit
HASH_BUSY_NO_PROBE = 0.5  # the digest thread's share of time above which probing stops

OpenRange = Callable[[int, int], Awaitable[Response]]
"""open_range(start, end) -> a response whose body is bytes [start, end) of the file (a checked
206), or a typed TransferError."""

# A connection that breaks after delivering bytes is reopened rather than failing the transfer.
_REOPENABLE = (IncompleteBodyError, ServerDisconnectedError, ConnectError, ConnectionError)
# A piece whose server asks to wait longer than this fails its transfer (the policy waits).
_ASK_AGAIN_MAX_WAIT = 60.0


def piece_size(total: int, connections: int, min_segment: int) -> int:
    """How much one connection takes at a time: about a quarter of its share of the file, at
    least `min_segment` (so requests stay few) and at most MAX_PIECE (the hash trails the
    newest byte by about connections x piece: that is what is left to hash at the end)."""
    share = total // max(1, connections * PIECES_PER_CONNECTION)
    return max(min_segment, min(share, MAX_PIECE))


def partial_bytes(dest: Path, segments: Sequence[SegmentRecord] | None) -> int:
    """Bytes of `dest`'s partial download that are really on disk: the `.part`'s length for a
    front-to-back partial; for a segmented one, the count of what a restart resumes from
    (the durable map `segments`, joined with the volatile one when this kernel wrote it: after
    a kill -9 the count shown is then what is on disk, not the last durable save), 0 without
    either."""
    try:
        size = part_path(dest).stat().st_size
    except FileNotFoundError:
        return 0
    state = PartState.load(sidecar_path(dest))
    if state is not None and state.segmented:
        if state.total is None:
            return 0
        segmap = resumable_map(journal_path(dest), state.token, state.total, segments, size)
        return segmap.done_bytes if segmap is not None else 0
    return size


@dataclass(frozen=True, slots=True)
class SegmentSettings:
    connections: int  # at most this many at once
    piece: int
    min_steal: int
    stall_timeout: float | None
    chunk_size: int
    checkpoint_interval: float  # on_checkpoint once this long has passed while bytes move,
    checkpoint_bytes: int = 1 << 62  # or once this many more bytes are counted
    start_connections: int = START_CONNECTIONS  # opened at once; more while they help
    grow_interval: float = GROW_INTERVAL


@dataclass(slots=True)
class FirstPiece:
    """The response segment_setup.py already opened (and checked) for the first claimed segment."""

    segment: Segment
    response: Response
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
    ) -> None:
        self.segmap = segmap
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
        self._checkpointed = self._done  # bytes counted at the last on_checkpoint
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
        try:
            if first is not None:
                try:
                    await self._fetch(first.segment, first.response, first.slot)
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
                    await self._fetch(segment, None, None)
                finally:
                    self.segmap.release(segment)
        finally:
            self._running -= 1
            if self._running == 0 and self._steerer is not None:
                self._steerer.cancel()  # nothing left to steer; do not wait for its timer

    async def _fetch(self, segment: Segment, response: Response | None, slot: Slot | None) -> None:
        """Fill `segment` (whose end may move down while we work: a thief took the rest)."""
        idle_stalls = 0
        asked_again = False
        while not segment.complete:
            before = segment.done
            try:
                if slot is None and self.slots is not None:
                    slot = await self.slots.acquire(self.host)
                if response is None:
                    try:
                        response = await self._open(segment)
                    except HTTPStatusError as exc:
                        if asked_again or not self._may_ask_again(exc):
                            raise
                        asked_again = True  # one odd answer (a busy CDN node): ask once more
                        continue
                await self._receive(segment, response)
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
                    response.release()  # kept alive for the next piece only if read whole
                    response = None
                if slot is not None:
                    slot.release()
                    slot = None

    def _may_ask_again(self, exc: HTTPStatusError) -> bool:
        """After one odd answer a piece is asked for once more, but a 429/503 that says how
        long to wait is waited out first: its host is held (the next slot waits), or, when the
        wait is long or nothing here keeps holds, the transfer fails and the policy waits."""
        wait = exc.retry_after
        if wait is None:
            return exc.status != 429  # too many requests: never asked again at once
        if wait > _ASK_AGAIN_MAX_WAIT or self.slots is None:
            return False
        return self.slots.hold(self.host, wait, f"{exc.status} to a ranged request")

    async def _open(self, segment: Segment) -> Response:
        try:
            async with asyncio.timeout(self.settings.stall_timeout) as deadline:
                return await self.open_range(segment.pos, segment.end)
        except TimeoutError:
            if deadline.expired():
                raise _Stall from None
            raise

    async def _receive(self, segment: Segment, response: Response) -> None:
        """Write the body into the `.part` at the segment's position, straight from the
        connection's receive buffer, until the segment is complete (the rest of the body is
        dropped with the connection) or the body ends. When a bandwidth limit is set or the
        digest thread falls behind, receiving pauses until the bytes are paid for."""
        flushed = segment.pos
        unpaid = 0
        paying: asyncio.Task[None] | None = None

        async def pay() -> None:
            nonlocal unpaid, paying
            try:
                while unpaid:
                    n, unpaid = unpaid, 0
                    for bucket in self.limits:
                        await bucket.consume(n)
                if (limit := self.hash_gate()) is not None:
                    await self.part.hash_catch_up(limit)
            finally:
                paying = None
                response.resume()  # waiting for a limit or the hash is not a stall

        def sink(data: memoryview) -> bool:
            nonlocal flushed, unpaid, paying
            take = min(len(data), segment.remaining)  # a thief may have moved the end down
            if take > 0:
                self.write(segment, data[:take])
                if segment.pos - flushed >= WRITEBACK_STEP:
                    self.part.write_back(flushed, segment.pos - flushed)
                    flushed = segment.pos
                if self.hash_gate() is not None or any(b.rate is not None for b in self.limits):
                    unpaid += take
                    if paying is None:
                        response.pause()
                        paying = asyncio.get_running_loop().create_task(pay())
            response.recv_size = step()
            return not segment.complete

        def step() -> int:
            return read_size_for(RECV_STEP, self.limits) if self.limits else 0

        response.recv_size = step()

        try:
            await response.stream(sink, stall=self.settings.stall_timeout)
            while paying is not None:  # the last bytes pass the limits too
                await paying
        except StallError:
            raise _Stall from None
        finally:
            if paying is not None:
                paying.cancel()
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
        if (
            now - self._last_checkpoint >= self.settings.checkpoint_interval
            or self._done - self._checkpointed >= self.settings.checkpoint_bytes
        ):
            self._last_checkpoint = now
            self._checkpointed = self._done
            self.on_checkpoint()

    def _advance_hash(self) -> None:
        self.part.hash_upto(self.segmap.prefix)


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
