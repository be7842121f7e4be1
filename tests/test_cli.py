"""The real command line, run as a subprocess against a fake hub served by this test process."""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modelfetch.cli import exit_code_for, explain, spec_lines
from modelfetch.core.errors import DiskFullError, SpecError, StateLockedError
from modelfetch.manager import DownloadManager
from modelfetch.testing.fakehub import FakeHub, Fault, RepoFile
from modelfetch.testing.samples import (
    GATED_REPO,
    MIB,
    SLOW_REPO,
    TEST_REPO,
    add_test_repos,
)

TOKEN = "hf_cli_test_token_0123456789abcd"
Q4_SHARDS = [f"test-Q4_K_M-0000{i}-of-00003.gguf" for i in (1, 2, 3)]


@dataclass
class Result:
    code: int
    out: str
    err: str


class Cli:
    """`python -m modelfetch ...` with an environment that sees only the fake hub and tmp_path."""

    def __init__(self, tmp_path: Path, hub: FakeHub, pycache: Path | None = None) -> None:
        self.home = tmp_path / "home"
        self.models = self.home / "models"
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODELFETCH_"))}
        for name in ("HUGGING_FACE_HUB_TOKEN", "PYTHONDONTWRITEBYTECODE"):
            keep.pop(name, None)
        if pycache is not None:
            # Compiled modules cached outside the tree: each CLI start then imports in a
            # fraction of the time it takes to compile them all again.
            keep["PYTHONPYCACHEPREFIX"] = str(pycache)
        self.env = {
            **keep,
            "HF_ENDPOINT": hub.endpoint,
            "MODELFETCH_HOME": str(self.home),
            "HOME": str(tmp_path / "user"),
            "XDG_CONFIG_HOME": str(tmp_path / "user" / ".config"),
            "XDG_CACHE_HOME": str(tmp_path / "user" / ".cache"),
            "NO_PROXY": "127.0.0.1,localhost",
            "MODELFETCH_PROGRESS_INTERVAL": "1",
            "PYTHONUNBUFFERED": "1",
        }

    async def start(self, *args: str, env: dict[str, str] | None = None) -> Any:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "modelfetch",
            *args,
            env={**self.env, **(env or {})},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def finish(self, proc: Any, limit: float = 60.0) -> Result:
        try:
            async with asyncio.timeout(limit):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        return Result(proc.returncode, out.decode(), err.decode())

    async def __call__(self, *args: str, env: dict[str, str] | None = None) -> Result:
        return await self.finish(await self.start(*args, env=env))

    async def ls(self) -> dict[int, dict[str, Any]]:
        result = await self("ls", "--json")
        assert result.code == 0, result.err
        return {int(g["id"]): g for g in json.loads(result.out)}


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


def assert_no_traceback(result: Result) -> None:
    assert "Traceback" not in result.err and "Traceback" not in result.out


# ------------------------------------------------------------------------------ get


async def test_get_downloads_a_sharded_quant_and_running_it_again_fetches_nothing(
    cli: Cli, hub: FakeHub
) -> None:
    result = await cli("get", f"{TEST_REPO}:Q4_K_M")
    assert result.code == 0, result.err
    assert "✓ modelfetch/test-GGUF:Q4_K_M: 3 files, 2.5 MiB, verified → " in result.out
    folder = cli.models / TEST_REPO
    for name in Q4_SHARDS:
        assert (folder / name).read_bytes() == hub.content(TEST_REPO, name)
    assert not list(folder.glob("*.part"))
    fetched = len(hub.requests(origin="cdn"))

    again = await cli("get", f"{TEST_REPO}:Q4_K_M")
    assert again.code == 0, again.err
    assert "✓ modelfetch/test-GGUF:Q4_K_M" in again.out
    assert len(hub.requests(origin="cdn")) == fetched

    status = await cli("status", "1")
    assert status.code == 0, status.err
    rows = [line for line in status.out.splitlines() if line.startswith("1.")]
    assert len(rows) == 3 and all("done" in row and "100%" in row for row in rows)


