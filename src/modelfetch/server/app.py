"""The daemon's aiohttp application: the route families, middlewares and shutdown wired together.

Every documented route is declared once in `routes.OPERATIONS`; the router and the OpenAPI
document are both built from it. Handlers are thin: parse and validate, call the manager, write
its views as JSON (`responses.py` maps errors, `security.py` checks every request first).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from aiohttp import web

from modelfetch.manager import DownloadManager
from modelfetch.server.openapi import build_openapi
from modelfetch.server.responses import errors_middleware
from modelfetch.server.routes import OPERATIONS, PLAIN_ROUTES
from modelfetch.server.routes.dashboard import load_static
from modelfetch.server.routes.events import close_streams
from modelfetch.server.routes.system import daemon_version
from modelfetch.server.security import ServerConfig, security_headers, security_middleware
from modelfetch.server.state import STATE, DaemonState

__all__ = ["create_app"]


def create_app(
    manager: DownloadManager,
    *,
    token: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    keepalive: float = 15.0,
    allowed_hosts: Iterable[str] = (),
) -> web.Application:
    """The application for `manager`. `port` is the port clients use in their Host header;
    set `app[STATE].config.port` once the real port is known (port 0)."""
    config = ServerConfig(
        host=host,
        port=port,
        token=token,
        keepalive=keepalive,
        allowed_hosts=frozenset(h.strip().lower() for h in allowed_hosts if h.strip()),
    )
    document = build_openapi((op for op, _ in OPERATIONS), version=daemon_version())
    app = web.Application(middlewares=[errors_middleware, security_middleware(config)])
    app[STATE] = DaemonState(
        manager=manager,
        config=config,
        static=load_static(),
        openapi=json.dumps(document, indent=1).encode(),
    )
    for op, handler in OPERATIONS:
        app.router.add_route(op.method, op.path, handler)
    app.router.add_routes(PLAIN_ROUTES)
    app.on_response_prepare.append(security_headers)
    app.on_shutdown.append(close_streams)
    return app
