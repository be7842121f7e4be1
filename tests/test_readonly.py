"""`ls` and `status` while another process works the queue: a read-only view of its state.

A manager in a child process holds the state lock mid-download (the fake Hub stalls its bodies,
so the bytes it checkpoints stay put); the CLI runs as real subprocesses next to it.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from modelfetch.core.errors import StateError
from modelfetch.core.models import FileRecord, FileStatus, GroupRecord
from modelfetch.readonly import ReadOnlyBackend
from modelfetch.store import (
    DB_NAME,
    LOCK_NAME,
    MIGRATIONS,
    SqliteStore,
    SqliteStoreReader,
    apply_migrations,
)
from modelfetch.testing.fakehub import FakeHub, Fault

from .conftest import group_of, write_plan
from .test_manager import shards

CHILD = Path(__file__).with_name("manager_child.py")
KiB = 1024
STALL_AT = 256 * KiB  # 2 s at the throttle's rate: the child checkpoints bytes on the way
NOTICE = "is working this queue"


async def cli(home: Path, *args: str) -> tuple[int, str, str]:
    """`python -m modelfetch --home HOME ARGS...` in a fresh interpreter (the event loop keeps
    serving the fake Hub meanwhile)."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODELFETCH_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "modelfetch",
        "--home",
        str(home),
        *args,
        env={**keep, "HOME": str(home.parent / "user"), "NO_COLOR": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def stored_files(home: Path) -> dict[str, tuple[str, int]]:
    """ref -> (status, bytes_done), read straight from the database (not through modelfetch)."""
    db = sqlite3.connect((home / DB_NAME).absolute().as_uri() + "?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT group_id, idx, status, bytes_done FROM files").fetchall()
    finally:
        db.close()
    return {f"{g}.{i}": (status, done) for g, i, status, done in rows}


@pytest.fixture
async def busy_home(hub: FakeHub, tmp_path: Path) -> AsyncIterator[Path]:
    """A home whose queue a child manager works: 2 of 3 files active, the third queued. Bodies
    come slowly (so the child checkpoints some bytes), then stall: what the store says stays put
    while the test looks (the child saves bytes only while they move)."""
    paths = shards(hub, "o/m", 3, 1024 * KiB)
    hub.add_fault(Fault("throttle", origin="cdn", rate=128 * KiB))
    hub.add_fault(Fault("stall", origin="cdn", after_bytes=STALL_AT, seconds=120))
    home = tmp_path / "home"
    plan = write_plan(
        tmp_path / "plan.json", group_of(hub, "o/m", paths, tmp_path / "out"), max_active=2
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        str(home),
        str(plan),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            seen: dict[str, tuple[str, int]] = {}
            while True:  # until both active files have stalled and the rows stopped changing
                # Longer than the child's checkpoint interval (1 s): two equal reads closer
                # together can both fall before the checkpoint that saves the last bytes.
                await asyncio.sleep(1.2)
                parts = [p.stat().st_size for p in (tmp_path / "out").glob("*.part")]
                if parts != [STALL_AT, STALL_AT] or not (home / DB_NAME).exists():
                    continue
                rows = stored_files(home)
                active = [done for status, done in rows.values() if status == "active"]
                if rows == seen and len(active) == 2 and all(active):
                    break
                seen = rows
        yield home
    finally:
        proc.kill()
        await proc.wait()


async def test_ls_and_status_show_the_queue_another_process_is_working(busy_home: Path) -> None:
    stored = stored_files(busy_home)
    assert sorted(status for status, _ in stored.values()) == ["active", "active", "queued"]

    code, out, err = await cli(busy_home, "ls", "--json")
    assert code == 0, err
    [group] = json.loads(out)  # stdout is the JSON document alone; the notice is on stderr
    assert err.count(NOTICE) == 1 and "speeds are not shown" in err
    assert group["id"] == 1 and group["status"] == "active"
    assert group["speed"] is None and group["eta"] is None
    assert group["total"] == 3 * 1024 * KiB
    files = {f["ref"]: f for f in group["files"]}
    assert {ref: (f["status"], f["downloaded"]) for ref, f in files.items()} == stored
    assert group["downloaded"] == sum(done for _, done in stored.values())
    # Positions count waiting files, as the manager counts them: the queued one is first.
    queued = next(ref for ref, (status, _) in stored.items() if status == "queued")
    assert files[queued]["position"] == 1 and group["position"] == 1
    assert all(f["position"] is None for ref, f in files.items() if ref != queued)
    assert all(f["total"] == 1024 * KiB and f["speed"] is None for f in files.values())

    code, out, err = await cli(busy_home, "ls")
    assert code == 0, err
    assert err.count(NOTICE) == 1 and len(err.strip().splitlines()) == 1
    assert "o/m:3" in out and "active" in out and "#1" in out

    code, out, err = await cli(busy_home, "status", "1")
    assert code == 0, err
    assert err.count(NOTICE) == 1
    assert all(ref in out for ref in stored) and "queued" in out and "ETA —" in out

    code, out, err = await cli(busy_home, "status", "--json", "1")
    assert code == 0, err
    assert json.loads(out)["files"] == group["files"]

    code, out, err = await cli(busy_home, "status", "7")
    assert code == 1 and "no download with id 7" in err and "Traceback" not in err


async def test_commands_that_change_the_queue_still_say_it_is_locked(busy_home: Path) -> None:
    before = stored_files(busy_home)
    code, _, err = await cli(busy_home, "pause", "1")
    assert code == 1
    assert "is using" in err and "Wait for it to finish" in err and NOTICE not in err
    assert "Traceback" not in err
    now = stored_files(busy_home)
    assert {ref: s for ref, (s, _) in now.items()} == {ref: s for ref, (s, _) in before.items()}


# -- without a child: the lock held by this process -------------------------------------------


def a_group(dest: Path) -> GroupRecord:
    return GroupRecord(
        key="k",
        spec="https://example.invalid/a.bin",
        name="a.bin",
        dest_dir=str(dest),
        files=[
            FileRecord(
                group_id=0,
                index=i,
                url=f"https://example.invalid/{i}.bin",
                dest=str(dest / f"{i}.bin"),
                name=f"{i}.bin",
                order_key=i * 1024,
                expected_size=100,
            )
            for i in (1, 2, 3)
        ],
    )


@pytest.fixture
def held_store(tmp_path: Path) -> Iterator[SqliteStore]:
    """A store with one group, its second file active with 40 bytes: open (and locked) here."""
    with SqliteStore(tmp_path / "home") as store:
        gid = store.add_group(a_group(tmp_path / "out")).id
        store.transition(gid, 2, FileStatus.ACTIVE, allowed_from=[FileStatus.QUEUED])
        store.save_progress([(gid, 2, 40, 100)])
        yield store


def fingerprint(home: Path) -> dict[str, tuple[int, int, str]]:
    """(mtime_ns, size, digest) of the database and its WAL."""
    found = {}
    for name in (DB_NAME, DB_NAME + "-wal"):
        path = home / name
        if path.exists():
            st = path.stat()
            found[name] = (
                st.st_mtime_ns,
                st.st_size,
                hashlib.sha256(path.read_bytes()).hexdigest(),
            )
    return found


async def test_a_listing_writes_nothing(held_store: SqliteStore, tmp_path: Path) -> None:
    home = tmp_path / "home"
    before = fingerprint(home)
    assert DB_NAME + "-wal" in before  # the owner's writes are in the WAL, not checkpointed
    code, out, err = await cli(home, "ls", "--json")
    assert code == 0, err
    [group] = json.loads(out)
    assert [(f["status"], f["downloaded"], f["position"]) for f in group["files"]] == [
        ("queued", 0, 1),
        ("active", 40, None),
        ("queued", 0, 2),
    ]
    code, _, err = await cli(home, "status")
    assert code == 0, err
    assert fingerprint(home) == before
    # The owner goes on writing and the next look sees its last commit.
    held_store.save_progress([(1, 2, 70, 100)])
    code, out, err = await cli(home, "status", "--json", "1.2")
    assert code == 0, err
    assert json.loads(out)["files"][1]["downloaded"] == 70


async def test_the_reader_offers_no_writes_and_needs_no_lock(held_store: SqliteStore) -> None:
    with SqliteStoreReader(held_store.path.parent) as reader:
        assert [f.bytes_done for f in reader.files()] == [0, 40, 0]
        with pytest.raises(StateError, match="read-only"):
            reader.update_file(1, 1, attempts=3)
        with pytest.raises(StateError, match="read-only"):
            reader.transition(1, 1, FileStatus.PAUSED, allowed_from=[FileStatus.QUEUED])
        with pytest.raises(StateError, match="read-only"):
            reader.forget_finished()
        with pytest.raises(StateError, match="read-only"), reader.batch():
            pass
    assert held_store.get_file(1, 1) is not None and held_store.get_file(1, 1).attempts == 0  # type: ignore[union-attr]
    with ReadOnlyBackend(held_store.path.parent) as backend:
        [view] = await backend.snapshot()
        assert (view.downloaded, view.total, view.position) == (40, 300, 1)
        assert f"(pid {os.getpid()})" in backend.read_only_notice


@pytest.fixture
def locked_home(tmp_path: Path) -> Iterator[Path]:
    """A home whose lock this process holds, whatever its database holds."""
    home = tmp_path / "home"
    home.mkdir()
    fd = os.open(home / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield home
    finally:
        os.close(fd)


def _foreign(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE songs (title TEXT)")
    db.commit()
    db.close()


def _newer(path: Path) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    apply_migrations(db, MIGRATIONS, path)
    db.execute("PRAGMA user_version = 99")
    db.close()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.write_bytes(b"not a database at all" * 100), "cannot be used"),
        (_foreign, "not a modelfetch database"),
        (_newer, "newer modelfetch"),
    ],
    ids=["garbage", "foreign", "newer"],
)
async def test_an_unusable_database_is_a_clear_error(
    locked_home: Path, make: object, expected: str
) -> None:
    db = locked_home / DB_NAME
    make(db)  # type: ignore[operator]
    before = db.read_bytes()
    for args in (("ls",), ("status", "--json")):
        code, out, err = await cli(locked_home, *args)
        assert code == 1 and out == ""
        assert expected in err and "Traceback" not in err and "--debug" not in err
    assert db.read_bytes() == before  # never moved aside or repaired from outside the lock
