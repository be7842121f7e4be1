"""The state database survives misuse: a second process, garbage, a foreign or truncated file,
an old schema. `recovery.open_store` is what the manager opens its state directory with."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfetch.core import events as ev
from modelfetch.core.errors import StateError, StateLockedError
from modelfetch.core.models import FileRecord, FileStatus, GroupRecord
from modelfetch.manager import DownloadManager
from modelfetch.recovery import diagnose, open_store, partials_on_disk
from modelfetch.store import DB_NAME, MIGRATIONS, SCHEMA_VERSION, SqliteStore, apply_migrations
from modelfetch.testing.fakehub import FakeHub, Fault, RepoFile
from modelfetch.transfer.sink import PartState

from .conftest import group_of, next_event
from .test_manager import MiB, settings

SHA = "ab" * 32


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _asides(home: Path) -> list[Path]:
    return sorted(
        p
        for p in home.iterdir()
        if ".corrupt-" in p.name and not p.name.endswith(("-wal", "-shm", "-journal"))
    )


def _a_group(dest_dir: Path, n: int = 1) -> GroupRecord:
    return GroupRecord(
        key=f"key-{n}",
        spec=f"spec-{n}",
        name=f"name-{n}",
        dest_dir=str(dest_dir),
        files=[FileRecord(0, 1, f"http://127.0.0.1:9/f{n}", str(dest_dir / f"f{n}"), f"f{n}")],
    )


def _write_partial(
    dest: Path, data: bytes, *, url: str, total: int | None, sha256: str | None
) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    PartState(url=url, validator=None, total=total, sha256=sha256).save(
        dest.with_name(dest.name + ".part.json")
    )
    dest.with_name(dest.name + ".part").write_bytes(data)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that has the state directory open (a running manager, as far as the
    lock is concerned)."""
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from modelfetch.store import SqliteStore
        with SqliteStore(Path(sys.argv[1])):
            print("ready", flush=True)
            sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "home")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    try:
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


# -- a second process --------------------------------------------------------------------------


