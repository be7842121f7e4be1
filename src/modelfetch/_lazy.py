"""Names a package re-exports, each loaded when first asked for (PEP 562).

A package facade lists where each name lives (`homes`) and forwards its module `__getattr__`
here, so that a process that needs one light name does not import the heavy modules beside it
(transfer/__init__.py, manager/__init__.py). Like `_version.py`, any room may import this: it
imports nothing of the project.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def resolve(namespace: dict[str, Any], homes: Mapping[str, str], name: str) -> Any:
    """`name` from its home module, kept in the package's `namespace` (its globals) so later
    lookups are plain attribute reads; AttributeError for a name the package does not export."""
    home = homes.get(name)
    if home is None:
        raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    namespace[name] = value
    return value
