"""The `modelfetch` command line.

Every command goes through `open_backend`: it talks to the daemon when one owns the state
directory, else runs a DownloadManager in this process. Errors a person can act on are one line
on stderr (no traceback unless `--debug`), and the exit status says what happened (see
`cli/errors.py`).

Start time is part of the interface: `ls`, `status` and `--help` run all the time, and `get` of
a few small files should be done before a heavier tool has started. So the modules of this
package import only typer at the top; asyncio, rich, the display, the manager and aiohttp are
imported by the commands that use them (tests/test_cli_startup.py keeps `--help` and `ls` free
of aiohttp, rich and pydantic).
"""

from modelfetch.cli.app import app, main
from modelfetch.cli.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    exit_code_for,
    explain,
)
from modelfetch.cli.get import GetOptions, run_get
from modelfetch.cli.specs import gather_specs, spec_lines

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "GetOptions",
    "app",
    "exit_code_for",
    "explain",
    "gather_specs",
    "main",
    "run_get",
    "spec_lines",
]
