"""The backend a command talks to: the daemon that owns the home, else a manager in this process."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelfetch.backend import Backend
    from modelfetch.config import Config
    from modelfetch.readonly import ReadOnlyBackend


def is_local(backend: object) -> bool:
    """True for a DownloadManager in this process, False for the daemon's client."""
    from modelfetch.manager import DownloadManager

    return isinstance(backend, DownloadManager)


@contextlib.asynccontextmanager
async def command_backend(cfg: Config, *, workers: bool = True) -> AsyncIterator[Backend]:
    from modelfetch.backend import open_backend

    if workers:
        refuse_offline(cfg, "work the queue (it downloads)")
        refuse_unusable_network(cfg)

    # The manager's arguments are built only when no daemon serves this home.
    async with open_backend(
        home=cfg.home, lazy_kwargs=lambda: cfg.manager_kwargs(workers=workers)
    ) as backend:
        yield backend


def refuse_unusable_network(cfg: Config) -> None:
    """A command that downloads cannot start without the proxy the user set (a malformed
    HTTPS_PROXY, say): one line naming it, before anything is opened. Commands that stay on
    this machine (`ls`, `status`, `pause`) are not refused."""
    from modelfetch.config import ConfigError
    from modelfetch.core.errors import ProxyConfigError

    try:
        cfg.network.usable()
    except ProxyConfigError as exc:
        raise ConfigError(exc.message) from None


def refuse_offline(cfg: Config, what: str) -> None:
    """Offline (HF_HUB_OFFLINE=1, --offline) no request leaves this machine: a command that
    would make one is refused in one line, before anything is opened."""
    if cfg.offline:
        from modelfetch.config import ConfigError

        where = cfg.sources.get("offline", "HF_HUB_OFFLINE")
        raise ConfigError(
            f"offline ({where}): cannot {what}; `modelfetch get` serves what is already on disk"
        )


@contextlib.asynccontextmanager
async def command_viewer(cfg: Config) -> AsyncIterator[Backend | ReadOnlyBackend]:
    """`command_backend` (without workers) for `ls` and `status`: when another process works
    the queue (and no daemon answers), its last saved state, read-only, after one line on stderr
    saying so. That line goes to stderr for `--json` too, so stdout stays one JSON document."""
    from modelfetch.backend import open_viewer

    async with open_viewer(
        home=cfg.home, lazy_kwargs=lambda: cfg.manager_kwargs(workers=False)
    ) as viewer:
        notice = getattr(viewer, "read_only_notice", None)
        if isinstance(notice, str):
            print(f"note: {notice}", file=sys.stderr, flush=True)
        yield viewer
