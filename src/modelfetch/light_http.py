"""HTTP/1.1 over a plain socket, just enough for the light daemon client (`remote_light`).

One request per connection (`Connection: close`), a JSON or empty body out, and a response read
by its `Content-Length`, as chunks (`Transfer-Encoding: chunked`: the event stream), or to the
end of the connection. http.client does all that and more, but its import (the email package,
ssl) took 38-43 ms here, most of what `modelfetch get` through a daemon costs before it can
send its list. The daemon is the only peer: plain http, no proxy, no TLS, no redirects.
"""

from __future__ import annotations

import socket
from typing import BinaryIO

__all__ = ["Connection", "ProtocolError", "Response"]

_MAX_LINE = 64 << 10  # a status or header line longer than this is not from our daemon
_MAX_HEADERS = 200


class ProtocolError(OSError):
    """The peer's answer is not HTTP/1.x as this client reads it."""


class Connection:
    """One request to `host:port` and its response. `timeout`: seconds for the connect and
    for each read (None: block, as an event stream does between events)."""

    def __init__(self, host: str, port: int, *, timeout: float | None) -> None:
        self._host = host
        self._port = port
        self._timeout = timeout
        self.sock: socket.socket | None = None
        self._reader: BinaryIO | None = None
        self._method = "GET"

    def request(
        self, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str]
    ) -> None:
        """Connect and send the request whole."""
        self.sock = socket.create_connection((self._host, self._port), timeout=self._timeout)
        self._method = method
        host = f"[{self._host}]" if ":" in self._host else self._host
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{self._port}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None or method not in ("GET", "HEAD"):
            lines.append(f"Content-Length: {len(body or b'')}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.sock.sendall(head + body if body else head)

    def getresponse(self) -> Response:
        """Read the status line and headers; the body is read from the Response."""
        if self.sock is None:
            raise ProtocolError("no request was sent")
        if self._reader is None:  # kept: a read cut short (a Ctrl-C) can be taken up again
            self._reader = self.sock.makefile("rb")
        status_line = _line(self._reader)
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        headers: dict[str, str] = {}
        while line := _line(self._reader):
            if len(headers) >= _MAX_HEADERS:
                raise ProtocolError("too many header lines")
            name, colon, value = line.partition(":")
            if not colon:
                raise ProtocolError(f"not a header line: {line[:80]!r}")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        status = int(code)
        bodiless = self._method == "HEAD" or status in (204, 304) or 100 <= status < 200
        return Response(status, headers, self._reader, bodiless=bodiless)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self.sock is not None:
            self.sock.close()


class Response:
    """Status, headers (lower-case names) and the body, whole (`read`) or piece by piece
    (`read1`: what has arrived, at most `size` bytes; b"" at the end)."""

    def __init__(
        self, status: int, headers: dict[str, str], reader: BinaryIO, *, bodiless: bool
    ) -> None:
        self.status = status
        self.headers = headers
        self._reader = reader
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._left: int | None = None  # body bytes still to read (None: to the end)
        self._done = bodiless
        self._chunk_left = 0
        if not self._chunked and not bodiless:
            length = headers.get("content-length")
            if length is not None:
                if not length.strip().isdigit():
                    raise ProtocolError(f"Content-Length is not a number: {length[:40]!r}")
                self._left = int(length)
                self._done = self._left == 0

    def read(self) -> bytes:
        parts = []
        while piece := self.read1(1 << 16):
            parts.append(piece)
        return b"".join(parts)

    def read1(self, size: int) -> bytes:
        if self._done:
            return b""
        if self._chunked:
            return self._chunk(size)
        want = size if self._left is None else min(size, self._left)
        data = self._reader.read1(want)  # type: ignore[attr-defined]
        if self._left is not None:
            if not data:
                raise ProtocolError(f"the body ended {self._left} bytes short")
            self._left -= len(data)
            self._done = self._left == 0
        elif not data:
            self._done = True
        return bytes(data)

    def _chunk(self, size: int) -> bytes:
        if self._chunk_left == 0:
            line = _line(self._reader)
            digits = line.split(";", 1)[0].strip()
            try:
                self._chunk_left = int(digits, 16)
            except ValueError:
                raise ProtocolError(f"not a chunk size: {line[:40]!r}") from None
            if self._chunk_left == 0:  # the last chunk: skip any trailers
                while _line(self._reader):
                    pass
                self._done = True
                return b""
        data = self._reader.read(min(size, self._chunk_left))
        if not data:
            raise ProtocolError("the stream ended inside a chunk")
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and self._reader.read(2) != b"\r\n":
            raise ProtocolError("a chunk does not end with CRLF")
        return data


def _line(reader: BinaryIO) -> str:
    raw = reader.readline(_MAX_LINE + 1)
    if not raw:
        raise ProtocolError("the connection closed before the answer was complete")
    if len(raw) > _MAX_LINE:
        raise ProtocolError("a line of the answer is too long")
    return raw.rstrip(b"\r\n").decode("latin-1")
