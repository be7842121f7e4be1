"""The specs a download command is given: its arguments and `--input-file` lists, each checked."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from modelfetch.core.errors import SpecError

if TYPE_CHECKING:
    from modelfetch.config import Config

STDIN = "-"


def check_specs(specs: Sequence[str], cfg: Config) -> None:
    """Refuse a malformed spec before anything is opened or enqueued."""
    from modelfetch.core.spec import parse_spec

    for spec in specs:
        parse_spec(spec, default_endpoint=cfg.hf_endpoint)


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
    check_specs(gathered, cfg)
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
