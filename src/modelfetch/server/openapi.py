"""The OpenAPI 3.1 description of the API, built from the route table and the pydantic models.

Each route is declared once as an `Operation` (app.py); the router and this document are both made
from that list, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from modelfetch.server.api_models import ErrorResponse

__all__ = ["ERROR_STATUSES", "Operation", "build_openapi"]

ERROR_STATUSES: dict[int, str] = {
    400: "Bad request: a malformed spec or id (`accepted_forms` lists the spec forms)",
    401: "Missing or wrong token",
    403: "Host header not the daemon's own, or the Hub refused access",
    404: "Unknown download, file, repository or route",
    405: "Method not allowed",
    409: "Conflicts with the download's state",
    413: "Body too large",
    415: "State-changing requests need Content-Type: application/json",
    422: "Body or query does not match the schema",
    429: "The Hub is rate limiting",
    502: "The Hub or the server of a URL failed",
    503: "The daemon is shutting down, or the Hub is busy",
    504: "The Hub stalled",
    507: "Not enough disk space",
}
"""Every error status the API uses; each answers with an `ErrorResponse`."""

_COMMON_ERRORS = (401, 403, 405, 422)
_MUTATION_ERRORS = (413, 415)


@dataclass(frozen=True, slots=True)
class Operation:
    """One route: what the router needs and what the document says about it."""

    method: Literal["GET", "POST", "PUT", "DELETE"]
    path: str  # in OpenAPI/aiohttp form: /api/downloads/{id}
    operation_id: str
    summary: str
    response: type[BaseModel] | None  # None: no body (204) or a stream
    status: int = 200
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    extra_statuses: Mapping[int, str] = field(default_factory=dict)  # other successes
    stream: str | None = None  # a media type for a streaming response (text/event-stream)
    description: str | None = None
    extra_parameters: tuple[dict[str, Any], ...] = ()


_REF = "#/components/schemas/{model}"


def _models(operations: Iterable[Operation]) -> list[type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {"ErrorResponse": ErrorResponse}
    for op in operations:
        for model in (op.response, op.body):
            if model is not None:
                found[model.__name__] = model
    return list(found.values())


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=_REF)
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        value = _without_null(prop)
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": {k: v for k, v in value.items() if k not in ("title", "description")},
        }
        if value.get("type") == "array":
            # Both `?status=a,b` and `?status=a&status=b` are read; the document names one.
            param["style"] = "form"
            param["explode"] = False
        if "description" in prop:
            param["description"] = prop["description"]
        params.append(param)
    return params


def _without_null(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent or has a value: `X | None` is just X (and not required)."""
    options = [o for o in prop.get("anyOf", []) if o.get("type") != "null"]
    if len(options) == 1 and len(prop.get("anyOf", [])) == 2:
        merged = {k: v for k, v in prop.items() if k not in ("anyOf", "default")}
        merged.update(options[0])
        return merged
    return prop


def _json_content(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(model)}}


def _operation(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary}
    if op.description:
        out["description"] = op.description
    params: list[dict[str, Any]] = []
    if "{id}" in op.path:
        params.append(
            {
                "name": "id",
                "in": "path",
                "required": True,
                "description": 'a download id ("12") or one of its files ("12.3")',
                "schema": {"type": "string", "examples": ["12", "12.3"]},
            }
        )
    if op.query is not None:
        params.extend(_query_parameters(op.query))
    params.extend(op.extra_parameters)
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": op.body_required, "content": _json_content(op.body)}
    responses: dict[str, Any] = {}
    if op.stream is not None:
        responses[str(op.status)] = {
            "description": op.summary,
            "content": {op.stream: {"schema": {"type": "string"}}},
        }
    elif op.response is None:
        responses[str(op.status)] = {"description": op.summary}
    else:
        responses[str(op.status)] = {
            "description": op.summary,
            "content": _json_content(op.response),
        }
    for status, text in op.extra_statuses.items():
        responses[str(status)] = {"description": text}
        if op.response is not None:
            responses[str(status)]["content"] = _json_content(op.response)
    statuses = set(_COMMON_ERRORS) | set(op.errors)
    if op.method != "GET":
        statuses |= set(_MUTATION_ERRORS)
    for status in sorted(statuses):
        responses[str(status)] = {
            "description": ERROR_STATUSES[status],
            "content": _json_content(ErrorResponse),
        }
    out["responses"] = responses
    return out


def build_openapi(operations: Iterable[Operation], *, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document for `operations`."""
    ops = list(operations)
    _, defs = models_json_schema(
        [(model, "validation") for model in _models(ops)], ref_template=_REF
    )
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "modelfetch daemon",
            "version": version,
            "description": (
                "Queue, control and watch model downloads. Errors are JSON: "
                '{"error": {"kind", "message"}}; `kind` is stable. When the daemon was started '
                "with a token, send it as `Authorization: Bearer <token>` (or `?token=`)."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "query": {"type": "apiKey", "in": "query", "name": "token"},
            },
        },
        # A daemon on loopback needs no token (the empty alternative).
        "security": [{}, {"bearer": []}, {"query": []}],
    }
