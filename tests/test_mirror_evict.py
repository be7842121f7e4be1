"""`--cache-max`: the least recently served pulled files go first; one being served or still
downloading is never removed; what was removed is gone from the queue too."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from modelfetch.core.format import format_bytes
from modelfetch.mirror import MirrorOptions
from modelfetch.mirror.evict import cache_use, evict
from modelfetch.render.mirrored import mirror_summary
from modelfetch.testing.fakehub import FakeHub, RepoFile
from modelfetch.testing.fakehub.faults import Fault
from tests.mirror_env import Mirror, running_mirror

REPO = "team/three"
MIB = 1 << 20
FILES = ["a.gguf", "b.gguf", "c.gguf"]


async def _get(http: aiohttp.ClientSession, mirror: Mirror, path: str) -> bytes:
    async with http.get(f"{mirror.endpoint}/{REPO}/resolve/main/{path}") as r:
        assert r.status == 200
        return await r.read()


def _held(mirror: Mirror) -> set[str]:
    return {
        p.name
        for p in mirror.state.puller.cache_dir.rglob("*.gguf")
        if not p.name.endswith(".part")
    }


@pytest.fixture
def three(hub: FakeHub) -> FakeHub:
    hub.add_repo(REPO, [RepoFile(p, size=MIB, seed=i) for i, p in enumerate(FILES)])
    return hub


async def test_the_least_recently_served_file_is_evicted_first(
    three: FakeHub, tmp_path: Path
) -> None:
    limit = 2 * MIB + MIB // 2
    async with (
        running_mirror(three, tmp_path / "m", options=MirrorOptions(cache_max=limit)) as mirror,
        aiohttp.ClientSession() as http,
    ):
        for path in ("a.gguf", "b.gguf", "a.gguf"):  # b is now the one served longest ago
            assert await _get(http, mirror, path) == three.content(REPO, path)
        assert await evict(mirror.state, limit) == []  # 2 MiB held: under the limit
        await _get(http, mirror, "c.gguf")
        removed = await evict(mirror.state, limit)
        assert [p.name for p in removed] == ["b.gguf"]
        assert _held(mirror) == {"a.gguf", "c.gguf"}
        use = cache_use(mirror.state, limit)
        assert (use.held_bytes, use.files) == (2 * MIB, 2)
        views = await mirror.manager.snapshot()
        assert {v.name for v in views} == {f"{REPO}/a.gguf", f"{REPO}/c.gguf"}  # b forgotten
        # `ls` says what the mirror holds and against what limit.
        line = mirror_summary(views, limit)
        held, cap = format_bytes(2 * MIB), format_bytes(limit)
        assert line == f"Hub mirror: 2 files held, {held} of {cap} (--cache-max)"
        # Asked again, it is pulled again: the mirror is a cache, not a store.
        assert await _get(http, mirror, "b.gguf") == three.content(REPO, "b.gguf")


async def test_a_file_being_served_is_never_evicted(three: FakeHub, tmp_path: Path) -> None:
    limit = MIB + MIB // 2
    async with (
        running_mirror(three, tmp_path / "m", options=MirrorOptions(cache_max=limit)) as mirror,
        aiohttp.ClientSession() as http,
    ):
        for path in ("a.gguf", "b.gguf"):
            await _get(http, mirror, path)
        oldest = next(p for p in mirror.state.puller.cache_dir.rglob("a.gguf"))
        with mirror.state.serving.reading(oldest):  # a client is reading a right now
            removed = await evict(mirror.state, limit)
        assert [p.name for p in removed] == ["b.gguf"]
        assert oldest.exists()


async def test_a_file_still_downloading_counts_but_is_never_evicted(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.add_repo(REPO, [RepoFile(p, size=MIB, seed=i) for i, p in enumerate(FILES)])
    async with running_mirror(hub, tmp_path / "m", options=MirrorOptions(cache_max=MIB)) as m:
        async with aiohttp.ClientSession() as http:
            await _get(http, m, "a.gguf")
        # b's upstream body stalls: its download stays active, its bytes not all there.
        hub.add_fault(Fault("stall", path="b.gguf", after_bytes=1000, seconds=60))
        listing = await m.state.upstream.listing(REPO, hub.file(REPO, "b.gguf").commit, None)
        entry = listing.find("b.gguf")
        assert entry is not None
        key = await m.state.puller.pull(REPO, listing.commit, entry, None)
        removed = await evict(m.state, MIB)
        assert [p.name for p in removed] == ["a.gguf"]  # 2 MiB with b: a goes, b stays
        record = m.manager.file_record(*key)
        assert record is not None and record.status.value in ("queued", "active")
