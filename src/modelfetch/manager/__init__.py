"""The download manager: queue, transfers, durable state and events behind `DownloadManager`.

`coordinator.py` holds the class; each other module of the package does one part of its work
and says which in its first line. This module re-exports the names callers import, each loaded
when first asked for: a process that only needs `ManagerSettings` (a transfer's defaults) does
not load the coordinator, its store and its events (about 0.1 s of start-up here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelfetch._lazy import resolve

if TYPE_CHECKING:
    from modelfetch.manager.coordinator import DownloadManager
    from modelfetch.manager.settings import ManagerSettings, default_home

_HOMES = {
    "DownloadManager": "modelfetch.manager.coordinator",
    "ManagerSettings": "modelfetch.manager.settings",
    "default_home": "modelfetch.manager.settings",
}

__all__ = ["DownloadManager", "ManagerSettings", "default_home"]


def __getattr__(name: str) -> Any:
    return resolve(globals(), _HOMES, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
