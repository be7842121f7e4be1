"""`get` (download now, in the foreground, until settled) and `add` (queue without starting)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from modelfetch.cli.adding import add_each, refuse_unsupported
from modelfetch.cli.backends import command_backend, is_local
from modelfetch.cli.consoles import stdout_console
from modelfetch.cli.download_flags import DownloadFlags, settle_flags, token_of
from modelfetch.cli.errors import EXIT_FAILED, EXIT_OK, execute, exit_code_for, report
from modelfetch.cli.follow import FINISHED, EventFeed, follow, group_views, make_display
from modelfetch.cli.get_options import GetOptions, parse_rate_limit
from modelfetch.cli.interrupts import Interrupts, leave_now, pause_interrupted, race
from modelfetch.cli.offline import serve_offline
from modelfetch.cli.options import (
    CacheDirOpt,
    DirOpt,
    DownloadRateOpt,
    DryRunOpt,
    ExcludeOpt,
    IncludeOpt,
    InputOpt,
    JsonOpt,
    LayoutOpt,
    LocalDirOpt,
    MaxWorkersOpt,
    OfflineOpt,
    QuantOpt,
    QuietOpt,
    RevisionOpt,
    SpecsArg,
    TokenOpt,
    app_state,
)
from modelfetch.cli.specs import STDIN, check_specs, gather_specs
from modelfetch.core.errors import ModelfetchError

if TYPE_CHECKING:
    from modelfetch.backend import Backend
    from modelfetch.config import Config
    from modelfetch.core import events as ev
    from modelfetch.render import Display
    from modelfetch.views import GroupView

_LIVE = frozenset({"queued", "active", "paused"})
"""Group statuses of a download that is still live (an `add` of its spec merges into it)."""


async def _limit_rate(backend: Backend, rate: int, display: Display) -> None:
    """Pass a bandwidth cap (bytes/s) to `set_limits` if the backend takes one (its keyword
    argument `rate_limit`); else say that it is not supported yet."""
    import inspect

    from modelfetch.core.format import format_rate

    set_limits: Callable[..., Awaitable[None]] = backend.set_limits
    names = [n for n in inspect.signature(set_limits).parameters if "rate" in n]
    if len(names) == 1:
        await set_limits(**{names[0]: rate})
        return
    display.message(
        f"--limit-rate {format_rate(rate)}: not supported yet (no rate limiter in this "
        "version); downloading at full speed",
        style="yellow",
    )


async def run_get(
    cfg: Config, options: GetOptions, *, resume_hint: str, debug: bool = False
) -> int:
    """`modelfetch get`: enqueue, run in the foreground until settled, summarize."""
    import asyncio

    check_specs(options.specs, cfg)
    rate = parse_rate_limit(options.limit_rate)
    from modelfetch.render import JsonDisplay, print_summary

    layout = options.layout or cfg.layout
    display: Display
    if options.quiet:
        from modelfetch.cli.consoles import stderr_console
        from modelfetch.cli.quiet import QuietDisplay

        display, console = QuietDisplay(), stderr_console()
    else:
        display, console = make_display(
            options.json, hint="Ctrl-C pauses; run the same command again to resume"
        )
    gids: list[int] = []
    errors: list[int] = []

    async def enqueue_and_wait(backend: Backend, feed: EventFeed) -> int:
        refuse_unsupported(backend, options.exclude, token_given=options.token is not None)
        added = add_each(backend, options.specs, options.selection(layout))
        async with contextlib.aclosing(added):
            async for spec, outcome in added:
                if isinstance(outcome, ModelfetchError):
                    report(outcome, debug, what=spec)
                    errors.append(exit_code_for(outcome))
                elif outcome not in gids:
                    gids.append(outcome)
        if not gids:
            return max(errors) if errors else EXIT_FAILED
        await _put_first(backend, gids)
        wanted = set(gids)
        before = {v.id: v.status for v in await group_views(backend, wanted)}
        display.track(wanted)
        feed.release()
        await follow(backend, display, wanted)
        final = await group_views(backend, wanted)
        ended = {v.id for v in final if v.status in FINISHED and before.get(v.id) not in FINISHED}
        await feed.drain(ended)
        display.on_views(final)
        display.tick(time.time())
        display.end()
        if options.quiet:
            from modelfetch.cli.quiet import quiet_end

            return quiet_end(sorted(final, key=lambda v: gids.index(v.id)), errors)
        if isinstance(display, JsonDisplay):
            # A group that was already complete has no group_finished in this run: say so,
            # so every requested group ends its stream with one.
            for v in final:
                if v.status in FINISHED and v.id not in display.finished:
                    display.write(_finished_event(v))
        ok = print_summary(sorted(final, key=lambda v: gids.index(v.id)), console, time.time())
        if ok and not errors:
            return EXIT_OK
        console.print(
            "Run the same command again to retry; it continues from the bytes on disk.",
            style="dim",
        )
        return max(errors) if errors else EXIT_FAILED

    err_stream = sys.stderr
    interrupts = Interrupts(
        on_first=lambda: display.message(
            "Pausing… (press Ctrl-C again to quit at once)", style="yellow"
        ),
        on_second=lambda: leave_now(display, err_stream),
    )
    async with interrupts, command_backend(cfg) as backend:
        if options.jobs is not None and not is_local(backend):
            await backend.set_limits(max_active=options.jobs)
        if rate is not None:
            await _limit_rate(backend, rate, display)
        feed = EventFeed(backend, display)
        await feed.start()
        display.begin()
        try:
            job = asyncio.create_task(enqueue_and_wait(backend, feed))
            if not await race(job, interrupts.event):
                return job.result()
            await pause_interrupted(backend, gids)
        finally:
            display.end()
            await feed.close()
    if not gids:
        console.print("Stopped before anything was queued.")
        return interrupts.exit_code
    count = "1 download" if len(gids) == 1 else f"{len(gids)} downloads"
    console.print(f"Paused {count}; the bytes on disk are kept. To resume, run:")
    console.print(f"  {resume_hint}", style="bold", soft_wrap=True, highlight=False)
    return interrupts.exit_code


async def _put_first(backend: Backend, gids: Sequence[int]) -> None:
    """What an earlier Ctrl-C paused runs again, and what the user waits for goes first, in the
    order asked (best effort: only what waits can move). Each call is skipped where it would
    change nothing: with 200 URLs that is 400 round trips saved."""
    views = {v.id: v for v in await backend.snapshot()}
    for gid in gids:
        view = views.get(gid)
        if view is not None and any(f.status == "paused" for f in view.files):
            await backend.resume(gid)
    queue = sorted((v for v in await backend.snapshot() if v.position), key=_position)
    waiting = [v.id for v in queue]
    in_queue = set(waiting)
    ours = [gid for gid in gids if gid in in_queue]
    if waiting[: len(ours)] == ours:
        return
    for gid in reversed(ours):
        with contextlib.suppress(ModelfetchError):
            await backend.move(gid, 1)


def _position(view: GroupView) -> int:
    return view.position or 0


def _finished_event(view: GroupView) -> ev.GroupFinished:
    from modelfetch.core import events as ev

    counts = {s: sum(1 for f in view.files if f.status == s) for s in FINISHED}
    return ev.GroupFinished(
        group_id=view.id,
        name=view.name,
        status=view.status,
        completed=counts["completed"],
        failed=counts["failed"],
        cancelled=counts["cancelled"],
        dest_dir=view.dest_dir,
        ts=time.time(),
    )


def _resume_command(argv: Sequence[str]) -> str:
    import shlex

    return shlex.join(["modelfetch", *argv])


def get(
    ctx: typer.Context,
    specs: SpecsArg = None,
    input_file: InputOpt = None,
    quant: QuantOpt = None,
    dir: DirOpt = None,
    local_dir: LocalDirOpt = None,
    cache_dir: CacheDirOpt = None,
    layout: LayoutOpt = None,
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", "-j", min=1, help="Files downloaded at once.", show_default=False),
    ] = None,
    max_workers: MaxWorkersOpt = None,
    revision: RevisionOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    dry_run: DryRunOpt = False,
    offline: OfflineOpt = False,
    limit_rate: Annotated[
        str | None,
        typer.Option(
            "--limit-rate",
            help="Bandwidth cap in bytes/s, e.g. 20M (with a daemon: its overall cap).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Download now, in the foreground, until done. Ctrl-C pauses; running it again resumes."""
    state = app_state(ctx)
    flags = DownloadFlags(
        dir=dir,
        local_dir=local_dir,
        cache_dir=cache_dir,
        layout=layout,
        jobs=jobs,
        max_workers=max_workers,
        token=token,
        offline=offline,
    )

    prepared: list[tuple[Config, GetOptions]] = []

    def prepare() -> tuple[Config, GetOptions]:
        # Once: the light path below and `go` share it (a list on stdin can be read once).
        if not prepared:
            cfg, chosen, root, urls_dir = settle_flags(state, flags)
            options = GetOptions(
                specs=gather_specs(specs or [], input_file, cfg),
                quant=quant,
                revision=revision,
                include=include or [],
                layout=chosen,
                json=json_out,
                jobs=cfg.max_active if cfg.sources.get("max_active") == "--jobs" else None,
                limit_rate=limit_rate,
                exclude=exclude or [],
                quiet=quiet,
                root=root,
                urls_dir=urls_dir,
                token=token_of(cfg),
            )
            prepared.append((cfg, options))
        return prepared[0]

    def hint() -> str:
        text = _resume_command(sys.argv[1:])
        if input_file == STDIN:
            text += "   (with the same list on standard input)"
        return text

    async def go() -> int:
        cfg, options = prepare()
        chosen = options.layout or cfg.layout
        if cfg.offline:
            return serve_offline(cfg, options, chosen, debug=state.debug)
        if dry_run:
            from modelfetch.cli.dryrun import print_plans

            return await print_plans(
                cfg, options.specs, options.selection(chosen), json_out=json_out, debug=state.debug
            )
        return await run_get(cfg, options, resume_hint=hint(), debug=state.debug)

    if not dry_run and not json_out and not quiet:
        # A daemon serving a pipe needs no event loop here: tried before asyncio is imported.
        from modelfetch.cli.daemon_get import get_via_daemon

        if get_via_daemon(state.debug, prepare, hint):
            return
    execute(state.debug, go)


