"""Routes of the download resource: list, add, get, forget, and pause/resume/cancel/retry."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from modelfetch.core.errors import ModelfetchError, SpecError
from modelfetch.core.models import ItemRef
from modelfetch.core.spec import ACCEPTED_FORMS
from modelfetch.server.api_models import (
    BATCH_MAX,
    ActionRequest,
    AddRequest,
    BatchAddRequest,
    BatchAddResponse,
    DownloadList,
    GroupViewModel,
    ListQuery,
)
from modelfetch.server.openapi import Operation
from modelfetch.server.parsing import (
    ID_ERRORS,
    item_ref,
    manager_of,
    read_body,
    read_json,
    read_query,
    validate_body,
    view_of,
)
from modelfetch.server.responses import Handler, HTTPError, json_response, status_for
from modelfetch.server.security import is_loopback
from modelfetch.server.state import STATE
from modelfetch.views import GroupView

if TYPE_CHECKING:
    from modelfetch.manager.batch import Outcome

__all__ = ["HUB_TOKEN_HEADER", "OPERATIONS", "PLAIN_ROUTES"]


async def list_downloads(request: web.Request) -> web.StreamResponse:
    """One page of downloads in id order: those after `after` that match, at most `limit`;
    `next` says where the following page starts (null: none). The store is read a page at a
    time, so a home with a long history answers its first page at once."""
    query = read_query(request, ListQuery)
    pages = request.app[STATE].pages
    if not query.status and not query.q and query.limit == pages.size:
        # The pages every dashboard asks for, shared with the SSE snapshots (server/pages.py):
        # read and encoded once for all the clients that ask within a second.
        shared = await pages.listing(query.after)
        # The same Content-Type as json_response's (aiohttp adds the charset to text bodies).
        return web.Response(body=shared.listing(), content_type="application/json", charset="utf-8")
    manager = manager_of(request)
    seq = manager.bus.last_seq
    wanted: set[str] | None = set(query.status) if query.status else None
    needle = query.q.casefold() if query.q else None
    found: list[dict[str, object]] = []
    after = query.after
    exhausted = False  # the store has nothing after `after`
    while len(found) < query.limit and not exhausted:
        page = await manager.snapshot(after=after, limit=query.limit)
        exhausted = len(page) < query.limit
        for view in page:
            if len(found) == query.limit:
                exhausted = False  # unread downloads remain
                break
            after = view.id
            if _matches(view, wanted, needle):
                found.append(view.to_dict())
    return json_response({"seq": seq, "downloads": found, "next": None if exhausted else after})


def _matches(view: GroupView, wanted: set[str] | None, needle: str | None) -> bool:
    if wanted is not None and view.status not in wanted:
        return False
    return needle is None or (
        needle in view.name.casefold()
        or needle in view.spec.casefold()
        or any(needle in f.name.casefold() for f in view.files)
    )


async def get_download(request: web.Request) -> web.StreamResponse:
    return json_response((await view_of(manager_of(request), item_ref(request))).to_dict())


HUB_TOKEN_HEADER = "X-Hub-Token"
"""A Hub token the client sends for this one download (from this machine only): it plans and
fetches that download instead of the daemon's own token, and is kept in memory only."""


async def add_download(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, AddRequest)
    manager = manager_of(request)
    hub_token = _hub_token(request)
    started = time.time()
    options = {
        "quant": body.quant,
        "revision": body.revision,
        "include": body.include,
        "exclude": body.exclude,
        "layout": body.layout,
        "models_dir": _path(body.models_dir),
        "dest_dir": _path(body.dest_dir),
        "priority": body.priority,
    }
    try:
        if hub_token is None:
            gid = await manager.add(body.spec, **options)  # type: ignore[arg-type]
        else:
            from modelfetch.manager.intake import add_with_hub_token, plan_options

            chosen = plan_options(manager, **options)  # type: ignore[arg-type]
            gid = await add_with_hub_token(manager, hub_token, body.spec, chosen)
    except SpecError as exc:
        # The accepted forms help with a spec we could not read, not with a folder we cannot
        # write (a DestinationError is a SpecError too).
        forms = ACCEPTED_FORMS if exc.kind == "spec" else None
        raise HTTPError(400, exc.kind, exc.message, accepted_forms=forms) from None
    view = await manager.group_view(gid)
    # Asking again for something already queued returns it: 200, not 201.
    return json_response(view.to_dict(), status=201 if view.created_at >= started else 200)


