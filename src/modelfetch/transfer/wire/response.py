"""A response whose head is in: its body read by pull (`read_chunk`), whole (`read`) or push
(`stream`, zero-copy), then released to the pool or closed."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from modelfetch.transfer.wire.errors import StallError
from modelfetch.transfer.wire.headers import Headers

if TYPE_CHECKING:
    from modelfetch.transfer.wire.connection import Connection

__all__ = ["READ_BUFFER", "BodySink", "Response"]

READ_BUFFER = 1 << 20  # the receive buffer of a connection while a request is active
_EMPTY: Final = memoryview(b"")

# -- the response ---------------------------------------------------------------------------------

BodySink = Callable[[memoryview], bool]
"""sink(data) -> whether to go on: called on the loop with body bytes as they land, in order;
`data` is a view of the connection's buffer, valid only during the call. May raise (the stream
ends with that error) or return False (no more wanted: the connection is dropped)."""


class Response:
    """A response whose head is in. Read its body once: `read_chunk` (pull), `read` (all of it)
    or `stream` (push, zero-copy); then `release()` (pooled if read whole) or `close()`."""

    def __init__(self, conn: Connection, method: str, url: str, status: int, reason: str) -> None:
        self._conn: Connection | None = conn
        self.near_path = conn.near_path  # see Connection.near_path
        self.method = method
        self.url = url
        self.status = status
        self.reason = reason
        self.version = "HTTP/1.1"
        self.headers = Headers()
        self._views: collections.deque[memoryview] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False  # the whole body has been received
        self._reusable = False
        self._failure: BaseException | None = None
        self._attached = False
        self._sink: BodySink | None = None
        self._sink_paused = False
        self._last = 0.0  # when body bytes last arrived (the stall clock of `stream`)
        # At most this many bytes per receive (0: the whole buffer). A reader under a bandwidth
        # limit receives in small steps, so pausing to pay for them keeps the rate smooth.
        self.recv_size = 0

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason!r} {self.method} {self.url}>"

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    @property
    def at_eof(self) -> bool:
        """The whole body was received and read."""
        return self._ended and not self._views

    # -- reading ----------------------------------------------------------------------------------

    async def read_chunk(self, limit: int = READ_BUFFER) -> memoryview:
        """The next body bytes (at most `limit`), or an empty view at the end. The view points
        into the connection's buffer and is valid until the next call on this response."""
        self.recv_size = limit if limit < READ_BUFFER else 0
        while True:
            if self._views:
                view = self._views[0]
                if len(view) > limit:
                    self._views[0] = view[limit:]
                    return view[:limit]
                return self._views.popleft()
            if self._failure is not None:
                raise self._failure
            if self._ended:
                self.release()
                return _EMPTY
            await self._wait()

    async def read(self) -> bytes:
        """The whole body (for small bodies: it is all held in memory)."""
        parts: list[bytes] = []
        while data := await self.read_chunk():
            parts.append(bytes(data))
        return b"".join(parts)

    async def stream(self, sink: BodySink, *, stall: float | None = None) -> None:
        """Hand every body byte to `sink` as it lands (see BodySink); return at the end of the
        body or when the sink wants no more. StallError when no byte arrives for `stall`
        seconds while the sink is not paused (`pause`/`resume`)."""
        if self._attached:
            raise RuntimeError("the body is being read already")
        self._sink = sink
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        try:
            while not self._ended and self._failure is None:
                if stall is None or self._sink_paused:
                    await self._wait(stall)
                    continue
                left = self._last + stall - loop.time()
                if left <= 0:
                    raise StallError(f"no data for {stall:g} s")
                await self._wait(left)
            if self._failure is not None:
                raise self._failure
        except BaseException:
            self.close()
            raise
        self.release()

    def pause(self) -> None:
        """(stream) Stop receiving until `resume`: the time does not count as a stall."""
        self._sink_paused = True
        if self._conn is not None:
            self._conn.pause()

    def resume(self) -> None:
        self._sink_paused = False
        self._last = asyncio.get_running_loop().time()
        if self._conn is not None and not self._ended:
            self._conn.resume()

    async def _wait(self, within: float | None = None) -> None:
        conn = self._conn
        if conn is None:
            raise RuntimeError("the response was released")
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        if not self._attached:
            self._attached = True
            conn.attach()
        elif not self._holding():
            conn.rewind()
        if self._views or self._ended or self._failure is not None:
            self._waiter = None
            return
        try:
            if within is None:
                await waiter
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(within):
                        await asyncio.shield(waiter)
        finally:
            self._waiter = None

    def release(self) -> None:
        """Done with the body: the connection goes back to the pool if the body was received
        whole (and the server keeps it alive), else it is closed. Idempotent."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if not self._attached and not self._ended:
            # An unread body (an error page, a redirect): take it if it came with the head.
            self._attached = True
            self._sink = _discard
            conn.attach()
        if self._ended and self._reusable:
            self._views.clear()
            conn._session._give_back(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Drop the connection whatever is left of the body. Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._ended and self._reusable and not self._views and self._attached:
                conn._session._give_back(conn)
            else:
                conn.close()

    # -- from the connection ----------------------------------------------------------------------

    def _holding(self) -> bool:
        return bool(self._views) or self._sink_paused

    def _body(self, data: memoryview) -> bool:
        if self._sink is not None:
            self._last = asyncio.get_running_loop().time()
            return self._sink(data)
        # The views point into the buffer: later receives land after them (`_fill`) until
        # the reader is back for more, or the connection pauses when room runs out.
        self._views.append(data)
        self._wake()
        return True

    def _end(self, reusable: bool) -> None:
        self._ended = True
        self._reusable = reusable
        self._wake()

    def _error(self, exc: BaseException) -> None:
        self._failure = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _discard(data: memoryview) -> bool:
    return True
