"""`python -m modelfetch ...` is the `modelfetch` command."""

import sys

from modelfetch.cli import main

if __name__ == "__main__":
    sys.exit(main())
