"""Commands that look things up: `quants` (what a Hub repository offers) and `config`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from modelfetch.cli.backends import command_backend, refuse_offline
from modelfetch.cli.consoles import stdout_console
from modelfetch.cli.errors import EXIT_OK, EXIT_USAGE, execute, report
from modelfetch.cli.options import JsonOpt, RevisionOpt, app_state
from modelfetch.core.errors import StateLockedError

if TYPE_CHECKING:
    from modelfetch.config import Config
    from modelfetch.core.quant import QuantGroup


def quants(
    ctx: typer.Context,
    repo: Annotated[str, typer.Argument(help="owner/name of a Hub repository.")],
    revision: RevisionOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The quantizations a repository offers: size, shard count, complete or not."""
    state = app_state(ctx)

    async def go() -> int:
        cfg = state.config()
        refuse_offline(cfg, f"ask the Hub which quants {repo} has")
        groups = await _list_quants(cfg, repo, revision)
        if json_out:
            rows = [
                {
                    "quant": g.name,
                    "size": g.total_size,
                    "files": g.shard_count,
                    "complete": g.complete,
                    "missing": list(g.missing),
                    "paths": list(g.paths),
                }
                for g in groups
            ]
            print(json.dumps(rows, indent=2))
            return EXIT_OK
        from rich.console import JustifyMethod
        from rich.table import Table

        from modelfetch.core.format import format_bytes

        out = stdout_console()
        if not groups:
            out.print(f"{repo} has no GGUF quantizations.")
            return EXIT_OK
        columns: tuple[tuple[str, JustifyMethod], ...] = (
            ("QUANT", "left"),
            ("SIZE", "right"),
            ("FILES", "right"),
            ("SHARDS", "left"),
        )
        table = Table(box=None, pad_edge=False, header_style="bold")
        for name, justify in columns:
            table.add_column(name, justify=justify)
        for g in groups:
            if g.complete:
                shards = "complete"
            else:
                missing = ", ".join(p.rsplit("/", 1)[-1] for p in g.missing)
                shards = f"missing {len(g.missing)} of {g.expected_count}: {missing}"
            table.add_row(g.name, format_bytes(g.total_size), str(g.shard_count), shards)
        out.print(table)
        return EXIT_OK

    execute(state.debug, go)


async def _list_quants(cfg: Config, repo: str, revision: str | None) -> list[QuantGroup]:
    try:
        async with command_backend(cfg, workers=False) as backend:
            return await backend.quants(repo, revision)
    except StateLockedError:
        # A listing needs no state: ask the Hub directly while another process owns it.
        from modelfetch.hub import HubClient, make_api_session
        from modelfetch.planner import Planner

        async with make_api_session() as session:
            planner = Planner(session, HubClient(session, cfg.hub_config()))
            return await planner.quants(repo, revision)


def config_command(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Show the effective settings and where each comes from (the token masked)."""
    from modelfetch.config import ConfigError

    state = app_state(ctx)
    try:
        cfg = state.config()
    except ConfigError as exc:
        report(exc, state.debug)
        raise typer.Exit(EXIT_USAGE) from None
    rows = cfg.describe()
    if json_out:
        data = {name: {"value": value, "source": source} for name, value, source in rows}
        print(json.dumps({"config_file": str(cfg.config_file), "settings": data}, indent=2))
        return
    from rich.table import Table

    out = stdout_console()
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("SETTING", "VALUE", "FROM"):
        table.add_column(name)
    for name, value, source in rows:
        table.add_row(name, value, source)
    out.print(table)
    found = "" if cfg.config_file_found else " (not present)"
    out.print(f"config file: {cfg.config_file}{found}", highlight=False, soft_wrap=True)
