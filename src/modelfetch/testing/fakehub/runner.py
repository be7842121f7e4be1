"""The standalone fake Hub: `python -m modelfetch.testing.fakehub` serves the sample repo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
from collections.abc import Sequence

from modelfetch.testing.fakehub.sample import SAMPLE_REPO, add_sample_repo
from modelfetch.testing.fakehub.server import FakeHub

__all__ = ["main"]


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_rate(text: str) -> float:
    """Bytes per second: `500000`, `512k`, `40M`, `1.5G` or `40MiB` (binary units, as nginx's
    `limit_rate`)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmg]?)(?:i?b)?(?:/s)?\s*", text, re.IGNORECASE)
    if match is None or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"not a rate > 0 (e.g. 40M for 40 MiB/s): {text!r}")
    return float(match[1]) * _UNITS[match[2].lower()]


async def _serve_forever(
    port: int,
    cdn_port: int,
    tokens: Sequence[str],
    connection_rate: float | None = None,
    client_rate: float | None = None,
) -> None:
    async with FakeHub(
        port=port, cdn_port=cdn_port, connection_rate=connection_rate, client_rate=client_rate
    ) as hub:
        hub.tokens.update(tokens)
        sha = add_sample_repo(hub)
        print(f"endpoint: {hub.endpoint}", flush=True)
        print(f"cdn: {hub.cdn_endpoint}", flush=True)
        print(f"repo: {SAMPLE_REPO} @ {sha}", flush=True)
        for what, rate in (("connection", connection_rate), ("client", client_rate)):
            if rate is not None:
                print(f"cap per {what}: {rate / (1 << 20):g} MiB/s", flush=True)
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
    parser.add_argument(
        "--connection-rate",
        type=parse_rate,
        metavar="RATE",
        help="cap every file body at RATE per connection (bytes/s; k, M, G: KiB, MiB, GiB)",
    )
    parser.add_argument(
        "--client-rate",
        type=parse_rate,
        metavar="RATE",
        help="cap each client (its token, else its address) at RATE over all its connections",
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            _serve_forever(
                args.port, args.cdn_port, args.token, args.connection_rate, args.client_rate
            )
        )
    return 0
