"""`DownloadManager.expedite`: a file a client is waiting on starts beyond max_active, up to
max_expedited more; a paused one stays paused. Real fake hub, real SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path

from modelfetch.core.models import FileStatus
from modelfetch.testing.fakehub import FakeHub, Fault, RepoFile

from .conftest import group_of
from .test_manager import MiB, manager


async def test_an_expedited_file_starts_beyond_max_active_and_a_paused_one_does_not(
    hub: FakeHub, tmp_path: Path
) -> None:
    names = [f"f{n}.bin" for n in range(4)]
    hub.add_repo("o/e", [RepoFile(n, size=2 * MiB, seed=i) for i, n in enumerate(names)])
    throttle = hub.add_fault(Fault("throttle", origin="cdn", rate=512 * 1024))
    async with manager(tmp_path, max_active=1, max_expedited=1) as m:
        gids = [await m.enqueue(group_of(hub, "o/e", [n], tmp_path / "out", name=n)) for n in names]
        async with asyncio.timeout(10):
            while len(m._running) < 1:
                await asyncio.sleep(0.02)
        await m.pause(gids[1])
        m.expedite(gids[1], 1)  # paused by the user: stays paused
        m.expedite(gids[3], 1)
        m.expedite(gids[2], 1)  # one more than max_expedited allows at once
        async with asyncio.timeout(10):
            while (gids[2], 1) not in m._running:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        assert set(m._running) == {(gids[0], 1), (gids[2], 1)}  # 1 + max_expedited
        assert (await m.group_view(gids[1])).files[0].status == FileStatus.PAUSED
        throttle.rate = None
        hub.clear_faults()
        await m.resume(gids[1])
        async with asyncio.timeout(30):
            await m.wait(gids)
        assert [(await m.group_view(g)).status for g in gids] == ["completed"] * 4
