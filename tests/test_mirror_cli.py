"""`modelfetch serve --mirror` for real: the daemon as a subprocess in front of a fake Hub, the
control API on loopback, the read side on a listener of its own, and two kinds of client:
huggingface_hub, and modelfetch itself on another home."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path

import aiohttp
import pytest
from huggingface_hub import hf_hub_download

from modelfetch.testing.fakehub import FakeHub, RepoFile
from tests.mirror_env import (
    hf_env_fixture,  # noqa: F401 -- autouse
    in_thread,
)
from tests.test_cli import Cli

REPO = "team/served-GGUF"
GGUF = "served-Q4_K_M.gguf"
SIZE = 2 << 20


async def _line_matching(stream: asyncio.StreamReader, pattern: str) -> re.Match[str]:
    async with asyncio.timeout(30):
        while line := (await stream.readline()).decode():
            if found := re.search(pattern, line):
                return found
    raise AssertionError(f"the daemon ended without printing {pattern!r}")


async def test_serve_mirror_serves_huggingface_hub_and_modelfetch_on_another_home(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.add_repo(REPO, [RepoFile(GGUF, size=SIZE, seed=9), RepoFile("README.md", content=b"r\n")])
    expected = hub.content(REPO, GGUF)
    daemon_cli = Cli(tmp_path / "server", hub)
    daemon = await daemon_cli.start(
        "serve", "--port", "0", "--mirror", "--mirror-host", "127.0.0.1", "--mirror-port", "0"
    )
    try:
        found = await _line_matching(daemon.stderr, r"mirror \(read-only\) listening on (\S+)")
        public = found.group(1)
        info = json.loads((daemon_cli.home / "daemon.json").read_text())
        origin = info["url"]
        # huggingface_hub at the daemon's own origin.
        got = await in_thread(
            hf_hub_download, REPO, GGUF, endpoint=origin, cache_dir=tmp_path / "hf"
        )
        assert Path(got).read_bytes() == expected
        # modelfetch on another home, its HF_ENDPOINT the mirror's network listener.
        client = Cli(tmp_path / "client", hub)
        result = await client("get", f"{REPO}/{GGUF}", "--quiet", env={"HF_ENDPOINT": public})
        assert result.code == 0, result.err
        assert (client.models / REPO / GGUF).read_bytes() == expected
        # The network listener answers the Hub's paths only.
        async with aiohttp.ClientSession() as http, http.get(f"{public}/api/downloads") as r:
            assert r.status == 404
        # The daemon's queue shows the one download it pulled for both.
        listing = await daemon_cli("ls", "--json")
        groups = json.loads(listing.out)
        assert [g["name"] for g in groups] == [f"{REPO}/{GGUF}"]
        assert groups[0]["status"] == "completed"
    finally:
        daemon.send_signal(signal.SIGTERM)
        await daemon_cli.finish(daemon)
    assert sum(r.bytes_sent for r in hub.requests("cdn", path_contains=GGUF)) == SIZE


async def test_mirror_flags_without_mirror_are_refused(hub: FakeHub, tmp_path: Path) -> None:
    cli = Cli(tmp_path, hub)
    result = await cli("serve", "--no-mirror", "--cache-max", "10G")
    assert result.code == 2
    assert "--mirror" in result.err
    result = await cli("serve", "--mirror", "--cache-max", "lots")
    assert result.code == 2
    assert "not a size" in result.err


async def test_a_mirror_on_a_shared_queue_is_refused_before_anything_opens(
    hub: FakeHub, tmp_path: Path
) -> None:
    cli = Cli(tmp_path, hub)
    # Nothing listens on port 1: the refusal comes before any connection is tried.
    result = await cli("--store", "postgresql://mf:pw@127.0.0.1:1/queue", "serve", "--mirror")
    assert result.code == 2, result.err
    assert "this host's own queue" in result.err and "pw" not in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_the_mirror_table_of_config_toml_is_read_and_checked(tmp_path: Path) -> None:
    from modelfetch.cli.serve_mirror import MirrorFlags, mirror_plan_of
    from modelfetch.config import ConfigError, load_config

    home = tmp_path / "home"
    home.mkdir()
    env = {"MODELFETCH_HOME": str(home), "HOME": str(tmp_path)}
    (home / "config.toml").write_text(
        '[mirror]\nenabled = true\nhost = "0.0.0.0"\nport = 9000\ncache_max = "2G"\n'
    )
    cfg = load_config(environ=env)
    plan = mirror_plan_of(cfg, MirrorFlags(None, None, None, None))
    assert plan is not None
    assert (plan.host, plan.port, plan.cache_max) == ("0.0.0.0", 9000, 2 << 30)
    # Flags win over the file.
    plan = mirror_plan_of(cfg, MirrorFlags(None, "127.0.0.1", 0, "1M"))
    assert plan is not None and (plan.host, plan.port, plan.cache_max) == ("127.0.0.1", 0, 1 << 20)
    assert mirror_plan_of(cfg, MirrorFlags(False, None, None, None)) is None
    for bad, says in [
        ("[mirror]\nport = 70000\n", "mirror.port"),
        ("[mirror]\ncache = 1\n", "mirror.cache: unknown"),
        ("[mirror]\ncache_max = 'big'\n", "mirror.cache_max"),
        ("mirror = true\n", "must be a table"),
    ]:
        (home / "config.toml").write_text(bad)
        with pytest.raises(ConfigError, match=says):
            load_config(environ=env)


async def test_config_shows_the_mirror_as_config_toml_sets_it(hub: FakeHub, tmp_path: Path) -> None:
    cli = Cli(tmp_path, hub)
    shown = await cli("config")
    assert shown.code == 0, shown.err
    assert "off (serve --mirror turns it on)" in shown.out
    config = Path(cli.env["MODELFETCH_HOME"]) / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('[mirror]\nenabled = true\nhost = "0.0.0.0"\ncache_max = "2G"\n')
    shown = await cli("config")
    assert shown.code == 0, shown.err
    (row,) = [line for line in shown.out.splitlines() if line.startswith("mirror")]
    assert "read-only on 0.0.0.0:8766" in row and "cache max 2.0 GiB" in row
