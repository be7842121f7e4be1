"""modelfetch: a download manager for large model files.

The public API is what this module exports; everything else is private by convention.

    async with DownloadManager() as manager:
        gid = await manager.add("unsloth/Qwen3-8B-GGUF:Q4_K_M")
        await manager.wait([gid])
"""

# First, so modules that import the version while the package initialises find it.
from modelfetch._version import __version__
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
from modelfetch.hub import HubConfig, hub_config_from_env
from modelfetch.layout import Layout
from modelfetch.manager import DownloadManager, ManagerSettings
from modelfetch.requests import FileRequest, GroupRequest
from modelfetch.views import FileView, GroupView

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
