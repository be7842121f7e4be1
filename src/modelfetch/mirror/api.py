"""The Hub's metadata routes: model info (at a revision), the tree, paths-info.

As huggingface_hub calls them: `model_info`/`repo_info` (`GET /api/models/{repo}` and
`.../revision/{rev}`, `?blobs=true` for sizes and LFS details), `list_repo_tree`
(`GET .../tree/{rev}[/{path}]`, `?recursive=true`; one page, no `Link`), `get_paths_info`
(`POST .../paths-info/{rev}`, form fields `paths` and `expand`).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from modelfetch.mirror.lookup import HubReply, files_at, hub_error, look_up, path_of
from modelfetch.mirror.state import MIRROR

__all__ = ["model_info", "paths_info", "tree"]

_MAX_PATHS = 1000


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def _json(payload: Any, commit: str) -> web.Response:
    return web.Response(
        body=json.dumps(payload).encode(),
        content_type="application/json",
        headers={"X-Repo-Commit": commit},
    )


async def model_info(request: web.Request) -> web.StreamResponse:
    from modelfetch.mirror.meta import model_info as info_of

    state = request.app[MIRROR]
    try:
        looked = await look_up(state, request, request.match_info.get("rev", "main"), None)
        files, listing = await files_at(state, looked)
    except HubReply as reply:
        return reply.response
    held = looked.held.at(looked.repo_id, looked.commit)
    modified = max((h.finished_at or 0.0 for h in held.values()), default=None) or None
    payload = info_of(
        looked.repo_id,
        looked.commit,
        files,
        blobs=_truthy(request.query.get("blobs")),
        gated=listing.gated if listing is not None else False,
        modified=modified,
    )
    return _json(payload, looked.commit)


async def tree(request: web.Request) -> web.StreamResponse:
    from modelfetch.mirror.meta import tree_listing

    state = request.app[MIRROR]
    try:
        base = request.match_info.get("path", "").strip("/")
        if base:
            base = path_of(base)
        looked = await look_up(state, request, request.match_info["rev"], None)
        files, _ = await files_at(state, looked)
    except HubReply as reply:
        return reply.response
    entries = tree_listing(files, base, _truthy(request.query.get("recursive")))
    if entries is None:
        rev = request.match_info["rev"]
        return hub_error(404, f"{base} does not exist on {rev}", "EntryNotFound").response
    return _json(entries, looked.commit)


async def paths_info(request: web.Request) -> web.StreamResponse:
    from modelfetch.mirror.meta import paths_info as info_of

    state = request.app[MIRROR]
    try:
        form = await request.post()
        asked = [v for v in form.getall("paths", []) if isinstance(v, str)]
        if len(asked) > _MAX_PATHS:
            raise hub_error(400, f"at most {_MAX_PATHS} paths at once")
        paths = [path_of(p.strip("/")) for p in asked if p.strip("/")]
        looked = await look_up(state, request, request.match_info["rev"], None)
        files, _ = await files_at(state, looked)
    except HubReply as reply:
        return reply.response
    return _json(info_of(files, paths), looked.commit)
