"""The queue commands: `ls`, `status`, `pause`, `resume`, `cancel`, `retry`, `move`, `clean`."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modelfetch.cli.backends import command_backend, command_viewer, is_local
from modelfetch.cli.consoles import stdout_console
from modelfetch.cli.errors import EXIT_OK, execute, exit_code_for, report
from modelfetch.cli.follow import FINISHED
from modelfetch.cli.options import AllOpt, IdsArg, JsonOpt, app_state, parse_refs
from modelfetch.core.errors import ModelfetchError, SpecError

if TYPE_CHECKING:
    from modelfetch.backend import Backend


def ls_command(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List downloads: id, name, status, progress, size, speed, queue position, error."""
    state = app_state(ctx)

    async def go() -> int:
        cfg = state.config()
        async with command_viewer(cfg) as backend:
            views = await backend.snapshot()
        if json_out:
            print(json.dumps([v.to_dict() for v in views], indent=2))
            return EXIT_OK
        if not views:  # (print, not rich: an empty listing should not pay for rich's import)
            print("No downloads. Add one with `modelfetch get SPEC` or `modelfetch add SPEC`.")
            return EXIT_OK
        from modelfetch.render import queue_table

        stdout_console().print(queue_table(views, time.time()))
        from modelfetch.render.mirrored import mirror_summary

        if (held := mirror_summary(views, cfg.mirror.cache_max)) is not None:
            stdout_console().print(held)
        return EXIT_OK

    execute(state.debug, go)


