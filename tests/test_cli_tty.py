"""The live display in a real terminal: it renders, it updates, and Ctrl-C there pauses.

Driven through tmux when it is installed (the screen is what a person sees: `capture-pane`),
else through a pseudo-terminal read directly (the raw output, escape codes stripped).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import re
import shlex
import shutil
import signal
import struct
import sys
import termios
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelfetch.testing.fakehub import FakeHub
from modelfetch.testing.samples import SLOW_REPO, add_test_repos

ROW = re.compile(r"modelfetch/slow-GGUF:Q4_K_M.*?(\d+)%\s+([\d.]+ \w+) / 8\.0 MiB")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")
WIDTH, HEIGHT = 120, 24


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    async with FakeHub() as fake:
        add_test_repos(fake)
        yield fake


# 8 MiB at 1 MiB/s: long enough to watch, short enough for a test. The cap is modelfetch's own
# (--limit-rate), so this also shows that the flag reaches the manager.
GET_SLOWLY = ["get", "--limit-rate", "1M", SLOW_REPO]


def cli_env(tmp_path: Path, hub: FakeHub) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODELFETCH_"))}
    for name in ("HUGGING_FACE_HUB_TOKEN", "PYTHONDONTWRITEBYTECODE", "COLUMNS", "LINES"):
        env.pop(name, None)
    env.update(
        HF_ENDPOINT=hub.endpoint,
        MODELFETCH_HOME=str(tmp_path / "home"),
        HOME=str(tmp_path / "user"),
        XDG_CONFIG_HOME=str(tmp_path / "user" / ".config"),
        XDG_CACHE_HOME=str(tmp_path / "user" / ".cache"),
        NO_PROXY="127.0.0.1,localhost",
        PYTHONPYCACHEPREFIX=str(tmp_path / "pycache"),
        TERM="xterm-256color",
    )
    return env


def percents(screen: str) -> list[int]:
    return [int(m.group(1)) for m in ROW.finditer(screen)]


# ------------------------------------------------------------------------------ tmux


class Tmux:
    """A private tmux server (its socket in the test's directory) running one command in a
    WIDTH×HEIGHT pane."""

    def __init__(self, directory: Path) -> None:
        self.socket = str(directory / "tmux.sock")
        self.conf = os.devnull

    async def tmux(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "tmux",
            "-S",
            self.socket,
            "-f",
            self.conf,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        return out.decode()

    async def start(self, script: Path) -> None:
        # A detached session takes its size from default-size, which only a config sets early.
        conf = script.with_name("tmux.conf")
        conf.write_text(f"set -g default-size {WIDTH}x{HEIGHT}\nset -g remain-on-exit on\n")
        self.conf = str(conf)
        await self.tmux("new-session", "-d", "-s", "t", f"sh {script}")
        size = await self.tmux("display-message", "-p", "-t", "t", "#{window_width}")
        assert size.strip() == str(WIDTH), size

    async def screen(self) -> str:
        return await self.tmux("capture-pane", "-p", "-t", "t")

    async def close(self) -> None:
        with contextlib.suppress(AssertionError):
            await self.tmux("kill-server")


async def wait_for_screen(tmux: Tmux, predicate: object, limit: float = 20.0) -> str:
    assert callable(predicate)
    screen = ""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limit):
            while True:
                screen = await tmux.screen()
                if predicate(screen):
                    return screen
                await asyncio.sleep(0.2)
    raise AssertionError(f"the screen never showed what we waited for:\n{screen}")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
async def test_live_display_in_tmux(tmp_path: Path, hub: FakeHub) -> None:
    env = cli_env(tmp_path, hub)
    command = shlex.join([sys.executable, "-m", "modelfetch", *GET_SLOWLY])
    script = tmp_path / "run.sh"
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items() if k.isidentifier())
    # tmux copies its own environment into the pane: a COLUMNS from there would win over
    # the real width of the pane.
    # The shell catches Ctrl-C itself (so it lives on to print the exit status); a trap with
    # a command is not inherited, so the CLI still gets SIGINT as a person's shell gives it.
    script.write_text(
        f"unset COLUMNS LINES\ntrap : INT\n{exports}{command}\necho EXIT=$?\nsleep 60\n"
    )
    tmux = Tmux(tmp_path)
    try:
        await tmux.start(script)
        first = await wait_for_screen(tmux, lambda s: any(0 < p < 60 for p in percents(s)))
        before = max(percents(first))
        later = await wait_for_screen(tmux, lambda s: max(percents(s), default=0) > before)
        row = next(line for line in later.splitlines() if ROW.search(line))
        assert "━" in row  # the bar
        assert "ETA" in row or "stalled" in row
        assert "slow-Q4_K_M.gguf" in later  # the active file's own row
        assert "Ctrl-C pauses" in later
        assert "Traceback" not in later

        await tmux.tmux("send-keys", "-t", "t", "C-c")
        done = await wait_for_screen(tmux, lambda s: "EXIT=" in s)
        assert "EXIT=130" in done
        assert "Paused 1 download" in done
        assert "modelfetch get --limit-rate 1M modelfetch/slow-GGUF" in done
    finally:
        await tmux.close()


# ------------------------------------------------------------------------------ pty


async def test_live_display_in_a_pty(tmp_path: Path, hub: FakeHub) -> None:
    """The same through a bare pseudo-terminal: a terminal is detected and the rows redraw."""
    if shutil.which("tmux") is not None and os.environ.get("MODELFETCH_TEST_PTY") != "1":
        pytest.skip("tmux covers it (set MODELFETCH_TEST_PTY=1 to run this one too)")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", HEIGHT, WIDTH, 0, 0))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "modelfetch",
        *GET_SLOWLY,
        env=cli_env(tmp_path, hub),
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    output = bytearray()
    readable = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_readable() -> None:
        try:
            output.extend(os.read(master, 65536))
        except OSError:  # the other side closed
            loop.remove_reader(master)
        readable.set()

    loop.add_reader(master, on_readable)

    def text() -> str:
        return ANSI.sub("", output.decode(errors="replace"))

    try:
        async with asyncio.timeout(20):
            while len(set(percents(text()))) < 3:
                readable.clear()
                await readable.wait()
        seen = percents(text())
        assert seen == sorted(seen) and seen[-1] > seen[0]
        assert "━" in text() and "Ctrl-C pauses" in text()
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            await proc.wait()
        await asyncio.sleep(0.1)
        assert proc.returncode == 130
        assert "Paused 1 download" in text()
    finally:
        loop.remove_reader(master)
        os.close(master)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
