"""Exit statuses, and what a command prints when it fails: one line, a traceback only on --debug.

0    everything asked for completed
1    something failed (the summary says what and why), or the Hub refused a request
2    the request itself is wrong: a malformed spec, an unknown quant, a bad flag or setting,
     or a destination that cannot be written (not a folder, read-only, no room, no permission)
130  interrupted (Ctrl-C): the downloads were paused and can be resumed
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from modelfetch.cli.consoles import stderr_console
from modelfetch.core.errors import (
    ModelfetchError,
    SpecError,
    StateLockedError,
    UnknownItemError,
)

_R = TypeVar("_R")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


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
    from modelfetch.core.errors import ProxyConfigError
    from modelfetch.core.messages import is_file_error

    if isinstance(error, SpecError | ConfigError | ProxyConfigError) or (
        isinstance(error, OSError) and is_file_error(error)
    ):
        return EXIT_USAGE  # a DestinationError is a SpecError; a raw disk-side OSError alike
    return EXIT_FAILED


def report(error: BaseException, debug: bool, *, what: str | None = None) -> None:
    """Print `error` as one line on stderr (`what: ` first if given); the traceback on --debug."""
    from rich.text import Text

    if debug:
        import traceback

        traceback.print_exception(error, file=sys.stderr)
    text = Text("error: ", style="bold red")
    if what:
        text.append(f"{what}: ")
    text.append(explain(error))
    stderr_console().print(text)
    from modelfetch.core.messages import is_file_error

    if not isinstance(error, ModelfetchError) and not is_file_error(error) and not debug:
        stderr_console().print("(run with --debug for the traceback)", style="dim")


def execute(debug: bool, make: Callable[[], Coroutine[Any, Any, int]]) -> None:
    """Run one command's coroutine; map what it raises to a line and an exit status."""
    import asyncio

    import typer

    code = guarded(debug, lambda: asyncio.run(make()))
    if code:
        raise typer.Exit(code)


def exit_status_of(debug: bool, call: Callable[[], int | None]) -> int | None:
    """`call()`'s exit status, with what it raises reported as `execute` reports it, as a
    status instead of typer.Exit: for what runs before typer is imported (cli/fast_get.py)."""
    try:
        return call()
    except ModelfetchError as exc:
        report(exc, debug)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        stderr_console().print("interrupted", style="yellow")
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug (or the disk's refusal): one line, traceback on --debug
        report(exc, debug)
        return exit_code_for(exc)


def guarded(debug: bool, call: Callable[[], _R]) -> _R:
    """`call()`, with what it raises mapped as `execute` does (a line, then typer.Exit)."""
    import typer

    try:
        return call()
    except ModelfetchError as exc:
        report(exc, debug)
        raise typer.Exit(exit_code_for(exc)) from None
    except KeyboardInterrupt:
        stderr_console().print("interrupted", style="yellow")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # a bug (or the disk's refusal): one line, traceback on --debug
        report(exc, debug)
        raise typer.Exit(exit_code_for(exc)) from None