def status(
    ctx: typer.Context,
    item: Annotated[
        str | None, typer.Argument(help="A download id (12) or file id (12.3).", show_default=False)
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Details of one download (or of every unfinished one), file by file."""
    state = app_state(ctx)

    async def go() -> int:
        cfg = state.config()
        ref = parse_refs([item])[0] if item is not None else None
        async with command_viewer(cfg) as backend:
            if ref is not None:
                views = [await backend.group_view(ref)]
            else:
                views = [v for v in await backend.snapshot() if v.status not in FINISHED]
        if json_out:
            data: Any = views[0].to_dict() if ref is not None else [v.to_dict() for v in views]
            print(json.dumps(data, indent=2))
            return EXIT_OK
        if not views:
            print("Nothing queued, active or paused.")
            return EXIT_OK
        from rich.text import Text

        from modelfetch.core.format import format_bytes, format_duration, format_rate
        from modelfetch.render import files_table, group_progress, group_state

        out, now = stdout_console(), time.time()
        for v in views:
            head = Text(f"{v.id}  {v.name}", style="bold")
            state_words = group_state(v, now) or v.status
            head.append(f"  {state_words}", style="cyan")
            out.print(head)
            out.print(
                f"  {group_progress(v)}  {format_bytes(v.downloaded)} / {format_bytes(v.total)}  "
                f"{format_rate(v.speed)}  ETA {format_duration(v.eta)}  → {v.dest_dir}",
                highlight=False,
            )
            out.print(files_table(v, now))
        return EXIT_OK

    execute(state.debug, go)


def _control(ctx: typer.Context, action: str, ids: list[str] | None, every: bool) -> None:
    state = app_state(ctx)

    async def go() -> int:
        if not ids and not every:
            raise SpecError(f"give one or more ids to {action}, or --all")
        refs = parse_refs(ids or [])
        cfg = state.config()
        out, code = stdout_console(), EXIT_OK
        async with command_backend(cfg, workers=False) as backend:
            if every and action in ("pause", "resume"):
                done = await _all_refs(backend, action)
                await (backend.pause_all() if action == "pause" else backend.resume_all())
            else:
                targets = await _all_refs(backend, action) if every else refs
                done, code = await _each(backend, action, targets, state.debug)
            past = {
                "pause": "paused",
                "resume": "resumed",
                "cancel": "cancelled",
                "retry": "queued",
            }
            if done:
                out.print(f"{past[action]}: {' '.join(done)}", highlight=False)
            elif every:
                out.print(f"nothing to {action}")
            if is_local(backend) and action in ("resume", "retry") and done:
                out.print("Run `modelfetch run` (or `get`) to download.", style="dim")
        return code

    execute(state.debug, go)


async def _each(
    backend: Backend, action: str, refs: Sequence[str], debug: bool
) -> tuple[list[str], int]:
    """Apply `action` to each ref; report (and go on after) the ones that fail."""
    method: Callable[[str], Awaitable[None]] = getattr(backend, action)
    done: list[str] = []
    code = EXIT_OK
    for ref in refs:
        try:
            await method(ref)
        except ModelfetchError as exc:
            report(exc, debug)
            code = max(code, exit_code_for(exc))
            continue
        done.append(ref)
    return done, code


async def _all_refs(backend: Backend, action: str) -> list[str]:
    views = await backend.snapshot()
    wanted = {
        "pause": ("queued", "active"),
        "resume": ("paused",),
        "cancel": ("queued", "active", "paused"),
        "retry": ("failed", "partial", "cancelled"),
    }[action]
    return [str(v.id) for v in views if v.status in wanted]


def pause(ctx: typer.Context, ids: IdsArg = None, all_: AllOpt = False) -> None:
    """Pause downloads (the bytes on disk are kept)."""
    _control(ctx, "pause", ids, all_)


def resume(ctx: typer.Context, ids: IdsArg = None, all_: AllOpt = False) -> None:
    """Queue paused downloads again."""
    _control(ctx, "resume", ids, all_)


def cancel(ctx: typer.Context, ids: IdsArg = None, all_: AllOpt = False) -> None:
    """Cancel downloads (their partial files are deleted)."""
    _control(ctx, "cancel", ids, all_)


def retry(ctx: typer.Context, ids: IdsArg = None, all_: AllOpt = False) -> None:
    """Queue failed or cancelled downloads again."""
    _control(ctx, "retry", ids, all_)


def move(
    ctx: typer.Context,
    item: Annotated[str, typer.Argument(help="Download id (12) or file id (12.3).")],
    position: Annotated[int, typer.Argument(min=1, help="New queue position (1 = next).")],
) -> None:
    """Move a waiting download to another place in the queue."""
    state = app_state(ctx)

    async def go() -> int:
        ref = parse_refs([item])[0]
        cfg = state.config()
        async with command_backend(cfg, workers=False) as backend:
            await backend.move(ref, position)
            view = await backend.group_view(ref)
        where = f"#{view.position}" if view.position else "(not waiting)"
        stdout_console().print(f"{view.id}  {view.name}  now {where}", highlight=False)
        return EXIT_OK

    execute(state.debug, go)


def clean(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove orphan .part files and forget finished downloads (their files stay on disk)."""
    state = app_state(ctx)

    async def go() -> int:
        from modelfetch.core.format import format_bytes

        cfg = state.config()
        out = stdout_console()
        async with command_backend(cfg, workers=False) as backend:
            orphans = await backend.orphan_partials()
            finished = [v for v in await backend.snapshot() if v.status in FINISHED]
            if not orphans and not finished:
                out.print("Nothing to clean.")
                return EXIT_OK
            if orphans:
                size = sum(_size_of(p) for p in orphans)
                out.print(f"Partial files no download owns ({len(orphans)}, {format_bytes(size)}):")
                for p in orphans:
                    out.print(f"  {p}", highlight=False, soft_wrap=True)
            if finished:
                out.print(
                    f"Finished downloads to forget ({len(finished)}; their files stay on disk):"
                )
                for v in finished:
                    out.print(f"  {v.id}  {v.name}  {v.status}", highlight=False)
            if not yes:
                if not sys.stdin.isatty():
                    raise SpecError("nothing removed: confirm with --yes (no terminal to ask)")
                if not typer.confirm("Remove them?", default=False):
                    out.print("Nothing removed.")
                    return EXIT_OK
            removed = await backend.remove_orphan_partials()
            forgotten = await backend.forget_finished()
        out.print(
            f"Removed {len(removed)} partial files; forgot {len(forgotten)} finished downloads."
        )
        return EXIT_OK

    execute(state.debug, go)


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
