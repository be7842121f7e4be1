"""`python -m modelfetch ...` and the `modelfetch` script: the command line."""

import sys


def main() -> int:
    # `get` through a running daemon on a pipe runs without typer (cli/fast_get.py); anything
    # else, and that too when it does not apply, goes through the typer app.
    from modelfetch.cli.fast_get import fast_get

    code = fast_get(sys.argv[1:])
    if code is not None:
        return code
    from modelfetch.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(main())
