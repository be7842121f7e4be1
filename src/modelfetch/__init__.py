"""modelfetch: a download manager for large model files.

The public API is what this module exports; everything else is private by convention.

    async with DownloadManager() as manager:
        gid = await manager.add("unsloth/Qwen3-8B-GGUF:Q4_K_M")
        await manager.wait([gid])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# First, so modules that import the version while the package initialises find it.
from modelfetch._version import __version__

# The facade resolves its names on first use (PEP 562): importing any submodule initialises this
# package, and a command that only lists the queue or fetches plain URLs should not pay for
# aiohttp, the Hub client and the manager (about 0.25 s of a 0.35 s start) before it needs them.
_EXPORTS: dict[str, str] = {
    "AuthRequiredError": "modelfetch.core.errors",
    "ConflictError": "modelfetch.core.errors",
    "DiskFullError": "modelfetch.core.errors",
    "ForbiddenError": "modelfetch.core.errors",
    "GatedError": "modelfetch.core.errors",
    "HTTPStatusError": "modelfetch.core.errors",
    "IntegrityError": "modelfetch.core.errors",
    "ModelfetchError": "modelfetch.core.errors",
    "NetworkError": "modelfetch.core.errors",
    "NotFoundError": "modelfetch.core.errors",
    "RateLimitedError": "modelfetch.core.errors",
    "ServerBusyError": "modelfetch.core.errors",
    "SpecError": "modelfetch.core.errors",
    "StalledError": "modelfetch.core.errors",
    "StateError": "modelfetch.core.errors",
    "StateLockedError": "modelfetch.core.errors",
    "TransferError": "modelfetch.core.errors",
    "UnknownItemError": "modelfetch.core.errors",
    "UnsafePathError": "modelfetch.core.errors",
    "FileStatus": "modelfetch.core.models",
    "GroupStatus": "modelfetch.core.models",
    "ItemRef": "modelfetch.core.models",
    "RetryPolicy": "modelfetch.core.policy",
    "HubConfig": "modelfetch.hubconfig",
    "hub_config_from_env": "modelfetch.hubconfig",
    "Layout": "modelfetch.layout",
    "DownloadManager": "modelfetch.manager",
    "ManagerSettings": "modelfetch.manager",
    "FileRequest": "modelfetch.requests",
    "GroupRequest": "modelfetch.requests",
    "FileView": "modelfetch.views",
    "GroupView": "modelfetch.views",
}

if TYPE_CHECKING:
    from modelfetch.core import events
    from modelfetch.core.errors import (
        AuthRequiredError,
        ConflictError,
        DiskFullError,
        ForbiddenError,
        GatedError,
        HTTPStatusError,
        IntegrityError,
        ModelfetchError,
        NetworkError,
        NotFoundError,
        RateLimitedError,
        ServerBusyError,
        SpecError,
        StalledError,
        StateError,
        StateLockedError,
        TransferError,
        UnknownItemError,
        UnsafePathError,
    )
    from modelfetch.core.models import FileStatus, GroupStatus, ItemRef
    from modelfetch.core.policy import RetryPolicy
    from modelfetch.hubconfig import HubConfig, hub_config_from_env
    from modelfetch.layout import Layout
    from modelfetch.manager import DownloadManager, ManagerSettings
    from modelfetch.requests import FileRequest, GroupRequest
    from modelfetch.views import FileView, GroupView


def __getattr__(name: str) -> Any:
    import importlib

    if name == "events":
        value: Any = importlib.import_module("modelfetch.core.events")
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'modelfetch' has no attribute {name!r}")
    globals()[name] = value  # resolved once; later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "AuthRequiredError",
    "ConflictError",
    "DiskFullError",
    "DownloadManager",
    "FileRequest",
    "FileStatus",
    "FileView",
    "ForbiddenError",
    "GatedError",
    "GroupRequest",
    "GroupStatus",
    "GroupView",
    "HTTPStatusError",
    "HubConfig",
    "IntegrityError",
    "ItemRef",
    "Layout",
    "ManagerSettings",
    "ModelfetchError",
    "NetworkError",
    "NotFoundError",
    "RateLimitedError",
    "RetryPolicy",
    "ServerBusyError",
    "SpecError",
    "StalledError",
    "StateError",
    "StateLockedError",
    "TransferError",
    "UnknownItemError",
    "UnsafePathError",
    "__version__",
    "events",
    "hub_config_from_env",
]
