"""What the daemon's answers mean to its client, and what the client sends it of its own.

`error_from_response` rebuilds the ModelfetchError subclass an error answer stands for (by its
`kind`); `group_view_of` / `quant_group_of` rebuild views from JSON. `client_hub_token` is the
Hub token in this client's environment, which `RemoteManager.add` sends (as `X-Hub-Token`) to
a daemon on this machine only, so that the daemon fetches that one download with it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from modelfetch.core.errors import ERROR_KINDS, ModelfetchError, StateError
from modelfetch.core.quant import Quant, QuantGroup
from modelfetch.remote_trust import client_hub_token, is_loopback_address
from modelfetch.views import FileView, FleetView, GroupView, WorkerView

__all__ = [
    "HUB_TOKEN_HEADER",
    "RouteMissingError",
    "SSEMessage",
    "SSEParser",
    "batch_item_error",
    "client_hub_token",
    "error_from_response",
    "fleet_view_of",
    "group_view_of",
    "is_loopback_address",
    "quant_group_of",
]

HUB_TOKEN_HEADER = "X-Hub-Token"  # as server/routes/downloads.py reads it (no server import)


class RouteMissingError(ModelfetchError):
    """The daemon has no such route: it is older than this client (one without
    `POST /api/downloads:batch`, say), and the caller can fall back to what it has."""


def batch_item_error(item: dict[str, Any]) -> ModelfetchError:
    """The error of one spec of a batch answer, as the same spec alone would have raised it
    (a per-item error is always one of the daemon's own kinds)."""
    error = error_from_response(int(item.get("status") or 400), {"error": item.get("error")})
    return error if isinstance(error, ModelfetchError) else ModelfetchError(str(error))


def error_from_response(status: int, body: Any) -> Exception:
    """The exception the daemon's error answer stands for."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {}
    kind = str(error.get("kind") or "")
    message = str(error.get("message") or f"the daemon answered {status}")
    if kind == "invalid":
        return ValueError(message)
    if kind in ("unauthorized", "forbidden_host"):
        return StateError(f"the daemon refused this client: {message}")
    if kind == "unavailable":
        return StateError(message)
    if kind == "route_not_found":
        return RouteMissingError(message)
    cls = ERROR_KINDS.get(kind)
    if cls is None:
        if status >= 500:
            return RuntimeError(f"the daemon failed: {message}")
        return ModelfetchError(message)
    kwargs: dict[str, Any] = {}
    if "upstream_status" in error:
        kwargs["status"] = int(error.get("upstream_status") or 0)
        for name in ("error_code", "retry_after"):
            if error.get(name) is not None:
                kwargs[name] = error[name]
    try:
        return cls(message, **kwargs)
    except TypeError:  # a subclass that wants more than the daemon sent
        return ModelfetchError(message)


def group_view_of(data: dict[str, Any]) -> GroupView:
    file_fields = {f.name for f in dataclasses.fields(FileView)}
    group_fields = {f.name for f in dataclasses.fields(GroupView)} - {"files"}
    files = [
        FileView(**{k: v for k, v in f.items() if k in file_fields}) for f in data.get("files", [])
    ]
    return GroupView(**{k: v for k, v in data.items() if k in group_fields}, files=files)


def fleet_view_of(data: dict[str, Any]) -> FleetView:
    names = {f.name for f in dataclasses.fields(WorkerView)}
    workers = [WorkerView(**{k: v for k, v in w.items() if k in names}) for w in data["workers"]]
    return FleetView(
        workers=workers,
        max_active=data.get("max_active"),
        max_connections_per_host=data.get("max_connections_per_host"),
    )


def quant_group_of(data: dict[str, Any]) -> QuantGroup:
    return QuantGroup(
        quant=Quant(data["base"], bool(data["ud"])),
        paths=tuple(data["paths"]),
        total_size=int(data["total_size"]),
        shard_count=int(data["shard_count"]),
        complete=bool(data["complete"]),
        missing=tuple(data.get("missing", ())),
        extra=tuple(data.get("extra", ())),
    )


@dataclass
class SSEMessage:
    event: str = "message"
    data: str = ""
    id: str | None = None


class SSEParser:
    """Server-Sent Events framing (the WHATWG rules a client needs), fed raw bytes."""

    def __init__(self) -> None:
        self._buffer = b""
        self._fields: dict[str, str] = {}
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        # Lines are cut from the buffer by position and the rest kept once per chunk: cutting
        # the buffer after each line copied the rest of a 64 KiB read a thousand times.
        buffer = self._buffer + chunk if self._buffer else chunk
        out: list[SSEMessage] = []
        start = 0
        while True:
            newline = buffer.find(b"\n", start)
            if newline == -1:
                self._buffer = buffer[start:]
                return out
            line = buffer[start:newline].rstrip(b"\r").decode("utf-8", "replace")
            start = newline + 1
            if not line:
                if self._data:
                    out.append(
                        SSEMessage(
                            event=self._fields.get("event") or "message",
                            data="\n".join(self._data),
                            id=self._fields.get("id"),
                        )
                    )
                self._fields = {}
                self._data = []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                self._data.append(value)
            elif name in ("event", "id"):
                self._fields[name] = value
