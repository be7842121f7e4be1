"""The mirror's routes: mounted beside the daemon's API, or alone on a listener of their own.

`mount` adds the Hub's read side to the daemon's application at its own origin. Those routes
carry a *Hub* token in `Authorization` (the client's, for the upstream), so the daemon's own
token is not asked of them (`ServerConfig.open_routes`); the Host check still applies.

`public_app` is the same routes and nothing else, for `--mirror-host`: what that listener
answers is the Hub's read paths (GET/HEAD, and paths-info's POST, which reads), never the
control API or the dashboard. It is read-only by construction: anything else is 404 or 405.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from modelfetch.core.errors import ConflictError
from modelfetch.manager import DownloadManager
from modelfetch.mirror import api, resolve
from modelfetch.mirror.public import PublicRepos
from modelfetch.mirror.pull import Puller
from modelfetch.mirror.state import MIRROR, MirrorState
from modelfetch.mirror.stream import Serving
from modelfetch.mirror.upstream import Upstream

__all__ = ["ROUTE_PREFIX", "MirrorOptions", "make_state", "mount", "public_app"]

ROUTE_PREFIX = "hub-mirror:"
_REPO = "/api/models/{owner}/{name}"


@dataclass(frozen=True, slots=True)
class MirrorOptions:
    cache_dir: Path | None = None  # default: <home>/mirror
    branch_ttl: float = 30.0
    access_ttl: float = 60.0
    cache_max: int | None = None  # bytes; None: no limit


def make_state(manager: DownloadManager, options: MirrorOptions) -> MirrorState:
    if manager.shares_queue:  # streams what this process's transfers report: see docs/mirror.md
        raise ConflictError("the mirror serves a queue of this host's own, not a shared one")
    cache_dir = (options.cache_dir or manager.home / "mirror").expanduser().absolute()
    return MirrorState(
        manager=manager,
        upstream=Upstream(manager, branch_ttl=options.branch_ttl, access_ttl=options.access_ttl),
        puller=Puller(manager, cache_dir),
        public=PublicRepos(cache_dir / "public.json"),
        serving=Serving(),
        cache_max=options.cache_max,
    )


def _routes() -> list[tuple[str, str, Handler, str]]:
    return [
        ("GET", _REPO, api.model_info, "info"),
        ("GET", _REPO + "/revision/{rev}", api.model_info, "revision"),
        ("GET", _REPO + "/tree/{rev}", api.tree, "tree"),
        ("GET", _REPO + "/tree/{rev}/{path:.+}", api.tree, "tree-path"),
        ("POST", _REPO + "/paths-info/{rev}", api.paths_info, "paths-info"),
        ("GET", "/{owner}/{name}/resolve/{rev}/{path:.+}", resolve.resolve, "resolve"),
    ]


def _add_routes(app: web.Application) -> list[str]:
    names = []
    for method, path, handler, name in _routes():
        route_name = ROUTE_PREFIX + name
        if method == "GET":  # with HEAD, under the same (resource's) name
            app.router.add_get(path, handler, name=route_name)
        else:
            app.router.add_route(method, path, handler, name=route_name)
        names.append(route_name)
    return names


def mount(app: web.Application, state: MirrorState) -> list[str]:
    """Add the mirror's routes to `app`; the route names, for the daemon's open routes."""
    app[MIRROR] = state
    return _add_routes(app)


def public_app(state: MirrorState) -> web.Application:
    app = web.Application()
    app[MIRROR] = state
    _add_routes(app)
    return app
