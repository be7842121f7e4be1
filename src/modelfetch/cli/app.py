"""The typer app: the root with its global options, the commands in help order, and `main()`."""

from __future__ import annotations

from collections.abc import Sequence

import typer

from modelfetch.cli import demo, fleet, get, info, queue, run, serve
from modelfetch.cli.errors import EXIT_FAILED, EXIT_OK
from modelfetch.cli.options import global_options
from modelfetch.cli.plain_values import PlainCommand, PlainGroup

app = typer.Typer(
    cls=PlainGroup,
    name="modelfetch",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help and usage errors: typer's rich panels import rich's markdown and syntax
    # highlighting (pygments), which costs more than everything else `--help` does.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.callback(
    help="""Download large model files from the Hugging Face Hub and plain URLs: resumable,
    verified, queued.

    Exit status: 0 all done, 1 something failed (see the summary), 2 the request or a setting
    is wrong, 130 interrupted (paused; run the same command again to resume)."""
)(global_options)

COMMANDS = (
    ("get", get.get),
    ("add", get.add),
    ("run", run.run),
    ("ls", queue.ls_command),
    ("status", queue.status),
    ("pause", queue.pause),
    ("resume", queue.resume),
    ("cancel", queue.cancel),
    ("retry", queue.retry),
    ("move", queue.move),
    ("quants", info.quants),
    ("clean", queue.clean),
    ("fleet", fleet.fleet),
    ("config", info.config_command),
    ("serve", serve.serve),
    ("demo", demo.demo),
)
"""(name, function) of every command, in the order `--help` lists them."""


def _register_commands() -> None:
    for name, command in COMMANDS:
        app.command(name, cls=PlainCommand)(command)


_register_commands()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `modelfetch` script and `python -m modelfetch`."""
    try:
        app(args=list(argv) if argv is not None else None, prog_name="modelfetch")
    except SystemExit as exc:
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_FAILED
    return EXIT_OK