ERROR_CASES = [
    ("nobody/missing-GGUF", 1, "Not found (HTTP 404)"),
    (GATED_REPO, 1, "modelfetch/gated-GGUF is gated: accept its terms"),
    (f"{TEST_REPO}:Q5_K_M", 2, "'Q5_K_M' is not in this repository (available: Q2_K"),
    ("not a/valid spec!", 2, "Accepted forms:"),
]


async def test_get_errors_are_one_line_with_a_meaningful_exit_code(
    tmp_path: Path, hub: FakeHub, pycache: Path
) -> None:
    clis = [Cli(tmp_path / str(i), hub, pycache) for i in range(len(ERROR_CASES))]
    results = await asyncio.gather(
        *(cli("get", spec) for cli, (spec, _, _) in zip(clis, ERROR_CASES, strict=True))
    )
    for (spec, code, message), result in zip(ERROR_CASES, results, strict=True):
        assert result.code == code, (spec, result.out, result.err)
        assert_no_traceback(result)
        lines = result.err.strip().splitlines()
        assert lines[0].startswith("error: "), result.err
        assert message in result.err
        if message != "Accepted forms:":
            assert len(lines) == 1, result.err  # one line a person can act on
        assert "✓" not in result.out
    assert not hub.requests(origin="cdn")


async def test_a_failed_file_gives_a_summary_and_exit_1(cli: Cli, hub: FakeHub) -> None:
    hub.add_fault(Fault("status", path="test-Q8_0", origin="cdn", status=404))
    result = await cli("get", f"{TEST_REPO}:Q8_0")
    assert result.code == 1, (result.out, result.err)
    assert_no_traceback(result)
    assert "✗ modelfetch/test-GGUF:Q8_0: failed: 1 of 1 files" in result.out
    assert "1.1 test-Q8_0.gguf: Not found (HTTP 404)" in result.out
    assert "Run the same command again to retry" in result.out


async def test_ctrl_c_pauses_and_the_same_get_resumes_from_the_bytes_on_disk(
    cli: Cli, hub: FakeHub
) -> None:
    hub.add_fault(Fault("throttle", path="slow-", origin="cdn", rate=MIB))
    proc = await cli.start("get", SLOW_REPO)
    part = cli.models / SLOW_REPO / "slow-Q4_K_M.gguf.part"
    async with asyncio.timeout(30):
        while not part.exists() or part.stat().st_size < MIB:
            await asyncio.sleep(0.1)

    # While it runs, it owns the state directory: a command that would change the queue says
    # so, in one line; looking at the queue still works, from its last saved state.
    locked = await cli("pause", "1")
    assert locked.code == 1
    assert_no_traceback(locked)
    assert "another modelfetch process (pid" in locked.err and "Wait for it" in locked.err
    looked = await cli("ls")
    assert looked.code == 0, (looked.out, looked.err)
    assert_no_traceback(looked)
    assert "is working this queue" in looked.err and "slow-GGUF" in looked.out

    proc.send_signal(signal.SIGINT)
    stopped = await cli.finish(proc, limit=30)
    assert stopped.code == 130, (stopped.out, stopped.err)
    assert_no_traceback(stopped)
    assert "Paused 1 download" in stopped.out
    assert "modelfetch get modelfetch/slow-GGUF" in stopped.out  # the exact command to resume

    groups = await cli.ls()
    assert groups[1]["status"] == "paused"
    kept = groups[1]["downloaded"]
    assert kept >= MIB

    hub.clear_faults()
    hub.log.clear()
    resumed = await cli("get", SLOW_REPO)
    assert resumed.code == 0, resumed.err
    assert "resuming 1.1 slow-Q4_K_M.gguf from" in resumed.out
    dest = cli.models / SLOW_REPO / "slow-Q4_K_M.gguf"
    assert dest.read_bytes() == hub.content(SLOW_REPO, "slow-Q4_K_M.gguf")
    starts = [
        int(r.range.removeprefix("bytes=").split("-")[0])
        for r in hub.requests(origin="cdn", method="GET")
        if r.range
    ]
    assert starts and min(starts) > 0, starts


