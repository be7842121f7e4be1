"""The rich consoles commands print to: stdout for results, stderr for errors and notes."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


def stderr_console() -> Console:
    from rich.console import Console

    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


def stdout_console() -> Console:
    from rich.console import Console

    probe = Console(file=sys.stdout)
    # Without a terminal, tables keep their rows on one line (scripts can use --json).
    return Console(file=sys.stdout, highlight=False, width=None if probe.is_terminal else 200)
