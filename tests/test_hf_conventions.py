"""Hugging Face conventions (issue 16): huggingface_hub's cache location, `hf download`'s flags
and offline mode, through the real command line against the fake hub."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelfetch.cli.download_flags import DownloadFlags, settle_flags
from modelfetch.cli.options import AppState
from modelfetch.config import ConfigError
from modelfetch.testing.fakehub import FakeHub
from modelfetch.testing.samples import GATED_REPO, TEST_REPO, add_test_repos
from tests.test_cli import Cli, assert_no_traceback

TOKEN = "hf_conventions_token_0123456789ab"
Q4_SHARDS = [f"test-Q4_K_M-0000{i}-of-00003.gguf" for i in (1, 2, 3)]


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


def commit_of(hub: FakeHub) -> str:
    return hub.file(TEST_REPO, "config.json").commit


async def hf_lookup(env: dict[str, str], repo: str, filenames: list[str]) -> list[str]:
    """`hf_hub_download(..., local_files_only=True)` in a fresh interpreter, so huggingface_hub
    reads HF_HOME / HF_HUB_CACHE from the environment as it does for a user."""
    code = (
        "import sys\nfrom huggingface_hub import hf_hub_download\n"
        "for name in sys.argv[2:]:\n"
        "    print(hf_hub_download(sys.argv[1], name, local_files_only=True))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        repo,
        *filenames,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode().splitlines()


# ------------------------------------------------------------------- 1. huggingface_hub's cache

_CACHE_CASES: list[dict[str, str]] = [
    {},
    {"XDG_CACHE_HOME": "/x/cache"},
    {"HF_HOME": "/h/home", "XDG_CACHE_HOME": "/x/cache"},
    {"HF_HOME": "~/hfh"},
    {"HF_HUB_CACHE": "/c/hub", "HF_HOME": "/h/home"},
    {"HUGGINGFACE_HUB_CACHE": "/legacy/hub", "HF_HOME": "/h/home"},
    {"HF_HUB_CACHE": "$BASE/hub", "BASE": "/b"},
    {"HF_HUB_CACHE": "/new", "HUGGINGFACE_HUB_CACHE": "/legacy"},
]


def test_the_cache_root_is_read_exactly_as_huggingface_hub_reads_it(tmp_path: Path) -> None:
    """One interpreter compares modelfetch's reading with huggingface_hub.constants for each
    case (constants reloaded per case, as a fresh process would read them)."""
    code = (
        "import importlib, json, os, sys\n"
        "import huggingface_hub.constants as c\n"
        "from modelfetch.hubconfig import hf_hub_cache, hf_hub_offline\n"
        "names = ('HF_HUB_CACHE','HUGGINGFACE_HUB_CACHE','HF_HOME','XDG_CACHE_HOME','BASE',\n"
        "         'HF_HUB_OFFLINE','TRANSFORMERS_OFFLINE')\n"
        "out = []\n"
        "for case in json.loads(sys.argv[1]):\n"
        "    for n in names: os.environ.pop(n, None)\n"
        "    os.environ.update(case)\n"
        "    importlib.reload(c)\n"
        "    ours = hf_hub_cache(os.environ)[0]\n"
        "    out.append([str(ours), os.path.abspath(c.HF_HUB_CACHE),\n"
        "                hf_hub_offline(os.environ) is not None, c.HF_HUB_OFFLINE])\n"
        "print(json.dumps(out))\n"
    )
    offline_cases: list[dict[str, str]] = [
        {"HF_HUB_OFFLINE": "1"},
        {"HF_HUB_OFFLINE": "yes"},
        {"HF_HUB_OFFLINE": "0"},
        {"HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "true"},
        {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "1"},
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE", "XDG_"))}
    env["HOME"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(_CACHE_CASES + offline_cases)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = json.loads(done.stdout)
    assert len(rows) == len(_CACHE_CASES) + len(offline_cases)
    for case, (ours, theirs, our_offline, their_offline) in zip(
        _CACHE_CASES + offline_cases, rows, strict=True
    ):
        assert ours == theirs, case
        assert our_offline == their_offline, case
    assert rows[0][0] == str(tmp_path / ".cache" / "huggingface" / "hub")


@pytest.mark.parametrize("variable", ["HF_HOME", "HF_HUB_CACHE", None])
async def test_hf_cache_without_dir_is_found_by_hf_hub_download(
    cli: Cli, hub: FakeHub, tmp_path: Path, variable: str | None
) -> None:
    env: dict[str, str] = {}
    if variable == "HF_HOME":
        env["HF_HOME"] = str(tmp_path / "hf-home")
        cache = tmp_path / "hf-home" / "hub"
    elif variable == "HF_HUB_CACHE":
        env["HF_HUB_CACHE"] = str(tmp_path / "hub-cache")
        cache = tmp_path / "hub-cache"
    else:  # the default: $XDG_CACHE_HOME/huggingface/hub (the Cli's XDG_CACHE_HOME)
        cache = Path(cli.env["XDG_CACHE_HOME"]) / "huggingface" / "hub"
    names = ["test-Q8_0.gguf", "config.json"]
    result = await cli(
        "get", "--layout", "hf-cache", f"{TEST_REPO}:Q8_0", "-i", "config.json", env=env
    )
    assert result.code == 0, result.err
    found = await hf_lookup({**cli.env, **env}, TEST_REPO, names)
    for name, path in zip(names, found, strict=True):
        assert Path(path).is_relative_to(cache)
        assert Path(path).read_bytes() == hub.content(TEST_REPO, name)
    assert not (cli.models / "models--modelfetch--test-GGUF").exists()

    shown = await cli("config", "--json", env=env)
    assert shown.code == 0, shown.err
    row = json.loads(shown.out)["settings"]["hf_cache_dir"]
    assert row["value"] == str(cache)
    assert row["source"] == (variable or "XDG_CACHE_HOME")


async def test_config_says_dir_moves_hf_cache_files_and_plain_config_lists_the_cache(
    cli: Cli, tmp_path: Path
) -> None:
    result = await cli("config", env={"HF_HUB_CACHE": str(tmp_path / "c")})
    assert result.code == 0, result.err
    line = next(x for x in result.out.splitlines() if x.startswith("hf_cache_dir"))
    assert str(tmp_path / "c") in line and "HF_HUB_CACHE" in line


# ------------------------------------------------------------------------ 2. hf download's flags


async def test_include_alone_selects_files_and_adds_no_quant(cli: Cli, hub: FakeHub) -> None:
    result = await cli("get", TEST_REPO, "--include", "config.json", "--include", "mmproj-*")
    assert result.code == 0, result.err
    folder = cli.models / TEST_REPO
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "mmproj-test-F16.gguf"]
    assert not hub.requests(path_contains="Q4_K_M")


async def test_exclude_leaves_files_out_and_refuses_to_leave_nothing(cli: Cli) -> None:
    result = await cli("get", TEST_REPO, "--include", "*", "--exclude", "*.gguf")
    assert result.code == 0, result.err
    assert sorted(p.name for p in (cli.models / TEST_REPO).iterdir()) == ["config.json"]

    nothing = await cli("get", f"{TEST_REPO}:Q8_0", "--exclude", "*.gguf")
    assert nothing.code == 2
    assert "--exclude *.gguf leaves no file of modelfetch/test-GGUF" in nothing.err
    assert_no_traceback(nothing)


async def test_token_is_used_for_the_hub_only_and_never_stored_or_printed(
    cli: Cli, hub: FakeHub
) -> None:
    hub.tokens.add(TOKEN)
    hub.grant(GATED_REPO, TOKEN)
    refused = await cli("get", f"{GATED_REPO}:Q4_K_M")
    assert refused.code != 0
    hub.log.clear()
    result = await cli("get", f"{GATED_REPO}:Q4_K_M", "--token", TOKEN)
    assert result.code == 0, result.err
    assert (cli.models / GATED_REPO / "gated-Q4_K_M.gguf").is_file()
    assert any(r.authorization for r in hub.requests(origin="hub"))
    assert hub.requests(origin="cdn") and not any(
        r.authorization for r in hub.requests(origin="cdn")
    )
    assert TOKEN not in result.out + result.err
    for path in cli.home.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


async def test_quiet_prints_only_the_paths(cli: Cli, hub: FakeHub) -> None:
    result = await cli("get", "--quiet", f"{TEST_REPO}:Q4_K_M")
    assert result.code == 0, result.err
    assert result.err == ""
    assert result.out.splitlines() == [str(cli.models / TEST_REPO)]

    one = await cli("get", "--quiet", f"{TEST_REPO}/config.json")
    assert one.out.splitlines() == [str(cli.models / TEST_REPO / "config.json")]

    cache = cli.home.parent / "cache"
    linked = await cli("get", "--quiet", "--cache-dir", str(cache), f"{TEST_REPO}/config.json")
    assert linked.code == 0, linked.err
    snapshot = cache / "models--modelfetch--test-GGUF" / "snapshots" / commit_of(hub)
    assert linked.out.splitlines() == [str(snapshot / "config.json")]
    assert (snapshot / "config.json").is_symlink()

    failed = await cli("get", "--quiet", f"{TEST_REPO}:Q9_9")
    assert failed.code == 2 and failed.out == ""
    assert failed.err.startswith("error: ")


async def test_dry_run_prints_the_plan_and_touches_nothing(cli: Cli, hub: FakeHub) -> None:
    for command in ("get", "add"):
        result = await cli(command, "--dry-run", f"{TEST_REPO}:Q4_K_M", "--include", "config.json")
        assert result.code == 0, result.err
        for name in [*Q4_SHARDS, "config.json"]:
            assert name in result.out
        assert commit_of(hub) in result.out
        assert str(cli.models / TEST_REPO) in result.out
        assert "1.0 MiB" in result.out  # a shard's size
        assert "nothing was queued or downloaded" in result.out
    assert hub.requests(origin="cdn") == []
    assert not cli.home.exists()  # no state directory, no database, no files

    as_json = await cli("get", "--dry-run", "--json", f"{TEST_REPO}:Q8_0")
    plan = json.loads(as_json.out)
    assert plan[0]["commit"] == commit_of(hub)
    assert [(f["path"], f["size"]) for f in plan[0]["files"]] == [
        ("test-Q8_0.gguf", hub.file(TEST_REPO, "test-Q8_0.gguf").size)
    ]
    assert hub.requests(origin="cdn") == []


async def test_cache_dir_implies_hf_cache_and_local_dir_is_dir(cli: Cli, tmp_path: Path) -> None:
    cache = tmp_path / "my-cache"
    result = await cli("get", "--cache-dir", str(cache), f"{TEST_REPO}/config.json")
    assert result.code == 0, result.err
    assert (cache / "models--modelfetch--test-GGUF" / "refs" / "main").is_file()
    clash = await cli("get", "--cache-dir", str(cache), "--layout", "plain", TEST_REPO)
    assert clash.code == 2 and "--cache-dir" in clash.err

    local = tmp_path / "local"
    aliased = await cli("get", "--local-dir", str(local), f"{TEST_REPO}/config.json")
    assert aliased.code == 0, aliased.err
    assert (local / TEST_REPO / "config.json").is_file()
    both = await cli("get", "--dir", str(tmp_path / "a"), "--local-dir", str(local), TEST_REPO)
    assert both.code == 2 and "--dir and --local-dir" in both.err


def test_max_workers_is_jobs_and_local_dir_is_dir(tmp_path: Path) -> None:
    state = AppState(home=tmp_path / "home")
    cfg, layout, root, _ = settle_flags(
        state, DownloadFlags(max_workers=5, local_dir=tmp_path / "d")
    )
    assert cfg.max_active == 5 and cfg.sources["max_active"] == "--jobs"
    assert cfg.models_dir == tmp_path / "d" and root == tmp_path / "d" and layout == "plain"
    with pytest.raises(ConfigError, match="--jobs and --max-workers"):
        settle_flags(state, DownloadFlags(jobs=2, max_workers=3))
    cfg, layout, root, urls = settle_flags(state, DownloadFlags(cache_dir=tmp_path / "c"))
    assert layout == "hf-cache" and root == tmp_path / "c"
    assert urls == cfg.models_dir  # plain URLs never land inside the cache


async def test_add_takes_the_per_download_options_of_get(cli: Cli, hub: FakeHub) -> None:
    from modelfetch.manager import DownloadManager
    from modelfetch.manager.limits import group_limits

    hub.tokens.add(TOKEN)
    hub.grant(GATED_REPO, TOKEN)
    args = ["--include", "*", "--exclude", "*.gguf", "--limit-rate", "1M", "--quiet"]
    result = await cli("add", TEST_REPO, *args)
    assert result.code == 0, result.err
    assert result.out == "" and result.err == ""
    gated = await cli("add", f"{GATED_REPO}:Q4_K_M", "--token", TOKEN)
    assert gated.code == 0, gated.err
    groups = await cli.ls()
    assert [f["name"] for f in groups[1]["files"]] == ["config.json"]
    async with DownloadManager(home=cli.home, workers=False) as m:
        assert group_limits(m, 1)[0] == 1 << 20


# --------------------------------------------------------------------------------- 3. offline


async def test_offline_serves_what_is_on_disk_and_names_what_is_not(cli: Cli, hub: FakeHub) -> None:
    online = await cli("get", f"{TEST_REPO}:Q4_K_M")
    assert online.code == 0, online.err
    hub.log.clear()

    served = await cli("get", f"{TEST_REPO}:Q4_K_M", env={"HF_HUB_OFFLINE": "1"})
    assert served.code == 0, served.err
    for name in Q4_SHARDS:
        assert str(cli.models / TEST_REPO / name) in served.out.splitlines()
    default = await cli("get", TEST_REPO, "--offline", "--quiet")  # the only quant on disk
    assert default.code == 0, default.err
    assert default.out.splitlines() == [str(cli.models / TEST_REPO)]

    missing = await cli("get", f"{TEST_REPO}:Q8_0", env={"HF_HUB_OFFLINE": "1"})
    assert missing.code == 2
    assert len(missing.err.strip().splitlines()) == 1
    assert "offline" in missing.err and "Q8_0" in missing.err and "not on disk" in missing.err
    assert_no_traceback(missing)
    no_file = await cli("add", "--offline", f"{TEST_REPO}/config.json")
    assert no_file.code == 2 and "modelfetch/test-GGUF/config.json" in no_file.err
    # The commands that would reach the network are refused in one line; the queue's own
    # commands still work.
    for command in (["run"], ["quants", TEST_REPO], ["serve", "--port", "0"]):
        refused = await cli(*command, env={"HF_HUB_OFFLINE": "1"})
        assert refused.code == 2, (command, refused.err)
        assert (
            len(refused.err.strip().splitlines()) == 1 and "offline (HF_HUB_OFFLINE)" in refused.err
        )
    listed = await cli("ls", env={"HF_HUB_OFFLINE": "1"})
    assert listed.code == 0, listed.err
    assert hub.log == []


async def test_offline_finds_hf_cache_files_through_refs(cli: Cli, hub: FakeHub) -> None:
    cache = cli.home.parent / "hub"
    env = {"HF_HUB_CACHE": str(cache)}
    online = await cli("get", "--layout", "hf-cache", f"{TEST_REPO}:Q8_0", env=env)
    assert online.code == 0, online.err
    hub.log.clear()
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    served = await cli("get", "--layout", "hf-cache", "--quiet", f"{TEST_REPO}:Q8_0", env=offline)
    assert served.code == 0, served.err
    snapshot = cache / "models--modelfetch--test-GGUF" / "snapshots" / commit_of(hub)
    assert served.out.splitlines() == [str(snapshot / "test-Q8_0.gguf")]
    other = await cli("get", "--layout", "hf-cache", f"{TEST_REPO}@v2:Q8_0", env=offline)
    assert other.code == 2 and "at v2" in other.err
    assert hub.log == []


async def test_through_a_daemon_the_client_names_the_cache_and_the_options_it_cannot_pass(
    cli: Cli, hub: FakeHub, tmp_path: Path
) -> None:
    pytest.importorskip("modelfetch.server")
    cache = tmp_path / "client-cache"
    env = {"HF_HUB_CACHE": str(cache)}
    daemon = await cli.start("serve", "--port", "0")
    try:
        async with asyncio.timeout(20):
            while not (cli.home / "daemon.json").exists():
                await asyncio.sleep(0.1)
        result = await cli("get", "--layout", "hf-cache", f"{TEST_REPO}/config.json", env=env)
        assert result.code == 0, result.err
        snapshot = cache / "models--modelfetch--test-GGUF" / "snapshots" / commit_of(hub)
        assert (snapshot / "config.json").read_bytes() == hub.content(TEST_REPO, "config.json")

        excluded = await cli("get", TEST_REPO, "--include", "*", "--exclude", "*.gguf")
        assert excluded.code == 0, excluded.err
        assert [p.name for p in (cli.models / TEST_REPO).iterdir()] == ["config.json"]
        hub.tokens.add(TOKEN)
        before = len(hub.requests(origin="hub"))
        tokened = await cli("add", f"{TEST_REPO}:Q8_0", "--token", TOKEN, env=env)
        assert tokened.code == 0, tokened.err
        assert TOKEN not in tokened.out + tokened.err
        assert "not sent" not in tokened.err  # a daemon on this machine takes it
        # The daemon planned that add with the client's token (and nothing else carried one).
        assert any(r.authorization for r in hub.requests(origin="hub")[before:])
    finally:
        daemon.send_signal(signal.SIGTERM)
        await cli.finish(daemon, limit=20)
    for path in cli.home.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
