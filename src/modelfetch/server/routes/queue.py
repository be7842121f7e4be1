"""Routes that change the queue: move, priority, pause-all, resume-all, forget-finished."""

from __future__ import annotations

from aiohttp import web

from modelfetch.server.api_models import (
    ActionRequest,
    ForgottenResponse,
    GroupViewModel,
    MoveRequest,
    OkResponse,
    PriorityRequest,
)
from modelfetch.server.openapi import Operation
from modelfetch.server.parsing import ID_ERRORS, item_ref, manager_of, read_body
from modelfetch.server.responses import Handler, json_response

__all__ = ["OPERATIONS", "PLAIN_ROUTES"]


async def move_download(request: web.Request) -> web.StreamResponse:
    ref = item_ref(request)
    body = await read_body(request, MoveRequest)
    manager = manager_of(request)
    await manager.move(ref, body.position)  # unknown -> 404, finished -> ConflictError (409)
    return json_response((await manager.group_view(ref)).to_dict())


async def set_priority(request: web.Request) -> web.StreamResponse:
    ref = item_ref(request)
    body = await read_body(request, PriorityRequest)
    manager = manager_of(request)
    # unknown -> 404, finished -> ConflictError (409)
    await manager.set_priority(ref, body.priority)
    return json_response((await manager.group_view(ref)).to_dict())


async def forget_finished(request: web.Request) -> web.StreamResponse:
    await read_body(request, ActionRequest, required=False)
    return json_response({"forgotten": await manager_of(request).forget_finished()})


async def pause_all(request: web.Request) -> web.StreamResponse:
    await read_body(request, ActionRequest, required=False)
    await manager_of(request).pause_all()
    return json_response({"ok": True})


async def resume_all(request: web.Request) -> web.StreamResponse:
    await read_body(request, ActionRequest, required=False)
    await manager_of(request).resume_all()
    return json_response({"ok": True})


OPERATIONS: list[tuple[Operation, Handler]] = [
    (
        Operation(
            "POST",
            "/api/downloads/{id}/move",
            "moveDownload",
            "Move a waiting download or file to a queue position",
            GroupViewModel,
            body=MoveRequest,
            errors=(*ID_ERRORS, 409),
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
            errors=(*ID_ERRORS, 409),
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
]

PLAIN_ROUTES: list[web.RouteDef] = []
