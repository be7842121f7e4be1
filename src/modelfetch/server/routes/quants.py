"""The route that lists the quantizations a Hub repository offers."""

from __future__ import annotations

from aiohttp import web

from modelfetch.server.api_models import QuantList, QuantsQuery
from modelfetch.server.openapi import Operation
from modelfetch.server.parsing import manager_of, read_query
from modelfetch.server.responses import Handler, json_response

__all__ = ["OPERATIONS", "PLAIN_ROUTES"]


async def list_quants(request: web.Request) -> web.StreamResponse:
    query = read_query(request, QuantsQuery)
    groups = await manager_of(request).quants(query.repo, query.revision)
    return json_response(
        {
            "repo": query.repo,
            "revision": query.revision,
            "quants": [
                {
                    "name": g.name,
                    "base": g.quant.base,
                    "ud": g.quant.ud,
                    "paths": list(g.paths),
                    "total_size": g.total_size,
                    "shard_count": g.shard_count,
                    "complete": g.complete,
                    "missing": list(g.missing),
                    "extra": list(g.extra),
                    "description": g.describe(),
                }
                for g in groups
            ],
        }
    )


OPERATIONS: list[tuple[Operation, Handler]] = [
    (
        Operation(
            "GET",
            "/api/quants",
            "listQuants",
            "The quantizations a Hub repository offers",
            QuantList,
            query=QuantsQuery,
            errors=(400, 403, 404, 429, 502, 503, 504),
        ),
        list_quants,
    ),
]

PLAIN_ROUTES: list[web.RouteDef] = []
