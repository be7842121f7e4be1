"""Reading a request: its JSON body and query as pydantic models, and the download id it names."""

from __future__ import annotations

import json
import typing
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from modelfetch.core.errors import UnknownItemError
from modelfetch.core.models import ItemRef
from modelfetch.manager import DownloadManager
from modelfetch.server.responses import HTTPError
from modelfetch.server.state import STATE
from modelfetch.views import GroupView

__all__ = ["ID_ERRORS", "item_ref", "manager_of", "read_body", "read_query", "view_of"]

M = TypeVar("M", bound=BaseModel)

ID_ERRORS = (400, 404)
"""What a route with an `{id}` can answer besides its own errors: a malformed or unknown id."""

_MAX_ID = (1 << 63) - 1  # SQLite's integers: a larger id cannot name anything


def _validation_error(exc: ValidationError, where: str) -> HTTPError:
    details = [
        {"loc": [where, *e["loc"]], "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    first = details[0]
    message = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    if len(details) > 1:
        message += f" (and {len(details) - 1} more)"
    return HTTPError(422, "invalid", message, details=details)


async def read_body(request: web.Request, model: type[M], *, required: bool = True) -> M:
    """The JSON body as `model`; an absent body is `{}` where the body is optional."""
    return validate_body(await read_json(request, required=required), model)


async def read_json(request: web.Request, *, required: bool = True) -> Any:
    """The JSON body, decoded (422 when it is not JSON); `{}` for an absent optional body."""
    raw = await request.read()
    if not raw and not required:
        return {}
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise HTTPError(422, "invalid", "the body is not valid JSON") from None


def validate_body(data: Any, model: type[M]) -> M:
    """A decoded JSON body as `model` (422 naming the fields that do not fit)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, "body") from None


def read_query(request: web.Request, model: type[M]) -> M:
    """The query string as `model`; a list field takes repeated and comma-separated values."""
    data: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        values = request.query.getall(name, [])
        if not values:
            continue
        if _is_list(info.annotation):
            data[name] = [part.strip() for v in values for part in v.split(",")]
        elif _is_int(info.annotation) and values[-1].isascii() and values[-1].isdigit():
            data[name] = int(values[-1])  # the strict model takes no "5" for 5; anything else
        else:  # (a sign, a space, "5.0") stays text and is refused as no integer
            data[name] = values[-1]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, "query") from None


def _is_int(annotation: Any) -> bool:
    return annotation is int or int in typing.get_args(annotation)


def _is_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) is list:
        return True
    return any(_is_list(arg) for arg in typing.get_args(annotation))


def item_ref(request: web.Request) -> ItemRef:
    """The download or file the `{id}` in the path names."""
    ref = ItemRef.parse(request.match_info["id"])
    if ref.group_id > _MAX_ID or (ref.index or 0) > _MAX_ID:
        raise UnknownItemError(f"no download with id {ref}")
    return ref


def manager_of(request: web.Request) -> DownloadManager:
    return request.app[STATE].manager


async def view_of(manager: DownloadManager, ref: ItemRef) -> GroupView:
    """The download `ref` names; for a file id, only if that file exists."""
    view = await manager.group_view(ref)
    if ref.index is not None and not any(f.ref == str(ref) for f in view.files):
        raise UnknownItemError(f"download {ref.group_id} has no file {ref.index}")
    return view
