"""HTTP pieces the fake Hub and CDN share: finished replies, Hub-style errors, Range parsing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Literal

from aiohttp import web

__all__ = [
    "Reply",
    "Unsatisfiable",
    "bearer_token",
    "error",
    "iso",
    "json_response",
    "parse_range",
    "redirect",
    "truthy",
]


class Reply(Exception):
    """Short-circuits a handler with a finished response (errors, fault statuses)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def json_response(
    payload: object, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(payload).encode(),
        content_type="application/json",
        headers=headers,
    )


def error(status: int, message: str, code: str | None = None, **headers: str) -> Reply:
    """A Hub error: JSON `{"error": message}`, with `X-Error-Code`/`-Message` when typed."""
    extra = dict(headers)
    if code is not None:
        extra["X-Error-Code"] = code
        extra["X-Error-Message"] = message
    return Reply(json_response({"error": message}, status=status, headers=extra))


def redirect(location: str, **headers: str) -> web.Response:
    # An explicit Content-Length: 0, also on HEAD (aiohttp would omit it there).
    return web.Response(
        status=302, headers={"Location": location, **headers, "Content-Length": "0"}
    )


def bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


Unsatisfiable = Literal["unsatisfiable"]


def parse_range(header: str, size: int) -> tuple[int, int] | Unsatisfiable | None:
    """One `bytes=` range → (start, end exclusive); None means ignore it and send 200 (RFC 9110
    lets a server ignore a malformed or multi-range header)."""
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first:  # suffix: the last n bytes
            n = int(last)
            if n < 0:
                return None
            if n == 0 or size == 0:
                return "unsatisfiable"
            return max(0, size - n), size
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start < 0 or (last and end <= start):
        return None  # invalid (e.g. 9-3): ignore it, as RFC 9110 allows
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")
