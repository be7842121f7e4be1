"""Response heads and chunked bodies, parsed by llhttp (httptools): the framing, strictly.

llhttp (the parser under Node and uvicorn) checks the status line, field names and values,
Content-Length and chunk framing. Around it we keep the limits it does not have (a 64 KiB
head, 100 fields, 4 KiB chunk-size lines, 64 KiB of trailers) and the things only the caller
knows (a HEAD request's response has no body). A Content-Length body is never fed through
the parser: there is nothing in it to parse, and llhttp hands body bytes out as new `bytes`
objects, a copy per receive that the zero-copy path exists to avoid. Chunked bodies (error
pages, API answers: small) go through it, so their framing is llhttp's.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import httptools

from modelfetch.transfer.wire.errors import ProtocolError
from modelfetch.transfer.wire.headers import Headers

__all__ = [
    "MAX_CHUNK_LINE",
    "MAX_FIELDS",
    "MAX_HEAD",
    "Chunked",
    "ResponseParser",
    "content_length",
    "head_end",
    "shown",
    "tokens",
]

MAX_HEAD = 64 << 10  # bytes of a status line plus fields (and of a trailer block)
MAX_FIELDS = 100
MAX_CHUNK_LINE = 4 << 10  # a chunk-size line with its extensions


class Chunked(Enum):
    """What feeding chunked body bytes came to."""

    MORE = "more"  # the body goes on
    DONE = "done"  # the last chunk and trailers are in, nothing after them
    DONE_EXTRA = "done_extra"  # ... and bytes followed: the connection cannot be trusted
    ABANDONED = "abandoned"  # the reader wants no more


class _Stop(Exception):
    """Raised from a callback to stop llhttp where it is."""


class ResponseParser:
    """One response's llhttp parser: its head (`head`), then a chunked body (`chunked`)."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        # RFC 9112 7.1.1 allows whitespace before a chunk extension (`1 ; ext`); llhttp
        # only takes it when asked. Nothing else is relaxed.
        self._parser.set_dangerous_leniencies(lenient_spaces_after_chunk_size=True)
        self._fields: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._in_head = True
        self._trailer_bytes = 0
        self._deliver: Callable[[memoryview], bool] | None = None
        self._complete = False
        self._extra = False
        self._wanted = True
        self._in_size_line = False
        self._size_lines = 0  # chunk-size lines completed: a long one is noticed between feeds
        self._line_bytes = 0

    # -- llhttp callbacks (httptools calls them by name) ------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:  # a second response in the bytes after ours
            self._extra = True
            raise _Stop

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            self._fields.append((name, value))
            return
        self._trailer_bytes += len(name) + len(value) + 4
        if self._trailer_bytes > MAX_HEAD:
            raise ProtocolError("trailer fields over 64 KiB")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_size_line = True

    def on_chunk_header(self) -> None:
        self._in_size_line = False
        self._size_lines += 1

    def on_chunk_complete(self) -> None:
        self._in_size_line = True

    def on_body(self, body: bytes) -> None:
        deliver = self._deliver
        if deliver is not None and not deliver(memoryview(body)):
            self._wanted = False
            raise _Stop

    def on_message_complete(self) -> None:
        self._complete = True

    # -- feeding ----------------------------------------------------------------------------------

    def head(self, block: bytes) -> tuple[int, str, str, Headers]:
        """Parse a whole head (status line, fields, the blank line): status, reason, version
        ("HTTP/1.1") and fields. ProtocolError for anything llhttp or our limits refuse."""
        try:
            self._parser.feed_data(block)
        except httptools.HttpParserUpgrade:
            raise ProtocolError("an unrequested protocol switch (101)") from None
        except httptools.HttpParserCallbackError as exc:
            raise _cause(exc) from None
        except httptools.HttpParserError as exc:
            raise _head_error(block, len(self._fields), exc) from None
        if self._in_head:
            raise ProtocolError("a response head that llhttp did not see end")
        if len(self._fields) > MAX_FIELDS:
            raise ProtocolError(f"more than {MAX_FIELDS} header fields")
        headers = Headers()
        for name, value in self._fields:
            headers.add(name.decode("latin-1"), value.strip(b" \t").decode("latin-1"))
        self._fields.clear()
        version = f"HTTP/{self._parser.get_http_version()}"
        reason = self._reason.decode("latin-1").strip()
        return self._parser.get_status_code(), reason, version, headers

    def chunked(self, data: memoryview, deliver: Callable[[memoryview], bool]) -> Chunked:
        """Feed chunked body bytes; the decoded data goes to `deliver` (False: no more)."""
        open_line, lines = self._in_size_line, self._size_lines
        self._deliver = deliver
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if self._extra:
                return Chunked.DONE_EXTRA
            if not self._wanted:
                return Chunked.ABANDONED
            raise _cause(exc) from None
        except httptools.HttpParserError as exc:
            raise ProtocolError(f"a malformed chunked body ({exc})") from None
        finally:
            self._deliver = None
        if self._complete:
            return Chunked.DONE
        if self._in_size_line and open_line and lines == self._size_lines:
            self._line_bytes += len(data)
            if self._line_bytes > MAX_CHUNK_LINE:
                raise ProtocolError("a chunk line over 4 KiB")
        else:
            self._line_bytes = 0
        return Chunked.MORE


def _head_error(block: bytes, good_fields: int, exc: Exception) -> ProtocolError:
    """Name the line llhttp refused: the status line, or the field after the good ones."""
    lines = block.split(b"\n")
    status_line = lines[0].removesuffix(b"\r")
    if good_fields == 0:
        probe = httptools.HttpResponseParser(_Ignore())
        try:
            probe.feed_data(status_line + b"\r\n\r\n")
        except httptools.HttpParserError:
            return ProtocolError(f"invalid status line {shown(status_line)} ({exc})")
    bad = lines[good_fields + 1].removesuffix(b"\r") if good_fields + 1 < len(lines) else b""
    return ProtocolError(f"invalid header line {shown(bad)} ({exc})")


class _Ignore:
    """A parser protocol with no callbacks."""


def _cause(exc: httptools.HttpParserCallbackError) -> BaseException:
    """What one of our callbacks raised (httptools wraps it)."""
    cause = exc.__context__
    if cause is None or isinstance(cause, _Stop):
        return ProtocolError(str(exc))
    return cause


def head_end(head: bytearray, start: int) -> tuple[int, int]:
    """Where the head ends (blank line) and the separator's length; (-1, 0) if not yet. A bare
    LF head is found too, so that llhttp refuses it at once instead of us waiting for more."""
    lf = head.find(b"\n\n", start)
    crlf = head.find(b"\n\r\n", start)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf + 1, 2
    if lf >= 0:
        return lf + 1, 1
    return -1, 0


def content_length(headers: Headers) -> int | None:
    """The body's length (llhttp has checked the syntax and refused duplicates)."""
    values = headers.getall("Content-Length", [])
    if not values:
        return None
    text = values[0].strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ProtocolError(f"invalid Content-Length {text!r}")
    return int(text)


def tokens(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


def shown(line: bytes) -> str:
    return repr(line[:80].decode("latin-1"))
