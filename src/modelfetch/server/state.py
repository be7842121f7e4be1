"""What every handler of one daemon application shares: the manager, config and open streams."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from modelfetch.bus import Subscription
from modelfetch.manager import DownloadManager
from modelfetch.server.pages import EventFrames, PageCache
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
    # The download list's pages read lately, shared by the SSE snapshots and the listing
    # (50 dashboards opening at once would otherwise read, encode and buffer 50 copies).
    pages: PageCache = field(init=False)
    # Each event's SSE message, encoded once for every open stream.
    frames: EventFrames = field(default_factory=EventFrames)

    def __post_init__(self) -> None:
        self.pages = PageCache(self.manager)


STATE: web.AppKey[DaemonState] = web.AppKey("modelfetch_state", DaemonState)
