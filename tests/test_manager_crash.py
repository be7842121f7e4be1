"""What survives the worst: SIGKILL mid-download, and a disk that fills up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfetch.core import events as ev
from modelfetch.core.models import FileStatus
from modelfetch.store import SqliteStore
from modelfetch.testing.fakehub import FakeHub, Fault

from .conftest import group_of, next_event, write_plan
from .test_manager import MiB, assert_published, manager, shards

CHILD = Path(__file__).with_name("manager_child.py")


async def _run_child_until(home: Path, plan: Path, min_bytes: int) -> int:
    """Start the child manager and SIGKILL it once its .part files hold `min_bytes` more."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        str(home),
        str(plan),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    dest = Path(json.loads(plan.read_text())["dest_dir"])
    start = _on_disk(dest)
    try:
        async with asyncio.timeout(30):
            while _on_disk(dest) - start < min_bytes:
                await asyncio.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    return _on_disk(dest)


def _on_disk(dest: Path) -> int:
    return sum(
        p.stat().st_size for p in dest.glob("*") if p.is_file() and not p.name.endswith(".json")
    )


async def test_sigkill_twice_mid_download_loses_nothing_and_refetches_little(
    hub: FakeHub, tmp_path: Path
) -> None:
    rate = 4 * MiB
    paths = shards(hub, "o/m", 3, 6 * MiB)
    hub.add_fault(Fault("throttle", origin="cdn", rate=rate))
    dest = tmp_path / "out"
    request = group_of(hub, "o/m", paths, dest)
    plan = tmp_path / "plan.json"
    write_plan(plan, request, max_active=2)
    home = tmp_path / "home"
    kills = 0
    for _ in range(2):
        await _run_child_until(home, plan, 3 * MiB)
        kills += 1
        with SqliteStore(home) as store:  # the crash left rows `active`, the lock free
            assert any(f.status is FileStatus.ACTIVE for f in store.files())
            assert store.integrity_check() == "ok"
    hub.clear_faults()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        str(home),
        str(plan),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert lines[0] == {"type": "enqueued", "id": 1}  # the same download, not a new one
    assert_published(hub, "o/m", paths, dest)
    with SqliteStore(home) as store:
        assert {f.status for f in store.files()} == {FileStatus.COMPLETED}
    # Bytes the CDN sent beyond one copy of each file: what was in flight at each kill. With at
    # most 2 connections at `rate` each, one second's worth per kill bounds it.
    sent = sum(r.bytes_sent for r in hub.requests(origin="cdn", method="GET"))
    refetched = sent - 3 * 6 * MiB
    assert 0 <= refetched <= kills * 2 * rate
    # Every restart resumed each started file from its bytes on disk.
    resumed = [r.range for r in hub.requests(origin="cdn", method="GET") if r.range]
    assert resumed and all(r.startswith("bytes=") for r in resumed)


@contextlib.contextmanager
def _tmpfs(path: Path, size_mib: int) -> Iterator[bool]:
    path.mkdir(parents=True, exist_ok=True)
    ok = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
            capture_output=True,
        ).returncode
        == 0
    )
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(path: Path, size_mib: int) -> None:
    """Someone else's file takes `size_mib` of the disk (after the download was accepted: the
    space check at enqueue passed, and the disk fills while it runs)."""
    (path / "someone-elses-file").write_bytes(b"\0" * (size_mib * MiB))


def _grow(path: Path, size_mib: int) -> None:
    subprocess.run(
        ["mount", "-o", f"remount,size={size_mib}m", str(path)], check=True, capture_output=True
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
async def test_a_full_disk_pauses_everything_keeps_every_byte_and_resumes(
    hub: FakeHub, tmp_path: Path
) -> None:
    paths = shards(hub, "o/m", 3, 10 * MiB)
    hub.add_fault(Fault("throttle", origin="cdn", rate=16 * MiB))
    disk = tmp_path / "disk"
    with _tmpfs(disk, 40) as mounted:
        if not mounted:
            pytest.skip("this machine does not allow a tmpfs mount")
        dest = disk / "out"
        async with manager(tmp_path, max_active=1, disk_check_interval=3600) as m:
            with m.subscribe() as sub:
                gid = await m.enqueue(group_of(hub, "o/m", paths, dest))  # 30 MiB of 40 free
                _fill(disk, 16)  # 24 MiB left: two files fit, the third does not
                notice = await next_event(
                    sub, lambda e: isinstance(e, ev.Notice) and e.level == "error"
                )
                assert isinstance(notice, ev.Notice) and "space" in notice.message.lower()
                await asyncio.sleep(0.3)
                view = await m.group_view(gid)
                statuses = [f.status for f in view.files]
                assert statuses[:2] == ["completed", "completed"]
                assert statuses[2] == "paused"
                assert view.files[2].pause_reason == "disk_full"
                assert view.status == "paused"
                assert (dest / paths[0]).read_bytes() == hub.content("o/m", paths[0])
                _grow(disk, 80)
                await m.resume(gid)
                await next_event(sub, lambda e: isinstance(e, ev.GroupFinished))
        assert_published(hub, "o/m", paths, dest)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
async def test_a_full_disk_pauses_queued_work_too_and_resumes_by_itself_when_space_returns(
    hub: FakeHub, tmp_path: Path
) -> None:
    paths = shards(hub, "o/m", 4, 8 * MiB)
    hub.add_fault(Fault("throttle", origin="cdn", rate=8 * MiB))
    disk = tmp_path / "disk"
    with _tmpfs(disk, 36) as mounted:
        if not mounted:
            pytest.skip("this machine does not allow a tmpfs mount")
        dest = disk / "out"
        async with manager(tmp_path, max_active=2, disk_check_interval=0.2) as m:
            with m.subscribe() as sub:
                gid = await m.enqueue(group_of(hub, "o/m", paths, dest))  # 32 MiB of 36 free
                _fill(disk, 24)  # 12 MiB left
                await next_event(sub, lambda e: isinstance(e, ev.Notice) and e.level == "error")
                await asyncio.sleep(0.3)
                view = await m.group_view(gid)
                assert {f.status for f in view.files} <= {"completed", "paused"}
                assert all(
                    f.pause_reason == "disk_full" for f in view.files if f.status == "paused"
                )
                kept = {f.name: f.downloaded for f in view.files}
                for name, size in kept.items():
                    part = dest / (name + ".part")
                    if part.exists():
                        assert part.stat().st_size == size
                _grow(disk, 100)
                await next_event(sub, lambda e: isinstance(e, ev.GroupFinished), timeout=30)
        assert_published(hub, "o/m", paths, dest)
