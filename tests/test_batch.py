"""Batch enqueue: the manager's `enqueue_many`/`add_many` (one store transaction, on both
engines), `POST /api/downloads:batch` against a real daemon on loopback, and `modelfetch get -I
list` through a running daemon: one request for the whole list, on a path that imports neither
aiohttp nor rich nor pydantic."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelfetch.core import events as ev
from modelfetch.core.errors import DestinationError, ModelfetchError, SpecError
from modelfetch.manager import DownloadManager, batch
from modelfetch.requests import FileRequest, GroupRequest
from modelfetch.testing.fakehub import SAMPLE_REPO, FakeHub, Fault, RepoFile

from .pg import pg_cluster_fixture, pg_url_fixture  # noqa: F401 -- the pg fixtures
from .test_cli import Cli, cdn_url, pycache  # noqa: F401 -- the CLI fixture's cache
from .test_server_api import Daemon, run_daemon

LIST_REPO = "modelfetch/batch-files"


def _request(name: str, dest: Path, url: str | None = None) -> GroupRequest:
    return GroupRequest(
        name=name,
        files=(FileRequest(url=url or f"http://127.0.0.1:9/{name}", path=name, size=1024),),
        dest_dir=dest,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
    else:
        yield request.getfixturevalue("pg_url")  # skips without PostgreSQL


@pytest.fixture
async def queue_only(tmp_path: Path, store_url: str | None) -> AsyncIterator[DownloadManager]:
    """A manager that edits the queue without running transfers (as `modelfetch add` does)."""
    manager = DownloadManager(
        home=tmp_path / "home", models_dir=tmp_path / "models", workers=False, store_url=store_url
    )
    async with manager:
        yield manager


async def test_enqueue_many_is_one_transaction_and_reports_each_failure_in_place(
    queue_only: DownloadManager, tmp_path: Path
) -> None:
    m = queue_only
    dest = tmp_path / "out"
    blocked = tmp_path / "a-file"
    blocked.write_text("a file where a folder should be")
    log: list[str] = []
    store = m.store
    for name in ("begin_batch", "end_batch", "add_group"):
        real = getattr(store, name)

        def spy(*args: Any, _real: Any = real, _name: str = name) -> Any:
            log.append(_name)
            return _real(*args)

        setattr(store, name, spy)
    requests: list[GroupRequest | ModelfetchError] = [
        _request("a.bin", dest),
        SpecError("not a spec: '::'"),  # planning failed: stays in its place
        _request("b.bin", blocked / "sub"),  # its folder cannot be made
        _request("c.bin", dest),
        _request("a.bin", dest),  # the same as the first: the same download
    ]
    with m.subscribe() as sub:
        outcomes = await batch.enqueue_many(m, requests)
        queued = [e async for e in _drain(sub) if isinstance(e, ev.GroupQueued)]

    assert isinstance(outcomes[1], SpecError)
    assert isinstance(outcomes[2], DestinationError)
    first, third, again = outcomes[0], outcomes[3], outcomes[4]
    assert isinstance(first, tuple) and isinstance(third, tuple) and isinstance(again, tuple)
    assert first[1] and third[1] and again == (first[0], False)
    # Every group in one transaction: one begin and one end around both inserts.
    assert log == ["begin_batch", "add_group", "add_group", "end_batch"]
    assert [e.group_id for e in queued] == [first[0], third[0]]
    views = {v.id: v for v in await m.snapshot()}
    assert set(views) == {first[0], third[0]}
    assert [views[first[0]].position, views[third[0]].position] == [1, 2]


async def _drain(sub: Any) -> AsyncIterator[ev.Event]:
    while True:
        try:
            async with asyncio.timeout(0.2):
                yield await anext(sub)
        except TimeoutError:
            return


async def test_a_batch_is_bounded(queue_only: DownloadManager, tmp_path: Path) -> None:
    too_many = [_request(f"{i}.bin", tmp_path) for i in range(batch.MAX_BATCH + 1)]
    with pytest.raises(ValueError, match="at most"):
        await batch.enqueue_many(queue_only, too_many)
    assert await queue_only.snapshot() == []


class _Disk:
    """shutil.disk_usage as the folder checks see it: `free` bytes free, each look counted."""

    def __init__(self, free: int) -> None:
        import shutil

        self.free = free
        self.looks = 0
        self._real = shutil.disk_usage

    def __call__(self, path: Any) -> Any:
        self.looks += 1
        usage = self._real(path)
        return type(usage)(usage.total, usage.total - self.free, self.free)


async def test_a_batch_looks_at_its_folder_once_and_counts_its_space_whole(
    queue_only: DownloadManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each download of a list fits alone; together they do not: those after the room ran out
    are refused (saying so), the others queued, and the disk was read once for all of them."""
    disk = _Disk(free=3 * 1024 + 512)  # room for three of the 1 KiB files
    monkeypatch.setattr("modelfetch.destinations.shutil.disk_usage", disk)
    dest = tmp_path / "out"
    outcomes = await batch.enqueue_many(queue_only, [_request(f"{i}.bin", dest) for i in range(5)])
    queued = [o for o in outcomes if isinstance(o, tuple)]
    refused = [o for o in outcomes if isinstance(o, ModelfetchError)]
    assert len(queued) == 3 and outcomes[:3] == queued
    assert len(refused) == 2 and all(isinstance(e, DestinationError) for e in refused)
    assert "512 B is free after the downloads queued before it" in str(refused[0])
    assert disk.looks == 1
    assert sorted(v.name for v in await queue_only.snapshot()) == ["0.bin", "1.bin", "2.bin"]


