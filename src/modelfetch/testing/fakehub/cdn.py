"""Resolve and the CDN: LFS resolves redirect to signed CDN URLs; bodies honour Range and faults.

A resolve of an LFS file answers 302 with `X-Linked-Etag` (the sha256), `X-Linked-Size` and
`X-Repo-Commit`; small files are served by the Hub itself. Bodies answer 200, 206 for a range or
416 past the end, shaped by any body fault (stall, truncate, reset, corrupt, throttle) and by the
hub's caps (`connection_rate`, `client_rate`: limits.py). The signed CDN URL names the client
(an opaque id, never its token) whose bucket the body draws from.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import TYPE_CHECKING, Final
from urllib.parse import quote

from aiohttp import web

from modelfetch.testing.fakehub.api import find_revision, open_repo
from modelfetch.testing.fakehub.faults import (
    Fault,
    FaultBook,
    FaultKind,
    close_after_flush,
    reset_connection,
    status_reply,
)
from modelfetch.testing.fakehub.limits import Pacing, request_client
from modelfetch.testing.fakehub.log import EXCHANGE
from modelfetch.testing.fakehub.replies import Unsatisfiable, error, parse_range, redirect
from modelfetch.testing.fakehub.repo import PIECE, Blob, ensure_hashed

if TYPE_CHECKING:
    from modelfetch.testing.fakehub.server import FakeHub

__all__ = ["Cdn"]

_FAR_FUTURE: Final = 365 * 24 * 3600.0
_SIGNING_KEY: Final = b"fakehub-cdn-signing-key"


def _sign(target: str, expires: str, client: str) -> str:
    signed = f"\0{target}\0{expires}\0{client}".encode()
    return hashlib.sha256(_SIGNING_KEY + signed).hexdigest()[:40]


class Cdn:
    """The resolve route (on the Hub's origin) and the CDN origin's route of one hub."""

    def __init__(self, hub: FakeHub) -> None:
        self._hub = hub

    def resolve_routes(self) -> list[web.RouteDef]:
        return [web.get("/{owner}/{name}/resolve/{rev}/{path:.+}", self.resolve)]

    def cdn_routes(self) -> list[web.RouteDef]:
        return [web.get("/cdn/{owner}/{name}/{commit}/{path:.+}", self.cdn)]

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        hub = self._hub
        repo = open_repo(hub, request, content=True)
        rev, path = request.match_info["rev"], request.match_info["path"]
        commit = find_revision(repo, rev)
        blob = commit.files.get(path)
        if blob is None:
            raise error(
                404,
                f"{path} does not exist on {rev}",
                "EntryNotFound",
                **{"X-Repo-Commit": commit.sha},
            )
        await ensure_hashed([blob])
        digests = blob.digests()
        faults = hub.fault_book.candidates("resolve", not blob.lfs, path, request.method)
        take = FaultBook.take
        if (fault := take(faults, "status")) is not None:
            raise status_reply(fault)
        if take(faults, "redirect_loop") is not None:
            return redirect(str(request.url))
        client = request_client(request)
        if not blob.lfs:
            headers = {"ETag": f'"{digests.git_oid}"', "X-Repo-Commit": commit.sha}
            return await _serve_body(request, blob, headers, faults, self._pacing(client))
        now = time.time()
        expire = take(faults, "expire")
        expires = f"{now + (expire.seconds if expire else _FAR_FUTURE):.3f}"
        linked = digests.sha256
        if take(faults, "bad_linked_etag") is not None:
            linked = hashlib.sha256(b"not-the-content\0" + linked.encode()).hexdigest()
        target = f"{repo.repo_id}/{commit.sha}/{path}"
        cdn = hub.cdn_public_url or hub.cdn_endpoint
        location = (
            f"{cdn}/cdn/{repo.repo_id}/{commit.sha}/{quote(path)}"
            f"?expires={expires}&client={client}&signature={_sign(target, expires, client)}"
        )
        return redirect(
            location,
            ETag=f'"{digests.git_oid}"',
            **{
                "X-Linked-Etag": f'"{linked}"',
                "X-Linked-Size": str(blob.size),
                "X-Repo-Commit": commit.sha,
            },
        )

    async def cdn(self, request: web.Request) -> web.StreamResponse:
        hub = self._hub
        repo_id = f"{request.match_info['owner']}/{request.match_info['name']}"
        path = request.match_info["path"]
        repo = hub.catalog.repos.get(repo_id)
        commit = repo.commits.get(request.match_info["commit"]) if repo else None
        blob = commit.files.get(path) if commit else None
        if blob is None or commit is None:
            raise error(404, "Not Found")
        expires, client = request.query.get("expires", ""), request.query.get("client", "")
        signature = _sign(f"{repo_id}/{commit.sha}/{path}", expires, client)
        if request.query.get("signature") != signature:
            raise error(403, "Invalid signature")
        if time.time() > float(expires):  # a valid signature implies a well-formed float
            raise error(403, "Request has expired")
        faults = hub.fault_book.candidates("cdn", True, path, request.method)
        if (fault := FaultBook.take(faults, "status")) is not None:
            raise status_reply(fault)
        if FaultBook.take(faults, "redirect_loop") is not None:
            return redirect(str(request.url))
        return await _serve_body(
            request, blob, {"ETag": blob.cdn_etag}, faults, self._pacing(client)
        )

    def _pacing(self, client: str) -> Pacing:
        hub = self._hub
        bucket = hub.client_buckets.get(client, hub.client_rate)
        return Pacing(client, hub.connection_rate, bucket, hub.client_bytes)


async def _serve_body(
    request: web.Request,
    blob: Blob,
    headers: dict[str, str],
    faults: list[Fault],
    pacing: Pacing,
) -> web.StreamResponse:
    size = blob.size
    headers = {**headers, "Accept-Ranges": "bytes"}
    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    wanted: tuple[int, int] | Unsatisfiable | None = None
    if range_header is not None and (if_range is None or if_range == headers["ETag"]):
        wanted = parse_range(range_header, size)
    if wanted is not None and FaultBook.take(faults, "ignore_range") is not None:
        wanted = None
    if wanted == "unsatisfiable":
        headers["Content-Range"] = f"bytes */{size}"
        raise error(416, "Range Not Satisfiable", **headers)
    start, end = wanted if isinstance(wanted, tuple) else (0, size)
    response = web.StreamResponse(status=206 if isinstance(wanted, tuple) else 200, headers=headers)
    if isinstance(wanted, tuple):
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    response.content_type = "application/octet-stream"
    response.content_length = end - start
    exchange = request[EXCHANGE]
    exchange.status = response.status
    await response.prepare(request)
    if request.method != "HEAD":
        exchange.client = pacing.client
        try:
            await _write_body(request, response, blob, start, end, faults, pacing)
        except ConnectionResetError:
            # The client went away mid-body (a paused or cancelled transfer, a segment
            # handed to another connection): normal for a download server, not an error.
            return response
    return response


async def _write_body(
    request: web.Request,
    response: web.StreamResponse,
    blob: Blob,
    start: int,
    end: int,
    faults: list[Fault],
    pacing: Pacing,
) -> None:
    total = end - start
    exchange = request[EXCHANGE]
    take = FaultBook.take

    def take_cut(kind: FaultKind) -> Fault | None:
        usable = [f for f in faults if f.kind == kind and f.after_bytes < total]
        return take(usable, kind)

    stall, truncate, reset = take_cut("stall"), take_cut("truncate"), take_cut("reset")
    corrupt = take([f for f in faults if start <= f.after_bytes < end], "corrupt")
    throttle = take(faults, "throttle")
    rates = [r for r in (throttle.rate if throttle else None, pacing.connection_rate) if r]
    rate = min(rates) if rates else None  # this connection's cap: the lower of the two
    bucket = pacing.bucket
    piece = PIECE
    for cap in (rate, bucket.rate if bucket is not None else None):
        if cap is not None:
            piece = max(1, min(piece, 64 << 10, int(cap / 16)))
    loop = asyncio.get_running_loop()
    began = loop.time()
    pos = 0
    while True:
        if stall is not None and pos == stall.after_bytes:
            await asyncio.sleep(stall.seconds)
            stall = None
        if truncate is not None and pos == truncate.after_bytes:
            close_after_flush(request)
            return
        if reset is not None and pos == reset.after_bytes:
            await reset_connection(request)
            return
        if pos >= total:
            return
        limit = min(piece, total - pos)
        for cut in (stall, truncate, reset):
            if cut is not None and cut.after_bytes > pos:
                limit = min(limit, cut.after_bytes - pos)
        data: memoryview | bytearray = blob.view(start + pos, limit)
        if corrupt is not None and start + pos <= corrupt.after_bytes < start + pos + len(data):
            data = bytearray(data)
            data[corrupt.after_bytes - start - pos] ^= 0xFF
        if rate is not None:
            # A bucket that starts empty: n bytes may leave only once n/rate seconds passed.
            delay = began + (pos + len(data)) / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        if bucket is not None:  # then the client's share, with all its other connections
            await bucket.take(len(data))
        await response.write(data)
        pos += len(data)
        exchange.bytes_sent = pos
        pacing.sent[pacing.client] += len(data)