async def test_json_stream_is_ndjson_ending_with_group_finished(cli: Cli, hub: FakeHub) -> None:
    result = await cli("get", "--json", "--limit-rate", "50M", f"{TEST_REPO}:Q8_0")
    assert result.code == 0, result.err
    events = [json.loads(line) for line in result.out.splitlines()]
    assert events and all({"type", "seq", "ts"} <= e.keys() for e in events)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    types = [e["type"] for e in events]
    assert {"group_queued", "file_started", "file_completed"} <= set(types)
    assert events[-1]["type"] == "group_finished"
    assert events[-1]["status"] == "completed" and events[-1]["completed"] == 1
    completed = next(e for e in events if e["type"] == "file_completed")
    assert completed["sha256"] == hub.file(TEST_REPO, "test-Q8_0.gguf").sha256
    assert "✓ modelfetch/test-GGUF:Q8_0" in result.err  # the summary stays off stdout
    if not any("rate" in p for p in inspect.signature(DownloadManager.set_limits).parameters):
        assert "--limit-rate 52.4 MB/s: not supported yet" in result.err

    # Already complete: the stream still ends with the group's final state.
    again = await cli("get", "--json", f"{TEST_REPO}:Q8_0")
    assert again.code == 0, again.err
    last = json.loads(again.out.splitlines()[-1])
    assert last["type"] == "group_finished" and last["status"] == "completed"


# ------------------------------------------------------------------------------ input lists

LIST_REPO = "modelfetch/list-files"


