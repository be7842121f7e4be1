"""What the command line imports before it does anything: `--help` and `ls` stay light.

Start time is measured in the import list, never in seconds: each command runs in a fresh
interpreter through a small wrapper that records `sys.modules` when the command is done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Runs the command like `python -m modelfetch ...`, then writes the names of every module that
# was imported to the file named by $MODULES_OUT.
WRAPPER = """\
import json, os, sys
from modelfetch.cli import main
code = main(sys.argv[1:])
with open(os.environ["MODULES_OUT"], "w", encoding="utf-8") as out:
    json.dump(sorted(sys.modules), out)
sys.exit(code)
"""


def run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    modules_out = tmp_path / "modules.json"
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODELFETCH_"))}
    env = {
        **keep,
        "MODELFETCH_HOME": str(tmp_path / "home"),
        "HOME": str(tmp_path / "user"),
        "XDG_CONFIG_HOME": str(tmp_path / "user" / ".config"),
        "XDG_CACHE_HOME": str(tmp_path / "user" / ".cache"),
        "MODULES_OUT": str(modules_out),
    }
    result = subprocess.run(
        [sys.executable, "-c", WRAPPER, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    modules = set(json.loads(modules_out.read_text())) if modules_out.exists() else set()
    return result, modules


def imported(modules: set[str], package: str) -> bool:
    return any(m == package or m.startswith(package + ".") for m in modules)


def test_help_imports_neither_the_http_client_nor_the_display(tmp_path: Path) -> None:
    result, modules = run(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: modelfetch" in result.stdout and "get" in result.stdout
    assert modules, "the wrapper did not record the modules"
    for heavy in ("aiohttp", "asyncio", "rich", "pydantic", "modelfetch.manager"):
        assert not imported(modules, heavy), heavy


@pytest.mark.parametrize("command", ["ls", "status"])
def test_listing_an_empty_home_without_a_daemon_does_not_import_aiohttp(
    tmp_path: Path, command: str
) -> None:
    result, modules = run(tmp_path, command)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in (
        "No downloads. Add one with `modelfetch get SPEC` or `modelfetch add SPEC`.",
        "Nothing queued, active or paused.",
    )
    assert modules, "the wrapper did not record the modules"
    for heavy in ("aiohttp", "pydantic", "rich", "modelfetch.render", "modelfetch.server"):
        assert not imported(modules, heavy), heavy


def test_a_stale_daemon_file_is_found_out_without_aiohttp(tmp_path: Path) -> None:
    """A daemon.json whose pid is alive (ours) but whose port nobody listens on: a cheap TCP
    connect says so, the file is removed and the command runs in this process."""
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago and is closed now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon_file = tmp_path / "home" / "daemon.json"
    daemon_file.parent.mkdir(parents=True)
    daemon_file.write_text(json.dumps({"pid": os.getpid(), "url": f"http://127.0.0.1:{port}"}))
    result, modules = run(tmp_path, "ls")
    assert result.returncode == 0, result.stderr
    assert "No downloads" in result.stdout
    assert not daemon_file.exists()
    assert not imported(modules, "aiohttp")
