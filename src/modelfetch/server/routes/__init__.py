"""The daemon's route families, in the order they are registered and documented.

A family is a module with `OPERATIONS` (documented in the OpenAPI document) and `PLAIN_ROUTES`
(undocumented: the dashboard, the document itself). Adding one is a module plus a line here.
"""

from __future__ import annotations

from types import ModuleType

from aiohttp import web

from modelfetch.server.openapi import Operation
from modelfetch.server.responses import Handler
from modelfetch.server.routes import dashboard, downloads, events, limits, quants, queue, system

__all__ = ["FAMILIES", "OPERATIONS", "PLAIN_ROUTES"]

FAMILIES: tuple[ModuleType, ...] = (
    downloads,
    queue,
    limits,
    quants,
    system,
    events,
    dashboard,
)

OPERATIONS: list[tuple[Operation, Handler]] = [
    route for family in FAMILIES for route in family.OPERATIONS
]
"""Every documented route: the router and the OpenAPI document are both built from it."""

PLAIN_ROUTES: list[web.RouteDef] = [route for family in FAMILIES for route in family.PLAIN_ROUTES]
