"""The daemon's aiohttp application: the JSON API, the event stream and the dashboard.

Every route is declared once in `OPERATIONS`; the router and the OpenAPI document are both built
from it. Handlers are thin: parse and validate, call the manager, write its views as JSON.

Errors: every `ModelfetchError` maps to a status by its class (`STATUS_BY_KIND`, checked by a test
to cover the whole tree) and answers `{"error": {"kind", "message", ...}}`; `kind` is the
error's stable kind, so a client can raise the same class again. Anything unexpected is a logged
500 with the same JSON shape, never an HTML page.

Security (see `_security`): the Host header must name the daemon (DNS rebinding), a token is
checked on every request when one is configured, and POST/PUT need a JSON body so that a form or
a `no-cors` fetch from another site is refused before it does anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import time
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from pydantic import BaseModel, ValidationError

from modelfetch.bus import Subscription
from modelfetch.core import events as ev
from modelfetch.core.errors import (
    ERROR_KINDS,
    HTTPStatusError,
    ModelfetchError,
    RateLimitedError,
    ServerBusyError,
    SpecError,
    UnknownItemError,
)
from modelfetch.core.models import ItemRef
from modelfetch.core.spec import ACCEPTED_FORMS
from modelfetch.manager import DownloadManager
from modelfetch.server.api_models import (
    ActionRequest,
    AddRequest,
    DownloadLimitsRequest,
    DownloadList,
    ForgottenResponse,
    GroupViewModel,
    HealthResponse,
    LimitsRequest,
    LimitsResponse,
    ListQuery,
    MoveRequest,
    OkResponse,
    PathsResponse,
    PriorityRequest,
    QuantList,
    QuantsQuery,
)
from modelfetch.server.openapi import Operation, build_openapi
from modelfetch.views import GroupView

__all__ = [
    "LOOPBACK_NAMES",
    "OPERATIONS",
    "STATUS_BY_KIND",
    "ServerConfig",
    "create_app",
    "is_loopback",
]

log = logging.getLogger("modelfetch.server")

STATUS_BY_KIND: dict[str, int] = {
    # The user's request cannot be satisfied as written.
    "spec": 400,
    "unsafe_path": 400,
    "unknown_item": 404,
    "conflict": 409,
    "error": 409,  # the root class: "not in this state" (e.g. forgetting a live download)
    # The daemon's own state directory is unusable.
    "state": 503,
    "state_locked": 503,
    # The Hub (or a URL's server) answered while planning a download.
    "not_found": 404,
    "auth_required": 403,  # not 401: that one means the daemon's own token is wrong
    "gated": 403,
    "forbidden": 403,
    "rate_limited": 429,
    "server_busy": 503,
    "http_status": 502,
    "transfer": 502,
    "network": 502,
    "hub_protocol": 502,
    "stalled": 504,
    "too_many_redirects": 502,
    "scheme": 502,
    "integrity": 502,
    "disk_full": 507,
}
"""HTTP status for every error kind of the ModelfetchError tree."""

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
_STATIC_FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_JSON_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_SSE_WRITE_TIMEOUT = 30.0
_SSE_BUFFER = 1024

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _version() -> str:
    import modelfetch  # lazily: the package facade imports much of the engine

    return modelfetch.__version__


def is_loopback(host: str) -> bool:
    """True for a host name or address that only this machine can reach."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass
class ServerConfig:
    """What the security checks and the health endpoint need to know about this daemon."""

    host: str = "127.0.0.1"
    port: int = 0  # the bound port, set once the site listens
    token: str | None = None
    keepalive: float = 15.0
    allowed_hosts: frozenset[str] = frozenset()
    started_at: float = field(default_factory=time.time)

    @property
    def cookie_name(self) -> str:
        # Cookies ignore ports: name it per port so two daemons on one host do not clash.
        return f"modelfetch_token_{self.port}"

    def host_names(self) -> frozenset[str]:
        """The names a Host header may use (ports are checked separately)."""
        bind = self.host.strip().strip("[]").lower()
        names = set(self.allowed_hosts)
        if is_loopback(bind):
            names |= LOOPBACK_NAMES | {bind}
        elif bind in _WILDCARD_HOSTS:
            names |= LOOPBACK_NAMES | {socket.gethostname().lower(), socket.getfqdn().lower()}
        else:
            names.add(bind)
        return frozenset(n.rstrip(".") for n in names)

    def host_allowed(self, header: str | None) -> bool:
        if not header:
            return False
        parsed = _split_host(header)
        if parsed is None:
            return False
        name, port = parsed
        if (port or 80) != self.port:
            return False
        if name in self.host_names():
            return True
        # A wildcard bind is reached by any of the machine's addresses; an IP literal cannot
        # be a rebinding attack (that needs a DNS name the attacker controls).
        return self.host.strip().strip("[]") in _WILDCARD_HOSTS and _is_ip_literal(name)