async def cdn_url(hub: FakeHub, repo: str, path: str) -> str:
    """The signed CDN address the Hub redirects `path` to: a plain URL, with no digest."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(hub.resolve_url(repo, path), allow_redirects=False) as response,
    ):
        assert response.status in (301, 302, 303, 307, 308), response.status
        return response.headers["Location"]


def test_spec_lines_skip_comments_and_blanks_and_keep_line_numbers() -> None:
    text = "# weekend\n\n  owner/a:Q8_0  \n\t# indented comment\nhttps://x.example/f.bin#frag\n"
    assert spec_lines(text) == [(3, "owner/a:Q8_0"), (5, "https://x.example/f.bin#frag")]
    assert spec_lines("") == [] and spec_lines("# only\n\n") == []


async def test_get_input_file_downloads_every_listed_url(
    cli: Cli, hub: FakeHub, tmp_path: Path
) -> None:
    names = [f"part-{i:02d}.bin" for i in range(10)]
    hub.add_repo(LIST_REPO, [RepoFile(n, size=64 << 10, seed=100 + i) for i, n in enumerate(names)])
    hub_urls = [hub.resolve_url(LIST_REPO, n) for n in names[:5]]
    plain_urls = [await cdn_url(hub, LIST_REPO, n) for n in names[5:9]]
    listing = tmp_path / "list.txt"
    listing.write_text(
        "# for the weekend\n\n"
        + "\n".join(hub_urls)
        + "\n   \n"
        + "\n".join(f"  {url}  " for url in plain_urls)
        + "\n# the end\n"
    )
    # Combined with a spec on the command line.
    result = await cli("get", "-I", str(listing), hub.resolve_url(LIST_REPO, names[9]))
    assert result.code == 0, (result.out, result.err)
    assert_no_traceback(result)

    for name in [*names[:5], names[9]]:  # Hub files: in the repo's folder, checked by sha256
        assert (cli.models / LIST_REPO / name).read_bytes() == hub.content(LIST_REPO, name)
    for name in names[5:9]:  # plain URLs: under their own file name
        assert (cli.models / name).read_bytes() == hub.content(LIST_REPO, name)
    groups = await cli.ls()
    assert len(groups) == 10 and {g["status"] for g in groups.values()} == {"completed"}
    from_hub = [g for g in groups.values() if g["spec"].startswith("hf://")]
    assert len(from_hub) == 6 and all(f["verified"] for g in from_hub for f in g["files"])

    # Ten downloads read as a list, not a flood: a `done` line per file, the periodic lines
    # summed up in one (plus the few moving), and one summary line for all that completed.
    lines = result.out.splitlines()
    assert sum(line.startswith("done ") for line in lines) == 10
    assert "✓ 10 downloads: 10 files, 640.0 KiB, 6 verified → " in result.out
    others = [
        line
        for line in lines
        if not line.startswith(("done ", "✓ 10 downloads", "10 downloads: ", "  "))
    ]
    assert others == [], result.out
    assert not any(line.startswith(("queued", "started")) for line in lines)


async def test_a_missing_url_of_a_list_is_named_and_the_others_download_in_order(
    cli: Cli, hub: FakeHub, tmp_path: Path
) -> None:
    names = [f"keep-{i}.bin" for i in range(4)]
    hub.add_repo(LIST_REPO, [RepoFile(n, size=32 << 10, seed=200 + i) for i, n in enumerate(names)])
    urls = [await cdn_url(hub, LIST_REPO, n) for n in names]
    missing = urls[1].split("/cdn/", 1)[0] + "/cdn/nowhere/gone.bin"
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([urls[0], missing, *urls[1:]]) + "\n")

    result = await cli("get", "-I", str(listing))
    assert result.code == 1, (result.out, result.err)
    assert_no_traceback(result)
    errors = result.err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"error: {missing}: "), result.err
    for name in names:
        assert (cli.models / name).read_bytes() == hub.content(LIST_REPO, name)
    groups = await cli.ls()
    assert [groups[gid]["name"] for gid in sorted(groups)] == names  # queued in the list's order
    done = [line for line in result.out.splitlines() if line.startswith("✓ ")]
    assert [line.split(":")[0] for line in done] == [f"✓ {name}" for name in names]


async def test_a_malformed_list_line_is_named_and_nothing_is_enqueued(
    cli: Cli, hub: FakeHub, tmp_path: Path
) -> None:
    listing = tmp_path / "models.txt"
    listing.write_text(f"# mine\n{TEST_REPO}:Q8_0\n\n{SLOW_REPO}\nnot a/valid spec!\n")
    got, added = await asyncio.gather(
        cli("get", "-I", str(listing), f"{TEST_REPO}:Q4_K_M"),
        cli("add", "--input-file", str(listing)),
    )
    for result in (got, added):
        assert result.code == 2, (result.out, result.err)  # as every other usage error
        assert_no_traceback(result)
        assert result.err.startswith(f"error: {listing} line 5: "), result.err
    two_words = tmp_path / "two.txt"
    two_words.write_text(f"{TEST_REPO}:Q8_0 {SLOW_REPO}\n")
    comments_only = tmp_path / "empty.txt"
    comments_only.write_text("# nothing yet\n\n")
    missing, empty, spaced = await asyncio.gather(
        cli("add", "-I", str(tmp_path / "nope.txt")),
        cli("get", "-I", str(comments_only)),
        cli("add", "-I", str(two_words)),
    )
    assert missing.code == 2 and "cannot read" in missing.err, missing.err
    assert empty.code == 2 and "lists no spec or URL" in empty.err, empty.err
    assert spaced.code == 2 and f"{two_words} line 1: one spec or URL per line" in spaced.err
    assert await cli.ls() == {}
    assert not hub.requests()  # nothing was even resolved


async def test_input_file_dash_reads_standard_input(cli: Cli, hub: FakeHub) -> None:
    async def with_stdin(text: str, *args: str) -> Result:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "modelfetch",
            *args,
            env=cli.env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            out, err = await proc.communicate(text.encode())
        return Result(proc.returncode or 0, out.decode(), err.decode())

    added = await with_stdin(
        f"# from a pipe\n{SLOW_REPO}\n\n", "add", "-I", "-", f"{TEST_REPO}:Q8_0"
    )
    assert added.code == 0, added.err
    assert "1  modelfetch/test-GGUF:Q8_0  (1 file, 2.0 MiB)  queued #1" in added.out
    assert "2  modelfetch/slow-GGUF:Q4_K_M  (1 file, 8.0 MiB)  queued #2" in added.out
    assert not hub.requests(origin="cdn")

    got = await with_stdin(f"{TEST_REPO}:Q4_K_M\n", "get", "-I", "-")
    assert got.code == 0, got.err
    assert "✓ modelfetch/test-GGUF:Q4_K_M: 3 files, 2.5 MiB, verified" in got.out
    for name in Q4_SHARDS:
        assert (cli.models / TEST_REPO / name).read_bytes() == hub.content(TEST_REPO, name)


# ------------------------------------------------------------------------------ the queue


async def test_add_then_ls_then_run(cli: Cli, hub: FakeHub) -> None:
    added = await cli("add", f"{TEST_REPO}:Q8_0", SLOW_REPO)
    assert added.code == 0, added.err
    assert "1  modelfetch/test-GGUF:Q8_0  (1 file, 2.0 MiB)  queued #1" in added.out
    assert "2  modelfetch/slow-GGUF:Q4_K_M  (1 file, 8.0 MiB)  queued #2" in added.out
    assert not hub.requests(origin="cdn")  # enqueued only

    listed = await cli("ls")
    assert listed.code == 0, listed.err
    header, *rows = listed.out.strip().splitlines()
    assert header.split() == ["ID", "NAME", "STATUS", "PROGRESS", "SIZE", "SPEED", "POS", "ERROR"]
    assert "modelfetch/test-GGUF:Q8_0" in rows[0] and "queued #1" in rows[0] and "#1" in rows[0]
    assert "modelfetch/slow-GGUF:Q4_K_M" in rows[1] and "0 B / 8.0 MiB" in rows[1]

    ran = await cli("run")
    assert ran.code == 0, ran.err
    assert "✓ modelfetch/test-GGUF:Q8_0" in ran.out and "✓ modelfetch/slow-GGUF:Q4_K_M" in ran.out
    dest = cli.models / SLOW_REPO / "slow-Q4_K_M.gguf"
    assert dest.read_bytes() == hub.content(SLOW_REPO, "slow-Q4_K_M.gguf")

    idle = await cli("run")
    assert idle.code == 0 and "Nothing to download" in idle.out


async def test_pause_resume_cancel_retry_move_on_queued_items(cli: Cli, hub: FakeHub) -> None:
    added = await cli("add", f"{TEST_REPO}:Q8_0", f"{TEST_REPO}:Q4_K_M", SLOW_REPO)
    assert added.code == 0, added.err

    moved = await cli("move", "3", "1")
    assert moved.code == 0 and "3  modelfetch/slow-GGUF:Q4_K_M  now #1" in moved.out
    assert (await cli("pause", "1")).out.strip() == "paused: 1"
    assert (await cli("cancel", "2")).out.strip() == "cancelled: 2"
    groups = await cli.ls()
    assert {g: v["status"] for g, v in groups.items()} == {
        1: "paused",
        2: "cancelled",
        3: "queued",
    }
    assert groups[3]["position"] == 1

    assert (await cli("retry", "2")).out.startswith("queued: 2")
    assert (await cli("resume", "--all")).out.startswith("resumed: 1")
    assert {g["status"] for g in (await cli.ls()).values()} == {"queued"}

    unknown, malformed = await asyncio.gather(cli("pause", "99"), cli("cancel", "x.y"))
    assert unknown.code == 1 and "error: no download with id 99" in unknown.err
    assert malformed.code == 2 and "not an id: 'x.y'" in malformed.err
    for result in (unknown, malformed):
        assert_no_traceback(result)
    assert not hub.requests(origin="cdn")  # the queue was edited; nothing was downloaded


async def test_quants_lists_sizes_and_shard_counts(cli: Cli) -> None:
    # At once: one of them owns the state directory, the other asks the Hub directly.
    result, as_json = await asyncio.gather(
        cli("quants", TEST_REPO), cli("quants", "--json", TEST_REPO)
    )
    assert result.code == 0 and as_json.code == 0, (result.err, as_json.err)
    header, *lines = result.out.strip().splitlines()
    assert header.split() == ["QUANT", "SIZE", "FILES", "SHARDS"]
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in lines}
    assert rows["Q4_K_M"] == "2.5 MiB 3 complete"
    assert rows["Q8_0"] == "2.0 MiB 1 complete"
    assert rows["Q2_K"] == "512.0 KiB 1 missing 1 of 2: test-Q2_K-00002-of-00002.gguf"
    assert "mmproj" not in result.out

    data = {q["quant"]: q for q in json.loads(as_json.out)}
    assert data["Q4_K_M"]["files"] == 3 and data["Q4_K_M"]["complete"] is True
    assert data["Q8_0"]["size"] == 2 * MIB + 7
    assert data["Q2_K"]["complete"] is False
    assert data["Q2_K"]["missing"] == ["test-Q2_K-00002-of-00002.gguf"]


async def test_config_shows_sources_and_masks_the_token(cli: Cli) -> None:
    toml = cli.home / "config.toml"
    toml.parent.mkdir(parents=True)
    toml.write_text("max_active = 6\n")
    result = await cli("config", env={"HF_TOKEN": TOKEN})
    assert result.code == 0, result.err
    assert TOKEN not in result.out and TOKEN[3:] not in result.out
    rows = {line.split()[0]: line.split() for line in result.out.splitlines() if line.strip()}
    assert rows["hf_token"][1:] == [f"hf_…{TOKEN[-4:]}", "HF_TOKEN"]
    assert rows["max_active"][1:] == ["6", str(toml)]
    assert rows["home"][1:] == [str(cli.home), "MODELFETCH_HOME"]
    assert rows["models_dir"][1:] == [str(cli.models), "default"]


async def test_get_through_a_proxy_given_by_flag_and_a_bad_proxy_is_one_line(
    cli: Cli, hub: FakeHub, tmp_path: Path
) -> None:
    from tests.proxies import run_tinyproxy

    proxy = run_tinyproxy(tmp_path)
    try:
        # NO_PROXY="" so that loopback (the fake hub) goes through it too.
        result = await cli("--proxy", proxy.url, "get", f"{TEST_REPO}:Q8_0", env={"NO_PROXY": ""})
    finally:
        proxy.stop()
    assert result.code == 0, result.err
    log = proxy.log_text()
    assert f"/api/models/{TEST_REPO}" in log and "/cdn/" in log
    shown = await cli("--proxy", "http://me:hunter2@proxy.lan:3128", "config")
    assert "http://proxy.lan:3128 (with credentials)" in shown.out and "hunter2" not in shown.out
    bad = await cli("--proxy", "socks5://me:hunter2@proxy.lan:1080", "ls")
    assert bad.code == 2 and len(bad.err.strip().splitlines()) == 1
    assert "socks5 proxies are not supported" in bad.err and "hunter2" not in bad.err
    assert_no_traceback(bad)


async def test_a_malformed_proxy_in_the_environment_fails_only_what_would_connect_out(
    cli: Cli, hub: FakeHub
) -> None:
    """HTTPS_PROXY is shared with other tools: one modelfetch cannot parse stops the commands
    that would leave the machine (they would otherwise go out without it), not `ls`."""
    env = {"HTTPS_PROXY": "http://[bad", "HTTP_PROXY": "http://[bad", "NO_PROXY": ""}
    for quiet in (("ls",), ("status",), ("config",)):
        result = await cli(*quiet, env=env)
        assert result.code == 0, (quiet, result.err)
    shown = await cli("config", env=env)
    assert "unusable" in shown.out and "cannot parse proxy" in " ".join(shown.out.split())
    for loud in (("get", f"{TEST_REPO}:Q8_0"), ("add", f"{TEST_REPO}:Q8_0"), ("run",)):
        result = await cli(*loud, env=env)
        assert result.code == 2, (loud, result.err)
        assert "_PROXY: cannot parse proxy URL" in result.err
        assert len(result.err.strip().splitlines()) == 1
        assert_no_traceback(result)
    assert hub.requests() == []  # nothing went out without the proxy


async def test_clean_shows_then_removes_orphan_partials(cli: Cli) -> None:
    got = await cli("get", f"{TEST_REPO}:Q8_0")
    assert got.code == 0, got.err
    orphan = cli.models / "someone" / "old-GGUF" / "old.gguf.part"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x" * 1000)

    unconfirmed = await cli("clean")
    assert unconfirmed.code == 2 and "--yes" in unconfirmed.err
    assert str(orphan) in unconfirmed.out and orphan.exists()

    cleaned = await cli("clean", "--yes")
    assert cleaned.code == 0, cleaned.err
    assert str(orphan) in cleaned.out
    assert "Removed 1 partial files; forgot 1 finished downloads." in cleaned.out
    assert not orphan.exists()
    assert (cli.models / TEST_REPO / "test-Q8_0.gguf").exists()  # history only, not the files


async def test_serve_runs_a_daemon_that_get_uses(cli: Cli, hub: FakeHub) -> None:
    server = pytest.importorskip("modelfetch.server")
    if not hasattr(server, "serve"):
        pytest.skip("modelfetch.server.serve is not there yet")
    daemon = await cli.start("serve", "--port", "0")
    try:
        async with asyncio.timeout(20):
            while not (cli.home / "daemon.json").exists():
                await asyncio.sleep(0.1)
        result = await cli("get", f"{TEST_REPO}:Q8_0")
        assert result.code == 0, result.err
        assert "✓ modelfetch/test-GGUF:Q8_0" in result.out
        assert (await cli.ls())[1]["status"] == "completed"
    finally:
        daemon.send_signal(signal.SIGTERM)
        stopped = await cli.finish(daemon, limit=20)
    assert stopped.code == 0, stopped.err
    assert "listening on http://127.0.0.1:" in stopped.err and "stopped" in stopped.err


async def test_serve_without_the_server_module_says_so(cli: Cli) -> None:
    code = (
        "import sys, modelfetch\n"
        "sys.modules['modelfetch.server'] = None\n"
        "vars(modelfetch).pop('server', None)\n"
        "from modelfetch.cli import main\n"
        "sys.exit(main(['serve']))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        env=cli.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    result = await cli.finish(proc)
    assert result.code == 1
    assert "the HTTP server is not available" in result.err
    assert_no_traceback(result)


# ------------------------------------------------------------------------------ messages


@pytest.mark.parametrize(
    ("error", "code", "words"),
    [
        (DiskFullError("ENOSPC", needed=3 << 30, free=1 << 30), 1, ["needs 3.0 GiB, 1.0 GiB free"]),
        (StateLockedError("another modelfetch process (pid 42) is using /x"), 1, ["pid 42"]),
        (SpecError("bad"), 2, ["bad"]),
    ],
)
def test_errors_read_as_actions(error: Exception, code: int, words: Sequence[str]) -> None:
    text = explain(error)
    assert all(w in text for w in words) and "\n" not in text
    assert exit_code_for(error) == code


# ------------------------------------------------------------------------------ demo


async def test_demo_downloads_and_verifies_offline(tmp_path: Path) -> None:
    """`make demo` in miniature: same repo layout and faults, smaller files, in this process."""
    from rich.console import Console

    from modelfetch.demo import run_demo

    buffer = io.StringIO()
    code = await run_demo(
        tmp_path / "models",
        shard_size=3 * MIB,
        single_size=2 * MIB,
        console=Console(file=buffer, width=200, color_system=None),
    )
    out = buffer.getvalue()
    assert code == 0, out
    assert out.count("matches the Hub") == 4
    assert "503 with Retry-After: 2" in out
    shards = sorted((tmp_path / "models" / "modelfetch" / "demo-GGUF" / "Q4_K_M").iterdir())
    assert [p.stat().st_size for p in shards] == [3 * MIB] * 3


# ------------------------------------------------------------------------------ option values


@pytest.mark.parametrize(
    ("option", "values"),
    [
        ("jobs", ["16", "1", "0", "-3", "016", "1x", " 7", "", "99999999999999999999999"]),
        ("dir", ["models", "/tmp", "", "a b/c", "~/x", "-"]),
    ],
)
def test_ints_and_paths_are_read_without_typer_exactly_as_typer_reads_them(
    option: str, values: list[str]
) -> None:
    """`get -j 16 -d DIR` skips building typer's pydantic adapters (0.2 s of every start);
    what it answers, value or error, must be what typer answers."""
    import typer.main
    from typer._click import Context
    from typer.core import TyperOption

    from modelfetch.cli import app
    from modelfetch.cli.plain_values import PlainOption

    command = typer.main.get_command(app).commands["get"]  # type: ignore[attr-defined]
    (param,) = [p for p in command.params if p.name == option]
    assert isinstance(param, PlainOption) and param.plain_kind in ("int", "path")
    ctx = Context(command)

    def answer(process: Any, value: str) -> object:
        try:
            return process(param, ctx, value)
        except Exception as exc:
            return (type(exc).__name__, str(exc))

    for value in values:
        ours = answer(PlainOption.process_value, value)
        assert ours == answer(TyperOption.process_value, value), value
