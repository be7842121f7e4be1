"""The response-head parser: llhttp (transfer/wire/parse.py) against the hand-written one it
replaced, taken from git history (commit 5c63f6d), in one process, interleaved.

    python benchmarks/bench_parser.py [--rounds 5] [--heads 20000]

Prints microseconds per head for a 16-field CDN-like 206 head and for a minimal head.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path
from types import ModuleType

from modelfetch.transfer.wire.parse import ResponseParser

ROOT = Path(__file__).resolve().parent.parent
OLD = "5c63f6d:src/modelfetch/transfer/wire.py"

CDN_HEAD = (
    b"HTTP/1.1 206 Partial Content\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Length: 1048576\r\nConnection: keep-alive\r\nDate: Thu, 03 Dec 2026 12:00:00 GMT\r\n"
    b"Last-Modified: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
    b'ETag: "a3f1c2d4e5f60718293a4b5c6d7e8f90a3f1c2d4e5f60718293a4b5c6d7e8f90"\r\n'
    b"Accept-Ranges: bytes\r\nContent-Range: bytes 0-1048575/5368709120\r\n"
    b"X-Cache: Hit from cloudfront\r\nVia: 1.1 abc.cloudfront.net (CloudFront)\r\n"
    b"X-Amz-Cf-Pop: FRA56-P1\r\nX-Amz-Cf-Id: abcdefghijklmnopqrstuvwxyz0123456789==\r\n"
    b"Age: 1234\r\nCache-Control: public, max-age=604800, immutable\r\n"
    b"X-Linked-Size: 5368709120\r\n\r\n"
)
SMALL_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"


def old_wire() -> ModuleType:
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", OLD], check=True, capture_output=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "wire_old.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("wire_old", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["wire_old"] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--heads", type=int, default=20000)
    args = parser.parse_args()
    old = old_wire()
    print("| head | hand-written, µs | llhttp, µs | llhttp ÷ hand |")
    print("|---|---|---|---|")
    for name, head in (("CDN 206, 16 fields", CDN_HEAD), ("minimal 200", SMALL_HEAD)):
        block = head[:-2]  # the old parser took the head without its last CRLF
        hand: list[float] = []
        llhttp: list[float] = []
        for _ in range(args.rounds):
            hand.append(timeit.timeit(lambda b=block: old._parse_head(b), number=args.heads))
            llhttp.append(timeit.timeit(lambda h=head: ResponseParser().head(h), number=args.heads))
        h = statistics.median(hand) / args.heads * 1e6
        n = statistics.median(llhttp) / args.heads * 1e6
        print(f"| {name} | {h:.1f} | {n:.1f} | {n / h:.2f}x |")


if __name__ == "__main__":
    main()
