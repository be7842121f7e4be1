"""The `modelfetch` command line.

Every command goes through `open_backend`: it talks to the daemon when one owns the state
directory, else runs a DownloadManager in this process. Errors a person can act on are one line
on stderr (no traceback unless `--debug`), and the exit status says what happened:

    0    everything asked for completed
    1    something failed (the summary says what and why), or the Hub refused a request
    2    the request itself is wrong: a malformed spec, an unknown quant, a bad flag or setting
    130  interrupted (Ctrl-C): the downloads were paused and can be resumed
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup

from modelfetch import __version__
from modelfetch.core.errors import (
    ModelfetchError,
    SpecError,
    StateLockedError,
    UnknownItemError,
)

if TYPE_CHECKING:
    import asyncio

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from modelfetch.backend import Backend
    from modelfetch.config import Config
    from modelfetch.core import events as ev
    from modelfetch.core.quant import QuantGroup
    from modelfetch.readonly import ReadOnlyBackend
    from modelfetch.render import Display
    from modelfetch.views import GroupView

# Start time is part of the interface: `ls`, `status` and `--help` run all the time, and `get` of
# a few small files should be done before a heavier tool has started. So this module imports
# only typer at the top; asyncio, rich, the display, the manager and aiohttp are imported by the
# commands that use them (tests/test_cli_startup.py keeps `--help` and `ls` free of aiohttp).

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "GetOptions",
    "app",
    "gather_specs",
    "main",
    "run_get",
    "spec_lines",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

FINISHED = frozenset({"completed", "partial", "failed", "cancelled"})
_TICK = 0.25  # redraw period of the display (seconds)
_RELOAD = 1.0  # how often the views are reloaded between events (seconds)


class _PlainValues:
    """Typer (0.29) checks every value of a parameter that is not a flag with a pydantic
    TypeAdapter; importing pydantic and building the adapters is a third of what `ls` costs
    (0.2 s of `get --dir D --jobs 16`). An option left out (None), a string or list of strings,
    a plain decimal int within the option's bounds and a path (`--dir`, `--home`: no path
    checks asked for beyond typer's default "readable if it exists") need no adapter, so they
    are answered here, exactly as typer would; any other value (an error among them, so its
    message is typer's own) goes to typer's coercion, built when first needed. With a typer
    that lacks these internals, typer's path is used throughout."""

    def __init__(self, kind: str, info: Any = None) -> None:
        self.kind = kind  # "str", "bool", "strs" (list[str]), "int", "path" or "other"
        self.info = info  # typer's ParameterInfo ("int": its bounds)

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None:
            return () if param.multiple or param.nargs == -1 else None
        if self.kind == "str" and isinstance(value, str):
            return value
        if self.kind == "bool" and isinstance(value, bool):
            return value
        if (
            self.kind == "strs"
            and isinstance(value, list | tuple)
            and all(isinstance(v, str) for v in value)
        ):
            return list(value)
        if self.kind == "int" and isinstance(value, str) and _DECIMAL.fullmatch(value):
            number = int(value)
            low, high = self.info.min, self.info.max
            if (low is None or number >= low) and (high is None or number <= high):
                return number
        if self.kind == "path" and isinstance(value, str) and value and "\0" not in value:
            try:
                os.stat(value)
            except OSError:
                return Path(value)  # need not exist: typer checks nothing more then
            if os.access(value, os.R_OK):
                return Path(value)
        param._runtime_param = None  # typer builds (and keeps) its own from here on
        return param.get_runtime_param().coerce(value, param=param, ctx=ctx)


def _plain_values(params: Iterable[Any]) -> None:
    for param in params:
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or getattr(param, "_runtime_param", False) is not None:
            continue
        annotation: Any = getattr(descriptor, "annotation", None)
        if annotation is str:
            kind = "str"
        elif annotation is bool:
            kind = "bool"
        elif annotation == list[str]:
            kind = "strs"
        elif annotation is int and _plain_int(descriptor.parameter_info):
            kind = "int"
        elif annotation is Path and _plain_path(descriptor.parameter_info):
            kind = "path"
        else:
            kind = "other"
        param._runtime_param = _PlainValues(kind, descriptor.parameter_info)


_DECIMAL = re.compile(r"0|[1-9][0-9]{0,17}")  # what any int parser reads the same way


def _plain_int(info: Any) -> bool:
    """An int option with bounds at most (typer's `clamp` or a parser are left to typer)."""
    return not getattr(info, "clamp", True) and getattr(info, "parser", 0) is None


def _plain_path(info: Any) -> bool:
    """A Path option with typer's defaults: only "readable if it exists" is checked."""
    wanted = {
        "parser": None,
        "path_type": None,
        "exists": False,
        "file_okay": True,
        "dir_okay": True,
        "writable": False,
        "readable": True,
        "resolve_path": False,
        "allow_dash": False,
    }
    missing = object()
    return all(getattr(info, name, missing) == value for name, value in wanted.items())


class _PlainParams:
    """Mixed into typer's command and group classes: their parameters (and the help option)
    take plain values without typer's pydantic round trip."""

    params: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_values(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        _plain_values([option] if option is not None else [])
        return option


class _Command(_PlainParams, TyperCommand):
    pass


class _Group(_PlainParams, TyperGroup):
    pass


app = typer.Typer(
    cls=_Group,
    name="modelfetch",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help and usage errors: typer's rich panels import rich's markdown and syntax
    # highlighting (pygments), which costs more than everything else `--help` does.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# ------------------------------------------------------------------------------ plumbing


@dataclass
class AppState:
    home: Path | None = None
    debug: bool = False

    def config(
        self,
        *,
        models_dir: Path | None = None,
        max_active: int | None = None,
        layout: str | None = None,
    ) -> Config:
        from modelfetch.config import Overrides, load_config

        return load_config(
            Overrides(home=self.home, models_dir=models_dir, max_active=max_active, layout=layout)
        )


def _state(ctx: typer.Context) -> AppState:
    obj = ctx.find_object(AppState)
    return obj if obj is not None else AppState()


def _stderr() -> Console:
    from rich.console import Console

    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


def _stdout() -> Console:
    from rich.console import Console

    probe = Console(file=sys.stdout)
    # Without a terminal, tables keep their rows on one line (scripts can use --json).
    return Console(file=sys.stdout, highlight=False, width=None if probe.is_terminal else 200)


def explain(error: BaseException) -> str:
    """The line a person reads for `error`."""
    from modelfetch.config import ConfigError
    from modelfetch.core.policy import describe

    if isinstance(error, StateLockedError):
        return (
            f"{error.message}. Wait for it to finish or stop it (Ctrl-C), then try again; "
            "downloads it started continue from their bytes on disk "
            "(`modelfetch ls` shows its queue meanwhile)."
        )
    if isinstance(error, UnknownItemError):
        return f"{error.message} (see `modelfetch ls`)"
    if isinstance(error, SpecError | ConfigError):
        return error.message
    return describe(error)


def exit_code_for(error: BaseException) -> int:
    from modelfetch.config import ConfigError

    return EXIT_USAGE if isinstance(error, SpecError | ConfigError) else EXIT_FAILED


def _report(error: BaseException, debug: bool, *, what: str | None = None) -> None:
    from rich.text import Text

    if debug:
        import traceback

        traceback.print_exception(error, file=sys.stderr)
    text = Text("error: ", style="bold red")
    if what:
        text.append(f"{what}: ")
    text.append(explain(error))
    _stderr().print(text)
    if not isinstance(error, ModelfetchError) and not debug:
        _stderr().print("(run with --debug for the traceback)", style="dim")


def _execute(state: AppState, make: Callable[[], Coroutine[Any, Any, int]]) -> None:
    """Run one command's coroutine; map what it raises to a line and an exit status."""
    import asyncio

    try:
        code = asyncio.run(make())
    except ModelfetchError as exc:
        _report(exc, state.debug)
        raise typer.Exit(exit_code_for(exc)) from None
    except KeyboardInterrupt:
        _stderr().print("interrupted", style="yellow")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # a bug: one line, the traceback only when asked for
        _report(exc, state.debug)
        raise typer.Exit(EXIT_FAILED) from None
    if code:
        raise typer.Exit(code)


def _is_local(backend: object) -> bool:
    """True for a DownloadManager in this process, False for the daemon's client."""
    from modelfetch.manager import DownloadManager

    return isinstance(backend, DownloadManager)


@contextlib.asynccontextmanager
async def _backend(cfg: Config, *, workers: bool = True) -> AsyncIterator[Backend]:
    from modelfetch.backend import open_backend

    # The manager's arguments are built only when no daemon serves this home.
    async with open_backend(
        home=cfg.home, lazy_kwargs=lambda: cfg.manager_kwargs(workers=workers)
    ) as backend:
        yield backend


@contextlib.asynccontextmanager
async def _viewer(cfg: Config) -> AsyncIterator[Backend | ReadOnlyBackend]:
    """`_backend` (without workers) for `ls` and `status`: when another process works the queue
    (and no daemon answers), its last saved state, read-only, after one line on stderr saying
    so. That line goes to stderr for `--json` too, so stdout stays one JSON document."""
    from modelfetch.backend import open_viewer

    async with open_viewer(
        home=cfg.home, lazy_kwargs=lambda: cfg.manager_kwargs(workers=False)
    ) as viewer:
        notice = getattr(viewer, "read_only_notice", None)
        if isinstance(notice, str):
            print(f"note: {notice}", file=sys.stderr, flush=True)
        yield viewer


def _parse_refs(ids: Sequence[str]) -> list[str]:
    from modelfetch.core.models import ItemRef

    return [str(ItemRef.parse(i)) for i in ids]


# ------------------------------------------------------------------------------ Ctrl-C


class Interrupts:
    """SIGINT and SIGTERM while a command runs in the foreground.

    The first sets `event` (the command then pauses what it started, persists and exits 130).
    A second SIGINT calls `on_second`, which leaves at once: the store is always consistent and
    every `.part` file is a valid prefix, so the next run continues from the disk.
    """

    def __init__(self, on_first: Callable[[], None], on_second: Callable[[], None]) -> None:
        import asyncio

        self.event = asyncio.Event()
        self.signum: int | None = None
        self._on_first = on_first
        self._on_second = on_second
        self._installed: list[int] = []

    def _fire(self, signum: int) -> None:
        import signal

        if self.event.is_set():
            if signum == signal.SIGINT:
                self._on_second()
            return
        self.signum = signum
        self.event.set()
        self._on_first()

    async def __aenter__(self) -> Interrupts:
        import asyncio
        import signal

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, self._fire, signum)
                self._installed.append(signum)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        for signum in self._installed:
            loop.remove_signal_handler(signum)
        self._installed.clear()

    @property
    def exit_code(self) -> int:
        import signal

        return 128 + signal.SIGTERM if self.signum == signal.SIGTERM else EXIT_INTERRUPTED


def _leave_now(display: Display, stream: Any) -> NoReturn:
    display.abort()
    stream.write("Quitting now. Run the same command again to continue from the bytes on disk.\n")
    stream.flush()
    os._exit(EXIT_INTERRUPTED)


async def _race(work: asyncio.Task[Any], event: asyncio.Event) -> bool:
    """Wait for `work` or `event`; True if `event` came first (then `work` is cancelled)."""
    import asyncio

    stopper = asyncio.create_task(event.wait())
    try:
        await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if work.done():
        return False
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    return True


# ------------------------------------------------------------------------------ following


class EventFeed:
    """Events from the backend to a display. Subscribed before anything is enqueued; events are
    held back until `release()` (when the display knows which groups to show)."""

    def __init__(self, backend: Backend, display: Display) -> None:
        import asyncio

        self._events = backend.events()
        self._display = display
        self._held: list[ev.Event] | None = []
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.finished: set[int] = set()

    async def start(self) -> None:
        import asyncio

        self._task = asyncio.create_task(self._pump(), name="modelfetch-cli-events")
        # Let the pump reach its first await: the subscription exists from here on.
        await asyncio.sleep(0)

    async def _pump(self) -> None:
        from modelfetch.core import events as ev

        async for event in self._events:
            if isinstance(event, ev.GroupFinished):
                self.finished.add(event.group_id)
            if self._held is not None:
                self._held.append(event)
            else:
                self._display.on_event(event)
            self._changed.set()

    def release(self) -> None:
        held, self._held = self._held or [], None
        for event in held:
            self._display.on_event(event)

    async def drain(self, group_ids: set[int], grace: float = 2.0) -> None:
        """Until a `group_finished` was seen for every id in `group_ids` (at most `grace` s)."""
        import asyncio

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while not group_ids <= self.finished:
                    if self._task is not None and self._task.done():
                        return
                    self._changed.clear()
                    await self._changed.wait()
        await asyncio.sleep(0)

    async def close(self) -> None:
        import asyncio

        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


async def _views(backend: Backend, group_ids: set[int] | None) -> list[GroupView]:
    views = await backend.snapshot()
    return [v for v in views if group_ids is None or v.id in group_ids]


async def follow(backend: Backend, display: Display, group_ids: set[int]) -> None:
    """Redraw the display until every group in `group_ids` is settled."""
    import asyncio

    waiter = asyncio.create_task(backend.wait(sorted(group_ids)), name="modelfetch-cli-wait")
    try:
        next_reload = 0.0
        while not waiter.done():
            if time.monotonic() >= next_reload:
                display.on_views(await _views(backend, group_ids))
                next_reload = time.monotonic() + _RELOAD
            display.tick(time.time())
            await asyncio.wait({waiter}, timeout=_TICK)
        waiter.result()
    finally:
        if not waiter.done():
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter


def _make_display(json_mode: bool, *, hint: str | None) -> tuple[Display, Console]:
    """NDJSON with --json; a live display on a terminal; plain lines otherwise. Also returns
    the console where summaries go (stderr in JSON mode, so stdout stays NDJSON)."""
    from rich.console import Console

    from modelfetch.render import JsonDisplay, LiveDisplay, PlainDisplay

    if json_mode:
        return JsonDisplay(sys.stdout, sys.stderr), _stderr()
    console = Console(file=sys.stdout, highlight=False)
    if console.is_terminal and not console.is_dumb_terminal:
        return LiveDisplay(console, hint=hint), console
    return PlainDisplay(sys.stdout, interval=_progress_interval()), _stdout()


def _progress_interval() -> float:
    """Seconds between plain progress lines: MODELFETCH_PROGRESS_INTERVAL, else 5."""
    try:
        value = float(os.environ.get("MODELFETCH_PROGRESS_INTERVAL", "") or 5.0)
    except ValueError:
        return 5.0
    return value if value > 0 else 5.0


# ------------------------------------------------------------------------------ summaries


def _summary(views: Sequence[GroupView], console: Console, now: float) -> bool:
    """Print what happened to each group; True if all completed. Above MANY_GROUPS, the
    completed ones share one line and only the others get one each."""
    from rich.text import Text

    from modelfetch.core.format import format_bytes
    from modelfetch.render import MANY_GROUPS, file_state, group_state

    ok = True
    if len(views) > MANY_GROUPS:
        completed = [v for v in views if v.status == "completed"]
        views = [v for v in views if v.status != "completed"]
        if completed:
            console.print(_completed_line(completed))
    for v in views:
        files = "1 file" if len(v.files) == 1 else f"{len(v.files)} files"
        if v.status == "completed":
            line = Text("✓ ", style="green")
            line.append(f"{v.name}", style="bold")
            # Hub files are checked against the digests the Hub lists; a plain URL has none.
            checked = "verified" if v.spec.startswith("hf://") else "(no digest to check against)"
            line.append(f": {files}, {format_bytes(v.total)}, {checked} → {v.dest_dir}")
            console.print(line)
            continue
        ok = False
        state = group_state(v, now) or v.status
        line = Text("✗ ", style="red")
        line.append(f"{v.name}", style="bold")
        line.append(f": {state}")
        console.print(line)
        for f in v.files:
            if f.status == "completed":
                continue
            why = f.error_message or file_state(f, now) or f.status
            if f.status == "paused" and f.pause_reason != "disk_full":
                why = "paused"
            elif f.status == "waiting_retry":
                why = file_state(f, now) or why
            console.print(f"    {f.ref} {f.name}: {why}", soft_wrap=True, highlight=False)
    return ok


def _completed_line(views: Sequence[GroupView]) -> Text:
    """`✓ 200 downloads: 200 files, 12.5 MiB, 3 verified → /models/example.org`."""
    from rich.text import Text

    from modelfetch.core.format import format_bytes

    files = sum(len(v.files) for v in views)
    size = sum(v.total or 0 for v in views)
    verified = sum(1 for v in views if v.spec.startswith("hf://"))
    dirs = sorted({v.dest_dir for v in views})
    where = dirs[0] if len(dirs) == 1 else f"{len(dirs)} directories"
    checked = f"{verified} verified" if verified else "no digests to check against"
    line = Text("✓ ", style="green")
    line.append(f"{len(views)} downloads", style="bold")
    line.append(f": {files} files, {format_bytes(size)}, {checked} → {where}")
    return line


def _resume_command(argv: Sequence[str]) -> str:
    import shlex

    return shlex.join(["modelfetch", *argv])


# ------------------------------------------------------------------------------ get


@dataclass
class GetOptions:
    specs: list[str]
    quant: str | None = None
    revision: str | None = None
    include: list[str] = field(default_factory=list)
    layout: str | None = None
    json: bool = False
    jobs: int | None = None
    limit_rate: str | None = None


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


def _check_specs(specs: Sequence[str], cfg: Config) -> None:
    """Refuse a malformed spec before anything is opened or enqueued."""
    from modelfetch.core.spec import parse_spec

    for spec in specs:
        parse_spec(spec, default_endpoint=cfg.hf_endpoint)


STDIN = "-"


def spec_lines(text: str) -> list[tuple[int, str]]:
    """(line number, spec) for each line of an input list that names something: one spec or
    URL per line; blank lines and lines starting with `#` are skipped, surrounding whitespace
    ignored. A `#` later in a line is part of it (URLs have fragments)."""
    found: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            found.append((number, line))
    return found


def _read_list(source: str, stdin: IO[str]) -> tuple[str, str]:
    """(how to name it in messages, its text) for `--input-file FILE` (`-`: standard input)."""
    if source == STDIN:
        return "standard input", stdin.read()
    try:
        return source, Path(source).expanduser().read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise SpecError(f"--input-file: cannot read {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SpecError(f"--input-file: {source} is not UTF-8 text") from None


def gather_specs(
    specs: Iterable[str],
    input_file: str | None,
    cfg: Config,
    *,
    stdin: IO[str] | None = None,
) -> list[str]:
    """The specs given on the command line, then those of the input list, each checked: a
    malformed one is a SpecError naming its line, before anything is opened or enqueued."""
    from modelfetch.core.spec import parse_spec

    gathered = list(specs)
    _check_specs(gathered, cfg)
    if input_file is None:
        if not gathered:
            raise SpecError("nothing to download: give one or more specs, or --input-file FILE")
        return gathered
    name, text = _read_list(input_file, stdin if stdin is not None else sys.stdin)
    lines = spec_lines(text)
    for number, line in lines:
        try:
            if len(line.split()) > 1:
                raise SpecError(f"one spec or URL per line, not {line!r}")
            parse_spec(line, default_endpoint=cfg.hf_endpoint)
        except SpecError as exc:
            raise SpecError(f"{name} line {number}: {exc.message}") from None
        gathered.append(line)
    if not gathered:
        raise SpecError(f"nothing to download: {name} lists no spec or URL")
    return gathered


async def _add_each(
    backend: Backend,
    specs: Sequence[str],
    *,
    quant: str | None,
    revision: str | None,
    include: Sequence[str],
    layout: str,
) -> AsyncGenerator[tuple[str, int | ModelfetchError], None]:
    """Add every spec, in order: (spec, its group id or why it was not added). With the manager
    in this process, the specs are planned PLAN_CONCURRENCY at a time (a HEAD per plain URL,
    a few Hub calls per repo) and each is enqueued as soon as it and those before it are
    planned, so the first downloads start while the rest are probed; 200 URLs one `add` at a
    time spent most of a second in round trips. The daemon is asked one `add` at a time."""
    if not _is_local(backend):
        for spec in specs:
            try:
                gid = await backend.add(
                    spec, quant=quant, revision=revision, include=include, layout=layout
                )
            except ModelfetchError as exc:
                yield spec, exc
                continue
            yield spec, gid
        return
    from modelfetch.layout import Layout
    from modelfetch.manager import DownloadManager
    from modelfetch.planner import PlanOptions

    assert isinstance(backend, DownloadManager)
    manager = backend
    # What DownloadManager.add builds for these arguments.
    plan_options = PlanOptions(
        models_dir=manager.models_dir,
        layout=Layout(layout),
        quant=quant,
        revision=revision,
        include=tuple(include),
    )
    planned = manager.planner.plan_each(specs, plan_options)
    async with contextlib.aclosing(planned):
        i = 0
        async for outcome in planned:
            spec, i = specs[i], i + 1
            if isinstance(outcome, ModelfetchError):
                yield spec, outcome
                continue
            try:
                gid = await manager.enqueue(outcome)
            except ModelfetchError as exc:
                yield spec, exc
                continue
            yield spec, gid


async def run_get(
    cfg: Config, options: GetOptions, *, resume_hint: str, debug: bool = False
) -> int:
    """`modelfetch get`: enqueue, run in the foreground until settled, summarize."""
    import asyncio

    from modelfetch.config import ConfigError
    from modelfetch.core.format import parse_size
    from modelfetch.render import JsonDisplay

    _check_specs(options.specs, cfg)
    rate: int | None = None
    if options.limit_rate is not None:
        try:
            rate = parse_size(options.limit_rate)
        except ValueError as exc:
            raise ConfigError(f"--limit-rate: {exc}") from None
    layout = options.layout or cfg.layout
    display, console = _make_display(
        options.json, hint="Ctrl-C pauses; run the same command again to resume"
    )
    gids: list[int] = []
    errors: list[int] = []

    async def enqueue_and_wait(backend: Backend, feed: EventFeed) -> int:
        added = _add_each(
            backend,
            options.specs,
            quant=options.quant,
            revision=options.revision,
            include=options.include,
            layout=layout,
        )
        async with contextlib.aclosing(added):
            async for spec, outcome in added:
                if isinstance(outcome, ModelfetchError):
                    _report(outcome, debug, what=spec)
                    errors.append(exit_code_for(outcome))
                elif outcome not in gids:
                    gids.append(outcome)
        if not gids:
            return max(errors) if errors else EXIT_FAILED
        await _put_first(backend, gids)
        wanted = set(gids)
        before = {v.id: v.status for v in await _views(backend, wanted)}
        display.track(wanted)
        feed.release()
        await follow(backend, display, wanted)
        final = await _views(backend, wanted)
        ended = {v.id for v in final if v.status in FINISHED and before.get(v.id) not in FINISHED}
        await feed.drain(ended)
        display.on_views(final)
        display.tick(time.time())
        display.end()
        if isinstance(display, JsonDisplay):
            # A group that was already complete has no group_finished in this run: say so,
            # so every requested group ends its stream with one.
            for v in final:
                if v.status in FINISHED and v.id not in display.finished:
                    display.write(_finished_event(v))
        ok = _summary(sorted(final, key=lambda v: gids.index(v.id)), console, time.time())
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
        on_second=lambda: _leave_now(display, err_stream),
    )
    async with interrupts, _backend(cfg) as backend:
        if options.jobs is not None and not _is_local(backend):
            await backend.set_limits(max_active=options.jobs)
        if rate is not None:
            await _limit_rate(backend, rate, display)
        feed = EventFeed(backend, display)
        await feed.start()
        display.begin()
        try:
            job = asyncio.create_task(enqueue_and_wait(backend, feed))
            if not await _race(job, interrupts.event):
                return job.result()
            for gid in gids:
                with contextlib.suppress(ModelfetchError):
                    await backend.pause(gid)
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


# ------------------------------------------------------------------------------ commands

SpecsArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="What to download: owner/name, owner/name:Q4_K_M, owner/name/file.gguf, a URL.",
        show_default=False,
        metavar="SPEC",
    ),
]
InputOpt = Annotated[
    str | None,
    typer.Option(
        "--input-file",
        "-I",
        help="Also download what FILE lists: one spec or URL per line, # comments; - is stdin.",
        show_default=False,
        metavar="FILE",
    ),
]
QuantOpt = Annotated[
    str | None, typer.Option("--quant", "-q", help="Quantization, e.g. Q4_K_M.", show_default=False)
]
DirOpt = Annotated[
    Path | None,
    typer.Option(
        "--dir", "-d", help="Models directory (default: <home>/models).", show_default=False
    ),
]
LayoutOpt = Annotated[
    str | None,
    typer.Option("--layout", help="plain (owner/name/file) or hf-cache.", show_default=False),
]
RevisionOpt = Annotated[
    str | None,
    typer.Option("--revision", "-r", help="Branch, tag or commit.", show_default=False),
]
IncludeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--include", "-i", help="Extra repo files by glob (repeatable).", show_default=False
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output (NDJSON/JSON).")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"modelfetch {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option("--home", help="State directory (env MODELFETCH_HOME).", show_default=False),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version.", is_eager=True, callback=_version),
    ] = False,
) -> None:
    """Download large model files from the Hugging Face Hub and plain URLs: resumable,
    verified, queued.

    Exit status: 0 all done, 1 something failed (see the summary), 2 the request or a setting
    is wrong, 130 interrupted (paused; run the same command again to resume)."""
    ctx.obj = AppState(home=home, debug=debug)


