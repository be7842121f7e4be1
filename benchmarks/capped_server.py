"""A static file server on loopback that caps every *connection* at a rate: case 2's server.

    python benchmarks/capped_server.py ROOT PORT RATE_BYTES_PER_S

nginx's `limit_rate` caps each *request*, and lets the first second of every request through
at once (`limit_rate × (now − start + 1)`): a client that asks in pieces smaller than one
second's worth (modelfetch's 2 MiB requests on a near path, its 8-16 MiB pieces elsewhere) is
never slowed, while one long request per connection (aria2c) is. A CDN that gives each
connection a share, or a path whose round trip limits each connection, caps the connection
whatever the requests. So this server keeps one token bucket per connection, across every
request sent on it (HTTP/1.1 keep-alive), and sends the file with `sendfile` in slices as the
bucket allows. GET and HEAD, `Range: bytes=a-b` / `a-` / `-n` (one range), `If-Range` by ETag;
prints `ready` once listening.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

SLICE = 1 << 20  # bytes sent per wait: 40 ms at 25 MiB/s, smooth enough, and few wake-ups


class Bucket:
    """`rate` bytes a second, a burst of at most one slice."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = float(SLICE)
        self.at = time.monotonic()

    async def take(self, n: int) -> None:
        now = time.monotonic()
        self.tokens = min(float(SLICE), self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= n
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)


def byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(start, end exclusive) of one `bytes=` range, None for none, "bad" when unsatisfiable."""
    if header is None or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].strip().partition("-")
    try:
        if not first:
            start, end = max(0, size - int(last)), size
        else:
            start = int(first)
            end = min(size, int(last) + 1) if last else size
    except ValueError:
        return None
    return "bad" if start >= size or start >= end else (start, end)


async def handle(
    root: Path, rate: float, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    bucket = Bucket(rate)  # one per connection, kept across its requests
    loop = asyncio.get_running_loop()
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            path = (root / unquote(urlsplit(target).path).lstrip("/")).resolve()
            if root not in path.parents or not path.is_file():
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                continue
            st = path.stat()
            etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
            wanted = byte_range(headers.get("range"), st.st_size)
            if headers.get("if-range") not in (None, etag):
                wanted = None  # the client's copy is of another version: the whole file
            if wanted == "bad":
                writer.write(
                    f"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{st.st_size}"
                    "\r\nContent-Length: 0\r\n\r\n".encode()
                )
                await writer.drain()
                continue
            start, end = wanted if isinstance(wanted, tuple) else (0, st.st_size)
            status = "206 Partial Content" if isinstance(wanted, tuple) else "200 OK"
            extra = f"Content-Range: bytes {start}-{end - 1}/{st.st_size}\r\n" if wanted else ""
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Length: {end - start}\r\n{extra}"
                f"Accept-Ranges: bytes\r\nETag: {etag}\r\n"
                "Content-Type: application/octet-stream\r\n\r\n".encode()
            )
            if method == "HEAD":
                await writer.drain()
                continue
            with path.open("rb") as f:
                offset = start
                while offset < end:
                    n = min(SLICE, end - offset)
                    await bucket.take(n)
                    await writer.drain()
                    await loop.sendfile(writer.transport, f, offset, n)
                    offset += n
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, OSError):
        pass
    finally:
        writer.close()


async def main(root: Path, port: int, rate: float) -> None:
    server = await asyncio.start_server(
        lambda r, w: handle(root, rate, r, w), "127.0.0.1", port, backlog=512
    )
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    root_arg, port_arg, rate_arg = sys.argv[1:4]
    asyncio.run(main(Path(root_arg).resolve(), int(port_arg), float(rate_arg)))
