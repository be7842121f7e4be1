"""A small HTTP/1.1 client on asyncio: what the transfers need and nothing else.

Why not aiohttp here: importing it costs 0.15-0.25 s of every process start (its connector
builds SSL contexts at import time), longer than the whole of some downloads; and on the hot
path it allocates and copies every received chunk several times. This client speaks GET and
HEAD over http and https, keeps connections alive per (scheme, host, port), never follows
redirects (transfer/redirects.py does that by hand, with its own rules) and never decodes content.
Through an http proxy (`proxies`), http requests go in absolute form and https ones through a
CONNECT tunnel (tunnel.py).

The shape of one exchange:
  session.request(method, url, headers=...) -> Response  (the head is parsed, the body is not)
  response.read_chunk(n)   -> a view of the next body bytes, valid until the next call
  response.stream(sink)    -> every body byte handed to `sink` as it lands (zero-copy)
  response.release()       -> the connection goes back to the pool if the body was read whole

Where the bytes go. Each connection is an asyncio BufferedProtocol: the kernel copies received
bytes into one reusable buffer (taken from the session while a request is active), the parser
finds the body in place and hands out views of it. Nothing is allocated per chunk. The buffer
is never overwritten under its reader: while views are out (read_chunk) or body bytes wait for
the reader to attach, later receives land after them, and the connection stops reading only
when too little room is left or the reader asks (a sink's pause, small bandwidth-limited
reads); TCP flow control then slows the server down. Pausing and resuming cost an epoll_ctl
each, so a response that is all in the buffer never pauses, and bytes after it go to a small
scratch buffer and make the connection unusable. An idle pooled connection keeps reading, so a
server closing it is noticed before it is reused.

Hostile servers. Heads and chunked framing are parsed by llhttp (parse.py), strictly, with our
own caps around it (64 KiB heads, 100 fields), and every failure is a typed `WireError`
(transfer/failures.py translates them into the transfer's own errors). A body that ends
before its length or its last chunk is an `IncompleteBodyError`, never a short success.
"""

from modelfetch.transfer.wire.connection import Connection as _Connection
from modelfetch.transfer.wire.errors import (
    ConnectError,
    ConnectTimeoutError,
    IncompleteBodyError,
    InvalidURLError,
    NameResolutionError,
    ProtocolError,
    ProxyRefusedError,
    ServerDisconnectedError,
    StallError,
    WireError,
)
from modelfetch.transfer.wire.headers import Headers
from modelfetch.transfer.wire.parse import MAX_FIELDS, MAX_HEAD
from modelfetch.transfer.wire.response import READ_BUFFER, BodySink, Response
from modelfetch.transfer.wire.session import IDLE_TIMEOUT, Session
from modelfetch.transfer.wire.target import Target
from modelfetch.transfer.wire.target import request_head as _request_head

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_FIELDS",
    "MAX_HEAD",
    "READ_BUFFER",
    "BodySink",
    "ConnectError",
    "ConnectTimeoutError",
    "Headers",
    "IncompleteBodyError",
    "InvalidURLError",
    "NameResolutionError",
    "ProtocolError",
    "ProxyRefusedError",
    "Response",
    "ServerDisconnectedError",
    "Session",
    "StallError",
    "Target",
    "WireError",
    "_Connection",
    "_request_head",
]
