"""`python -m modelfetch.demo` / `make demo`: the offline demo (`modelfetch demo`) without typer.

The demo itself is `modelfetch.cli.demo.run_demo`; this module only reads `--dir`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

from modelfetch.cli.demo import run_demo
from modelfetch.cli.errors import EXIT_INTERRUPTED

__all__ = ["main", "run_demo"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelfetch.demo",
        description="Download a generated model from a fake Hub on 127.0.0.1 (offline).",
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to put the files")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run_demo(args.dir))
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
