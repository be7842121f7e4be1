"""The light client's HTTP/1.1 (modelfetch/light_http.py) against a real socket on loopback
that answers with bytes written out by hand: lengths, chunks, and answers that are not HTTP.
(The daemon's own answers are read through it in tests/test_batch.py.)"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from modelfetch.light_http import Connection, ProtocolError


@contextmanager
def answering(*pieces: bytes) -> Iterator[tuple[int, list[bytes]]]:
    """A one-shot server on 127.0.0.1: reads the request head (kept in the list), then sends
    each piece in its own write, then closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    requests: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            requests.append(data)
            for piece in pieces:
                conn.sendall(piece)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port, requests
    finally:
        thread.join(5)
        listener.close()


def test_a_body_by_its_length_and_the_request_as_sent() -> None:
    body = b'{"ok": true}'
    with answering(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n",
        b"Content-Length: %d\r\n\r\n" % len(body),
        body,
    ) as (port, requests):
        conn = Connection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/api/x", body=b"{}", headers={"Accept": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        assert response.headers["content-type"] == "application/json"
        assert response.read() == body
        assert response.read1(10) == b""  # and nothing after it
        conn.close()
    head = requests[0].decode()
    assert head.startswith("POST /api/x HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{port}\r\n" in head and "Content-Length: 2\r\n" in head


def test_a_chunked_stream_comes_piece_by_piece_then_ends() -> None:
    with answering(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5\r\nhello\r\n",
        b"6;ext=1\r\n world\r\n",
        b"0\r\nX-Trailer: yes\r\n\r\n",
    ) as (port, _):
        conn = Connection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/api/events", headers={})
        response = conn.getresponse()
        got = []
        while piece := response.read1(1 << 16):
            got.append(piece)
        assert b"".join(got) == b"hello world"
        conn.close()


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "short"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not an HTTP"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "not a header"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "not a number"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nabc", "inside a chunk"),
        (b"HTTP/1.1 200 OK\r\n", "closed before"),
    ],
)
def test_an_answer_that_is_not_what_it_says_is_a_protocol_error(
    answer: bytes, message: str
) -> None:
    with answering(answer) as (port, _):
        conn = Connection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/", headers={})
        with pytest.raises(ProtocolError, match=message):
            conn.getresponse().read()
        conn.close()


def test_nothing_listening_is_an_oserror() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: the connect is refused
        conn = Connection("127.0.0.1", port, timeout=5)
        with pytest.raises(ConnectionRefusedError):
            conn.request("GET", "/", headers={})
        conn.close()


# -- the event stream's framing (remote_codec.SSEParser, which the light client reads with) --

_STREAM = (
    b"retry: 2000\n\n"
    b": keep-alive\n\n"
    b'id: 1\nevent: file_started\ndata: {"x": 1}\n\n'
    b"id: 2\r\nevent: notice\r\ndata: one\ndata: two\r\n\r\n"
    b"data: no event name\n\n"
    b"id: \nevent: snapshot\ndata: [\xc3\xa9]\n\n"
)


def _expected() -> list[object]:
    from modelfetch.remote_codec import SSEMessage

    return [
        SSEMessage("file_started", '{"x": 1}', "1"),
        SSEMessage("notice", "one\ntwo", "2"),
        SSEMessage("message", "no event name", None),
        SSEMessage("snapshot", "[\u00e9]", ""),
    ]


@pytest.mark.parametrize("step", [1, 3, 7, 64, len(_STREAM)])
def test_sse_messages_are_the_same_however_the_bytes_are_cut(step: int) -> None:
    from modelfetch.remote_codec import SSEParser

    parser = SSEParser()
    messages = []
    for start in range(0, len(_STREAM), step):
        messages += parser.feed(_STREAM[start : start + step])
    assert messages == _expected()


def test_a_message_is_held_until_its_blank_line() -> None:
    from modelfetch.remote_codec import SSEParser

    parser = SSEParser()
    assert parser.feed(b"event: a\ndata: 1\n") == []
    assert [m.data for m in parser.feed(b"\n")] == ["1"]