@app.command(cls=_Command)
def get(
    ctx: typer.Context,
    specs: SpecsArg = None,
    input_file: InputOpt = None,
    quant: QuantOpt = None,
    dir: DirOpt = None,
    layout: LayoutOpt = None,
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", "-j", min=1, help="Files downloaded at once.", show_default=False),
    ] = None,
    revision: RevisionOpt = None,
    include: IncludeOpt = None,
    json_out: JsonOpt = False,
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
    state = _state(ctx)

    async def go() -> int:
        cfg = state.config(models_dir=dir, max_active=jobs, layout=layout)
        options = GetOptions(
            specs=gather_specs(specs or [], input_file, cfg),
            quant=quant,
            revision=revision,
            include=include or [],
            layout=layout,
            json=json_out,
            jobs=jobs,
            limit_rate=limit_rate,
        )
        hint = _resume_command(sys.argv[1:])
        if input_file == STDIN:
            hint += "   (with the same list on standard input)"
        return await run_get(cfg, options, resume_hint=hint, debug=state.debug)

    _execute(state, go)


@app.command(cls=_Command)
def add(
    ctx: typer.Context,
    specs: SpecsArg = None,
    input_file: InputOpt = None,
    quant: QuantOpt = None,
    dir: DirOpt = None,
    layout: LayoutOpt = None,
    revision: RevisionOpt = None,
    include: IncludeOpt = None,
) -> None:
    """Add downloads to the queue without starting them (see `run`)."""
    state = _state(ctx)

    async def go() -> int:
        from modelfetch.core.format import format_bytes

        cfg = state.config(models_dir=dir, layout=layout)
        wanted = gather_specs(specs or [], input_file, cfg)
        out, code, added = _stdout(), EXIT_OK, 0
        async with _backend(cfg, workers=False) as backend:
            outcomes = _add_each(
                backend,
                wanted,
                quant=quant,
                revision=revision,
                include=include or [],
                layout=layout or cfg.layout,
            )
            async with contextlib.aclosing(outcomes):
                async for _, gid in outcomes:
                    if isinstance(gid, ModelfetchError):
                        _report(gid, state.debug)
                        code = max(code, exit_code_for(gid))
                        continue
                    added += 1
                    v = await backend.group_view(gid)
                    files = "1 file" if len(v.files) == 1 else f"{len(v.files)} files"
                    where = f" #{v.position}" if v.position else ""
                    out.print(
                        f"{v.id}  {v.name}  ({files}, {format_bytes(v.total)})  {v.status}{where}",
                        highlight=False,
                    )
            if _is_local(backend) and added:
                out.print("Queued. Run `modelfetch run` to download.", style="dim")
        return code

    _execute(state, go)


