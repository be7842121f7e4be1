"""How the daemon answers: JSON bodies, and every error as an HTTP status with a JSON body.

Every `ModelfetchError` maps to a status by its class (`STATUS_BY_KIND`, checked by a test to
cover the whole tree) and answers `{"error": {"kind", "message", ...}}`; `kind` is the error's
stable kind, so a client can raise the same class again. Anything unexpected is a logged 500 with
the same JSON shape, never an HTML page.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from modelfetch.core.errors import (
    ERROR_KINDS,
    HTTPStatusError,
    ModelfetchError,
    RateLimitedError,
    ServerBusyError,
    StoreUnavailableError,
)

__all__ = [
    "STATUS_BY_KIND",
    "HTTPError",
    "Handler",
    "dumps",
    "error_response",
    "errors_middleware",
    "json_response",
    "status_for",
]

log = logging.getLogger("modelfetch.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATUS_BY_KIND: dict[str, int] = {
    # The user's request cannot be satisfied as written.
    "spec": 400,
    "unsafe_path": 400,
    "destination": 400,  # a destination folder that cannot be written (checked before queuing)
    "unknown_item": 404,
    "conflict": 409,
    "error": 409,  # the root class: "not in this state" (e.g. forgetting a live download)
    # The daemon's own state directory is unusable.
    "state": 503,
    "state_locked": 503,
    "store_unavailable": 503,  # a shared queue's database, unreachable for now (Retry-After)
    # The Hub (or a URL's server) answered while planning a download.
    "not_found": 404,
    "auth_required": 403,  # not 401: that one means the daemon's own token is wrong
    "token_refused": 403,  # the Hub refused the Hub token (not the daemon's)
    "gated": 403,
    "forbidden": 403,
    "rate_limited": 429,
    "server_busy": 503,
    "http_status": 502,
    "transfer": 502,
    "network": 502,
    "connect_failed": 502,
    "hub_protocol": 502,
    "stalled": 504,
    "too_many_redirects": 502,
    "scheme": 502,
    "proxy": 502,  # the proxy refused us (407: credentials)
    "proxy_config": 400,  # a proxy URL we cannot use
    "integrity": 502,
    "disk_full": 507,
    "local_file": 500,  # the daemon's host refused a file operation (EACCES, EROFS, EIO...)
}
"""HTTP status for every error kind of the ModelfetchError tree."""


class HTTPError(Exception):
    """An error answer decided inside a handler, outside the ModelfetchError tree."""

    def __init__(self, status: int, kind: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.extra = extra


# One encoder for every body and event: `json.dumps` with any option set builds a new
# JSONEncoder per call, a quarter of the encoding of a small event (~1,500 per 200 downloads).
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def dumps(data: Any) -> str:
    return _ENCODER.encode(data)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=dumps)


def error_response(status: int, kind: str, message: str, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"kind": kind, "message": message}
    body.update({k: v for k, v in extra.items() if v is not None})
    response = json_response({"error": body}, status=status)
    if kind == "unauthorized":
        response.headers["WWW-Authenticate"] = 'Bearer realm="modelfetch"'
    retry_after = extra.get("retry_after")
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(0, round(retry_after)))
    return response


def status_for(exc: ModelfetchError) -> int:
    """The status of the nearest class of `exc` that has one (a new subclass inherits)."""
    for cls in type(exc).__mro__:
        kind = getattr(cls, "kind", None)
        if isinstance(kind, str) and ERROR_KINDS.get(kind) is cls and kind in STATUS_BY_KIND:
            return STATUS_BY_KIND[kind]
    return 409


def _modelfetch_error_response(exc: ModelfetchError) -> web.Response:
    extra: dict[str, Any] = {}
    if isinstance(exc, HTTPStatusError):
        extra["upstream_status"] = exc.status
        extra["error_code"] = exc.error_code
        if isinstance(exc, RateLimitedError | ServerBusyError):
            extra["retry_after"] = exc.retry_after
    elif isinstance(exc, StoreUnavailableError):
        extra["retry_after"] = exc.retry_after
    return error_response(status_for(exc), exc.kind, exc.message, **extra)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn whatever a handler raises into the JSON error answer."""
    try:
        return await handler(request)
    except HTTPError as exc:
        return error_response(exc.status, exc.kind, exc.message, **exc.extra)
    except ModelfetchError as exc:
        return _modelfetch_error_response(exc)
    except web.HTTPException as exc:  # aiohttp's own: no route, wrong method, body too large
        if exc.status < 400:
            raise
        kind = {404: "route_not_found", 405: "method_not_allowed"}.get(exc.status, "http")
        response = error_response(exc.status, kind, exc.reason)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(
            500, "internal", f"internal error ({type(exc).__name__}); see the daemon's log"
        )
