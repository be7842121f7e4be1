"""`--dry-run`: the plan of each spec (files, sizes, commit, destination), made by asking the
Hub only; nothing is queued or downloaded and no state is opened or written."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfetch.cli.errors import EXIT_OK, exit_code_for, report
from modelfetch.core.errors import ModelfetchError

if TYPE_CHECKING:
    from modelfetch.cli.adding import Selection
    from modelfetch.config import Config
    from modelfetch.requests import GroupRequest


def _plan_dict(spec: str, plan: GroupRequest) -> dict[str, Any]:
    files = []
    for f in plan.files:
        where = f.link or f.dest or plan.dest_dir / f.path
        present = f.dest is not None and f.size is not None and _size(f.dest) == f.size
        files.append(
            {"path": f.path, "size": f.size, "dest": str(where), "on_disk": present, "url": f.url}
        )
    known = [f.size for f in plan.files]
    return {
        "spec": spec,
        "name": plan.name,
        "revision": plan.revision,
        "commit": plan.commit,
        "dest_dir": str(plan.dest_dir),
        "size": sum(s for s in known if s is not None) if None not in known else None,
        "files": files,
    }


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _print_plan(plan: dict[str, Any]) -> None:
    from modelfetch.core.format import format_bytes

    count = len(plan["files"])
    files = "1 file" if count == 1 else f"{count} files"
    size = "size unknown" if plan["size"] is None else format_bytes(plan["size"])
    print(f"{plan['name']}  ({files}, {size})")
    if plan["commit"]:
        print(f"  commit  {plan['commit']}  ({plan['revision']})")
    print(f"  to      {plan['dest_dir']}")
    for f in plan["files"]:
        shown = "?" if f["size"] is None else format_bytes(f["size"])
        note = "  (already on disk)" if f["on_disk"] else ""
        print(f"  {shown:>10}  {f['path']}{note}")


async def print_plans(
    cfg: Config, specs: Sequence[str], selection: Selection, *, json_out: bool, debug: bool
) -> int:
    """Plan every spec and print the plans; the exit status is that of the worst failure."""
    from modelfetch.hub import HubClient, make_api_session
    from modelfetch.layout import Layout
    from modelfetch.planner import Planner, PlanOptions

    options = PlanOptions(
        models_dir=(selection.root or cfg.models_dir).expanduser().absolute(),
        layout=Layout(selection.layout),
        quant=selection.quant,
        revision=selection.revision,
        include=selection.include,
        exclude=selection.exclude,
        dest_dir=(selection.urls_dir or cfg.models_dir).expanduser().absolute(),
    )
    code = EXIT_OK
    plans: list[dict[str, Any]] = []
    async with make_api_session(network=cfg.network) as session:
        hub = HubClient(session, cfg.hub_config(), proxies=cfg.network.proxies)
        planner = Planner(session, hub)
        i = 0
        async for outcome in planner.plan_each(specs, options):
            spec, i = specs[i], i + 1
            if isinstance(outcome, ModelfetchError):
                report(outcome, debug, what=spec)
                code = max(code, exit_code_for(outcome))
                continue
            plans.append(_plan_dict(spec, outcome))
            if not json_out:
                _print_plan(plans[-1])
    if json_out:
        print(json.dumps(plans, indent=2))
    else:
        print("Dry run: nothing was queued or downloaded.")
    return code
