"""Where a transfer's time goes (transfer/stages.py), and the digest thread's mapped read-back:
measured against the fake Hub on loopback, checked for consistency, never for speed."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelfetch.testing.fakehub import FakeHub
from modelfetch.transfer import TransferSession, fetch_file, hashing, make_session
from modelfetch.transfer.hashing import Digester

from .test_segments import BIG_SIZE, PLAIN, assert_published, seg_request, seghub

__all__ = ["seghub"]  # the fixture, imported for its side effect

MiB = 1 << 20


@pytest.fixture
async def session() -> AsyncIterator[TransferSession]:
    async with make_session() as s:
        yield s


@pytest.mark.parametrize("connections", [1, 4])
async def test_a_transfer_reports_where_its_time_went(
    seghub: FakeHub, session: TransferSession, tmp_path: Path, connections: int
) -> None:
    assert BIG_SIZE > hashing.INLINE_HASH_LIMIT  # hashed on the digest thread: `hash` counts
    result = await fetch_file(session, seg_request(seghub, tmp_path, connections=connections))
    assert_published(result, seghub)
    stages = result.stages
    assert stages is not None
    values = stages.as_dict()
    assert set(values) == {"request", "receive", "pwrite", "hash", "hash_tail", "fsync", "rename"}
    assert all(v >= 0 for v in values.values())
    # Bytes were written and hashed on the digest thread (the file is above the inline size),
    # and the pwrite time is part of receiving (summed over connections, so bounded by it
    # times the connections that ran).
    assert stages.pwrite > 0 and stages.hash > 0 and stages.receive > 0
    assert stages.pwrite <= stages.receive * result.connections + 0.05


async def test_a_small_body_reports_its_request_and_receive(
    seghub: FakeHub, session: TransferSession, tmp_path: Path
) -> None:
    result = await fetch_file(session, seg_request(seghub, tmp_path, path=PLAIN, connections=1))
    assert_published(result, seghub, path=PLAIN)
    assert result.stages is not None and result.stages.request >= 0


async def test_the_prefix_is_hashed_through_a_mapping_and_read_where_it_cannot_be(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3 * MiB + 4097)
    path = tmp_path / "blob"
    path.write_bytes(data)
    mapped: list[int] = []
    original = hashing._ReadBack.hash_mapped

    def counting(self: hashing._ReadBack, update: object) -> bool:
        ok = original(self, update)  # type: ignore[arg-type]
        mapped.append(ok)
        return ok

    monkeypatch.setattr(hashing, "REHASH_READ_SIZE", MiB)  # several windows, odd offsets
    monkeypatch.setattr(hashing._ReadBack, "hash_mapped", counting)
    fd = os.open(path, os.O_RDONLY)
    try:
        digester = Digester(git_blob_size=len(data))
        digester.feed_from_file(fd, 12345)  # an offset that is not page aligned follows
        digester.feed_from_file(fd, len(data) - 12345)
        digests = await digester.finish()
    finally:
        os.close(fd)
    assert digests.sha256 == hashlib.sha256(data).hexdigest()
    git = hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
    assert digests.git_oid == git
    assert mapped and all(mapped)

    # A file shorter than the bytes asked for is never mapped (that would be a SIGBUS on the
    # missing page): the read reports it as an error instead.
    short = tmp_path / "short"
    short.write_bytes(data[:MiB])
    fd = os.open(short, os.O_RDONLY)
    try:
        digester = Digester(git_blob_size=None)
        digester.feed_from_file(fd, 2 * MiB)
        with pytest.raises(RuntimeError, match="digest thread stopped"):
            await digester.finish()
    finally:
        os.close(fd)
    assert mapped[-1] is False
