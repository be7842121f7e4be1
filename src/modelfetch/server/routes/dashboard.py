"""Routes of the web dashboard: its page and static files, with a strict CSP."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from modelfetch.server.openapi import Operation
from modelfetch.server.responses import Handler
from modelfetch.server.state import STATE

__all__ = ["OPERATIONS", "PLAIN_ROUTES", "load_static"]

_STATIC_FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def load_static() -> dict[str, bytes]:
    """The dashboard's files, read once when the application is built."""
    folder = resources.files("modelfetch.server").joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in _STATIC_FILES}


async def index(request: web.Request) -> web.StreamResponse:
    return _static_response(request, "index.html")


async def static_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in _STATIC_FILES or name == "index.html":
        raise web.HTTPNotFound(reason="no such file")
    return _static_response(request, name)


def _static_response(request: web.Request, name: str) -> web.StreamResponse:
    response = web.Response(
        body=request.app[STATE].static[name], content_type=_STATIC_FILES[name], charset="utf-8"
    )
    response.headers["Cache-Control"] = "no-cache"
    if name == "index.html":
        response.headers["Content-Security-Policy"] = _CSP
    return response


OPERATIONS: list[tuple[Operation, Handler]] = []

PLAIN_ROUTES: list[web.RouteDef] = [web.get("/", index), web.get("/static/{name}", static_file)]
