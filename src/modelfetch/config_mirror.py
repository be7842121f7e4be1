"""The `[mirror]` table of `config.toml`: the defaults `serve --mirror` flags override.

[mirror]
enabled = true          # serve the Hub's read side (as --mirror)
host = "0.0.0.0"        # also on a listener of its own, open to the network (--mirror-host)
port = 8766             # that listener's port (--mirror-port)
cache_max = "500G"      # evict the least recently served files above this (--cache-max)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelfetch.core.format import parse_size

__all__ = ["MirrorFileSettings", "mirror_settings"]

_KEYS = frozenset({"enabled", "host", "port", "cache_max"})


@dataclass(frozen=True, slots=True)
class MirrorFileSettings:
    enabled: bool | None = None
    host: str | None = None
    port: int | None = None
    cache_max: int | None = None  # bytes


def mirror_settings(raw: object) -> MirrorFileSettings:
    """The table's values checked; a ValueError names the first bad one (`mirror.name: why`)."""
    if not isinstance(raw, Mapping):
        raise ValueError("mirror: must be a table ([mirror])")
    table: Mapping[str, Any] = raw
    for name in table:
        if name not in _KEYS:
            raise ValueError(f"mirror.{name}: unknown setting")
    values: dict[str, Any] = {}
    if "enabled" in table:
        if not isinstance(table["enabled"], bool):
            raise ValueError("mirror.enabled: must be true or false")
        values["enabled"] = table["enabled"]
    if "host" in table:
        if not isinstance(table["host"], str) or not table["host"].strip():
            raise ValueError("mirror.host: must be an address to listen on")
        values["host"] = table["host"].strip()
    if "port" in table:
        port = table["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError("mirror.port: must be a port number (0-65535)")
        values["port"] = port
    if "cache_max" in table:
        values["cache_max"] = cache_max_of(table["cache_max"], "mirror.cache_max")
    return MirrorFileSettings(**values)


def cache_max_of(value: object, name: str = "--cache-max") -> int:
    """A cache limit: a size as `parse_size` reads it ("500G"), or a whole number of bytes."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{name}: must be a size such as 500G")
    try:
        size = value if isinstance(value, int) else parse_size(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if size <= 0:
        raise ValueError(f"{name}: must be more than 0")
    return size
