"""Routes about the daemon itself: health, the OpenAPI document, orphaned partial files."""

from __future__ import annotations

import os

from aiohttp import web

from modelfetch.server.api_models import HealthResponse, PathsResponse
from modelfetch.server.openapi import Operation
from modelfetch.server.parsing import manager_of
from modelfetch.server.responses import Handler, json_response
from modelfetch.server.state import STATE

__all__ = ["OPERATIONS", "PLAIN_ROUTES", "daemon_version"]


def daemon_version() -> str:
    import modelfetch  # lazily: the package facade imports much of the engine

    return modelfetch.__version__


async def orphan_partials(request: web.Request) -> web.StreamResponse:
    paths = await manager_of(request).orphan_partials()
    return json_response({"paths": [str(p) for p in paths]})


async def remove_orphan_partials(request: web.Request) -> web.StreamResponse:
    paths = await manager_of(request).remove_orphan_partials()
    return json_response({"paths": [str(p) for p in paths]})


async def health(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    return json_response(
        {
            "status": "ok",
            "version": daemon_version(),
            "pid": os.getpid(),
            "home": str(state.manager.home),
            "started_at": state.config.started_at,
            "seq": state.manager.bus.last_seq,
        }
    )


async def openapi_json(request: web.Request) -> web.StreamResponse:
    return web.Response(body=request.app[STATE].openapi, content_type="application/json")


OPERATIONS: list[tuple[Operation, Handler]] = [
    (
        Operation(
            "GET",
            "/api/orphan-partials",
            "listOrphanPartials",
            "Partial files no download owns",
            PathsResponse,
        ),
        orphan_partials,
    ),
    (
        Operation(
            "DELETE",
            "/api/orphan-partials",
            "removeOrphanPartials",
            "Delete partial files no download owns",
            PathsResponse,
        ),
        remove_orphan_partials,
    ),
    (Operation("GET", "/api/health", "health", "The daemon is up", HealthResponse), health),
]

PLAIN_ROUTES: list[web.RouteDef] = [web.get("/api/openapi.json", openapi_json)]
