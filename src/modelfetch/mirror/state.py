"""What the mirror's handlers share: the manager, the upstream, the puller, who reads what."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from modelfetch.manager import DownloadManager
from modelfetch.mirror.held import HeldIndex
from modelfetch.mirror.public import PublicRepos
from modelfetch.mirror.pull import Puller
from modelfetch.mirror.stream import Serving
from modelfetch.mirror.upstream import Upstream

__all__ = ["MIRROR", "MirrorState"]


CutKey = tuple[str, str, str, str]  # (client address, repo, commit, path)


@dataclass(eq=False)
class MirrorState:
    manager: DownloadManager
    upstream: Upstream
    puller: Puller
    public: PublicRepos
    serving: Serving
    # Clients whose stream of a file was cut (its bytes failed verification), until when: their
    # next ranged request of it gets the whole file (200), which huggingface_hub takes as "start
    # over" (it resumes a cut body with a bare Range, no If-Range, and would keep the bad prefix).
    cut_clients: dict[CutKey, float] = field(default_factory=dict)
    public_port: int | None = None  # the network listener's bound port, once it listens
    cache_max: int | None = None  # bytes (`--cache-max`); None: no limit
    # The held index as last read (`lookup.current_held`) and when (time.monotonic()): read at
    # most once a second, not once per request; dropped when a pull, a cut or an eviction
    # changes what is held.
    held: HeldIndex | None = None
    held_at: float = 0.0


MIRROR: web.AppKey[MirrorState] = web.AppKey("modelfetch_mirror", MirrorState)