async def add_downloads(request: web.Request) -> web.StreamResponse:
    """Many specs with the same options: planned together on the daemon (Hub specs through
    the planner, as one add), queued in waves of a few as their plans land (one store
    transaction each: manager/batch.py), one result per spec in order.
    A spec that fails is reported in its place; the others are queued all the same."""
    from modelfetch.manager.batch import add_many, views_of
    from modelfetch.manager.intake import plan_options

    data = await read_json(request)
    _refuse_oversized_batch(data)
    body = validate_body(data, BatchAddRequest)
    manager = manager_of(request)
    hub_token = _hub_token(request)
    since = manager.bus.last_seq
    chosen = plan_options(
        manager,
        quant=body.quant,
        revision=body.revision,
        include=body.include,
        exclude=body.exclude,
        layout=body.layout,
        models_dir=_path(body.models_dir),
        dest_dir=_path(body.dest_dir),
        priority=body.priority,
    )
    outcomes = await add_many(manager, body.specs, chosen, hub_token=hub_token)
    # Views and seq read with no await in between: a client seeds its state from the views and
    # applies only the events after `seq`.
    snapshot = views_of(manager, _ids(outcomes))
    seq = manager.bus.last_seq
    results: list[dict[str, object]] = []
    for spec, outcome in zip(body.specs, outcomes, strict=True):
        if isinstance(outcome, ModelfetchError):
            status = status_for(outcome)
            error: dict[str, object] = {"kind": outcome.kind, "message": outcome.message}
            if outcome.kind == "spec":
                error["accepted_forms"] = ACCEPTED_FORMS
            results.append({"spec": spec, "status": status, "error": error})
            continue
        gid, created = outcome
        view = snapshot[gid].to_dict()
        results.append({"spec": spec, "status": 201 if created else 200, "download": view})
    return json_response({"since": since, "seq": seq, "results": results})


def _ids(outcomes: Sequence[Outcome]) -> list[int]:
    return sorted({o[0] for o in outcomes if isinstance(o, tuple)})


def _refuse_oversized_batch(data: object) -> None:
    """More than BATCH_MAX specs is a 413 that says how many fit, before any validation: the
    client splits its list (a schema error, 422, would read as a malformed request)."""
    specs = data.get("specs") if isinstance(data, dict) else None
    if isinstance(specs, list) and len(specs) > BATCH_MAX:
        raise HTTPError(
            413,
            "batch_too_large",
            f"at most {BATCH_MAX} specs in one batch, not {len(specs)}: send the list in parts",
        )


def _hub_token(request: web.Request) -> str | None:
    """The client's Hub token for this request, if it sent one; only a client on this machine
    may (from elsewhere it would have crossed the network in the clear)."""
    token = (request.headers.get(HUB_TOKEN_HEADER) or "").strip()
    if not token:
        return None
    if not is_loopback(request.remote or ""):
        raise HTTPError(
            403,
            "hub_token_refused",
            f"{HUB_TOKEN_HEADER} is accepted from this machine only; the daemon uses its own "
            "Hub token for requests from elsewhere",
        )
    return token


def _path(text: str | None) -> Path | None:
    return Path(text) if text is not None else None


def _action(name: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        ref = item_ref(request)
        await read_body(request, ActionRequest, required=False)
        manager = manager_of(request)
        method: Callable[[ItemRef], Awaitable[None]] = getattr(manager, name)
        await method(ref)
        return json_response((await manager.group_view(ref)).to_dict())

    handler.__name__ = f"{name}_download"
    return handler


async def forget_download(request: web.Request) -> web.StreamResponse:
    ref = item_ref(request)
    if ref.index is not None:
        raise HTTPError(
            400, "spec", f"forget takes a download id ({ref.group_id}), not one of its files"
        )
    await manager_of(request).forget(ref)
    return web.Response(status=204)


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
            "POST",
            "/api/downloads:batch",
            "addDownloads",
            f"Resolve and queue many specs with the same options (at most {BATCH_MAX})",
            BatchAddResponse,
            body=BatchAddRequest,
            errors=(400, 403, 413, 503),
            description=(
                "One result per spec, in the order sent: `status` 201 (queued), 200 (already "
                "queued) or the status `POST /api/downloads` would have answered for that spec "
                "alone, with its `error`; a spec that fails does not stop the others. The "
                "downloads are stored in waves of 16 as their plans land, one transaction each, "
                "so the first start while the rest are planned. Hub specs are planned as single "
                "adds "
                f"are. More than {BATCH_MAX} specs: 413 (`batch_too_large`), send the list in "
                "parts."
            ),
        ),
        add_downloads,
    ),
    (
        Operation(
            "GET",
            "/api/downloads/{id}",
            "getDownload",
            "One download (a file id answers with its download)",
            GroupViewModel,
            errors=ID_ERRORS,
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
            errors=(*ID_ERRORS, 409),
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
                errors=ID_ERRORS,
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
]

PLAIN_ROUTES: list[web.RouteDef] = []
