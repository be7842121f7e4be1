"""Routes of the bandwidth and connection limits: the daemon's and one download's."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from modelfetch.manager import DownloadManager
from modelfetch.server.api_models import (
    DownloadLimitsRequest,
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
]

PLAIN_ROUTES: list[web.RouteDef] = []