def _split_host(value: str) -> tuple[str, int | None] | None:
    """`name[:port]` or `[v6]:port` from a Host header; None when malformed."""
    text = value.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            return None
        name, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:]
    else:
        if text.count(":") > 1:
            return None
        name, _, port_text = text.partition(":")
    if port_text and not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        return None
    return name.rstrip("."), int(port_text) if port_text else None


@dataclass(eq=False)
class _Stream:
    """One open event stream, so that shutdown can end it."""

    subscription: Subscription
    closing: bool = False

    def close(self) -> None:
        self.closing = True
        self.subscription.close()


@dataclass
class DaemonState:
    manager: DownloadManager
    config: ServerConfig
    static: dict[str, bytes]
    openapi: bytes
    streams: set[_Stream] = field(default_factory=set)
    # The last snapshot frame sent to a (re)connecting client, with the seq it reflects and when
    # it was built: clients that connect within _SNAPSHOT_REUSE share one (50 dashboards opening
    # at once would otherwise build, encode and buffer 50 copies of the whole queue).
    snapshot_frame: tuple[int, float, bytes] | None = None


STATE: web.AppKey[DaemonState] = web.AppKey("modelfetch_state", DaemonState)


class _HTTPError(Exception):
    """An error answer decided inside a handler, outside the ModelfetchError tree."""

    def __init__(self, status: int, kind: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.extra = extra


# ------------------------------------------------------------------------------ responses


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


def error_response(status: int, kind: str, message: str, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"kind": kind, "message": message}
    body.update({k: v for k, v in extra.items() if v is not None})
    response = _json({"error": body}, status=status)
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
    return error_response(status_for(exc), exc.kind, exc.message, **extra)


# ----------------------------------------------------------------------------- middlewares


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _HTTPError as exc:
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


def _presented_tokens(request: web.Request, config: ServerConfig) -> Iterable[str]:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        yield value.strip()
    for value in request.query.getall("token", []):
        yield value
    cookie = request.cookies.get(config.cookie_name)
    if cookie:
        yield cookie


def _token_ok(request: web.Request, config: ServerConfig) -> bool:
    assert config.token is not None
    expected = config.token.encode()
    return any(
        hmac.compare_digest(value.encode(), expected)
        for value in _presented_tokens(request, config)
    )


@web.middleware
async def _security(request: web.Request, handler: Handler) -> web.StreamResponse:
    config = request.app[STATE].config
    if not config.host_allowed(request.headers.get("Host")):
        return error_response(
            403,
            "forbidden_host",
            "this daemon does not answer to that Host header (see --host / allowed hosts)",
        )
    if config.token is not None:
        if not _token_ok(request, config):
            return error_response(
                401,
                "unauthorized",
                "a token is required: send Authorization: Bearer <token>, or open the "
                "dashboard once as /?token=<token>",
            )
        if request.method == "GET" and request.path == "/" and "token" in request.query:
            # Trade the token in the address bar for a cookie the page's own requests
            # (fetch, EventSource) carry, so it does not stay in history or screenshots.
            redirect = web.Response(status=303, headers={"Location": "/"})
            redirect.set_cookie(
                config.cookie_name, config.token, httponly=True, samesite="Strict", path="/"
            )
            return redirect
    if request.method in _JSON_BODY_METHODS and request.content_type != "application/json":
        return error_response(
            415,
            "unsupported_media_type",
            f"{request.method} needs Content-Type: application/json (an empty body is {{}})",
        )
    if (
        request.method == "DELETE"
        and request.headers.get("Content-Type") is not None
        and request.content_type != "application/json"
    ):
        return error_response(415, "unsupported_media_type", "a DELETE body, if any, must be JSON")
    return await handler(request)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    headers.setdefault("Cache-Control", "no-store")


class _AccessLogger(AbstractAccessLogger):
    """Method, path (never the query string: it may hold the token), status and time."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.debug(
            "%s %s -> %s (%.1f ms)", request.method, request.path, response.status, time * 1000
        )


# ------------------------------------------------------------------------------ parsing


def _validation_error(exc: ValidationError, where: str) -> _HTTPError:
    details = [
        {"loc": [where, *e["loc"]], "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    first = details[0]
    message = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    if len(details) > 1:
        message += f" (and {len(details) - 1} more)"
    return _HTTPError(422, "invalid", message, details=details)


async def _body(request: web.Request, model: type[M], *, required: bool = True) -> M:
    """The JSON body as `model`; an absent body is `{}` where the body is optional."""
    raw = await request.read()
    data: Any = {}
    if raw or required:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise _HTTPError(422, "invalid", "the body is not valid JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, "body") from None


def _query(request: web.Request, model: type[M]) -> M:
    data: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        values = request.query.getall(name, [])
        if not values:
            continue
        if _is_list(info.annotation):
            data[name] = [part.strip() for v in values for part in v.split(",")]
        else:
            data[name] = values[-1]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, "query") from None


def _is_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) is list:
        return True
    return any(_is_list(arg) for arg in typing.get_args(annotation))


_MAX_ID = (1 << 63) - 1  # SQLite's integers: a larger id cannot name anything


def _ref(request: web.Request) -> ItemRef:
    ref = ItemRef.parse(request.match_info["id"])
    if ref.group_id > _MAX_ID or (ref.index or 0) > _MAX_ID:
        raise UnknownItemError(f"no download with id {ref}")
    return ref


def _manager(request: web.Request) -> DownloadManager:
    return request.app[STATE].manager


async def _view(manager: DownloadManager, ref: ItemRef) -> GroupView:
    view = await manager.group_view(ref)
    if ref.index is not None and not any(f.ref == str(ref) for f in view.files):
        raise UnknownItemError(f"download {ref.group_id} has no file {ref.index}")
    return view


# ------------------------------------------------------------------------------ handlers


async def list_downloads(request: web.Request) -> web.StreamResponse:
    query = _query(request, ListQuery)
    manager = _manager(request)
    seq = manager.bus.last_seq
    views = await manager.snapshot()
    if query.status:
        wanted = set(query.status)
        views = [v for v in views if v.status in wanted]
    if query.q:
        needle = query.q.casefold()
        views = [
            v
            for v in views
            if needle in v.name.casefold()
            or needle in v.spec.casefold()
            or any(needle in f.name.casefold() for f in v.files)
        ]
    return _json({"seq": seq, "downloads": [v.to_dict() for v in views]})


async def get_download(request: web.Request) -> web.StreamResponse:
    return _json((await _view(_manager(request), _ref(request))).to_dict())


async def add_download(request: web.Request) -> web.StreamResponse:
    body = await _body(request, AddRequest)
    manager = _manager(request)
    started = time.time()
    try:
        gid = await manager.add(
            body.spec,
            quant=body.quant,
            revision=body.revision,
            include=body.include,
            layout=body.layout,
            models_dir=_path(body.models_dir),
            dest_dir=_path(body.dest_dir),
            priority=body.priority,
        )
    except SpecError as exc:
        raise _HTTPError(400, exc.kind, exc.message, accepted_forms=ACCEPTED_FORMS) from None
    view = await manager.group_view(gid)
    # Asking again for something already queued returns it: 200, not 201.
    return _json(view.to_dict(), status=201 if view.created_at >= started else 200)


def _path(text: str | None) -> Path | None:
    return Path(text) if text is not None else None


def _action(name: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        ref = _ref(request)
        await _body(request, ActionRequest, required=False)
        manager = _manager(request)
        method: Callable[[ItemRef], Awaitable[None]] = getattr(manager, name)
        await method(ref)
        return _json((await manager.group_view(ref)).to_dict())

    handler.__name__ = f"{name}_download"
    return handler


async def move_download(request: web.Request) -> web.StreamResponse:
    ref = _ref(request)
    body = await _body(request, MoveRequest)
    manager = _manager(request)
    await manager.move(ref, body.position)  # unknown -> 404, finished -> ConflictError (409)
    return _json((await manager.group_view(ref)).to_dict())


async def set_priority(request: web.Request) -> web.StreamResponse:
    ref = _ref(request)
    body = await _body(request, PriorityRequest)
    manager = _manager(request)
    await manager.set_priority(
        ref, body.priority
    )  # unknown -> 404, finished -> ConflictError (409)
    return _json((await manager.group_view(ref)).to_dict())


async def forget_download(request: web.Request) -> web.StreamResponse:
    ref = _ref(request)
    if ref.index is not None:
        raise _HTTPError(
            400, "spec", f"forget takes a download id ({ref.group_id}), not one of its files"
        )
    await _manager(request).forget(ref)
    return web.Response(status=204)


async def forget_finished(request: web.Request) -> web.StreamResponse:
    await _body(request, ActionRequest, required=False)
    return _json({"forgotten": await _manager(request).forget_finished()})


async def pause_all(request: web.Request) -> web.StreamResponse:
    await _body(request, ActionRequest, required=False)
    await _manager(request).pause_all()
    return _json({"ok": True})


async def resume_all(request: web.Request) -> web.StreamResponse:
    await _body(request, ActionRequest, required=False)
    await _manager(request).resume_all()
    return _json({"ok": True})


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
    return _json(_limits(_manager(request)))


async def put_limits(request: web.Request) -> web.StreamResponse:
    body = await _body(request, LimitsRequest)
    manager = _manager(request)
    await manager.set_limits(**body.model_dump())
    return _json(_limits(manager))


async def set_download_limits(request: web.Request) -> web.StreamResponse:
    ref = _ref(request)
    body = await _body(request, DownloadLimitsRequest)
    manager = _manager(request)
    await _view(manager, ref)  # a 404 before anything changes
    if "rate_limit" in body.model_fields_set:
        await manager.set_rate_limit(ref, body.rate_limit)
    if "connections" in body.model_fields_set:
        await manager.set_connections(ref, body.connections)
    return _json((await manager.group_view(ref)).to_dict())


async def list_quants(request: web.Request) -> web.StreamResponse:
    query = _query(request, QuantsQuery)
    groups = await _manager(request).quants(query.repo, query.revision)
    return _json(
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


async def orphan_partials(request: web.Request) -> web.StreamResponse:
    paths = await _manager(request).orphan_partials()
    return _json({"paths": [str(p) for p in paths]})


async def remove_orphan_partials(request: web.Request) -> web.StreamResponse:
    paths = await _manager(request).remove_orphan_partials()
    return _json({"paths": [str(p) for p in paths]})


async def health(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    return _json(
        {
            "status": "ok",
            "version": _version(),
            "pid": os.getpid(),
            "home": str(state.manager.home),
            "started_at": state.config.started_at,
            "seq": state.manager.bus.last_seq,
        }
    )


async def openapi_json(request: web.Request) -> web.StreamResponse:
    return web.Response(body=request.app[STATE].openapi, content_type="application/json")


# --------------------------------------------------------------------------- event stream


def sse_frame(event: ev.Event) -> bytes:
    """One SSE message: `id:` the seq, `event:` the type, `data:` the JSON form (one line)."""
    data = _dumps(ev.to_dict(event))
    return f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n".encode()


def _last_event_id(request: web.Request) -> int | None:
    """The seq to resume after: `Last-Event-ID` (sent by EventSource on reconnect) or ?since=.
    An unreadable id is treated as none: the client gets a fresh snapshot."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None:
        raw = request.query.get("since")
    if raw is None or not raw.strip().isascii() or not raw.strip().isdigit():
        return None
    return int(raw.strip())


async def _snapshot_event(manager: DownloadManager) -> ev.Snapshot:
    # The snapshot's seq is the last event it already reflects: the client resumes after it.
    seq = manager.bus.last_seq
    items = [view.to_dict() for view in await manager.snapshot()]
    return ev.Snapshot(items=items, seq=seq, ts=time.time())


_SNAPSHOT_REUSE = 1.0  # seconds a snapshot frame may be shared by connecting clients
_PROGRESS_EVENTS = (ev.FileProgress, ev.GroupProgress)


async def _shared_snapshot(state: DaemonState) -> tuple[int, bytes]:
    """A snapshot frame and the seq it reflects, built at most once per _SNAPSHOT_REUSE while the
    bus still holds every event after it (the client replays those, so nothing is lost)."""
    bus = state.manager.bus
    cached = state.snapshot_frame
    now = time.monotonic()
    if cached is not None and now - cached[1] < _SNAPSHOT_REUSE:
        with contextlib.suppress(ValueError):
            since = bus.history_since(cached[0])
            # Shared only while every status in it is still current: what happened since may
            # be progress (replayed to the client) but nothing that changes a state or a place,
            # so a client that decides from the snapshot alone (RemoteManager.wait) is right.
            if since is not None and all(isinstance(e, _PROGRESS_EVENTS) for e in since):
                return cached[0], cached[2]
    event = await _snapshot_event(state.manager)
    frame = sse_frame(event)
    state.snapshot_frame = (event.seq, now, frame)
    return event.seq, frame


class _ClientGone(Exception):
    pass


async def events(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    manager = state.manager
    bus = manager.bus
    since = _last_event_id(request)
    if bus.closed:
        raise _HTTPError(503, "unavailable", "the daemon is shutting down")
    replayable = since is not None
    if since is not None:
        try:
            replayable = bus.history_since(since) is not None
        except ValueError:  # a seq from an earlier run of the daemon
            replayable = False
    snapshot: bytes | None = None
    if not replayable:
        # A (possibly shared) snapshot, then every event after the seq it reflects: replayed
        # from the bus history, so nothing published in between is lost.
        since, snapshot = await _shared_snapshot(state)
    subscription = bus.subscribe(maxsize=_SSE_BUFFER, since=since)
    stream = _Stream(subscription)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    state.streams.add(stream)
    try:
        await response.prepare(request)
        await _send(response, b"retry: 2000\n\n")
        if snapshot is not None:
            await _send(response, snapshot)
        await _pump(request, response, stream, state)
    except _ClientGone:
        # It stopped reading: drop the connection (a graceful close would wait for it to
        # read). EventSource reconnects with Last-Event-ID and catches up.
        if request.transport is not None:
            request.transport.abort()
    except (ConnectionError, RuntimeError):
        # RuntimeError: the manager stopped between two steps; the stream just ends.
        pass
    finally:
        state.streams.discard(stream)
        stream.subscription.close()
    return response


async def _pump(
    request: web.Request, response: web.StreamResponse, stream: _Stream, state: DaemonState
) -> None:
    manager = state.manager
    keepalive = state.config.keepalive
    while not stream.closing:
        try:
            async with asyncio.timeout(keepalive):
                event = await anext(stream.subscription)
        except TimeoutError:
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            await _send(response, b": keep-alive\n\n")
            continue
        except StopAsyncIteration:  # the bus closed (the manager shut down) or we did
            return
        await _send(response, sse_frame(event))
        if isinstance(event, ev.Missed):
            # This client fell behind and lost events: start it over from a fresh snapshot,
            # with a new subscription (the old buffer holds events the snapshot already has).
            stream.subscription.close()
            if stream.closing or manager.bus.closed:
                return
            stream.subscription = manager.bus.subscribe(maxsize=_SSE_BUFFER)
            await _send(response, sse_frame(await _snapshot_event(manager)))


async def _send(response: web.StreamResponse, data: bytes) -> None:
    """Write, but never wait forever on a client that stopped reading."""
    try:
        async with asyncio.timeout(_SSE_WRITE_TIMEOUT):
            await response.write(data)
    except TimeoutError:
        raise _ClientGone from None


async def _close_streams(app: web.Application) -> None:
    for stream in list(app[STATE].streams):
        stream.close()


# ------------------------------------------------------------------------------ dashboard


def _load_static() -> dict[str, bytes]:
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


# ---------------------------------------------------------------------------------- routes

_ID_ERRORS = (400, 404)

OPERATIONS: list[tuple[Operation, Handler]] = [
    (
        Operation(
            "GET",
            "/api/downloads",
            "listDownloads",
            "Every download, live first",
            DownloadList,
            query=ListQuery,
        ),
        list_downloads,
    ),
    (
        Operation(
            "POST",
            "/api/downloads",
            "addDownload",
            "Resolve a spec and queue it (201; 200 when it was already queued)",
            GroupViewModel,
            status=201,
            body=AddRequest,
            errors=(400, 403, 404, 429, 502, 503, 504, 507),
            extra_statuses={200: "Already queued: the existing download"},
        ),
        add_download,
    ),
    (
        Operation(
            "GET",
            "/api/downloads/{id}",
            "getDownload",
            "One download (a file id answers with its download)",
            GroupViewModel,
            errors=_ID_ERRORS,
        ),
        get_download,
    ),
    (
        Operation(
            "DELETE",
            "/api/downloads/{id}",
            "forgetDownload",
            "Forget a finished download (its files stay on disk)",
            None,
            status=204,
            errors=(*_ID_ERRORS, 409),
        ),
        forget_download,
    ),
    *(
        (
            Operation(
                "POST",
                f"/api/downloads/{{id}}/{name}",
                f"{name}Download",
                summary,
                GroupViewModel,
                body=ActionRequest,
                body_required=False,
                errors=_ID_ERRORS,
            ),
            _action(name),
        )
        for name, summary in (
            ("pause", "Pause a download or one file (keeps the partial file)"),
            ("resume", "Resume a paused (or retry-waiting) download or file"),
            ("cancel", "Cancel a download or one file (deletes the partial file)"),
            ("retry", "Queue failed and cancelled files again"),
        )
    ),
    (
        Operation(
            "POST",
            "/api/downloads/{id}/move",
            "moveDownload",
            "Move a waiting download or file to a queue position",
            GroupViewModel,
            body=MoveRequest,
            errors=(*_ID_ERRORS, 409),
        ),
        move_download,
    ),
    (
        Operation(
            "POST",
            "/api/downloads/{id}/priority",
            "setPriority",
            "Set a download's or file's priority (higher runs first)",
            GroupViewModel,
            body=PriorityRequest,
            errors=(*_ID_ERRORS, 409),
        ),
        set_priority,
    ),
    (
        Operation(
            "POST",
            "/api/pause-all",
            "pauseAll",
            "Pause everything",
            OkResponse,
            body=ActionRequest,
            body_required=False,
        ),
        pause_all,
    ),
    (
        Operation(
            "POST",
            "/api/resume-all",
            "resumeAll",
            "Resume everything paused",
            OkResponse,
            body=ActionRequest,
            body_required=False,
        ),
        resume_all,
    ),
    (
        Operation(
            "POST",
            "/api/forget-finished",
            "forgetFinished",
            "Forget every finished download",
            ForgottenResponse,
            body=ActionRequest,
            body_required=False,
        ),
        forget_finished,
    ),
    (
        Operation(
            "PUT",
            "/api/downloads/{id}/limits",
            "setDownloadLimits",
            "Cap one download's bandwidth or connections (a file id: its download)",
            GroupViewModel,
            body=DownloadLimitsRequest,
            errors=_ID_ERRORS,
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
            "/api/quants",
            "listQuants",
            "The quantizations a Hub repository offers",
            QuantList,
            query=QuantsQuery,
            errors=(400, 403, 404, 429, 502, 503, 504),
        ),
        list_quants,
    ),
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
    (
        Operation(
            "GET",
            "/api/events",
            "events",
            "Live events (Server-Sent Events)",
            None,
            stream="text/event-stream",
            errors=(503,),
            description=(
                "`id:` is the event's seq, `event:` its type, `data:` its JSON form. A new "
                "connection starts with a `snapshot` event (items: every download). Reconnect "
                "with `Last-Event-ID` (or ?since=) to get what was missed; when that is no "
                "longer kept, or from an earlier run, a fresh `snapshot` comes first. A client "
                "that falls behind gets `missed` and then a fresh `snapshot`. Comment lines "
                "keep an idle connection open."
            ),
            extra_parameters=(
                {
                    "name": "since",
                    "in": "query",
                    "required": False,
                    "description": "resume after this seq (like Last-Event-ID)",
                    "schema": {"type": "integer", "minimum": 0},
                },
            ),
        ),
        events,
    ),
]


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
    document = build_openapi((op for op, _ in OPERATIONS), version=_version())
    app = web.Application(middlewares=[_errors, _security])
    app[STATE] = DaemonState(
        manager=manager,
        config=config,
        static=_load_static(),
        openapi=json.dumps(document, indent=1).encode(),
    )
    for op, handler in OPERATIONS:
        app.router.add_route(op.method, op.path, handler)
    app.router.add_get("/api/openapi.json", openapi_json)
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static_file)
    app.on_response_prepare.append(_security_headers)
    app.on_shutdown.append(_close_streams)
    return app


def access_logger() -> type[AbstractAccessLogger]:
    return _AccessLogger
