"""Running the daemon: bind the application, publish `daemon.json` while it listens, clean up.

`serve()` runs until cancelled. While it runs, `<home>/daemon.json` tells the command line (and
`modelfetch.remote.connect`) where to find it: `{pid, url, token_required, started_at}` and the
token itself when one was given (the file is mode 0600). The file is removed on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

from modelfetch.core.errors import SpecError
from modelfetch.manager import DownloadManager
from modelfetch.server.app import create_app
from modelfetch.server.security import access_logger, is_loopback
from modelfetch.server.state import STATE

__all__ = ["DAEMON_FILE", "TOKEN_ENV", "daemon_file", "serve"]

log = logging.getLogger("modelfetch.server")

DAEMON_FILE = "daemon.json"
TOKEN_ENV = "MODELFETCH_TOKEN"
_SHUTDOWN_TIMEOUT = 3.0  # how long open requests get to finish when the daemon stops
_MAX_LINE = 64 << 10


def daemon_file(home: Path) -> Path:
    return home / DAEMON_FILE


def _url(host: str, port: int) -> str:
    """The URL a local client uses: a wildcard bind is reached through loopback."""
    name = host.strip().strip("[]")
    if name in ("", "0.0.0.0"):
        name = "127.0.0.1"
    elif name == "::":
        name = "::1"
    if ":" in name:
        name = f"[{name}]"
    return f"http://{name}:{port}"


def _write_private(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON, readable by this user only, replacing any old file atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # A home whose queue lives in PostgreSQL has no state file: it may not exist yet.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that already existed
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
            fh.write("\n")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _remove_if_ours(path: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()


async def serve(
    manager: DownloadManager,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    keepalive: float = 15.0,
    allowed_hosts: tuple[str, ...] = (),
    extend: Callable[[web.Application], Iterable[str]] | None = None,
) -> None:
    """Serve `manager` on `host:port` until cancelled; then close the site and its open event
    streams cleanly (the caller shuts the manager down). `port=0` picks a free port: read it
    from `daemon.json`. `token` defaults to $MODELFETCH_TOKEN. Listening anywhere but loopback
    without a token is refused with a SpecError. `extend(app)` adds routes of another face
    (the Hub mirror) and returns the names of those the daemon's token does not guard."""
    token = (token or os.environ.get(TOKEN_ENV) or "").strip() or None
    if not is_loopback(host) and token is None:
        raise SpecError(
            f"refusing to listen on {host or 'every interface'} without a token: anyone who "
            f"can reach it could control your downloads. Pass --token or set {TOKEN_ENV}, or "
            "listen on 127.0.0.1."
        )
    app = create_app(
        manager,
        token=token,
        host=host,
        port=port,
        keepalive=keepalive,
        allowed_hosts=allowed_hosts,
    )
    if extend is not None:
        app[STATE].config.open_routes.update(extend(app))
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=access_logger(),
        shutdown_timeout=_SHUTDOWN_TIMEOUT,
        # Room for long (percent-encoded) query strings, so that they reach the API and get
        # its JSON answer instead of the HTTP parser's plain-text 400.
        max_line_size=_MAX_LINE,
    )
    await runner.setup()
    path = daemon_file(manager.home)
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = port
        for address in runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                bound = int(address[1])
                break
        config = app[STATE].config
        config.port = bound
        url = _url(host, bound)
        info: dict[str, Any] = {
            "pid": os.getpid(),
            "url": url,
            "token_required": token is not None,
            "started_at": config.started_at,
        }
        if token is not None:
            info["token"] = token
        _write_private(path, info)
        log.info("modelfetch daemon listening on %s (home %s)", url, manager.home)
        try:
            await asyncio.Event().wait()
        finally:
            _remove_if_ours(path)
    finally:
        started = time.monotonic()
        await runner.cleanup()
        log.info("modelfetch daemon stopped (%.1f s to close)", time.monotonic() - started)