def add(
    ctx: typer.Context,
    specs: SpecsArg = None,
    input_file: InputOpt = None,
    quant: QuantOpt = None,
    dir: DirOpt = None,
    local_dir: LocalDirOpt = None,
    cache_dir: CacheDirOpt = None,
    layout: LayoutOpt = None,
    revision: RevisionOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    token: TokenOpt = None,
    limit_rate: DownloadRateOpt = None,
    quiet: QuietOpt = False,
    dry_run: DryRunOpt = False,
    offline: OfflineOpt = False,
) -> None:
    """Add downloads to the queue without starting them (see `run`)."""
    state = app_state(ctx)
    flags = DownloadFlags(
        dir=dir,
        local_dir=local_dir,
        cache_dir=cache_dir,
        layout=layout,
        token=token,
        offline=offline,
    )

    async def go() -> int:
        from modelfetch.core.format import format_bytes

        cfg, chosen, root, urls_dir = settle_flags(state, flags)
        wanted = gather_specs(specs or [], input_file, cfg)
        rate = parse_rate_limit(limit_rate)
        options = GetOptions(
            specs=wanted,
            quant=quant,
            revision=revision,
            include=include or [],
            exclude=exclude or [],
            layout=chosen,
            quiet=quiet,
            root=root,
            urls_dir=urls_dir,
            token=token_of(cfg),
        )
        if cfg.offline:
            # Nothing can be queued without the Hub: say what is already on disk instead.
            return serve_offline(cfg, options, chosen, debug=state.debug)
        if dry_run:
            from modelfetch.cli.dryrun import print_plans

            return await print_plans(
                cfg, wanted, options.selection(chosen), json_out=False, debug=state.debug
            )
        out, code, added = stdout_console(), EXIT_OK, 0
        async with command_backend(cfg, workers=False) as backend:
            refuse_unsupported(backend, options.exclude, token_given=options.token is not None)
            # What is live already: an add that lands on one of these merged into it.
            live = {v.id for v in await backend.snapshot() if v.status in _LIVE}
            outcomes = add_each(backend, wanted, options.selection(chosen))
            async with contextlib.aclosing(outcomes):
                async for spec, gid in outcomes:
                    if isinstance(gid, ModelfetchError):
                        report(gid, state.debug)
                        code = max(code, exit_code_for(gid))
                        continue
                    if gid in live:
                        if not quiet:
                            out.print(f"{spec}: already queued as {gid}", highlight=False)
                        continue
                    live.add(gid)
                    added += 1
                    if rate is not None:
                        await backend.set_rate_limit(gid, rate)
                    if quiet:
                        continue
                    v = await backend.group_view(gid)
                    files = "1 file" if len(v.files) == 1 else f"{len(v.files)} files"
                    where = f" #{v.position}" if v.position else ""
                    out.print(
                        f"{v.id}  {v.name}  ({files}, {format_bytes(v.total)})  {v.status}{where}",
                        highlight=False,
                    )
            if is_local(backend) and added and not quiet:
                out.print("Queued. Run `modelfetch run` to download.", style="dim")
        return code

    execute(state.debug, go)
