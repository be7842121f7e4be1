"""`modelfetch get` through a running daemon, on a pipe, without importing typer.

typer (with click under it) is the largest import of the command line, more than everything the
daemon path of `get` does on this side. So `python -m modelfetch` first tries this: a strict
parser for the plain shape of the command (`[--home H] [--debug] get [--dir D] [--jobs N]
[--input-file F] [SPEC ...]`), used only when stdout is not a terminal and the home has a
`daemon.json`. Anything else (another option, `--help`, a value typer would refuse, no daemon)
returns None before any side effect, and typer parses the command as always; so the options
mean what they mean there, and every message about a wrong one comes from typer.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["fast_get"]

_GLOBAL_VALUES = {"--home"}
_GLOBAL_FLAGS = {"--debug"}
_GET_VALUES = {"--dir": "dir", "-d": "dir", "--jobs": "jobs", "-j": "jobs"}
_GET_INPUT = {"--input-file", "-I"}


def _parse(argv: Sequence[str]) -> dict[str, object] | None:
    """The options of the plain shape, or None for anything else."""
    found: dict[str, object] = {"specs": []}
    args = list(argv)
    i = 0
    while i < len(args) and args[i] != "get":  # the global options
        name, value, step = _option(args, i)
        if name in _GLOBAL_FLAGS and value is None:
            found["debug"] = True
        elif name in _GLOBAL_VALUES and value is not None:
            found["home"] = value
        else:
            return None
        i += step
    if i == len(args):
        return None
    i += 1
    specs: list[str] = []
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-") or arg == "-":
            specs.append(arg)
            i += 1
            continue
        name, value, step = _option(args, i)
        if value is None or name in found:
            return None  # a flag we do not take here, or an option given twice
        if name in _GET_VALUES:
            found[_GET_VALUES[name]] = value
        elif name in _GET_INPUT:
            found["input"] = value
        else:
            return None
        found[name] = True  # seen
        i += step
    found["specs"] = specs
    jobs = found.get("jobs")
    if jobs is not None:
        if not isinstance(jobs, str) or not jobs.isascii() or not jobs.isdigit():
            return None
        if not 1 <= int(jobs) <= 10_000:
            return None  # typer's answer (an error, or what the config makes of it) applies
    return found


def _option(args: list[str], i: int) -> tuple[str, str | None, int]:
    """(name, its value or None, how many arguments it took)."""
    arg = args[i]
    if arg.startswith("--") and "=" in arg:
        name, value = arg.split("=", 1)
        return name, value, 1
    takes_value = arg in _GLOBAL_VALUES or arg in _GET_VALUES or arg in _GET_INPUT
    if takes_value:
        if i + 1 >= len(args):
            return arg, None, 1
        return arg, args[i + 1], 2
    return arg, None, 1


def fast_get(argv: Sequence[str]) -> int | None:
    """The exit status of `get` through the daemon, or None when this path does not apply."""
    if os.environ.get("FORCE_COLOR") or os.environ.get("TTY_COMPATIBLE"):
        return None
    if "get" not in argv or sys.stdout.isatty():
        return None
    parsed = _parse(argv)
    if parsed is None:
        return None
    home = parsed.get("home")
    where = Path(str(home)) if home is not None else _env_home()
    if where is not None and not (where.expanduser() / "daemon.json").exists():
        return None  # no daemon serves it: the usual path, and no config read twice
    from modelfetch.cli.errors import exit_status_of

    debug = bool(parsed.get("debug"))
    return exit_status_of(debug, lambda: _run(argv, parsed, debug))


def _env_home() -> Path | None:
    value = os.environ.get("MODELFETCH_HOME")
    return Path(value) if value else None  # else the config decides (default home)


def _run(argv: Sequence[str], parsed: dict[str, object], debug: bool) -> int | None:
    import shlex

    from modelfetch.cli.app_state import AppState
    from modelfetch.cli.daemon_get import run_get_via_daemon
    from modelfetch.cli.download_flags import DownloadFlags, settle_flags, token_of
    from modelfetch.cli.get_options import GetOptions
    from modelfetch.cli.specs import STDIN, gather_specs

    home = parsed.get("home")
    state = AppState(home=Path(str(home)) if home is not None else None, debug=debug)
    dir_value = parsed.get("dir")
    jobs = parsed.get("jobs")
    flags = DownloadFlags(
        dir=Path(str(dir_value)) if dir_value is not None else None,
        jobs=int(str(jobs)) if jobs is not None else None,
    )
    cfg, chosen, root, urls_dir = settle_flags(state, flags)
    if cfg.offline or not (cfg.home / "daemon.json").exists():
        return None  # nothing read from stdin yet: typer's path starts clean
    from modelfetch.cli.backends import refuse_unusable_network
    from modelfetch.remote_light import find_daemon

    client = find_daemon(cfg.home)
    if client is None:
        return None
    input_file = parsed.get("input")
    specs = [str(s) for s in parsed["specs"]]  # type: ignore[attr-defined]
    options = GetOptions(
        specs=gather_specs(specs, str(input_file) if input_file is not None else None, cfg),
        layout=chosen,
        jobs=cfg.max_active if cfg.sources.get("max_active") == "--jobs" else None,
        root=root,
        urls_dir=urls_dir,
        token=token_of(cfg),
    )
    refuse_unusable_network(cfg)  # (gather_specs has checked every spec: once is enough)
    hint = shlex.join(["modelfetch", *argv])
    if input_file == STDIN:
        hint += "   (with the same list on standard input)"
    code = run_get_via_daemon(cfg, options, rate=None, resume_hint=hint, debug=debug, client=client)
    if code is None and input_file == STDIN:
        # A daemon too old for a batch, found after the list was read: typer's path would
        # read standard input again and find it empty, so say so instead.
        from modelfetch.config import ConfigError

        raise ConfigError(
            "the running daemon is older than this modelfetch (no batch requests): restart "
            "it, or give the list as a file"
        )
    return code
