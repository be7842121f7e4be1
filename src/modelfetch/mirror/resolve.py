"""`HEAD`/`GET /{repo}/resolve/{rev}/{path}`: a file with the headers huggingface_hub reads.

huggingface_hub's `get_hf_file_metadata` reads `X-Repo-Commit` (required), `X-Linked-Etag`
else `ETag` (required; the sha256 of an LFS file, the git blob id otherwise), `X-Linked-Size`
else `Content-Length`, and `Location` on a redirect. The mirror answers 200 itself (no
redirect: the bytes are here), so the size is the `Content-Length` as well. `Range` gets 206
with `Content-Range` for one satisfiable range, 416 with `Content-Range: bytes */size` past the
end, and the whole file when malformed, multi-range or an `If-Range` that is not our ETag.

A client whose stream was cut (the file failed verification) gets the whole file for its next
ranged request of it: huggingface_hub resumes a cut body with a bare `Range` (no `If-Range`),
and a 200 is its signal to start the file over instead of keeping the suspect prefix.

A GET for a file the mirror does not hold queues it (pull-through, `pull.py`) and streams it as
it arrives (`stream.py`); a HEAD answers from the listing and fetches nothing.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from modelfetch.core.errors import ModelfetchError
from modelfetch.mirror.evict import touch_served
from modelfetch.mirror.held import HeldFile
from modelfetch.mirror.lookup import HubReply, Looked, files_at, hub_error, look_up, path_of
from modelfetch.mirror.meta import FileMeta
from modelfetch.mirror.ranges import UNSATISFIABLE, parse_range
from modelfetch.mirror.state import MIRROR, CutKey, MirrorState
from modelfetch.mirror.stream import Cut, send_body

__all__ = ["resolve"]

log = logging.getLogger("modelfetch.mirror")
_CUT_MEMORY = 600.0  # seconds a cut client's ranged requests of that file get the whole file


def _headers(meta: FileMeta, commit: str) -> dict[str, str]:
    headers = {
        "X-Repo-Commit": commit,
        "ETag": meta.etag,
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
    }
    if meta.lfs:
        headers["X-Linked-Etag"] = meta.etag
        headers["X-Linked-Size"] = str(meta.size)
    return headers


async def _meta_of(
    state: MirrorState, looked: Looked, path: str
) -> tuple[FileMeta, HeldFile | None]:
    held = looked.held.find(looked.repo_id, looked.commit, path)
    if held is not None:
        return held.meta, held
    files, _ = await files_at(state, looked)
    for meta in files:
        if meta.path == path:
            return meta, None
    raise hub_error(
        404,
        f"{path} does not exist at {looked.commit}",
        "EntryNotFound",
        {"X-Repo-Commit": looked.commit},
    )


async def _pulled(state: MirrorState, looked: Looked, meta: FileMeta) -> HeldFile:
    """Queue the file on the manager (or find it queued) and describe it as held in progress."""
    listing = state.upstream.cached_listing(looked.repo_id, looked.commit)
    entry = listing.find(meta.path) if listing is not None else None
    if entry is None:  # only held files are known without a listing, and they are not pulled
        raise hub_error(504, "the mirror's upstream cannot be reached to fetch this file")
    token = None if state.upstream.own_token else looked.token
    try:
        key = await state.puller.pull(looked.repo_id, looked.commit, entry, token)
        state.held = None  # the next request sees the new download at once
    except ModelfetchError as exc:
        raise hub_error(500, f"the mirror cannot fetch {meta.path}: {exc}") from None
    dest = state.puller.dest_of(looked.repo_id, looked.commit, meta.path)
    return HeldFile(looked.repo_id, looked.commit, meta, dest, key, False, None)


async def resolve(request: web.Request) -> web.StreamResponse:
    state = request.app[MIRROR]
    try:
        path = path_of(request.match_info["path"])
        looked = await look_up(state, request, request.match_info["rev"], path)
        meta, held = await _meta_of(state, looked, path)
        if held is None and request.method == "GET":
            held = await _pulled(state, looked, meta)
    except HubReply as reply:
        return reply.response
    headers = _headers(meta, looked.commit)
    size = meta.size
    start, end, status = 0, size, 200
    wanted = None
    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    cut_key = (request.remote or "", looked.repo_id, looked.commit, path)
    if range_header is not None and (if_range is None or if_range.strip() == meta.etag):
        wanted = parse_range(range_header, size)
        if isinstance(wanted, tuple) and wanted[0] > 0 and _was_cut(state, cut_key):
            wanted = None  # the whole file: this client's earlier bytes of it are suspect
    if wanted == UNSATISFIABLE:
        headers["Content-Range"] = f"bytes */{size}"
        return web.Response(status=416, headers=headers)
    if isinstance(wanted, tuple):
        start, end = wanted
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start
    await response.prepare(request)
    if request.method == "HEAD" or held is None:
        await response.write_eof()
        return response
    try:
        with state.serving.reading(held.dest):
            await send_body(response, state.manager, held, start, end)
    except Cut:
        state.held = None  # what is held changed under this reader: read it again
        state.cut_clients[cut_key] = time.monotonic() + _CUT_MEMORY
        log.warning(
            "mirror: %s of %s cut mid-body (its bytes failed verification or were dropped)",
            path,
            looked.repo_id,
        )
        if request.transport is not None:
            request.transport.abort()  # a truncated body, never one that passes as complete
        return response
    if start == 0 and end == size:
        state.cut_clients.pop(cut_key, None)  # it has the whole file from a good stream now
    touch_served(held.dest)
    await response.write_eof()
    return response


def _was_cut(state: MirrorState, key: CutKey) -> bool:
    until = state.cut_clients.get(key)
    if until is None:
        return False
    if until <= time.monotonic():
        del state.cut_clients[key]
        return False
    return True