@app.command(cls=_Command)
def run(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Work the queue until it is drained."""
    state = _state(ctx)

    async def go() -> int:
        import asyncio

        cfg = state.config()
        display, console = _make_display(json_out, hint="Ctrl-C stops; `modelfetch run` continues")
        interrupts = Interrupts(
            on_first=lambda: display.message("Stopping…", style="yellow"),
            on_second=lambda: _leave_now(display, sys.stderr),
        )
        seen: set[int] = set()

        async def work(backend: Backend, feed: EventFeed) -> int:
            released = False
            while True:
                views = await backend.snapshot()
                live = {v.id for v in views if v.status in ("queued", "active")}
                if not live:
                    break
                seen.update(live)
                display.track(seen)
                if not released:
                    feed.release()
                    released = True
                await follow(backend, display, live)
            if not seen:
                paused = sum(1 for v in views if v.status == "paused")
                display.end()
                console.print("Nothing to download: no queued downloads.")
                if paused:
                    console.print(f"{paused} paused; `modelfetch resume --all` queues them again.")
                return EXIT_OK
            final = await _views(backend, seen)
            await feed.drain({v.id for v in final if v.status in FINISHED}, grace=1.0)
            display.on_views(final)
            display.tick(time.time())
            display.end()
            return EXIT_OK if _summary(final, console, time.time()) else EXIT_FAILED

        async with interrupts, _backend(cfg) as backend:
            feed = EventFeed(backend, display)
            await feed.start()
            display.begin()
            try:
                job = asyncio.create_task(work(backend, feed))
                if not await _race(job, interrupts.event):
                    return job.result()
            finally:
                display.end()
                await feed.close()
            local = _is_local(backend)
        if local:
            console.print(
                "Stopped; the queue and the bytes on disk are kept. `modelfetch run` continues."
            )
        else:
            console.print("Stopped watching; the daemon keeps downloading.")
        return interrupts.exit_code

    _execute(state, go)


def _progress(v: GroupView) -> str:
    from modelfetch.core.format import UNKNOWN

    if not v.total:
        return UNKNOWN
    return f"{min(100.0, 100.0 * v.downloaded / v.total):.0f}%"


def _group_error(v: GroupView) -> str:
    """The first error among a download's files (a retry's reason is in its status already)."""
    from modelfetch.render import short_error

    for f in v.files:
        if f.status == "failed" or (f.status == "paused" and f.error_message):
            return short_error(f.error_message, f.error_kind)
    return ""


def _queue_table(views: Sequence[GroupView], now: float) -> Table:
    from rich.console import JustifyMethod
    from rich.table import Table

    from modelfetch.core.format import format_bytes, format_rate
    from modelfetch.render import group_state

    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("ID", "right"),
        ("NAME", "left"),
        ("STATUS", "left"),
        ("PROGRESS", "right"),
        ("SIZE", "right"),
        ("SPEED", "right"),
        ("POS", "right"),
        ("ERROR", "left"),
    )
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=name != "ERROR")
    for v in views:
        table.add_row(
            str(v.id),
            v.name,
            group_state(v, now) if v.status in ("queued", "paused") else v.status,
            _progress(v),
            f"{format_bytes(v.downloaded)} / {format_bytes(v.total)}",
            format_rate(v.speed),
            f"#{v.position}" if v.position else "",
            _group_error(v),
        )
    return table


def _files_table(v: GroupView, now: float) -> Table:
    from rich.table import Table

    from modelfetch.core.format import UNKNOWN, format_bytes, format_rate
    from modelfetch.render import file_state

    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("ID", "FILE", "STATUS", "PROGRESS", "SIZE", "SPEED", "POS", "ERROR"):
        table.add_column(name, no_wrap=name != "ERROR")
    for f in v.files:
        pct = f"{min(100.0, 100.0 * f.downloaded / f.total):.0f}%" if f.total else UNKNOWN
        state = file_state(f, now) or f.status
        if f.status in ("failed", "waiting_retry"):
            state = state.split(":", 1)[0]  # the reason is in the error column
        shows_error = f.status in ("failed", "waiting_retry", "paused")
        error = (f.error_message or "") if shows_error else ""
        table.add_row(
            f.ref,
            f.name,
            state,
            pct,
            f"{format_bytes(f.downloaded)} / {format_bytes(f.total)}",
            format_rate(f.speed),
            f"#{f.position}" if f.position else "",
            error,
        )
    return table


@app.command("ls", cls=_Command)
def ls_command(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List downloads: id, name, status, progress, size, speed, queue position, error."""
    state = _state(ctx)

    async def go() -> int:
        cfg = state.config()
        async with _viewer(cfg) as backend:
            views = await backend.snapshot()
        if json_out:
            print(json.dumps([v.to_dict() for v in views], indent=2))
            return EXIT_OK
        if not views:  # (print, not rich: an empty listing should not pay for rich's import)
            print("No downloads. Add one with `modelfetch get SPEC` or `modelfetch add SPEC`.")
            return EXIT_OK
        _stdout().print(_queue_table(views, time.time()))
        return EXIT_OK

    _execute(state, go)


