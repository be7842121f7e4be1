"""One HTTP/1.1 connection: sends a request, frames the response in its receive buffer, and
hands body bytes to the current Response without copying them (see the package docstring)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from modelfetch.transfer.wire.errors import (
    IncompleteBodyError,
    ProtocolError,
    ServerDisconnectedError,
)
from modelfetch.transfer.wire.headers import Headers
from modelfetch.transfer.wire.parse import (
    MAX_HEAD,
    Chunked,
    ResponseParser,
    content_length,
    head_end,
    tokens,
)
from modelfetch.transfer.wire.response import Response
from modelfetch.transfer.wire.window import clamp_receive_window

if TYPE_CHECKING:
    from modelfetch.transfer.wire.session import Session

__all__ = ["Connection", "NothingReceived"]

_HEAD_STEP = 2 << 10  # head bytes are looked at this many at a time
_MIN_ROOM = 64 << 10  # a connection with views out pauses when less is left after them
_EMPTY: Final = memoryview(b"")
_NO_BODY_STATUSES: Final = frozenset({204, 304})


class NothingReceived(Exception):
    """The connection ended before any byte of the response (its __cause__ says how)."""


_IDLE, _HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE, _DONE = range(6)


class Connection(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection: sends a request, parses the response in its receive buffer and
    hands body bytes to the current Response (see the module docstring)."""

    def __init__(self, session: Session, key: tuple[str, str, int]) -> None:
        self._session = session
        self.key = key
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self.near_path = False  # a short round trip: its receive window was clamped (window.py)
        self._buffer: memoryview | None = None
        self._scratch: memoryview | None = None
        self._lost = False
        self._lost_exc: Exception | None = None  # how the connection ended, once it has
        self._state = _IDLE
        self._method = "GET"
        self._recv_size = 0  # the current exchange's cap per receive (0: none)
        self._url = ""
        self._received = False  # any byte of the current response
        self._head = bytearray()
        self._parser: ResponseParser | None = None  # llhttp, for the head and a chunked body
        self._left = 0  # body bytes left in the Content-Length
        self._keep_alive = False
        self._head_waiter: asyncio.Future[Response] | None = None
        self._response: Response | None = None
        self._held: memoryview | None = None  # body bytes that came before the reader attached
        self._attached = False  # the current response's reader is ready for its body
        # The rest of the response is in the buffer already (held, not yet handed over): a
        # receive now would be bytes nobody asked for, so reading goes on into the scratch
        # buffer instead of pausing (a pause and a resume are two epoll_ctl calls each).
        self._sealed = False
        # Where the next receive lands: bytes before it may still be wanted (held, or views a
        # reader has), so receives go on after them rather than pausing until they are read.
        self._fill = 0
        self._paused = False
        self.idle_since = 0.0

    @property
    def usable(self) -> bool:
        return not self._lost and self._state == _IDLE and self._transport is not None

    # -- the exchange ---------------------------------------------------------------------------

    async def exchange(self, head: bytes, method: str, url: str, recv_size: int = 0) -> Response:
        transport = self._transport
        if transport is None or self._lost or transport.is_closing():
            self._session._forget(self)
            raise NothingReceived
        self._buffer = self._session._get_buffer()
        self._method, self._url = method, url
        self._recv_size = recv_size
        self._state = _HEAD
        self._received = False
        self._attached = False
        self._sealed = False
        self._held = None
        self._fill = 0
        self._head.clear()
        waiter: asyncio.Future[Response] = self._loop.create_future()
        self._head_waiter = waiter
        transport.write(head)
        try:
            return await waiter
        except BaseException:
            self.close()
            raise
        finally:
            self._head_waiter = None

    def close(self) -> None:
        """Close the connection (idempotent); a reader still waiting on it sees the end."""
        self._state = _DONE
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        self._session._forget(self)
        self.put_buffer()
        response, self._response = self._response, None
        if response is not None and not response._ended:
            response._error(IncompleteBodyError("the connection was closed before the body ended"))

    def put_buffer(self) -> None:
        if self._buffer is not None:
            buffer, self._buffer = self._buffer, None
            self._session._put_buffer(buffer)

    def pause(self) -> None:
        if (
            not self._paused
            and self._transport is not None
            and not self._lost
            and self._expects_body()
        ):
            self._paused = True
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self._transport is not None and not self._lost:
            self._paused = False
            self._transport.resume_reading()

    def _expects_body(self) -> bool:
        """Whether more bytes of the current response may still land in the buffer. When none
        can, pausing protects nothing: the connection keeps reading (into the scratch buffer),
        which is also how a server's close of it is noticed."""
        state = self._state
        if self._sealed or state in (_IDLE, _DONE):
            return False
        return not (state == _LENGTH and self._left == 0 and self._held is None)

    def _hold(self, data: memoryview) -> None:
        """Body bytes before the reader is ready (the last ones received): they wait where they
        landed, after any held already. If they are all there is to come, later bytes are
        unasked-for; else receiving goes on after them while there is room."""
        assert self._buffer is not None
        total = len(data) if self._held is None else len(self._held) + len(data)
        self._held = self._buffer[self._fill - total : self._fill]
        if self._state == _LENGTH and total >= self._left:
            self._sealed = True
        else:
            self._steer()

    def _after_feed(self) -> None:
        """After bytes were handed over: a sink is done with them when it returns, so the
        next receive may land at the start again; views (read_chunk) keep theirs until the
        reader comes back for more (`rewind`)."""
        response = self._response
        if self._held is None and (
            response is None or response._sink is not None or not self._attached
        ):
            self._fill = 0
        self._steer()

    def rewind(self) -> None:
        """The reader holds no view of the buffer any more: receive from its start again."""
        if self._held is None:
            self._fill = 0
        self._steer()

    def _steer(self) -> None:
        """Read on, or pause: only while the reader asked for a pause (or small steps, with
        views out), or too little room is left after the bytes still wanted. Each change is
        an epoll_ctl on the selector loop, so none is made that protects nothing."""
        response, buffer = self._response, self._buffer
        if response is None or buffer is None or not self._expects_body():
            return
        asked = response._sink_paused or bool(response.recv_size and response._views)
        cramped = len(buffer) - self._fill < max(1, min(_MIN_ROOM, len(buffer) // 2))
        if asked or cramped:
            self.pause()
        else:
            self.resume()

    def _unasked(self) -> None:
        """Bytes after a complete response or on an idle connection: it cannot be trusted with
        another request. The buffer stays with a reader that may still hold views of it."""
        self._keep_alive = False
        if self._state == _IDLE:
            self._state = _DONE
        if self._buffer is None:
            self.close()
        else:
            self._close_transport()

    def attach(self) -> None:
        """The response's reader is ready: hand it the body bytes that came before it and
        read on (unless it holds views again, or asked for a pause)."""
        self._attached = True
        held, self._held = self._held, None
        if held is not None:
            try:
                self._feed(held)
            except Exception as exc:
                self._fail(exc)
                return
            if self._lost:
                self._on_lost()
                return
        self._after_feed()

    # -- protocol callbacks (on the loop; never raise) --------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        # A near path gets a receive window of its bandwidth-delay product, not 32 MiB of
        # bytes a kill or a steal would throw away (window.py).
        self.near_path = clamp_receive_window(transport.get_extra_info("socket")) is not None

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._buffer is not None and not self._sealed and self._state not in (_IDLE, _DONE):
            fill, response = self._fill, self._response
            size = response.recv_size if response is not None else self._recv_size
            if size:
                return self._buffer[fill : fill + size]
            return self._buffer[fill:]
        if self._scratch is None:  # bytes on an idle connection: only to notice and drop it
            self._scratch = memoryview(bytearray(256))
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        if self._buffer is None or self._sealed or self._state in (_IDLE, _DONE):
            self._unasked()  # (they went to the scratch buffer)
            return
        self._received = True
        start = self._fill
        self._fill = start + nbytes
        data = self._buffer[start : self._fill]
        try:
            if self._state != _HEAD and not self._attached:
                self._hold(data)
            else:
                self._feed(data)
                self._after_feed()
        except Exception as exc:
            self._fail(exc)

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost says what it means

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._lost_exc = exc
        self._session._forget(self)
        if self._held is None:  # else: once the reader has the bytes that came with the head
            self._on_lost()

    def _on_lost(self) -> None:
        """What the end of the connection means for the response in flight, if any."""
        state, exc = self._state, self._lost_exc
        self._state = _DONE
        if state in (_IDLE, _DONE):
            return
        if state == _UNTIL_CLOSE and exc is None:
            self._finish_response(reusable=False)  # the end of a close-delimited body
            return
        if state == _HEAD:
            if not self._received:
                nothing = NothingReceived()
                nothing.__cause__ = exc
                self._fail(nothing)
            else:
                self._fail(ServerDisconnectedError("the connection closed in the middle of a head"))
            return
        reset = isinstance(exc, ConnectionResetError) or (
            exc is not None and "reset" in str(exc).lower()
        )
        how = "reset" if reset else "closed"
        error = IncompleteBodyError(f"the connection {how} before the body ended", reset=reset)
        error.__cause__ = exc
        self._fail(error)

    # -- parsing --------------------------------------------------------------------------------

    def _feed(self, data: memoryview) -> None:
        while data:
            state = self._state
            if state == _HEAD:
                data = self._feed_head(data)
                if self._state == _HEAD:
                    continue
                if self._state == _LENGTH and self._left == 0:  # no body (HEAD, 204, 304, 0)
                    self._body_done(reusable=not data)
                elif data:
                    self._hold(data)
                return
            elif state == _LENGTH:
                take = min(len(data), self._left)
                self._left -= take
                piece, data = data[:take], data[take:]
                wanted = self._deliver(piece)
                if self._left == 0:  # read whole, wanted or not
                    self._body_done(reusable=not data)
                    return
                if not wanted:
                    self._abandon()
                    return
            elif state == _CHUNKED:
                assert self._parser is not None
                outcome = self._parser.chunked(data, self._deliver)
                if outcome is Chunked.ABANDONED:
                    self._abandon()
                elif outcome is not Chunked.MORE:
                    self._parser = None
                    self._body_done(reusable=outcome is Chunked.DONE)
                return
            elif state == _UNTIL_CLOSE:
                if not self._deliver(data):
                    self._abandon()
                return
            else:  # bytes after the response ended: the connection cannot be trusted
                self._state = _DONE
                self._close_transport()
                return

    def _feed_head(self, data: memoryview) -> memoryview:
        """Take head bytes from `data` (copying only the head, in small steps: the body that
        follows it in the buffer stays where it is); returns what follows the head."""
        taken = 0
        while True:
            step = data[taken : taken + _HEAD_STEP]
            if not step:
                return _EMPTY  # the head goes on in the next receive
            start = max(0, len(self._head) - 3)
            self._head += step
            taken += len(step)
            end, sep = head_end(self._head, start)
            if end >= 0:
                break
            if len(self._head) > MAX_HEAD:
                raise ProtocolError("a response head over 64 KiB")
        if end > MAX_HEAD:
            raise ProtocolError("a response head over 64 KiB")
        rest = data[taken - (len(self._head) - end - sep) :]
        block = bytes(self._head[: end + sep])
        self._head.clear()
        self._parser = ResponseParser()
        status, reason, version, headers = self._parser.head(block)
        if 100 <= status < 200:
            return rest  # an interim response (101 was refused by the parser): the real one follows
        self._begin_body(status, reason, version, headers)
        return rest

    def _begin_body(self, status: int, reason: str, version: str, headers: Headers) -> None:
        connection = ",".join(headers.getall("Connection", [])).lower()
        self._keep_alive = version == "HTTP/1.1" and "close" not in tokens(connection)
        encodings = tokens(",".join(headers.getall("Transfer-Encoding", [])).lower())
        length = content_length(headers)
        response = self._response = Response(self, self._method, self._url, status, reason)
        response.recv_size = self._recv_size
        response.version, response.headers = version, headers
        if self._method == "HEAD" or status in _NO_BODY_STATUSES:
            self._state = _LENGTH
            self._left = 0
        elif encodings:
            if encodings != ["chunked"]:
                raise ProtocolError(f"unsupported Transfer-Encoding {', '.join(encodings)!r}")
            self._state = _CHUNKED  # (llhttp refused a Content-Length beside it)
        elif length is not None:
            self._state = _LENGTH
            self._left = length
        else:
            self._state = _UNTIL_CLOSE
            self._keep_alive = False
        if self._state != _CHUNKED:
            self._parser = None  # nothing left to parse: the body is counted, not parsed
        # No pause until the reader attaches: body bytes that land before then are held
        # (buffer_updated), and only then does reading stop, if more is to come.
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    # -- handing over -----------------------------------------------------------------------------

    def _deliver(self, data: memoryview) -> bool:
        """Body bytes for the response; False: it wants no more."""
        response = self._response
        if response is None:
            return False
        return not data or response._body(data)

    def _abandon(self) -> None:
        """The reader wants no more of this body: the rest is dropped with the connection."""
        self._state = _DONE
        self._finish_response(reusable=False)

    def _body_done(self, *, reusable: bool) -> None:
        self._state = _IDLE if reusable and self._keep_alive and not self._lost else _DONE
        self._finish_response(reusable=self._state == _IDLE)

    def _finish_response(self, *, reusable: bool) -> None:
        response = self._response
        self._response = None
        if not reusable:
            self._close_transport()
        if response is not None:
            response._end(reusable)

    def _close_transport(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _fail(self, exc: BaseException) -> None:
        self._state = _DONE
        self._close_transport()
        self._session._forget(self)
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
            return
        response, self._response = self._response, None
        if response is not None:
            response._error(exc)
