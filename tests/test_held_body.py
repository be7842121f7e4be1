"""Small bodies held in memory (transfer/sink.HeldBody) reuse their buffers once recycled, and
never a buffer something still reads."""

from __future__ import annotations

import asyncio

from modelfetch.transfer import sink


def _filled(total: int, byte: bytes) -> sink.HeldBody:
    body = sink.HeldBody(total)
    asyncio.run(body.write(byte * total))
    return body


def test_a_recycled_buffer_serves_the_next_body_of_its_size() -> None:
    first = _filled(200_000, b"a")
    buffer = first._buffer
    first.recycle()
    second = sink.HeldBody(150_000)  # the same size class (256 KiB)
    assert second._buffer is buffer
    assert len(second.view) == 150_000 and second.size == 0
    asyncio.run(second.write(b"b" * 150_000))
    assert bytes(second.view) == b"b" * 150_000  # what was written, not the old bytes


def test_a_buffer_still_viewed_is_not_reused() -> None:
    body = _filled(100_000, b"c")
    kept = body.view[:10]  # e.g. a reader that has not let go
    buffer = body._buffer
    body.recycle()
    assert sink.HeldBody(100_000)._buffer is not buffer
    assert bytes(kept) == b"c" * 10


def test_spare_buffers_are_bounded() -> None:
    bodies = [_filled(512 << 10, b"d") for _ in range(40)]
    for body in bodies:
        body.recycle()
    assert sink._spare_total <= sink._SPARE_BYTES
