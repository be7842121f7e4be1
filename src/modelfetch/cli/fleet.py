"""`modelfetch fleet`: the workers of a shared queue and the caps over all of them."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from modelfetch.cli.backends import command_backend
from modelfetch.cli.errors import EXIT_OK, execute
from modelfetch.cli.options import JsonOpt, app_state
from modelfetch.core.errors import SpecError
from modelfetch.core.models import KEEP, Keep
from modelfetch.views import FleetView

_CAP_HELP = "{what} over every worker: a number >= 1, or 'none' to remove the cap."


def parse_cap(value: str | None, option: str) -> int | Keep | None:
    """An option's cap: absent keeps it, `none`/`off` removes it, else a whole number >= 1."""
    if value is None:
        return KEEP
    if value.strip().lower() in ("none", "off"):
        return None
    try:
        cap = int(value)
    except ValueError:
        raise SpecError(f"{option} takes a number >= 1 or 'none', not {value!r}") from None
    if cap < 1:
        raise SpecError(f"{option} takes a number >= 1 or 'none' (no cap), not {cap}")
    return cap


def fleet(
    ctx: typer.Context,
    max_active: Annotated[
        str | None,
        typer.Option(
            "--max-active",
            help=_CAP_HELP.format(what="Files at once"),
            show_default=False,
            metavar="N|none",
        ),
    ] = None,
    max_connections_per_host: Annotated[
        str | None,
        typer.Option(
            "--max-connections-per-host",
            help=_CAP_HELP.format(what="Connections to one upstream host"),
            metavar="N|none",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """The workers of a queue shared by several hosts (a postgresql:// store), what each runs,
    and the caps over all of them; --max-active and --max-connections-per-host change the caps
    for every worker at once."""
    state = app_state(ctx)

    async def go() -> int:
        caps = {
            "max_active": parse_cap(max_active, "--max-active"),
            "max_connections_per_host": parse_cap(
                max_connections_per_host, "--max-connections-per-host"
            ),
        }
        cfg = state.config()
        async with command_backend(cfg, workers=False) as backend:
            if any(cap is not KEEP for cap in caps.values()):
                view = await backend.set_fleet_limits(**caps)
            else:
                view = await backend.fleet()
        if json_out:
            print(json.dumps(view.to_dict(), indent=2))
        else:
            print(describe(view))
        return EXIT_OK

    execute(state.debug, go)


def describe(view: FleetView) -> str:
    """The plain text `fleet` prints: the caps, then one line per live worker."""

    def cap(n: int | None) -> str:
        return "no cap" if n is None else str(n)

    lines = [
        f"Files at once over the fleet: {cap(view.max_active)}",
        f"Connections to one host over the fleet: {cap(view.max_connections_per_host)}",
    ]
    if not view.workers:
        lines.append("No worker is live.")
        return "\n".join(lines)
    lines.append(f"Workers ({len(view.workers)} live):")
    for w in view.workers:
        state = "" if w.accepting else ", leaving"
        lines.append(f"  {w.worker}  {w.running} of {w.max_active} files{state}")
    return "\n".join(lines)
