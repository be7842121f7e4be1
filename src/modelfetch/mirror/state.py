"""What the mirror's handlers share: the manager, the upstream, the puller, who reads what."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from modelfetch.manager import DownloadManager
from modelfetch.mirror.public import PublicRepos
from modelfetch.mirror.pull import Puller
from modelfetch.mirror.stream import Serving
from modelfetch.mirror.upstream import Upstream

__all__ = ["MIRROR", "MirrorState"]


@dataclass(eq=False)
class MirrorState:
    manager: DownloadManager
    upstream: Upstream
    puller: Puller
    public: PublicRepos
    serving: Serving


MIRROR: web.AppKey[MirrorState] = web.AppKey("modelfetch_mirror", MirrorState)
