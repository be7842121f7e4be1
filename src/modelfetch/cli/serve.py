"""`serve`: run the queue as a daemon with an HTTP API until stopped."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

from modelfetch.cli.consoles import stderr_console
from modelfetch.cli.errors import EXIT_FAILED, EXIT_OK, execute
from modelfetch.cli.interrupts import race
from modelfetch.cli.options import app_state
from modelfetch.cli.serve_mirror import MirrorFlags, mirror_plan_of, serve_with_mirror


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            help="Require this bearer token (env MODELFETCH_TOKEN).",
            envvar="MODELFETCH_TOKEN",
            show_default=False,
        ),
    ] = None,
    mirror: Annotated[
        bool | None,
        typer.Option(
            "--mirror/--no-mirror",
            help="Also serve the Hub's read side (point HF_ENDPOINT here); see docs/mirror.md.",
            show_default=False,
        ),
    ] = None,
    mirror_host: Annotated[
        str | None,
        typer.Option(
            help="Open the mirror (read-only, Hub paths only) on this address too, e.g. 0.0.0.0; "
            "the control API stays on --host.",
            show_default=False,
        ),
    ] = None,
    mirror_port: Annotated[
        int | None,
        typer.Option(help="Port of --mirror-host's listener (default 8766).", show_default=False),
    ] = None,
    cache_max: Annotated[
        str | None,
        typer.Option(
            help="Evict the least recently served mirrored files above this size (e.g. 500G).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the queue as a daemon with an HTTP API until stopped (Ctrl-C or SIGTERM).

    While it runs, the other commands talk to it instead of opening the state themselves."""
    state = app_state(ctx)
    flags = MirrorFlags(mirror, mirror_host, mirror_port, cache_max)

    async def go() -> int:
        import asyncio
        import signal

        serve_fn = _server_entry()
        if serve_fn is None:
            stderr_console().print(
                "error: the HTTP server is not available in this version of modelfetch "
                "(modelfetch.server.serve is missing)",
                style="red",
            )
            return EXIT_FAILED
        cfg = state.config()
        from modelfetch.cli.backends import refuse_offline, refuse_unusable_network

        refuse_offline(cfg, "serve the queue (its workers download)")
        refuse_unusable_network(cfg)
        from modelfetch.manager import DownloadManager

        mirror_plan = mirror_plan_of(cfg, flags)
        async with DownloadManager(**cfg.manager_kwargs()) as manager:
            if mirror_plan is None:
                task = asyncio.create_task(serve_fn(manager, host=host, port=port, token=token))
            else:
                task = asyncio.create_task(
                    serve_with_mirror(serve_fn, manager, mirror_plan, host, port, token)
                )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            try:
                announce = asyncio.create_task(_announce(cfg.home, host, port))
                stopped = await race(task, stop)
                announce.cancel()
                if not stopped:
                    task.result()
            finally:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(signum)
        stderr_console().print("stopped; the queue is saved")
        return EXIT_OK

    execute(state.debug, go)


def _server_entry() -> Callable[..., Coroutine[Any, Any, None]] | None:
    """`modelfetch.server.serve`, or None in a build without the server."""
    try:
        from modelfetch import server
    except ImportError:
        return None
    serve_fn = getattr(server, "serve", None)
    return serve_fn if callable(serve_fn) else None


async def _announce(home: Path, host: str, port: int) -> None:
    """Say where the daemon listens once it does (its daemon.json names the bound port)."""
    import asyncio

    url = f"http://{host}:{port}"
    path = home / "daemon.json"
    for _ in range(50):
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(path.read_text(encoding="utf-8"))
            if info.get("pid") == os.getpid():
                url = str(info.get("url", url))
                break
        await asyncio.sleep(0.1)
    stderr_console().print(f"modelfetch daemon for {home} listening on {url} (Ctrl-C stops)")
