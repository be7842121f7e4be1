"""Routes of the bandwidth and connection limits: the daemon's, one download's, the fleet's."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from modelfetch.manager import DownloadManager
from modelfetch.server.api_models import (
    DownloadLimitsRequest,
    FleetLimitsRequest,
    FleetResponse,
    GroupViewModel,
    LimitsRequest,
    LimitsResponse,
)
from modelfetch.server.openapi import Operation
from modelfetch.server.parsing import ID_ERRORS, item_ref, manager_of, read_body, view_of
from modelfetch.server.responses import Handler, json_response

__all__ = ["OPERATIONS", "PLAIN_ROUTES"]


def _limits(manager: DownloadManager) -> dict[str, Any]:
    settings = manager.settings
    return {
        "max_active": settings.max_active,
        "rate_limit": settings.rate_limit or None,
        "max_connections": settings.max_connections,
        "max_connections_per_host": settings.max_connections_per_host,
        "connections_per_file": settings.connections_per_file,
    }


async def get_limits(request: web.Request) -> web.StreamResponse:
    return json_response(_limits(manager_of(request)))


async def put_limits(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, LimitsRequest)
    manager = manager_of(request)
    await manager.set_limits(**body.model_dump())
    return json_response(_limits(manager))


async def set_download_limits(request: web.Request) -> web.StreamResponse:
    ref = item_ref(request)
    body = await read_body(request, DownloadLimitsRequest)
    manager = manager_of(request)
    await view_of(manager, ref)  # a 404 before anything changes
    if "rate_limit" in body.model_fields_set:
        await manager.set_rate_limit(ref, body.rate_limit)
    if "connections" in body.model_fields_set:
        await manager.set_connections(ref, body.connections)
    return json_response((await manager.group_view(ref)).to_dict())


async def get_fleet(request: web.Request) -> web.StreamResponse:
    return json_response((await manager_of(request).fleet()).to_dict())


async def put_fleet(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, FleetLimitsRequest)
    caps = {name: getattr(body, name) for name in body.model_fields_set}
    view = await manager_of(request).set_fleet_limits(**caps)
    return json_response(view.to_dict())


_NOT_SHARED = (409,)  # the daemon's queue is private to its host (no postgresql:// store)

OPERATIONS: list[tuple[Operation, Handler]] = [
    (
        Operation(
            "PUT",
            "/api/downloads/{id}/limits",
            "setDownloadLimits",
            "Cap one download's bandwidth or connections (a file id: its download)",
            GroupViewModel,
            body=DownloadLimitsRequest,
            errors=ID_ERRORS,
        ),
        set_download_limits,
    ),
    (Operation("GET", "/api/limits", "getLimits", "Current limits", LimitsResponse), get_limits),
    (
        Operation(
            "PUT",
            "/api/limits",
            "setLimits",
            "Change limits (omitted fields stay)",
            LimitsResponse,
            body=LimitsRequest,
        ),
        put_limits,
    ),
    (
        Operation(
            "GET",
            "/api/fleet",
            "getFleet",
            "The live workers of the shared queue and the caps over all of them",
            FleetResponse,
            errors=_NOT_SHARED,
        ),
        get_fleet,
    ),
    (
        Operation(
            "PUT",
            "/api/fleet",
            "setFleetLimits",
            "Change the caps over every worker (omitted fields stay, null removes)",
            FleetResponse,
            body=FleetLimitsRequest,
            errors=_NOT_SHARED,
        ),
        put_fleet,
    ),
]

PLAIN_ROUTES: list[web.RouteDef] = []
