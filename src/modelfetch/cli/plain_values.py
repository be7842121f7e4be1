"""Typer command and group classes whose parameters read plain values without pydantic.

Typer (0.29) checks every value of a parameter that is not a flag with a pydantic TypeAdapter;
importing pydantic and building the adapters is a third of what `ls` costs (0.2 s of
`get --dir D --jobs 16`). An option left out (None), a string or list of strings, a plain
decimal int within the option's bounds and a path (`--dir`, `--home`: no path checks asked for
beyond typer's default "readable if it exists") need no adapter, so they are answered here,
exactly as typer would. Any other value (an error among them, so its message is typer's own)
goes to typer's own `process_value`.

No private attribute is read or written: this uses typer's `cls=` hook for command classes,
click's `Parameter.process_value` and `Command.get_help_option`, and the declared type typer
keeps on each parameter (`type_descriptor`); a parameter without one is left to typer entirely.
tests/test_cli.py checks that ints and paths are answered exactly as typer answers them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

_DECIMAL = re.compile(r"0|[1-9][0-9]{0,17}")  # what any int parser reads the same way
_NOT_PLAIN = object()


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


def value_kind(param: Any) -> str | None:
    """ "str", "bool", "strs" (list[str]), "int", "path" or "other" for a typer parameter;
    None when typer keeps no declared type on it."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None:
        return None
    annotation: Any = getattr(descriptor, "annotation", None)
    info = getattr(descriptor, "parameter_info", None)
    if annotation is str:
        return "str"
    if annotation is bool:
        return "bool"
    if annotation == list[str]:
        return "strs"
    if annotation is int and _plain_int(info):
        return "int"
    if annotation is Path and _plain_path(info):
        return "path"
    return "other"


def plain_value(kind: str, param: Any, value: Any) -> Any:
    """What typer would make of `value`, or _NOT_PLAIN when only typer can tell."""
    if value is None:
        return () if param.multiple or param.nargs == -1 else None
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "bool" and isinstance(value, bool):
        return value
    if (
        kind == "strs"
        and isinstance(value, list | tuple)
        and all(isinstance(v, str) for v in value)
    ):
        return list(value)
    if kind == "int" and isinstance(value, str) and _DECIMAL.fullmatch(value):
        number = int(value)
        info = param.type_descriptor.parameter_info
        low, high = info.min, info.max
        if (low is None or number >= low) and (high is None or number <= high):
            return number
    if kind == "path" and isinstance(value, str) and value and "\0" not in value:
        try:
            os.stat(value)
        except OSError:
            return Path(value)  # need not exist: typer checks nothing more then
        if os.access(value, os.R_OK):
            return Path(value)
    return _NOT_PLAIN


def _process_value(param: Any, ctx: Any, value: Any, typers: Callable[..., Any]) -> Any:
    """Typer's `process_value` for a plain value without its coercion; anything else (and a
    missing required value, so the message is typer's) goes to `typers`."""
    plain = plain_value(param.plain_kind, param, value)
    if plain is _NOT_PLAIN or (param.required and param.value_is_missing(plain)):
        return typers(param, ctx, value)
    if param.callback is not None:
        plain = param.callback(ctx, param, plain)
    return plain


# (No shared mixin: a class with a second base could not take over a typer parameter in place.)


class PlainOption(TyperOption):
    """A typer option whose `process_value` answers plain values itself."""

    plain_kind: str

    def process_value(self, ctx: Any, value: Any) -> Any:
        return _process_value(self, ctx, value, TyperOption.process_value)


class PlainArgument(TyperArgument):
    """A typer argument whose `process_value` answers plain values itself."""

    plain_kind: str

    def process_value(self, ctx: Any, value: Any) -> Any:
        return _process_value(self, ctx, value, TyperArgument.process_value)


def _make_plain(params: Iterable[Any]) -> None:
    """Turn typer's options and arguments into PlainOption / PlainArgument in place (typer
    offers no hook for its parameter classes; the subclasses add no state, only the method)."""
    for param in params:
        kind = value_kind(param)
        if kind is None:
            continue
        if type(param) is TyperOption:
            param.__class__ = PlainOption
        elif type(param) is TyperArgument:
            param.__class__ = PlainArgument
        else:
            continue
        param.plain_kind = kind


class PlainCommand(TyperCommand):
    """A typer command whose plain parameter values skip typer's pydantic adapters."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _make_plain(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        # click builds the help option on first use; left out, its value is None, not False,
        # so typer would build an adapter for it on every run.
        option = super().get_help_option(ctx)
        _make_plain([option] if option is not None else [])
        return option


class PlainGroup(TyperGroup):
    """A typer group whose plain parameter values (the global options) skip pydantic."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _make_plain(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        # click builds the help option on first use; left out, its value is None, not False,
        # so typer would build an adapter for it on every run.
        option = super().get_help_option(ctx)
        _make_plain([option] if option is not None else [])
        return option
