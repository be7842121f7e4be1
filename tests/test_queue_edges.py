"""Queue rough edges and Ctrl-C in `run`, through the real command line against the fake hub."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelfetch.core import events as ev
from modelfetch.core.errors import ConflictError
from modelfetch.hubconfig import HubConfig
from modelfetch.layout import Layout
from modelfetch.manager import DownloadManager
from modelfetch.planner import PlanOptions
from modelfetch.render.model import ShownGroups
from modelfetch.testing.fakehub import FakeHub, Fault
from modelfetch.testing.samples import MIB, SLOW_REPO, TEST_REPO, add_test_repos
from modelfetch.views import FileView, GroupView
from tests.test_cli import Cli, assert_no_traceback


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    async with FakeHub() as fake:
        add_test_repos(fake)
        yield fake


@pytest.fixture(scope="module")
def pycache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pycache")


@pytest.fixture
def cli(tmp_path: Path, hub: FakeHub, pycache: Path) -> Cli:
    return Cli(tmp_path, hub, pycache)


def pause_reasons(group: dict[str, object]) -> set[object]:
    files = group["files"]
    assert isinstance(files, list)
    return {f["pause_reason"] for f in files if f["status"] == "paused"}


# ------------------------------------------------------------------------------ Ctrl-C in run


async def test_ctrl_c_in_run_pauses_as_interrupted_and_the_next_get_or_run_resumes(
    cli: Cli, hub: FakeHub
) -> None:
    added = await cli("add", SLOW_REPO, f"{TEST_REPO}:Q8_0", f"{TEST_REPO}:Q4_K_M")
    assert added.code == 0, added.err
    assert (await cli("pause", "3")).code == 0  # the user's own pause: Ctrl-C leaves it alone

    hub.add_fault(Fault("throttle", path="slow-", origin="cdn", rate=MIB))
    proc = await cli.start("run", env={"MODELFETCH_MAX_ACTIVE": "1"})
    part = cli.models / SLOW_REPO / "slow-Q4_K_M.gguf.part"
    async with asyncio.timeout(30):
        while not part.exists() or part.stat().st_size < MIB // 2:
            await asyncio.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stopped = await cli.finish(proc, limit=30)
    assert stopped.code == 130, (stopped.out, stopped.err)
    assert_no_traceback(stopped)
    assert "Paused 2 downloads (interrupted)" in stopped.out
    assert "Stopped;" not in stopped.out

    groups = await cli.ls()
    assert {g: v["status"] for g, v in groups.items()} == {1: "paused", 2: "paused", 3: "paused"}
    assert pause_reasons(groups[1]) == pause_reasons(groups[2]) == {"interrupted"}
    assert pause_reasons(groups[3]) == {"user"}
    assert groups[1]["downloaded"] > 0
    listed = (await cli("ls")).out.splitlines()
    row = {line.split()[0]: line for line in listed[1:]}
    assert "paused (interrupted)" in row["1"] and "paused (interrupted)" in row["2"]
    assert "paused" in row["3"] and "interrupted" not in row["3"]

    # The next `get`, of something else, takes the interrupted downloads up again by itself.
    hub.clear_faults()
    hub.log.clear()
    got = await cli("get", f"{TEST_REPO}/mmproj-test-F16.gguf")
    assert got.code == 0, (got.out, got.err)
    groups = await cli.ls()
    assert groups[1]["status"] in ("queued", "completed")
    assert groups[2]["status"] in ("queued", "completed")
    assert pause_reasons(groups[3]) == {"user"}

    # `run` finishes them, from the bytes on disk, and says what is left paused and how to go on.
    ran = await cli("run")
    assert ran.code == 0, (ran.out, ran.err)
    groups = await cli.ls()
    assert groups[1]["status"] == groups[2]["status"] == "completed"
    assert groups[3]["status"] == "paused"
    assert "1 download is paused (3); to download it: modelfetch resume 3" in ran.out
    dest = cli.models / SLOW_REPO / "slow-Q4_K_M.gguf"
    assert dest.read_bytes() == hub.content(SLOW_REPO, "slow-Q4_K_M.gguf")
    starts = [
        int(r.range.removeprefix("bytes=").split("-")[0])
        for r in hub.requests(origin="cdn", method="GET")
        if r.range and "slow-" in r.path
    ]
    assert not starts or min(starts) > 0, starts  # resumed, never fetched from byte 0 again

    idle = await cli("run")
    assert idle.code == 0 and "Nothing to download" in idle.out
    assert "1 download is paused (3); to download it: modelfetch resume 3" in idle.out


# ------------------------------------------------------------------------------ retry and move


async def test_retry_of_a_finished_download_and_move_of_one_not_waiting_are_refused(
    cli: Cli,
) -> None:
    got = await cli("get", f"{TEST_REPO}:Q8_0")
    assert got.code == 0, got.err
    for ref in ("1", "1.1"):
        retried = await cli("retry", ref)
        assert retried.code == 1, (retried.out, retried.err)
        assert_no_traceback(retried)
        assert f"{ref} is finished (completed): nothing to retry" in retried.err
        assert "queued" not in retried.out

    added = await cli("add", SLOW_REPO, f"{TEST_REPO}:Q4_K_M")
    assert added.code == 0, added.err
    assert (await cli("pause", "2")).code == 0
    for ref, status in (("2", "paused"), ("1", "completed")):
        moved = await cli("move", ref, "1")
        assert moved.code == 1, (moved.out, moved.err)
        assert_no_traceback(moved)
        assert f"{ref} is not waiting ({status}): only waiting downloads move" in moved.err
        assert "now" not in moved.out
    paused_retry = await cli("retry", "2")
    assert paused_retry.code == 1 and "`modelfetch resume 2` queues it" in paused_retry.err

    # What waits still moves.
    assert (await cli("resume", "2")).code == 0
    moved = await cli("move", "3", "1")
    assert moved.code == 0 and "3  modelfetch/test-GGUF:Q4_K_M  now #1" in moved.out
    assert (await cli.ls())[3]["position"] == 1


# ------------------------------------------------------------------------------ duplicates


async def test_queued_as_names_the_live_download_a_request_would_merge_into(
    tmp_path: Path, hub: FakeHub
) -> None:
    async with DownloadManager(
        home=tmp_path / "home", hub=HubConfig(endpoint=hub.endpoint), workers=False
    ) as m:
        options = PlanOptions(models_dir=m.models_dir, layout=Layout.PLAIN)
        request = await m.planner.plan(f"{TEST_REPO}:Q8_0", options)
        assert m.queued_as(request) is None
        gid = await m.enqueue(request)
        again = await m.planner.plan(f"{TEST_REPO}:Q8_0", options)
        assert m.queued_as(again) == gid
        assert await m.enqueue(again) == gid  # queued once
        elsewhere = await m.planner.plan(
            f"{TEST_REPO}:Q8_0", PlanOptions(models_dir=tmp_path / "other", layout=Layout.PLAIN)
        )
        assert m.queued_as(elsewhere) is None  # another destination is another download
        await m.pause(gid)
        assert m.queued_as(again) == gid  # paused is still live
        await m.cancel(gid)
        assert m.queued_as(again) is None  # cancelled: adding it again queues it again
        with pytest.raises(ConflictError, match="not waiting"):
            await m.move(gid, 1)


# ------------------------------------------------------------------------------ positions


def _view(gid: int, position: int | None, status: str = "queued") -> GroupView:
    file = FileView(
        ref=f"{gid}.1",
        name=f"f{gid}",
        status=status,
        dest="/x",
        url="http://x",
        position=position,
        downloaded=0,
        total=1,
        speed=None,
        eta=None,
        attempts=0,
        error_kind=None,
        error_message=None,
        retry_at=None,
        pause_reason=None,
        sha256=None,
        verified=False,
        idle_for=None,
    )
    return GroupView(
        id=gid,
        name=f"g{gid}",
        spec=f"g{gid}",
        status=status,
        dest_dir="/x",
        position=position,
        downloaded=0,
        total=1,
        speed=None,
        eta=None,
        created_at=0.0,
        finished_at=None,
        files=[file],
    )


def test_the_display_takes_positions_from_queue_changed_as_ls_does() -> None:
    shown = ShownGroups()
    shown.set_views([_view(1, 1), _view(2, 2), _view(3, 3)])
    # `move 3 1`: the manager announces the new group positions (what `ls` then shows).
    shown.apply(ev.QueueChanged(positions={"3": 1, "1": 2, "2": 3}))
    assert {v.id: v.position for v in shown.shown()} == {1: 2, 2: 3, 3: 1}
    # A group that starts has no place in line any more, in the views and so here.
    shown.apply(
        ev.StatusChanged(ref="3.1", group_id=3, name="f3", status="active", previous="queued")
    )
    assert {v.id: v.position for v in shown.shown()}[3] is None
    shown.apply(ev.QueueChanged(positions={"1": 1, "2": 2}))
    assert {v.id: v.position for v in shown.shown()} == {1: 1, 2: 2, 3: None}


async def test_the_position_a_new_download_is_announced_at_is_the_one_ls_shows(
    tmp_path: Path, hub: FakeHub
) -> None:
    specs = [
        (f"{TEST_REPO}:Q8_0", 0),
        (SLOW_REPO, 5),
        (f"{TEST_REPO}:Q4_K_M", 0),
        (f"{TEST_REPO}/mmproj-test-F16.gguf", 5),
        (f"{TEST_REPO}/config.json", -1),
    ]
    async with DownloadManager(
        home=tmp_path / "home", hub=HubConfig(endpoint=hub.endpoint), workers=False
    ) as m:
        with m.subscribe() as sub:
            for spec, priority in specs:
                gid = await m.add(spec, priority=priority)
                queued: ev.GroupQueued | None = None
                async with asyncio.timeout(5):
                    async for event in sub:
                        if isinstance(event, ev.GroupQueued) and event.group_id == gid:
                            queued = event
                            break
                assert queued is not None
                shown = {v.id: v.position for v in await m.snapshot()}
                assert queued.position == shown[gid], (spec, queued.position, shown)
        assert {v.id: v.position for v in await m.snapshot()} == {1: 3, 2: 1, 3: 4, 4: 2, 5: 5}


async def test_add_of_a_spec_already_queued_says_so_and_queues_it_once(cli: Cli) -> None:
    first = await cli("add", f"{TEST_REPO}:Q8_0")
    assert first.code == 0, first.err
    again = await cli("add", f"{TEST_REPO}:Q8_0", f"{TEST_REPO}:Q8_0")
    assert again.code == 0, again.err
    assert again.out.count(f"{TEST_REPO}:Q8_0: already queued as 1") == 2
    assert "Queued." not in again.out  # nothing new was queued
    assert list(await cli.ls()) == [1]


async def test_a_quant_shaped_typo_lists_the_quants_the_repo_has(cli: Cli) -> None:
    result = await cli("get", f"{TEST_REPO}:Q4_K_N")
    assert result.code == 2, result.err
    assert "Q4_K_N" in result.err and "available" in result.err
    assert "Q4_K_M" in result.err and "Q8_0" in result.err  # what the repo has
    assert_no_traceback(result)
    garbage = await cli("get", f"{TEST_REPO}:banana")
    assert garbage.code == 2 and "not a known quantization" in garbage.err