async def test_a_list_s_waves_share_its_folder_checks(
    queue_only: DownloadManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`add_many` records in waves; the free space is still counted over the whole list."""
    from modelfetch.planner import PlanOptions

    disk = _Disk(free=batch.RECORD_WAVE * 1024 + 1024)  # a wave and one file more
    monkeypatch.setattr("modelfetch.destinations.shutil.disk_usage", disk)

    async def planned(specs: Any, options: Any) -> Any:
        for spec in specs:
            yield _request(spec, tmp_path / "out")

    monkeypatch.setattr(type(queue_only.planner), "plan_each", lambda self, s, o: planned(s, o))
    specs = [f"{i}.bin" for i in range(batch.RECORD_WAVE + 3)]
    outcomes = await batch.add_many(queue_only, specs, PlanOptions(models_dir=tmp_path))
    assert [isinstance(o, tuple) for o in outcomes] == [True] * (batch.RECORD_WAVE + 1) + [
        False
    ] * 2
    assert disk.looks == 1


async def test_a_list_s_first_downloads_start_before_its_last_wave_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plans that are all ready at once (nothing to ask) are recorded wave after wave, and the
    downloads of the first wave start in between, not once the whole list is recorded; every
    file still arrives, from the fake Hub's CDN on loopback."""
    from modelfetch.planner import PlanOptions

    async with run_daemon(tmp_path) as daemon:
        urls = await _plain_urls(daemon.hub, 3 * batch.RECORD_WAVE, size=4 << 10)
        dest = tmp_path / "out"
        requests = {
            url: GroupRequest(
                name=f"f-{i:03d}.bin",
                files=(FileRequest(url=url, path=f"f-{i:03d}.bin", size=4 << 10),),
                dest_dir=dest,
            )
            for i, url in enumerate(urls)
        }

        async def planned(specs: Any, options: Any) -> Any:
            for spec in specs:  # known already: nothing awaited between them
                yield requests[spec]

        m = daemon.manager
        monkeypatch.setattr(type(m.planner), "plan_each", lambda self, s, o: planned(s, o))
        with m.subscribe() as sub:
            outcomes = await batch.add_many(m, urls, PlanOptions(models_dir=tmp_path))
            gids = [o[0] for o in outcomes if isinstance(o, tuple)]
            assert len(gids) == len(urls)
            await m.wait(gids)
            seen = [e async for e in _drain(sub)]
        kinds = [type(e) for e in seen]
        last_queued = len(kinds) - 1 - kinds[::-1].index(ev.GroupQueued)
        assert kinds.index(ev.FileStarted) < last_queued
        assert len(list(dest.iterdir())) == len(urls)


# ----------------------------------------------------------------------------------- the API


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with run_daemon(tmp_path) as running:
        yield running


async def _plain_urls(hub: FakeHub, count: int, size: int = 16 << 10) -> list[str]:
    names = [f"f-{i:03d}.bin" for i in range(count)]
    hub.add_repo(LIST_REPO, [RepoFile(n, size=size, seed=300 + i) for i, n in enumerate(names)])
    return [await cdn_url(hub, LIST_REPO, n) for n in names]


async def test_batch_endpoint_queues_every_good_spec_and_reports_the_bad_ones(
    daemon: Daemon, tmp_path: Path
) -> None:
    urls = await _plain_urls(daemon.hub, 3)
    out = tmp_path / "out"
    specs = [urls[0], "::not a spec::", SAMPLE_REPO, urls[1], "owner/missing-repo", urls[2]]
    status, answer = await daemon.call(
        "POST", "/api/downloads:batch", {"specs": specs, "dest_dir": str(out)}
    )
    assert status == 200, answer
    results = answer["results"]
    assert [r["spec"] for r in results] == specs
    assert [r["status"] for r in results] == [201, 400, 201, 201, 404, 201]
    assert results[1]["error"]["kind"] == "spec" and results[1]["error"]["accepted_forms"]
    assert results[4]["error"]["kind"] == "not_found"
    hub_view = results[2]["download"]
    assert hub_view["name"] == f"{SAMPLE_REPO}:Q4_K_M"  # planned on the daemon, quant chosen
    assert answer["seq"] >= answer["since"]
    ids = [r["download"]["id"] for r in results if r.get("download")]
    for gid in ids:
        done = await daemon.wait_status(str(gid), lambda v: v["status"] == "completed")
        for f in done["files"]:
            assert Path(f["dest"]).stat().st_size > 0
    for i, url in enumerate(urls):
        assert (out / url.rsplit("/", 1)[1].split("?")[0]).exists(), i

    # The same batch again: the same downloads, 200 each; the errors again in their places.
    status, again = await daemon.call(
        "POST", "/api/downloads:batch", {"specs": specs, "dest_dir": str(out)}
    )
    assert status == 200
    assert [r["status"] for r in again["results"]] == [200, 400, 200, 200, 404, 200]
    assert [r["download"]["id"] for r in again["results"] if r.get("download")] == ids

    # The stream replays what the batch caused from `since`.
    status, listing = await daemon.call("GET", "/api/downloads")
    assert {g["id"] for g in listing["downloads"]} == set(ids)


async def test_batch_endpoint_bounds_and_validation(daemon: Daemon) -> None:
    too_many = ["https://example.org/x.bin"] * (batch.MAX_BATCH + 1)
    status, body = await daemon.call("POST", "/api/downloads:batch", {"specs": too_many})
    assert status == 413, body
    assert body["error"]["kind"] == "batch_too_large"
    assert str(batch.MAX_BATCH) in body["error"]["message"]
    status, body = await daemon.call("POST", "/api/downloads:batch", {"specs": []})
    assert (status, body["error"]["kind"]) == (422, "invalid")
    status, body = await daemon.call("POST", "/api/downloads:batch", {"spec": "x"})
    assert status == 422
    status, doc = await daemon.call("GET", "/api/openapi.json")
    assert status == 200
    operation = doc["paths"]["/api/downloads:batch"]["post"]
    assert operation["operationId"] == "addDownloads"
    assert "413" in operation["responses"]
    assert await daemon.manager.snapshot() == []


async def test_the_light_client_reads_the_views_of_its_own_downloads_only(
    tmp_path: Path,
) -> None:
    """`get` through the daemon reloads (and ends with) the views of what it queued: read from
    just before its first id, so a history longer than a page is not read at all."""
    from modelfetch.remote_light import DaemonClient

    async with run_daemon(tmp_path) as daemon:
        m = daemon.manager
        await m.pause_all()  # nothing here is meant to download
        history = await batch.enqueue_many(
            m, [_request(f"old-{i}.bin", tmp_path / "old") for i in range(1000)]
        )
        mine = await batch.enqueue_many(
            m, [_request(f"new-{i}.bin", tmp_path / "new") for i in range(3)]
        )
        ids = [o[0] for o in mine if isinstance(o, tuple)]
        assert len(ids) == 3 and len(history) == 1000
        client = DaemonClient(daemon.url, token=daemon.info.get("token"))
        paths: list[str] = []
        real_call = client.call

        def call(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
            paths.append(path)
            return real_call(method, path, *args, **kwargs)

        client.call = call  # type: ignore[method-assign]
        views = await asyncio.to_thread(client.downloads, [ids[2], ids[0], ids[1]])
        assert sorted(int(v["id"]) for v in views) == ids
        assert paths == [f"/api/downloads?after={ids[0] - 1}"]
        paths.clear()
        assert len(await asyncio.to_thread(client.downloads)) == 1003  # all: two pages
        assert len(paths) == 2
        assert await asyncio.to_thread(client.downloads, []) == []


def test_the_light_client_batches_as_the_daemon_allows() -> None:
    from modelfetch.remote_light import BATCH_SIZE
    from modelfetch.server.api_models import BATCH_MAX

    assert BATCH_SIZE == batch.MAX_BATCH == BATCH_MAX


# ------------------------------------------------------------------------- the command line

_PROBE = """
import json, runpy, sys
sys.argv = ["modelfetch", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("modelfetch", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code or 0
heavy = {"aiohttp", "rich", "pydantic", "asyncio", "typer", "http.client", "ssl", "email"}
heavy = sorted(name for name in heavy if name in sys.modules)
print("HEAVY " + json.dumps(heavy), file=sys.stderr)
sys.exit(code)
"""


async def test_get_of_a_list_through_the_daemon_is_one_request_and_stays_light(
    tmp_path: Path,
    pycache: Path,  # noqa: F811 -- the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with run_daemon(tmp_path) as daemon:
        urls = await _plain_urls(daemon.hub, 12)
        calls: list[int] = []
        real = batch.add_many

        async def counted(*args: Any, **kwargs: Any) -> Any:
            calls.append(len(args[1]))
            return await real(*args, **kwargs)

        monkeypatch.setattr(batch, "add_many", counted)
        singles: list[str] = []
        real_add = daemon.manager.add

        async def single(spec: str, **kwargs: Any) -> int:
            singles.append(spec)
            return await real_add(spec, **kwargs)

        monkeypatch.setattr(daemon.manager, "add", single)
        listing = tmp_path / "list.txt"
        listing.write_text("# a list\n" + "\n".join(urls) + "\n")
        cli = Cli(tmp_path, daemon.hub, pycache)
        cli.env["MODELFETCH_HOME"] = str(daemon.home)
        out = tmp_path / "out"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _PROBE,
            "get",
            "--dir",
            str(out),
            "--jobs",
            "4",
            "-I",
            str(listing),
            env=cli.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        result = await cli.finish(proc)
        assert result.code == 0, (result.out, result.err)
        assert calls == [12] and singles == []  # the whole list in one request
        heavy = [line for line in result.err.splitlines() if line.startswith("HEAVY ")]
        assert heavy == ["HEAVY []"], result.err
        lines = result.out.splitlines()
        assert sum(line.startswith("done ") for line in lines) == 12
        assert "✓ 12 downloads: 12 files, 192.0 KiB, no digests to check against → " in result.out
        for url in urls:
            name = url.rsplit("/", 1)[1].split("?")[0]
            assert (out / name).read_bytes() == daemon.hub.content(LIST_REPO, name)
        assert daemon.manager.settings.max_active == 4  # --jobs reached the daemon

        # A bad line among good ones: named, the others still downloaded, exit status 1 (the
        # same as without a daemon).
        (out / Path(urls[0].rsplit("/", 1)[1].split("?")[0]).name).unlink()
        missing = urls[0].split("/cdn/", 1)[0] + "/cdn/nowhere/gone.bin"
        listing.write_text(f"{missing}\n{urls[0]}\n")
        result = await cli("get", "--dir", str(out), "-I", str(listing))
        assert result.code == 1, (result.out, result.err)
        assert "gone.bin" in result.err
        assert calls == [12, 2]


async def test_following_many_downloads_takes_no_progress_events_and_still_shows_progress(
    tmp_path: Path,
    pycache: Path,  # noqa: F811 -- the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above MANY_GROUPS downloads the light get asks the daemon for the events it shows
    (`?types=`): their progress is not encoded for it, and its periodic line reads the views
    just before it is written, so the line still moves."""
    from modelfetch.render.collapse import MANY_GROUPS
    from modelfetch.server import pages as server_pages

    count = MANY_GROUPS + 2
    async with run_daemon(tmp_path) as daemon:
        urls = await _plain_urls(daemon.hub, count, size=192 << 10)
        daemon.hub.add_fault(Fault("throttle", path="f-", origin="cdn", rate=128 << 10))
        encoded: list[str] = []
        real = server_pages.sse_message

        def counted(event: ev.Event) -> bytes:
            encoded.append(event.type)
            return real(event)

        monkeypatch.setattr(server_pages, "sse_message", counted)
        listing = tmp_path / "list.txt"
        listing.write_text("\n".join(urls) + "\n")
        cli = Cli(tmp_path, daemon.hub, pycache)
        cli.env["MODELFETCH_HOME"] = str(daemon.home)
        cli.env["MODELFETCH_PROGRESS_INTERVAL"] = "0.3"
        result = await cli(
            "get", "--dir", str(tmp_path / "out"), "--jobs", str(count), "-I", str(listing)
        )
        assert result.code == 0, (result.out, result.err)
        assert sum(line.startswith("done ") for line in result.out.splitlines()) == count
        moving = [
            line
            for line in result.out.splitlines()
            if line.startswith(f"{count} downloads: ")
            and not line.startswith(f"{count} downloads: 0%")
        ]
        assert moving, result.out  # the line showed bytes arriving, from views read for it
        assert "group_progress" not in encoded and "file_progress" not in encoded
        assert "file_completed" in encoded and "group_finished" in encoded


async def test_ctrl_c_while_the_daemon_plans_the_list_still_pauses_what_it_queued(
    tmp_path: Path,
    pycache: Path,  # noqa: F811 -- the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The light get sends its list, then sets up its display while the daemon plans it: a
    Ctrl-C in that window must not leave the daemon downloading what this command asked for
    while it says nothing was queued. It reads the answer it was waiting for, pauses those
    downloads and names the command that resumes them."""
    async with run_daemon(tmp_path) as daemon:
        urls = await _plain_urls(daemon.hub, 3, size=4 << 20)
        daemon.hub.add_fault(Fault("throttle", path="f-", origin="cdn", rate=256 << 10))
        arrived = asyncio.Event()
        answer = asyncio.Event()
        real = batch.add_many

        async def held(*args: Any, **kwargs: Any) -> Any:
            arrived.set()
            await answer.wait()  # the daemon is "still planning"
            return await real(*args, **kwargs)

        monkeypatch.setattr(batch, "add_many", held)
        listing = tmp_path / "list.txt"
        listing.write_text("\n".join(urls) + "\n")
        cli = Cli(tmp_path, daemon.hub, pycache)
        cli.env["MODELFETCH_HOME"] = str(daemon.home)
        proc = await cli.start("get", "--dir", str(tmp_path / "out"), "-I", str(listing))
        async with asyncio.timeout(30):
            await arrived.wait()
        proc.send_signal(signal.SIGINT)
        await asyncio.sleep(0.3)  # let the interrupt land before the answer (either way works)
        answer.set()
        result = await cli.finish(proc, limit=30)
        assert result.code == 130, (result.out, result.err)
        assert "Traceback" not in result.err
        assert "Paused 3 downloads" in result.out, result.out
        views = await daemon.manager.snapshot()
        assert len(views) == 3 and all(v.status == "paused" for v in views), views


async def test_the_full_client_sends_a_list_in_one_batch_too(daemon: Daemon) -> None:
    """The terminal path (rich display, RemoteManager over aiohttp): `add_each` sends the whole
    list as one batch, and each spec gets its id or its own error."""
    from modelfetch.cli.adding import Selection, add_each
    from modelfetch.remote import connect

    urls = await _plain_urls(daemon.hub, 3)
    calls: list[int] = []
    real = batch.add_many

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[1]))
        return await real(*args, **kwargs)

    found = await connect(daemon.home)
    assert found is not None
    specs = [urls[0], "::nope::", urls[1], urls[2]]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(batch, "add_many", counted)
        async with found as remote:
            outcomes = [o async for o in add_each(remote, specs, Selection())]
    assert calls == [4]
    assert [spec for spec, _ in outcomes] == specs
    assert isinstance(outcomes[1][1], SpecError)
    ids = [o for _, o in outcomes if isinstance(o, int)]
    assert len(set(ids)) == 3


async def test_get_through_an_older_daemon_without_batches_adds_one_by_one(
    tmp_path: Path,
    pycache: Path,  # noqa: F811 -- the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from modelfetch.server import routes

    # A daemon from before the batch route: the client falls back to one add per spec.
    older = [(op, h) for op, h in routes.OPERATIONS if op.path != "/api/downloads:batch"]
    monkeypatch.setattr(routes, "OPERATIONS", older)
    import modelfetch.server.app as server_app

    monkeypatch.setattr(server_app, "OPERATIONS", older)
    async with run_daemon(tmp_path) as daemon:
        urls = await _plain_urls(daemon.hub, 3)
        singles: list[str] = []
        real_add = daemon.manager.add

        async def single(spec: str, **kwargs: Any) -> int:
            singles.append(spec)
            return await real_add(spec, **kwargs)

        monkeypatch.setattr(daemon.manager, "add", single)
        listing = tmp_path / "list.txt"
        listing.write_text("\n".join(urls) + "\n")
        cli = Cli(tmp_path, daemon.hub, pycache)
        cli.env["MODELFETCH_HOME"] = str(daemon.home)
        out = tmp_path / "out"
        result = await cli("get", "--dir", str(out), "-I", str(listing))
        assert result.code == 0, (result.out, result.err)
        assert singles == urls
        assert len(list(out.iterdir())) == 3


def test_the_fast_parser_takes_only_the_plain_shape_of_get() -> None:
    from modelfetch.cli.fast_get import _parse

    plain = _parse(["--home", "/h", "get", "--dir=/d", "-j", "16", "-I", "list", "x://u"])
    assert plain is not None
    assert (plain["home"], plain["dir"], plain["jobs"], plain["input"], plain["specs"]) == (
        "/h",
        "/d",
        "16",
        "list",
        ["x://u"],
    )
    assert _parse(["get", "-I", "-"]) is not None  # a list on standard input
    for other in (
        ["get", "--json", "-I", "list"],  # another display
        ["get", "--quant", "Q8_0", "owner/name"],  # an option this parser does not take
        ["get", "-j", "0", "x"],  # typer refuses it, with its own message
        ["get", "-j", " 7", "x"],
        ["get", "-j"],  # a value missing
        ["get", "-I", "a", "-I", "b"],  # twice
        ["--proxy", "http://p:1", "get", "x"],  # a global option it does not take
        ["ls"],
        ["get", "--help"],
    ):
        assert _parse(other) is None, other


def test_a_snapshot_in_the_follow_counts_its_finished_downloads_as_seen() -> None:
    """A client that fell behind gets a snapshot instead of the events: a download it shows
    as finished is not waited for (its group_finished went by before), on any of its pages."""
    import json

    from modelfetch.cli.daemon_get import _Run

    run = _Run(client=None, debug=False)  # type: ignore[arg-type]
    run._set_files(7, {"7.1": "active"})
    run._set_files(9, {"9.1": "queued"})
    pages = [
        (
            "snapshot",
            {"id": 7, "status": "completed", "files": [{"ref": "7.1", "status": "completed"}]},
            7,
        ),
        (
            "snapshot_page",
            {"id": 9, "status": "failed", "files": [{"ref": "9.1", "status": "failed"}]},
            None,
        ),
    ]
    for kind, item, after in pages:
        data = {"type": kind, "seq": 40, "ts": 0.0, "items": [item], "next": after}
        run._apply(kind, json.dumps(data), "40" if after is None else "")
    assert run.finished == {7, 9}
    assert not run._busy()
