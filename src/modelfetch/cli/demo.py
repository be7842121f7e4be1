"""`modelfetch demo`: the whole thing, offline, against a fake Hub on 127.0.0.1.

Starts the fake hub with a generated model repo (see testing/samples.py), downloads a sharded
quant and a single-file quant through the same code as `modelfetch get` (live display on a
terminal, plain lines otherwise), then hashes every file on disk again and compares it with the
Hub's sha256. The state directory is temporary; the files stay (in a temporary directory, or in
`--dir`), so an interrupted demo resumes from its `.part` files with `--dir`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from modelfetch.cli.errors import EXIT_FAILED, EXIT_OK, execute
from modelfetch.cli.options import app_state

if TYPE_CHECKING:
    from rich.console import Console

    from modelfetch.testing.fakehub import FakeHub
    from modelfetch.testing.samples import DemoPlan


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def run_demo(
    directory: Path | None = None,
    *,
    shard_size: int | None = None,
    single_size: int | None = None,
    console: Console | None = None,
) -> int:
    """Run the demo; returns the exit status (0 when every file downloaded and verified)."""
    import asyncio
    import logging
    import shlex
    import shutil
    import tempfile
    import time

    from rich.console import Console
    from rich.text import Text

    from modelfetch.cli.get import run_get
    from modelfetch.cli.get_options import GetOptions
    from modelfetch.config import Config
    from modelfetch.core.format import format_bytes, format_duration
    from modelfetch.testing.fakehub import FakeHub
    from modelfetch.testing.samples import MIB, add_demo_repo

    out = console or Console(highlight=False, soft_wrap=True)
    # The fake hub is part of the demo, not its subject: a client closing a connection early
    # (a cancelled segment, a retry) must not print a server traceback over the display.
    server_log = logging.getLogger("aiohttp.server")
    server_level = server_log.level
    server_log.setLevel(logging.CRITICAL)
    models = (directory or Path(tempfile.mkdtemp(prefix="modelfetch-demo-"))).expanduser()
    models = models.absolute()
    state = Path(tempfile.mkdtemp(prefix="modelfetch-demo-state-"))
    try:
        async with FakeHub() as hub:
            plan = add_demo_repo(
                hub,
                shard_size=shard_size if shard_size is not None else 100 * MIB,
                single_size=single_size if single_size is not None else 120 * MIB,
            )
            cfg = Config(
                home=state,
                models_dir=models,
                max_active=3,
                layout="plain",
                hf_endpoint=hub.endpoint,
                hf_token=None,  # never show a real token to a local fake
                stall_timeout=30.0,
                config_file=state / "config.toml",
                sources={"hf_endpoint": "demo", "home": "demo", "models_dir": "demo"},
            )
            total = plan.shards * plan.shard_size + plan.single_size
            out.print(Text("modelfetch demo", style="bold"))
            out.print(f"A fake Hugging Face Hub is serving {plan.repo_id} on {hub.endpoint}")
            out.print(
                f"({plan.shards} Q4_K_M shards of {format_bytes(plan.shard_size)} and a "
                f"{format_bytes(plan.single_size)} Q8_0 file, generated on the fly). On the way:"
            )
            for line in plan.story:
                out.print(f"  - {line}")
            out.print(f"Downloading {format_bytes(total)} into {models}\n")
            started = time.monotonic()
            resume = shlex.join(["modelfetch", "demo", "--dir", str(models)])
            code = await run_get(cfg, GetOptions(specs=list(plan.specs)), resume_hint=resume)
            elapsed = time.monotonic() - started
            if code != EXIT_OK:
                return code
            out.print(
                f"\nDownloaded in {format_duration(elapsed)}. Hashing every file in {models} "
                "again and comparing with the sha256 the Hub lists:"
            )
            ok = True
            for rel, expected in _demo_paths(hub, plan):
                path = models / plan.repo_id / rel
                actual = await asyncio.to_thread(_sha256, path) if path.is_file() else None
                good = actual == expected
                ok &= good
                mark = Text("✓ " if good else "✗ ", style="green" if good else "red")
                size = format_bytes(path.stat().st_size) if path.is_file() else "missing"
                shown = path.relative_to(models)
                mark.append(f"{shown}  {size}  sha256 {(actual or '-')[:16]}…")
                mark.append(
                    "  matches the Hub" if good else f"  expected {expected[:16]}…",
                    style="green" if good else "red",
                )
                out.print(mark, soft_wrap=True)
            out.print(f"\nThe files are in {models}", soft_wrap=True, highlight=False)
            if directory is None:
                out.print(f"(remove them with: rm -rf {shlex.quote(str(models))})", style="dim")
            return EXIT_OK if ok else EXIT_FAILED
    finally:
        server_log.setLevel(server_level)
        shutil.rmtree(state, ignore_errors=True)


def _demo_paths(hub: FakeHub, plan: DemoPlan) -> list[tuple[str, str]]:
    """(repo path, sha256 the Hub lists) of every GGUF file the demo downloads."""
    paths = [
        f"Q4_K_M/demo-Q4_K_M-{i:05d}-of-{plan.shards:05d}.gguf" for i in range(1, plan.shards + 1)
    ]
    paths.append("demo-Q8_0.gguf")
    return [(p, hub.file(plan.repo_id, p).sha256) for p in paths]


def demo(
    ctx: typer.Context,
    dir: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            "-d",
            help="Where to put the demo files (default: a temp dir).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Download a generated model from a fake Hub on 127.0.0.1, with the full display."""
    state = app_state(ctx)
    execute(state.debug, lambda: run_demo(dir))