@app.command(cls=_Command)
def status(
    ctx: typer.Context,
    item: Annotated[
        str | None, typer.Argument(help="A download id (12) or file id (12.3).", show_default=False)
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Details of one download (or of every unfinished one), file by file."""
    state = _state(ctx)

    async def go() -> int:
        cfg = state.config()
        ref = _parse_refs([item])[0] if item is not None else None
        async with _viewer(cfg) as backend:
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
        from modelfetch.render import group_state

        out, now = _stdout(), time.time()
        for v in views:
            head = Text(f"{v.id}  {v.name}", style="bold")
            state_words = group_state(v, now) or v.status
            head.append(f"  {state_words}", style="cyan")
            out.print(head)
            out.print(
                f"  {_progress(v)}  {format_bytes(v.downloaded)} / {format_bytes(v.total)}  "
                f"{format_rate(v.speed)}  ETA {format_duration(v.eta)}  → {v.dest_dir}",
                highlight=False,
            )
            out.print(_files_table(v, now))
        return EXIT_OK

    _execute(state, go)


IdsArg = Annotated[
    list[str] | None,
    typer.Argument(help="Download ids (12) or file ids (12.3).", show_default=False),
]
AllOpt = Annotated[bool, typer.Option("--all", "-a", help="Every applicable download.")]


def _control(ctx: typer.Context, action: str, ids: list[str] | None, every: bool) -> None:
    state = _state(ctx)

    async def go() -> int:
        if not ids and not every:
            raise SpecError(f"give one or more ids to {action}, or --all")
        refs = _parse_refs(ids or [])
        cfg = state.config()
        out, code = _stdout(), EXIT_OK
        async with _backend(cfg, workers=False) as backend:
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
            if _is_local(backend) and action in ("resume", "retry") and done:
                out.print("Run `modelfetch run` (or `get`) to download.", style="dim")
        return code

    _execute(state, go)


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
            _report(exc, debug)
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


@app.command(cls=_Command)
def pause(ctx: typer.Context, ids: IdsArg = None, all_: AllOpt = False) -> None:
    """Pause downloads (the bytes on disk are kept)."""
    _control(ctx, "pause", ids, all_)


@app.command(cls=_Command)
def resume(ctx: typer.Context, ids: IdsArg = None, all_: AllOpt = False) -> None:
    """Queue paused downloads again."""
    _control(ctx, "resume", ids, all_)


@app.command(cls=_Command)
def cancel(ctx: typer.Context, ids: IdsArg = None, all_: AllOpt = False) -> None:
    """Cancel downloads (their partial files are deleted)."""
    _control(ctx, "cancel", ids, all_)


@app.command(cls=_Command)
def retry(ctx: typer.Context, ids: IdsArg = None, all_: AllOpt = False) -> None:
    """Queue failed or cancelled downloads again."""
    _control(ctx, "retry", ids, all_)


@app.command(cls=_Command)
def move(
    ctx: typer.Context,
    item: Annotated[str, typer.Argument(help="Download id (12) or file id (12.3).")],
    position: Annotated[int, typer.Argument(min=1, help="New queue position (1 = next).")],
) -> None:
    """Move a waiting download to another place in the queue."""
    state = _state(ctx)

    async def go() -> int:
        ref = _parse_refs([item])[0]
        cfg = state.config()
        async with _backend(cfg, workers=False) as backend:
            await backend.move(ref, position)
            view = await backend.group_view(ref)
        where = f"#{view.position}" if view.position else "(not waiting)"
        _stdout().print(f"{view.id}  {view.name}  now {where}", highlight=False)
        return EXIT_OK

    _execute(state, go)


@app.command(cls=_Command)
def quants(
    ctx: typer.Context,
    repo: Annotated[str, typer.Argument(help="owner/name of a Hub repository.")],
    revision: RevisionOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The quantizations a repository offers: size, shard count, complete or not."""
    state = _state(ctx)

    async def go() -> int:
        cfg = state.config()
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

        out = _stdout()
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

    _execute(state, go)


async def _list_quants(cfg: Config, repo: str, revision: str | None) -> list[QuantGroup]:
    try:
        async with _backend(cfg, workers=False) as backend:
            return await backend.quants(repo, revision)
    except StateLockedError:
        # A listing needs no state: ask the Hub directly while another process owns it.
        from modelfetch.hub import HubClient, make_api_session
        from modelfetch.planner import Planner

        async with make_api_session() as session:
            planner = Planner(session, HubClient(session, cfg.hub_config()))
            return await planner.quants(repo, revision)


@app.command(cls=_Command)
def clean(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove orphan .part files and forget finished downloads (their files stay on disk)."""
    state = _state(ctx)

    async def go() -> int:
        from modelfetch.core.format import format_bytes

        cfg = state.config()
        out = _stdout()
        async with _backend(cfg, workers=False) as backend:
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

    _execute(state, go)


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@app.command("config", cls=_Command)
def config_command(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Show the effective settings and where each comes from (the token masked)."""
    from modelfetch.config import ConfigError

    state = _state(ctx)
    try:
        cfg = state.config()
    except ConfigError as exc:
        _report(exc, state.debug)
        raise typer.Exit(EXIT_USAGE) from None
    rows = cfg.describe()
    if json_out:
        data = {name: {"value": value, "source": source} for name, value, source in rows}
        print(json.dumps({"config_file": str(cfg.config_file), "settings": data}, indent=2))
        return
    from rich.table import Table

    out = _stdout()
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("SETTING", "VALUE", "FROM"):
        table.add_column(name)
    for name, value, source in rows:
        table.add_row(name, value, source)
    out.print(table)
    found = "" if cfg.config_file_found else " (not present)"
    out.print(f"config file: {cfg.config_file}{found}", highlight=False, soft_wrap=True)


@app.command(cls=_Command)
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
) -> None:
    """Run the queue as a daemon with an HTTP API until stopped (Ctrl-C or SIGTERM).

    While it runs, the other commands talk to it instead of opening the state themselves."""
    state = _state(ctx)

    async def go() -> int:
        import asyncio
        import signal

        serve_fn = _server_entry()
        if serve_fn is None:
            _stderr().print(
                "error: the HTTP server is not available in this version of modelfetch "
                "(modelfetch.server.serve is missing)",
                style="red",
            )
            return EXIT_FAILED
        cfg = state.config()
        from modelfetch.manager import DownloadManager

        async with DownloadManager(**cfg.manager_kwargs()) as manager:
            task = asyncio.create_task(serve_fn(manager, host=host, port=port, token=token))
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            try:
                announce = asyncio.create_task(_announce(cfg.home, host, port))
                stopped = await _race(task, stop)
                announce.cancel()
                if not stopped:
                    task.result()
            finally:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(signum)
        _stderr().print("stopped; the queue is saved")
        return EXIT_OK

    _execute(state, go)


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
    _stderr().print(f"modelfetch daemon for {home} listening on {url} (Ctrl-C stops)")


@app.command(cls=_Command)
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
    from modelfetch.demo import run_demo

    state = _state(ctx)
    _execute(state, lambda: run_demo(dir))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `modelfetch` script and `python -m modelfetch`."""
    try:
        app(args=list(argv) if argv is not None else None, prog_name="modelfetch")
    except SystemExit as exc:
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_FAILED
    return EXIT_OK
