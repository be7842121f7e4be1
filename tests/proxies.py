"""A real http proxy on loopback for tests: tinyproxy (Debian's package), started per test.

`run_tinyproxy(tmp_path, auth=("user", "pw"))` writes a scratch config (loopback only, CONNECT
to any port, a log file in tmp_path) and starts it in the foreground. `Wiretap` sits between
a client and the proxy and keeps every byte the client sent, so a test can check what the
proxy could read (a token must never be among it).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Tinyproxy:
    port: int
    log: Path
    process: subprocess.Popen[bytes]
    auth: tuple[str, str] | None = None

    @property
    def url(self) -> str:
        """The proxy URL with its credentials, as a user would put it in HTTPS_PROXY."""
        if self.auth is None:
            return f"http://127.0.0.1:{self.port}"
        return f"http://{self.auth[0]}:{self.auth[1]}@127.0.0.1:{self.port}"

    @property
    def bare_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run_tinyproxy(tmp_path: Path, *, auth: tuple[str, str] | None = None) -> Tinyproxy:
    if not Path(TINYPROXY).exists():
        pytest.skip("tinyproxy is not installed (.ci/run installs it with apt)")
    folder = tmp_path / f"tinyproxy-{time.monotonic_ns()}"
    folder.mkdir()
    log = folder / "tinyproxy.log"
    for _ in range(5):  # a port picked free can be taken before tinyproxy binds it
        port = _free_port()
        lines = [
            f"Port {port}",
            "Listen 127.0.0.1",
            "Timeout 30",
            f'LogFile "{log}"',
            "LogLevel Info",
            "MaxClients 64",
            "Allow 127.0.0.1",
        ]
        if auth is not None:
            lines.append(f"BasicAuth {auth[0]} {auth[1]}")
        conf = folder / "tinyproxy.conf"
        conf.write_text("\n".join(lines) + "\n")
        with (folder / "stderr.txt").open("wb") as stderr:
            process = subprocess.Popen(
                [TINYPROXY, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=stderr
            )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return Tinyproxy(port, log, process, auth)
            time.sleep(0.05)
        process.kill()
        process.wait()
    said = (folder / "stderr.txt").read_text(errors="replace")
    raise RuntimeError(f"tinyproxy did not start: {said}")


@dataclass
class Wiretap:
    """A TCP relay to `upstream_port` that records what clients send through it."""

    upstream_port: int
    sent: bytearray = field(default_factory=bytearray)
    connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Wiretap:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bool) -> None:
            try:
                while data := await src.read(1 << 16):
                    if record:
                        self.sent += data
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
