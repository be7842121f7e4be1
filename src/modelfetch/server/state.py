"""What every handler of one daemon application shares: the manager, config and open streams."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from modelfetch.bus import Subscription
from modelfetch.manager import DownloadManager
from modelfetch.server.security import ServerConfig

__all__ = ["STATE", "DaemonState", "OpenStream"]


@dataclass(eq=False)
class OpenStream:
    """One open event stream, so that shutdown can end it."""

    subscription: Subscription
    closing: bool = False

    def close(self) -> None:
        self.closing = True
        self.subscription.close()


@dataclass
class DaemonState:
    manager: DownloadManager
    config: ServerConfig
    static: dict[str, bytes]
    openapi: bytes
    streams: set[OpenStream] = field(default_factory=set)
    # The last snapshot frame sent to a (re)connecting client, with the seq it reflects and when
    # it was built: clients that connect within _SNAPSHOT_REUSE share one (50 dashboards opening
    # at once would otherwise build, encode and buffer 50 copies of the whole queue).
    snapshot_frame: tuple[int, float, bytes] | None = None


STATE: web.AppKey[DaemonState] = web.AppKey("modelfetch_state", DaemonState)
