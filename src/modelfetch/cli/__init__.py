"""The `modelfetch` command line.

Every command goes through `open_backend`: it talks to the daemon when one owns the state
directory, else runs a DownloadManager in this process. Errors a person can act on are one line
on stderr (no traceback unless `--debug`), and the exit status says what happened (see
`cli/errors.py`).

Start time is part of the interface: `ls`, `status` and `--help` run all the time, and `get` of
a few small files should be done before a heavier tool has started. So the modules of this
package import only typer at the top (the package itself not even that); asyncio, rich, the
display, the manager and aiohttp are imported by the commands that use them
(tests/test_cli_startup.py keeps `--help` and `ls` free of aiohttp, rich and pydantic).
"""

import sys
import types
from typing import TYPE_CHECKING, Any

from modelfetch.cli.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    exit_code_for,
    explain,
)
from modelfetch.cli.get_options import GetOptions
from modelfetch.cli.specs import gather_specs, spec_lines

if TYPE_CHECKING:
    from modelfetch.cli.app import app, main
    from modelfetch.cli.get import run_get

# The typer app (and `get`, which is built on it) load on first use: `python -m modelfetch get`
# through a running daemon runs without typer (cli/fast_get.py), and importing a module of
# this package must not cost typer's import for it.
_LAZY = {"app": "modelfetch.cli.app", "main": "modelfetch.cli.app", "run_get": "modelfetch.cli.get"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """Importing the submodule `modelfetch.cli.app` sets the package's attribute `app` to that
    module; the package's `app` is the typer app (as it was when this file imported it), so
    that assignment is kept aside and `app` is resolved by `__getattr__`."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "app" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


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