async def test_a_second_process_is_told_who_holds_the_state_and_touches_nothing(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    home = tmp_path / "home"
    before = _digest(home / DB_NAME)
    with pytest.raises(StateLockedError) as caught:
        open_store(home, models_dir=tmp_path / "models")
    assert f"pid {holder.pid}" in str(caught.value) and str(home) in str(caught.value)
    with pytest.raises(StateLockedError, match=f"pid {holder.pid}"):
        SqliteStore(home)
    with pytest.raises(StateLockedError, match=f"pid {holder.pid}"):
        async with DownloadManager(home=home, settings=settings()):
            pass
    assert _digest(home / DB_NAME) == before and not _asides(home)


def test_a_damaged_file_held_by_another_process_is_not_moved(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    home = tmp_path / "home"
    # Even a file that looks damaged to us belongs to the process holding the lock: hands off.
    (home / DB_NAME).write_bytes(b"garbage")
    with pytest.raises(StateLockedError):
        open_store(home, models_dir=tmp_path / "models")
    assert (home / DB_NAME).read_bytes() == b"garbage" and not _asides(home)


# -- damaged and foreign files ------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [os.urandom(3000), b"SQLite format 3\x00" + os.urandom(4000), b"{}\n"],
    ids=["garbage", "garbage-with-sqlite-magic", "json"],
)
def test_garbage_is_moved_aside_with_a_message_and_a_new_database_starts(
    tmp_path: Path, content: bytes
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / DB_NAME).write_bytes(content)
    store, messages = open_store(home, models_dir=tmp_path / "models", clock=lambda: 0.0)
    with store:
        assert store.integrity_check() == "ok"
        assert store.groups() == []
    (aside,) = _asides(home)
    assert aside.name == "state.db.corrupt-19700101T000000Z"
    assert aside.read_bytes() == content  # moved, never rewritten or deleted
    assert "is damaged" in messages[0] and aside.name in messages[0]
    assert "no unfinished downloads found" in messages[1]


@pytest.mark.parametrize("version", [0, 1, SCHEMA_VERSION, SCHEMA_VERSION + 5])
def test_another_programs_database_is_never_written_to(tmp_path: Path, version: int) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with sqlite3.connect(home / DB_NAME) as db:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        db.execute("INSERT INTO notes (body) VALUES ('my precious notes')")
        db.execute(f"PRAGMA user_version = {version}")
    db.close()
    before = _digest(home / DB_NAME)
    store, messages = open_store(home, models_dir=tmp_path / "models")
    store.close()
    (aside,) = _asides(home)
    assert _digest(aside) == before
    assert "is not a modelfetch database" in messages[0] and "notes" in messages[0]


def test_two_damaged_files_in_the_same_second_keep_both(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    for content in (b"first", b"second"):
        (home / DB_NAME).write_bytes(content)
        store, _ = open_store(home, models_dir=tmp_path / "m", clock=lambda: 100.0)
        store.close()
        (home / DB_NAME).unlink()
    assert sorted(p.read_bytes() for p in _asides(home)) == [b"first", b"second"]


def _store_with_groups(home: Path, dirs: list[Path]) -> None:
    with SqliteStore(home) as store:
        for n in range(200):  # enough rows for the tables and indexes to span many pages
            store.add_group(_a_group(dirs[n % len(dirs)], n))


def test_a_truncated_database_is_detected_and_its_queue_rebuilt_from_disk(tmp_path: Path) -> None:
    home, models, extra = tmp_path / "home", tmp_path / "models", tmp_path / "extra"
    _store_with_groups(home, [models])
    size = (home / DB_NAME).stat().st_size
    with open(home / DB_NAME, "r+b") as fh:
        fh.truncate(size // 2)
    _write_partial(
        models / "o" / "m" / "a.gguf", b"x" * 10, url="http://h/a", total=100, sha256=SHA
    )
    _write_partial(
        models / "o" / "m" / "b.gguf", b"", url="http://h/b", total=50, sha256=SHA.upper()
    )
    _write_partial(extra / "c.bin", b"y" * 5, url="http://h/c", total=None, sha256=None)
    assert diagnose(home / DB_NAME).verdict == "damaged"

    store, messages = open_store(home, models_dir=models, extra_dirs=[extra])
    with store:
        groups = store.groups(live_only=True)
        assert store.integrity_check() == "ok"
    assert "is damaged" in messages[0]
    assert "rebuilt 2 download(s) from 3 unfinished file(s)" in messages[1]
    by_dir = {g.dest_dir: g for g in groups}
    model = by_dir[str(models / "o" / "m")]
    assert model.name == "recovered: m"
    got = [(f.name, f.url, f.expected_size, f.expected_sha256, f.bytes_done) for f in model.files]
    assert got == [("a.gguf", "http://h/a", 100, SHA, 10), ("b.gguf", "http://h/b", 50, SHA, 0)]
    assert all(f.status is FileStatus.QUEUED for g in groups for f in g.files)
    (other,) = by_dir[str(extra)].files
    assert (other.name, other.expected_size, other.bytes_done) == ("c.bin", None, 5)


def test_a_damaged_database_still_names_the_directories_to_look_in(tmp_path: Path) -> None:
    home, models, elsewhere = tmp_path / "home", tmp_path / "models", tmp_path / "elsewhere"
    _store_with_groups(home, [models, elsewhere])
    with sqlite3.connect(home / DB_NAME) as db:
        (root,) = db.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'files_by_order'"
        ).fetchone()
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with open(home / DB_NAME, "r+b") as fh:  # one index page overwritten: tables still readable
        fh.seek((root - 1) * page_size)
        fh.write(b"\xa5" * page_size)
    _write_partial(elsewhere / "d.bin", b"z", url="http://h/d", total=3, sha256=None)
    found = diagnose(home / DB_NAME)
    assert found.verdict == "damaged" and "quick_check" in found.detail
    assert found.dest_dirs == tuple(sorted([str(models), str(elsewhere)]))
    store, messages = open_store(home, models_dir=models)
    with store:
        ((group_dir, names),) = [(g.dest_dir, [f.name for f in g.files]) for g in store.groups()]
    assert (group_dir, names) == (str(elsewhere), ["d.bin"])
    assert "rebuilt 1 download(s) from 1 unfinished file(s)" in messages[1]


def test_only_real_unfinished_downloads_are_rebuilt(tmp_path: Path) -> None:
    models = tmp_path / "models"
    _write_partial(models / "done.gguf", b"", url="http://h/done", total=1, sha256=None)
    (models / "done.gguf").write_bytes(b"x")  # published; its sidecar is a crash leftover
    (models / "junk.gguf.part.json").write_text("{not json")
    (models / "other.gguf.part.json").write_text('{"version": 99, "url": "http://h/x"}')
    _write_partial(models / "sub" / "ok.gguf", b"abc", url="http://h/ok", total=9, sha256=None)
    found = partials_on_disk([models, models / "sub", tmp_path / "missing"])
    assert [(dest.name, state.url) for dest, state in found] == [("ok.gguf", "http://h/ok")]


def test_a_multi_connection_partial_is_queued_again_but_from_zero(tmp_path: Path) -> None:
    home, models = tmp_path / "home", tmp_path / "models"
    home.mkdir()
    (home / DB_NAME).write_bytes(b"garbage")
    dest = models / "seg.gguf"
    dest.parent.mkdir(parents=True)
    # A segmented .part is allocated to its full size; without its map its length means nothing.
    PartState(url="http://h/seg", validator=None, total=64, sha256=SHA, segmented=True).save(
        dest.with_name("seg.gguf.part.json")
    )
    dest.with_name("seg.gguf.part").write_bytes(b"\0" * 64)
    store, messages = open_store(home, models_dir=models)
    with store:
        ((record,),) = [g.files for g in store.groups()]
    assert (record.url, record.expected_size, record.bytes_done) == ("http://h/seg", 64, 0)
    assert "1 multi-connection file(s) start over" in messages[1]


# -- schema versions -----------------------------------------------------------------------------


def test_an_older_schema_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    db = sqlite3.connect(home / DB_NAME, isolation_level=None)
    apply_migrations(db, MIGRATIONS[:1], home / DB_NAME)
    db.execute(
        "INSERT INTO groups (key, spec, name, dest_dir, created_at)"
        " VALUES ('k', 's', 'old one', '/d', 1.0)"
    )
    db.execute(
        "INSERT INTO files (group_id, idx, url, dest, name, created_at)"
        " VALUES (1, 1, 'http://h/x', '/d/x', 'x', 1.0)"
    )
    db.close()
    store, messages = open_store(home, models_dir=tmp_path / "models")
    with store:
        (group,) = store.groups()
        assert group.name == "old one" and group.files[0].link is None
        assert store.integrity_check() == "ok"
    assert messages == [f"upgraded {home / DB_NAME} from schema version 1 to {SCHEMA_VERSION}"]
    assert not _asides(home)


def test_a_newer_modelfetch_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with SqliteStore(home) as store:
        store.add_group(_a_group(tmp_path))
    with sqlite3.connect(home / DB_NAME) as db:
        db.execute("ALTER TABLE files ADD COLUMN from_the_future TEXT")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    assert diagnose(home / DB_NAME).verdict == "newer"
    with pytest.raises(StateError, match="newer modelfetch"):
        open_store(home, models_dir=tmp_path / "models")
    assert not _asides(home)


@pytest.mark.parametrize("setup", ["missing", "empty"])
def test_no_database_or_an_empty_file_just_starts(tmp_path: Path, setup: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    if setup == "empty":
        (home / DB_NAME).write_bytes(b"")
    store, messages = open_store(home, models_dir=tmp_path / "models")
    store.close()
    assert messages == [] and not _asides(home)


def test_a_directory_in_place_of_the_database_is_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / DB_NAME).mkdir(parents=True)
    with pytest.raises(StateError, match="is a directory"):
        open_store(home, models_dir=tmp_path / "models")


# -- end to end: a damaged database does not lose a half-done download ---------------------------


async def test_a_download_interrupted_then_its_database_destroyed_resumes_from_its_bytes(
    hub: FakeHub, tmp_path: Path
) -> None:
    home, dest = tmp_path / "home", tmp_path / "models" / "o" / "m"
    paths = ["big-Q4_K_M.gguf"]
    hub.add_repo("o/m", [RepoFile(paths[0], size=6 * MiB, seed=5)])
    hub.add_fault(Fault("throttle", origin="cdn", rate=4 * MiB, times=1))
    async with DownloadManager(home=home, settings=settings()) as m:
        with m.subscribe() as sub:
            await m.enqueue(group_of(hub, "o/m", paths, dest))
            await next_event(
                sub, lambda e: isinstance(e, ev.FileProgress) and e.downloaded >= 1 * MiB
            )
    on_disk = (dest / (paths[0] + ".part")).stat().st_size
    assert on_disk >= 1 * MiB
    (home / DB_NAME).write_bytes(os.urandom(8192))  # the worst: the state file is gone

    store, messages = open_store(home, models_dir=tmp_path / "models")
    store.close()
    assert "rebuilt 1 download(s)" in messages[1]
    hub.log.clear()
    async with DownloadManager(home=home, settings=settings()) as m:
        (view,) = await m.snapshot()
        await asyncio.wait_for(m.wait([view.id]), 30)
        (view,) = await m.snapshot()
    assert view.status == "completed"
    assert (dest / paths[0]).read_bytes() == hub.content("o/m", paths[0])
    (body,) = [r for r in hub.requests(origin="cdn", method="GET")]
    assert body.range == f"bytes={on_disk}-"  # resumed, not fetched again from zero
