"""The standalone fake Hub: `python -m modelfetch.testing.fakehub` serves the sample repo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Sequence

from modelfetch.testing.fakehub.sample import SAMPLE_REPO, add_sample_repo
from modelfetch.testing.fakehub.server import FakeHub

__all__ = ["main"]


async def _serve_forever(port: int, cdn_port: int, tokens: Sequence[str]) -> None:
    async with FakeHub(port=port, cdn_port=cdn_port) as hub:
        hub.tokens.update(tokens)
        sha = add_sample_repo(hub)
        print(f"endpoint: {hub.endpoint}", flush=True)
        print(f"cdn: {hub.cdn_endpoint}", flush=True)
        print(f"repo: {SAMPLE_REPO} @ {sha}", flush=True)
        print(f"try: HF_ENDPOINT={hub.endpoint} ... ; Ctrl-C to stop", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Explicit handlers also work when the shell started us with SIGINT ignored.
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelfetch.testing.fakehub",
        description="Serve a fake Hugging Face Hub (and its CDN) on 127.0.0.1 with a sample repo.",
    )
    parser.add_argument("--port", type=int, default=8090, help="Hub port (0 = any free port)")
    parser.add_argument("--cdn-port", type=int, default=0, help="CDN port (0 = any free port)")
    parser.add_argument("--token", action="append", default=[], help="a token to accept")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args.port, args.cdn_port, args.token))
    return 0
