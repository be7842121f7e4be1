"""Who may talk to the daemon: the Host header (DNS rebinding), the token, JSON-only mutations.

The Host header must name the daemon, a token is checked on every request when one is
configured, and POST/PUT need a JSON body so that a form or a `no-cors` fetch from another site
is refused before it does anything.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Middleware

from modelfetch.server.responses import Handler, error_response

__all__ = [
    "LOOPBACK_NAMES",
    "ServerConfig",
    "access_logger",
    "is_loopback",
    "security_headers",
    "security_middleware",
]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
_JSON_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


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
    # Routes that carry someone else's bearer token (the Hub mirror's: a client's Hub token)
    # and read-only form posts: the daemon's token and the JSON-body rule do not apply to them.
    open_routes: set[str] = field(default_factory=set)

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


def security_middleware(config: ServerConfig) -> Middleware:
    """The checks every request passes before its handler runs, against the app's `config`
    (the same object as `app[STATE].config`, so the port set after binding applies)."""

    @web.middleware
    async def security(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not config.host_allowed(request.headers.get("Host")):
            return error_response(
                403,
                "forbidden_host",
                "this daemon does not answer to that Host header (see --host / allowed hosts)",
            )
        if request.match_info.route.name in config.open_routes:
            if not is_loopback(config.host) and not is_loopback(request.remote or ""):
                # Opening them to the network takes a flag of their own (a listener that
                # answers nothing else), not a side effect of where the control API listens.
                return error_response(
                    403, "forbidden", "these routes answer this machine only here"
                )
            return await handler(request)
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
            return error_response(
                415, "unsupported_media_type", "a DELETE body, if any, must be JSON"
            )
        return await handler(request)

    return security


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
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


def access_logger() -> type[AbstractAccessLogger]:
    return _AccessLogger
