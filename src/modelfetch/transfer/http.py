"""Fetch one file over HTTP: redirects by hand, resume with Range/If-Range, verify, publish.

The flow of one `fetch_file` call:
  1. Look at `<dest>.part` and its sidecar: a prefix we can trust becomes the resume offset.
  2. GET with `Range: bytes=N-` + `If-Range`, following redirects ourselves (so the token never
     leaves its origin and the Hub's `X-Linked-*` headers are read from the hop that sends them).
  3. 206 appends; 200 starts over; 416 publishes a complete partial or starts over once.
  4. Stream into the `.part` (pwrite on the loop, SHA-256 on the part's digest thread), with a
     stall deadline around every read.
  5. Verify size and digest, fsync, rename into place, fsync the directory.
A small body fetched from zero (at most SMALL_BODY_LIMIT) is received into memory instead, and
steps 4-5 happen in one worker-thread call (`_receive_small`); if it stops early, what arrived is
written as the `.part` then, so it resumes exactly like a streamed body.
A large file with a known size may instead go segmented (several ranged connections, see
transfer/segments.py): `_run_segmented` makes the first ranged request here, with the same
redirect, validator and cross-check rules, and falls back to the single stream above when the
server answers a ranged request with the whole body.
Every failure leaves as a `TransferError` subclass, translated in `_translate_exception` /
`_status_error` (the only places that look at the HTTP client's exceptions and HTTP statuses).
The HTTP client is our own (transfer/wire.py): importing aiohttp would cost more than a whole
small download.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import os
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import urljoin, urlsplit, urlunsplit

from modelfetch.core.errors import (
    AuthRequiredError,
    ForbiddenError,
    GatedError,
    HTTPStatusError,
    IntegrityError,
    NetworkError,
    NotFoundError,
    RateLimitedError,
    SchemeError,
    ServerBusyError,
    StalledError,
    TooManyRedirectsError,
    TransferError,
)
from modelfetch.core.headers import (
    is_strong_etag,
    linked_digest,
    origin_of,
    parse_content_length,
    parse_content_range,
    retry_after_seconds,
    total_size,
)
from modelfetch.core.paths import part_path, sidecar_path
from modelfetch.core.segments import SegmentMap, SegmentRecord
from modelfetch.transfer.api import (
    ProgressCallback,
    SegmentsCallback,
    StopSignal,
    TransferRequest,
    TransferResult,
)
from modelfetch.transfer.limiter import ConnectionSlots, Slot, TokenBucket, read_size_for
from modelfetch.transfer.segments import (
    RECV_STEP,
    FirstPiece,
    SegmentedFetch,
    SegmentSettings,
    piece_size,
)
from modelfetch.transfer.sink import (
    INLINE_HASH_LIMIT,
    Digests,
    PartFile,
    PartState,
    SegmentedPartFile,
    disk_full,
    remove_partial,
    require_space,
    sync_and_publish,
    verify_and_publish_body,
    write_prefix,
)
from modelfetch.transfer.wire import (
    ConnectError,
    ConnectTimeoutError,
    Headers,
    IncompleteBodyError,
    InvalidURLError,
    NameResolutionError,
    ProtocolError,
    Response,
    ServerDisconnectedError,
    Session,
    WireError,
)

READ_BUFSIZE = 4 << 20
MIN_CHUNK_SIZE = 1 << 20
SMALL_PART_LIMIT = 4 << 20  # files up to this size write their sidecar only if they stop early
# Bodies up to this size, fetched from zero, are received into memory and written, hashed and
# published in one worker-thread call (`_receive_small`). Measured with 16 files at a time from
# nginx on loopback (2 vCPUs): at 256 and 512 KiB the loop's CPU falls by 40-45% and the wall
# time holds or improves; at 1 MiB and 4 MiB the loop still saves CPU but the wall time grows
# (15% and 35%: allocating, faulting in and copying a fresh buffer per file, and the GIL waits
# of the worker, cost more than the streaming path's fixed per-file work at those sizes).
SMALL_BODY_LIMIT = 512 << 10
assert SMALL_BODY_LIMIT <= SMALL_PART_LIMIT  # a held body's prefix is recorded only if it stops
PROGRESS_INTERVAL = 0.1
_HEX = re.compile(r"[0-9a-f]+")
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_T = TypeVar("_T")

# What `make_session` returns and `fetch_file` takes: callers name this, not the client library.
TransferSession = Session


def make_session(
    *,
    connect_timeout: float = 30.0,
    limit: int = 100,
    ssl_context: ssl.SSLContext | None = None,
) -> TransferSession:
    """The session every transfer shares (use it as `async with`, or `await close()` it). No
    total timeout (a 50 GB file takes as long as it takes); stalls are caught per transfer.
    `Accept-Encoding: identity` because we store bytes as served and never decompress (a
    gzip-encoded body would not match the Hub's digest). `limit`: idle keep-alive connections
    kept in all; `ssl_context`: what https trusts (default: the system's, made on first use)."""
    from modelfetch import __version__  # lazily: the package facade may import this module

    return Session(
        headers={"User-Agent": f"modelfetch/{__version__}", "Accept-Encoding": "identity"},
        connect_timeout=connect_timeout,
        ssl_context=ssl_context,
        max_idle=limit,
    )


async def fetch_file(
    session: TransferSession,
    request: TransferRequest,
    *,
    on_progress: ProgressCallback | None = None,
    stop: StopSignal | None = None,
    on_segments: SegmentsCallback | None = None,
    limits: Sequence[TokenBucket] = (),
    slots: ConnectionSlots | None = None,
) -> TransferResult:
    """Download `request.url` to `request.dest`, resuming from `<dest>.part` when it is still the
    beginning of the same file. Returns only after the verified file is under its final name;
    raises a `TransferError` subclass otherwise (CancelledError passes through, see StopSignal).

    Shared limits (owned by the caller, the same objects for every transfer they govern):
    `limits` are bandwidth buckets every received byte passes through (e.g. the download's own
    and the global one); `slots` caps concurrent connections in total and per host. Segmented
    mode (`request.connections > 1`) needs `on_segments` to persist its map for a resume across
    processes; without it a stopped segmented `.part` cannot be resumed by a later call."""
    transfer = _Transfer(session, request, on_progress, stop)
    transfer.on_segments = on_segments
    transfer.limits = tuple(limits)
    transfer.slots = slots
    return await transfer.run()


def _normalise_hex(value: str | None, length: int, field: str) -> str | None:
    if value is None:
        return None
    text = value.strip().lower()
    if len(text) != length or not _HEX.fullmatch(text):
        raise ValueError(f"{field} must be {length} hex digits, got {value!r}")
    return text


def _redact(url: str) -> str:
    """A URL fit for error messages and the store: no credentials, no signed query string."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class _Transfer:
    """The state of one `fetch_file` call."""

    def __init__(
        self,
        session: TransferSession,
        request: TransferRequest,
        on_progress: ProgressCallback | None,
        stop: StopSignal | None,
    ) -> None:
        self.session = session
        self.request = request
        self.on_progress = on_progress
        self.stop = stop
        self.dest = Path(request.dest)
        self.part_path = part_path(self.dest)
        self.sidecar_path = sidecar_path(self.dest)
        self.chunk_size = max(request.chunk_size, MIN_CHUNK_SIZE)
        self.stall_timeout = request.stall_timeout if request.stall_timeout > 0 else None
        self.expected_sha256 = _normalise_hex(request.expected_sha256, 64, "expected_sha256")
        self.expected_git_oid = _normalise_hex(request.expected_git_oid, 40, "expected_git_oid")
        self.auth_origin: str | None = None
        if request.credentials is not None:
            self.auth_origin = origin_of(request.credentials.origin)
        self.url = request.url  # the hop in flight, for error reports
        self.linked_sha256: str | None = None
        self.linked_size: int | None = None
        self.repo_commit: str | None = None
        self.state: PartState | None = None
        self.part: PartFile | None = None
        self.total: int | None = None
        self.bytes_fetched = 0
        self.resumed_from = 0
        self.last_report = -math.inf
        self.on_segments: SegmentsCallback | None = None
        self.limits: tuple[TokenBucket, ...] = ()
        self.slots: ConnectionSlots | None = None
        self.resume_map: SegmentMap | None = None  # the segmented partial found on disk
        self.segmap: SegmentMap | None = None  # the map in use, while segmented
        self.slot: Slot | None = None  # the connection slot held by the request in flight
        self.steals = 0
        self.connections = 1
        self.reopened = 0
        self.unrecorded = False  # a small file's `.part` whose sidecar is not written yet
        self.held: _HeldBody | None = None  # a small body received into memory, not on disk yet
        # No `.part` was found, and a sidecar without one (left by a crash between two unlinks)
        # may still be there: it is removed when a `.part` is begun or published, not by an
        # unlink on every start (an unlink takes the directory's lock, which the worker
        # threads' creates and renames in the same directory hold while the journal commits).
        self.stray_sidecar = False

    # -- the whole call ----------------------------------------------------------------------

    async def run(self) -> TransferResult:
        try:
            return await self._run()
        except asyncio.CancelledError:
            self._close_part()
            reason = self.stop.reason if self.stop is not None else None
            if reason is not None and not reason.keeps_partial:
                self.held = None
                remove_partial(self.part_path, self.sidecar_path)
            self._spill_held()
            self._record_small_partial()
            self._save_segments()
            raise
        except Exception as exc:
            self._close_part()
            self._spill_held()
            self._record_small_partial()
            self._save_segments()
            translated = _translate_exception(exc, url=self.url, stall=self.stall_timeout)
            if translated is None:
                raise
            raise translated from exc
        finally:
            self._close_part()  # idempotent; also for BaseExceptions such as KeyboardInterrupt

    async def _run(self) -> TransferResult:
        if not os.path.isdir(self.dest.parent):  # one stat where mkdir costs two calls
            self.dest.parent.mkdir(parents=True, exist_ok=True)
        offset = self._usable_partial()
        total = self._segment_total()
        if total is not None:
            return await self._run_segmented(total, offset)
        self.slot = await self._acquire_slot(self.request.url)
        try:
            return await self._run_single(offset)
        finally:
            if self.slot is not None:
                self.slot.release()
                self.slot = None

    async def _run_single(self, offset: int) -> TransferResult:
        self._report(offset, self._known_total(), force=True)
        restarted_after_416 = False
        while True:
            response, redirected = await self._request(offset)
            try:
                await self._move_slot(self.url)
                status = response.status
                if status not in (200, 206, 416) or (status == 416 and offset == 0):
                    raise _status_error(response, url=self.url, redirected=redirected)
                self._cross_check_plan()
                if offset > 0 and self._partial_is_stale(response):
                    # The Hub now describes another file than the one our prefix belongs to.
                    self._start_over()
                    offset = 0
                    continue
                if status == 416:
                    total = self._total_after_416(response.headers)
                    self._check_announced_size(total)
                    if total is not None and offset == total:
                        response.release()
                        return await self._publish_complete_partial(response.headers, offset)
                    if restarted_after_416:
                        raise _status_error(response, url=self.url, redirected=redirected)
                    # Our prefix is longer than the file, or the server forgot it: start over.
                    restarted_after_416 = True
                    self._start_over()
                    offset = 0
                    continue
                return await self._receive(response, offset)
            finally:
                response.close()

    # -- segmented mode (several ranged connections; see transfer/segments.py) -------------------

    def _segment_total(self) -> int | None:
        """The size to split when this transfer goes segmented, else None (single stream)."""
        if self.resume_map is not None:
            return self.resume_map.total  # a segmented partial can only continue segmented
        if self.request.connections <= 1:
            return None
        size = self.request.expected_size
        if size is None and self.state is not None:
            size = self.state.total
        if size is None or size < max(1, self.request.segment_threshold):
            return None
        return size

    async def _run_segmented(self, total: int, offset: int) -> TransferResult:
        """Claim the first piece, make its request (redirects, validators, cross-checks), set up
        the `.part` and hand over to `SegmentedFetch`; fall back to one stream on a 200."""
        segmap = self.resume_map
        if segmap is None:  # a fresh start, or a front-to-back prefix that goes segmented now
            segmap = SegmentMap(total, _prefix_records(offset, total) if offset else None)
        connections = max(1, self.request.connections)
        settings = SegmentSettings(
            connections=connections,
            piece=piece_size(total, connections, self.request.min_segment_size),
            min_steal=max(1, self.request.min_steal_size),
            stall_timeout=self.stall_timeout,
            chunk_size=self.chunk_size,
            checkpoint_interval=self.request.checkpoint_interval,
        )
        started_over = False
        while True:
            resuming = self.state is not None and self.state.segmented
            self.segmap = segmap
            # The map is recorded before the `.part` changes, so a crash can never pair a new
            # file with an old map.
            self._save_segments()
            self._report(segmap.done_bytes, total, force=True)
            self.resumed_from = segmap.done_bytes
            first = segmap.claim(0, piece=settings.piece, min_steal=settings.min_steal)
            # A complete map (a crash after the last byte) still asks for one byte: that checks
            # the file is unchanged and brings the headers to publish with.
            start, end = (first.pos, first.end) if first is not None else (total - 1, total)
            self.slot = await self._acquire_slot(self.request.url)
            response: Response | None = None
            try:
                response, redirected = await self._request(start, end=end)
                await self._move_slot(self.url)
                status = response.status
                if status not in (200, 206):
                    if status == 416:
                        self._check_announced_size(self._total_after_416(response.headers))
                    raise _status_error(response, url=self.url, redirected=redirected)
                self._cross_check_plan()
                if status == 200:
                    # Range ignored, or If-Range found another file: one stream from zero.
                    self.segmap = None
                    if self.on_segments is not None:
                        self.on_segments(None)
                    return await self._receive(response, 0)
                parsed = parse_content_range(response.headers.get("Content-Range"))
                if parsed is None or parsed.start != start:
                    raise NetworkError(
                        f"asked for bytes from {start},"
                        f" got {response.headers.get('Content-Range')}",
                        url=_redact(self.url),
                    )
                kept = resuming or offset > 0
                if parsed.total != total or (kept and self._partial_is_stale(response)):
                    if parsed.total is not None and parsed.total != total:
                        self._check_announced_size(parsed.total)  # the plan disagrees: refuse
                    if started_over or not kept:
                        raise IntegrityError(
                            f"server announces {parsed.total} bytes, expected {total}",
                            url=_redact(self.url),
                            expected=str(total),
                            actual=str(parsed.total),
                        )
                    # Our partial belongs to another version of the file: start over, once.
                    started_over = True
                    response.close()
                    remove_partial(self.part_path, self.sidecar_path)
                    self.state = None
                    offset = 0
                    total = parsed.total if parsed.total is not None else total
                    segmap = SegmentMap(total)
                    continue
                self._begin_segmented_part(response, total, fresh=not resuming)
                self._save_segments()
                part = self.part
                assert isinstance(part, SegmentedPartFile)
                await part.start_digests(git_blob_size=total if self.expected_git_oid else None)
                headers = response.headers
                if first is None:
                    response.close()
                    response = None
                    break
                fetch = SegmentedFetch(
                    segmap=segmap,
                    part=part,
                    open_range=self._open_range_from(self.url, redirected),
                    host=_host_of(self.url),
                    settings=settings,
                    slots=self.slots,
                    limits=self.limits,
                    on_progress=self._report_done,
                    on_checkpoint=self._save_segments,
                    url=_redact(self.url),
                )
                piece = FirstPiece(first, response, self.slot)
                response = self.slot = None
            finally:
                if response is not None:
                    response.close()
                if self.slot is not None:
                    self.slot.release()
                    self.slot = None
            try:
                await fetch.run(piece)
            finally:
                self.bytes_fetched += fetch.bytes_fetched
                self.steals = segmap.steals
                self.connections = fetch.peak
                self.reopened = fetch.reopened
            break
        self._save_segments()  # complete: if publishing fails, a retry needs no bytes again
        part.hash_upto(total)
        result = await self._verify_and_publish(headers)
        self.segmap = None
        if self.on_segments is not None:
            self.on_segments(None)
        return result

    def _begin_segmented_part(self, response: Response, total: int, *, fresh: bool) -> None:
        """Open the `.part` allocated to `total` bytes; a fresh one gets its sidecar first."""
        encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity":
            raise TransferError(
                f"server applied Content-Encoding {encoding!r} despite identity",
                url=_redact(self.url),
            )
        if fresh or self.state is None:
            etag = response.headers.get("ETag")
            validator = etag if is_strong_etag(etag) else response.headers.get("Last-Modified")
            if self.state is not None and self.state.validator:
                validator = self.state.validator  # a prefix going segmented keeps its own
            self.state = PartState(
                url=self.request.url,
                validator=validator,
                total=total,
                sha256=self._expected_digest(),
                segmented=True,
            )
            self.state.save(self.sidecar_path)
        self.total = total
        part = self.part = SegmentedPartFile(self.part_path, total)
        part.check_free_space(total)
        part.allocate()

    def _open_range_from(
        self, url: str, redirected: bool
    ) -> Callable[[int, int], Awaitable[Response]]:
        """How the other connections ask for a piece: straight at the URL the first request
        ended at (the CDN), with the partial's validator, checking every answer."""
        validator = self.state.validator if self.state is not None else None
        total = self.total

        async def open_range(start: int, end: int) -> Response:
            response, hopped = await self._request(start, end=end, url=url, validator=validator)
            try:
                if response.status == 206:
                    parsed = parse_content_range(response.headers.get("Content-Range"))
                    if parsed is None or parsed.start != start or parsed.total != total:
                        raise NetworkError(
                            f"asked for bytes {start}-{end - 1}/{total},"
                            f" got {response.headers.get('Content-Range')}",
                            url=_redact(url),
                        )
                    return response
                if response.status == 200:
                    if validator:
                        raise IntegrityError(
                            "the file changed on the server during the download",
                            url=_redact(url),
                        )
                    raise NetworkError("the server stopped honouring Range", url=_redact(url))
                raise _status_error(response, url=self.url, redirected=redirected or hopped)
            except BaseException:
                response.close()
                raise

        return open_range

    async def _acquire_slot(self, url: str) -> Slot | None:
        return None if self.slots is None else await self.slots.acquire(_host_of(url))

    async def _move_slot(self, url: str) -> None:
        """The body comes from `url` (after redirects): count the connection against that
        host's cap, so the caps hold as the serving host sees them."""
        slot = self.slot
        if slot is not None and slot.host != _host_of(url):
            self.slot = None
            slot.release()
            self.slot = await self._acquire_slot(url)

    def _save_segments(self) -> None:
        """Hand the current map to the caller to persist (None once the `.part` is gone)."""
        if self.segmap is None or self.on_segments is None:
            return
        if self.part_path.exists():
            self.on_segments(self.segmap.records())
        else:
            self.on_segments(None)

    # -- before the request ------------------------------------------------------------------

    def _usable_partial(self) -> int:
        """The resume offset: the size of a `.part` whose sidecar says it is the beginning of the
        file we want; an untrustworthy one is deleted (it could only poison the result)."""
        try:
            size = self.part_path.stat().st_size
        except FileNotFoundError:  # the usual case: no partial, and no sidecar worth reading
            self.stray_sidecar = True
            self._forget_stale_map()
            return 0
        state = PartState.load(self.sidecar_path)
        want_sha = self.expected_sha256
        want_size = self.request.expected_size
        usable = state is not None
        if state is not None:
            if want_sha is not None and state.sha256 is not None:
                usable = want_sha == state.sha256
            else:
                usable = state.url == self.request.url
            if want_size is not None and state.total is not None and want_size != state.total:
                usable = False
            known_total = state.total if state.total is not None else want_size
            if known_total is not None and size > known_total:
                usable = False
        if usable and state is not None and state.segmented:
            self.resume_map = self._resumable_map(state, size)
            usable = self.resume_map is not None
        if not usable:
            remove_partial(self.part_path, self.sidecar_path)
            self._forget_stale_map()
            return 0
        self.state = state
        if self.resume_map is not None:
            return 0  # the map, not an offset, says what is on disk
        self._forget_stale_map()
        return size

    def _resumable_map(self, state: PartState, size: int) -> SegmentMap | None:
        """The segment map handed back by the caller, if it fits this segmented `.part`."""
        records = self.request.segments
        if records is None or state.total is None:
            return None
        try:
            segmap = SegmentMap(state.total, records)
        except ValueError:
            return None
        # Bytes the map counts must lie inside the file (its allocation may not have happened).
        if any(s.done and s.pos > size for s in segmap):
            return None
        return segmap

    def _forget_stale_map(self) -> None:
        """A map was handed in but the `.part` it described is gone or not segmented."""
        if self.request.segments is not None and self.on_segments is not None:
            self.on_segments(None)

    def _partial_is_stale(self, response: Response) -> bool:
        """True when the answer to a resume shows that our prefix belongs to another version:
        a different digest from the Hub, or a 206 for a different total size."""
        if self.state is None:
            return False
        current = self.expected_sha256 or self.linked_sha256
        if self.state.sha256 is not None and current is not None and self.state.sha256 != current:
            return True
        if response.status == 206 and self.state.total is not None:
            parsed = parse_content_range(response.headers.get("Content-Range"))
            if parsed is None or parsed.total in (None, self.state.total):
                return False
            # When the plan pins the size and the prefix was begun for that size, a different
            # total is the answer lying, not our prefix going stale: keep the `.part` and let
            # the size check refuse the answer.
            expected = self.request.expected_size
            return expected is None or expected != self.state.total
        return False

    def _start_over(self) -> None:
        remove_partial(self.part_path, self.sidecar_path)
        self.state = None
        self._report(0, self._known_total(), force=True)

    def _known_total(self) -> int | None:
        if self.total is not None:
            return self.total
        if self.state is not None and self.state.total is not None:
            return self.state.total
        return self.request.expected_size

    # -- the request and its redirects -------------------------------------------------------

    async def _request(
        self,
        offset: int,
        *,
        end: int | None = None,
        url: str | None = None,
        validator: str | None = None,
    ) -> tuple[Response, bool]:
        """GET, following up to `max_redirects` redirects by hand. Returns the first non-redirect
        response (unread) and whether it was reached through a redirect. Asks for bytes from
        `offset` (to `end`, exclusive, when given), with `If-Range: validator` (by default the
        partial's); starts at `url` (by default the request's)."""
        conditional: dict[str, str] = {}
        if offset > 0 or end is not None:
            conditional["Range"] = f"bytes={offset}-{'' if end is None else end - 1}"
            if validator is None and self.state is not None:
                validator = self.state.validator
            if validator:
                conditional["If-Range"] = validator
        url = url or self.request.url
        redirected = False
        for _ in range(self.request.max_redirects + 1):
            self.url = url
            scheme = urlsplit(url).scheme.lower()
            if scheme not in self.request.allowed_schemes:
                raise SchemeError(
                    f"refusing to fetch a {scheme or 'relative'} URL", url=_redact(url)
                )
            allowed_hosts = self.request.allowed_hosts
            host = (urlsplit(url).hostname or "").lower()
            if allowed_hosts is not None and host not in allowed_hosts:
                raise SchemeError(
                    f"refusing to fetch from {host or 'no host'}: only"
                    f" {', '.join(sorted(allowed_hosts))} allowed",
                    url=_redact(url),
                )
            headers = dict(conditional)
            if self._may_authenticate(url) and self.request.credentials is not None:
                headers["Authorization"] = f"Bearer {self.request.credentials.token}"
            async with asyncio.timeout(self.stall_timeout):  # also bounds waiting for the head
                response = await self.session.request(
                    "GET",
                    url,
                    headers=headers,
                    connect_timeout=self.request.connect_timeout,
                    recv_size=self._limited_recv_size(),
                )
            self._note_hub_headers(response.headers)
            if 300 <= response.status < 400 and response.status != 304:
                location = response.headers.get("Location")
                response.release()
                if not location:
                    raise NetworkError(
                        f"HTTP {response.status} redirect without a Location", url=_redact(url)
                    )
                url = urljoin(url, location.strip())
                redirected = True
                continue
            return response, redirected
        raise TooManyRedirectsError(
            f"more than {self.request.max_redirects} redirects", url=_redact(url)
        )

    def _may_authenticate(self, url: str) -> bool:
        if self.auth_origin is None:
            return False
        try:
            return origin_of(url) == self.auth_origin
        except ValueError:
            return False

    def _note_hub_headers(self, headers: Headers) -> None:
        """The Hub's resolve hop describes the file; the CDN's own ETag never does."""
        if self.linked_sha256 is None:
            self.linked_sha256 = linked_digest(headers.get("X-Linked-Etag"))
        if self.linked_size is None:
            self.linked_size = parse_content_length(headers.get("X-Linked-Size"))
        if self.repo_commit is None:
            commit = (headers.get("X-Repo-Commit") or "").strip()
            self.repo_commit = commit or None

    def _cross_check_plan(self) -> None:
        """The plan and the Hub must agree on what the file is before we spend bandwidth on it."""
        if (
            self.expected_sha256 is not None
            and self.linked_sha256 is not None
            and self.expected_sha256 != self.linked_sha256
        ):
            raise IntegrityError(
                "the Hub now serves a different file than planned (X-Linked-Etag differs)",
                url=_redact(self.url),
                expected=self.expected_sha256,
                actual=self.linked_sha256,
            )
        want = self.request.expected_size
        if want is not None and self.linked_size is not None and want != self.linked_size:
            raise IntegrityError(
                f"the Hub announces {self.linked_size} bytes, the plan expects {want}",
                url=_redact(self.url),
                expected=str(want),
                actual=str(self.linked_size),
            )

    def _expected_size(self) -> int | None:
        if self.request.expected_size is not None:
            return self.request.expected_size
        return self.linked_size

    def _expected_digest(self) -> str | None:
        if self.expected_sha256 is not None:
            return self.expected_sha256
        if self.linked_sha256 is not None:
            return self.linked_sha256
        return self.state.sha256 if self.state is not None else None

    # -- responses ---------------------------------------------------------------------------

    def _total_after_416(self, headers: Headers) -> int | None:
        parsed = parse_content_range(headers.get("Content-Range"))
        if parsed is not None and parsed.start is None and parsed.total is not None:
            return parsed.total
        if self.state is not None and self.state.total is not None:
            return self.state.total
        return self._expected_size()

    async def _publish_complete_partial(self, headers: Headers, size: int) -> TransferResult:
        self.total = size
        self.resumed_from = size
        self.part = PartFile(self.part_path)
        await self.part.start_digests(
            git_blob_size=size if self.expected_git_oid else None,
            inline=size <= INLINE_HASH_LIMIT,
        )
        return await self._verify_and_publish(headers)

    async def _receive(self, response: Response, offset: int) -> TransferResult:
        headers = response.headers
        encoding = (headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity":
            raise TransferError(
                f"server applied Content-Encoding {encoding!r} despite identity",
                url=_redact(self.url),
            )
        if response.status == 206:
            parsed = parse_content_range(headers.get("Content-Range"))
            if parsed is None or parsed.start is None:
                raise NetworkError("206 without a usable Content-Range", url=_redact(self.url))
            if parsed.start != offset:
                raise NetworkError(
                    f"asked for bytes from {offset}, got {parsed.start}", url=_redact(self.url)
                )
        else:  # 200: the whole body, whatever we asked for
            offset = 0
        announced = total_size(
            status=response.status,
            content_range=headers.get("Content-Range"),
            content_length=headers.get("Content-Length"),
            offset=offset,
        )
        self._check_announced_size(announced)
        expected = self._expected_size()
        self.total = announced if announced is not None else expected
        if offset == 0 and self.total is not None and self.total <= SMALL_BODY_LIMIT:
            return await self._receive_small(response, self.total)
        self._begin_part(headers, offset)
        part = self.part
        assert part is not None
        if self.total is not None:
            part.check_free_space(self.total)
            part.reserve(self.total)
        await part.start_digests(
            git_blob_size=self.total if self.expected_git_oid else None,
            inline=self.total is not None and self.total <= INLINE_HASH_LIMIT,
        )
        self.resumed_from = offset
        await self._stream(response, part)
        response.release()
        if self.total is not None and part.size < self.total:
            raise NetworkError(
                f"connection closed after {part.size} of {self.total} bytes", url=_redact(self.url)
            )
        return await self._verify_and_publish(headers)

    def _check_announced_size(self, announced: int | None) -> None:
        """A server announcing another size than planned serves another file: refuse it before
        a byte is written (and leave any partial alone: it may still be the right file's)."""
        expected = self._expected_size()
        if announced is not None and expected is not None and announced != expected:
            raise IntegrityError(
                f"server announces {announced} bytes, expected {expected}",
                url=_redact(self.url),
                expected=str(expected),
                actual=str(announced),
            )

    def _begin_part(self, headers: Headers, offset: int) -> None:
        """Open the `.part` at `offset`; a fresh start (re)writes the sidecar first, so a `.part`
        is never trusted without a record of what it holds.

        A small file (known size up to SMALL_PART_LIMIT) starts without a sidecar: creating
        one costs more than the file's download (an inode, a write, a rename: about 0.6 ms
        here), and most such files finish in one go. If the transfer stops or fails with bytes
        on disk, the sidecar is written then (`_record_small_partial`), so the prefix resumes
        like any other; after a crash, a `.part` without one is deleted and fetched again,
        which costs at most SMALL_PART_LIMIT bytes."""
        if offset == 0 or self.state is None:
            had_record = self.state is not None
            self.state = self._fresh_state(headers)
            if offset == 0 and self.total is not None and self.total <= SMALL_PART_LIMIT:
                self.unrecorded = True
                if had_record or self.stray_sidecar:  # no old record may describe new bytes
                    self.sidecar_path.unlink(missing_ok=True)
            else:
                self.state.save(self.sidecar_path)
            self.stray_sidecar = False
        self.part = PartFile(self.part_path)
        if self.part.size != offset:
            had = self.part.size
            self.part.discard()
            if offset != 0:
                raise NetworkError(
                    f"{self.part_path.name} changed during the request ({had} != {offset} bytes)",
                    url=_redact(self.url),
                )
            if had:
                self._report(0, self.total, force=True)

    def _fresh_state(self, headers: Headers) -> PartState:
        """The record of a `.part` begun from zero with this response's validator."""
        etag = headers.get("ETag")
        validator = etag if is_strong_etag(etag) else headers.get("Last-Modified")
        return PartState(
            url=self.request.url,
            validator=validator,
            total=self.total,
            sha256=self._expected_digest(),
        )

    async def _receive_small(self, response: Response, total: int) -> TransferResult:
        """A small body from zero: received into memory on the loop (progress as usual), then
        hashed, verified, written, fsynced and published in one worker-thread call, so the disk
        and the hash overlap with the loop serving other connections. Nothing is on disk until
        the body is complete and verified; an attempt that ends earlier writes what arrived as
        the `.part` (`_spill_held`), and a resume sends the Range it always would.

        No sidecar of ours exists meanwhile (an old record goes here; a stray one found by
        `_usable_partial` goes with the publish, as on the streaming path). The `.part` this
        creates is already the whole verified body, so even a stray record beside it after a
        crash describes a complete copy of the file. The worker makes as few calls as it can:
        each that releases the GIL waits to take it back while the loop runs Python, and that
        wait is part of every file's latency."""
        headers = response.headers
        had_record = self.state is not None
        self.state = self._fresh_state(headers)
        self.unrecorded = True  # its sidecar is written only if a prefix outlives the attempt
        if had_record:
            # A prefix from before (the server sent the whole body instead of our range): it
            # is not the beginning of this body, and the old record must not describe it.
            remove_partial(self.part_path, self.sidecar_path)
            self._report(0, total, force=True)
        require_space(self.part_path, total)  # before the body, as on the streaming path
        self.resumed_from = 0
        body = self.held = _HeldBody(total)
        await self._stream(response, body)
        response.release()
        if body.size < total:
            raise NetworkError(
                f"connection closed after {body.size} of {total} bytes", url=_redact(self.url)
            )
        self.held = None  # from here on the worker thread owns the bytes and the disk side
        want_sha256 = self._expected_digest()
        verify = partial(
            _check_digests,
            sha256=want_sha256,
            git_oid=self.expected_git_oid,
            name=self.dest.name,
            url=_redact(self.url),
        )
        digests = await _finish_off_loop(
            partial(
                verify_and_publish_body,
                body.view,
                self.part_path,
                self.dest,
                self.sidecar_path if self.stray_sidecar else None,
                git_oid=self.expected_git_oid is not None,
                verify=verify,
            )
        )
        self.unrecorded = False
        self._report(total, total, force=True)
        verified = want_sha256 is not None or self.expected_git_oid is not None
        return self._result(headers, digests, verified=verified)

    async def _stream(self, response: Response, part: _Body) -> None:
        """Copy the body into the `.part` (or memory). Each chunk is a view of the connection's
        receive buffer (no bytes object per chunk), valid until the next read."""
        loop = asyncio.get_running_loop()
        limit = self.total
        stall = self.stall_timeout
        size = self.chunk_size
        async with asyncio.timeout(stall) as deadline:
            while True:
                if self.limits:  # a bandwidth limit: smaller reads, re-sized as it changes
                    size = read_size_for(self.chunk_size, self.limits)
                data = await response.read_chunk(size)
                if not data:
                    break
                if limit is not None and part.size + len(data) > limit:
                    self._close_part()
                    self.held = None
                    remove_partial(self.part_path, self.sidecar_path)
                    raise IntegrityError(
                        f"server sent more than the expected {limit} bytes",
                        url=_redact(self.url),
                        expected=str(limit),
                        actual=f">{limit}",
                    )
                if stall is not None:
                    deadline.reschedule(None)  # the stall clock measures the network only
                for bucket in self.limits:
                    await bucket.consume(len(data))
                await part.write(data)
                self.bytes_fetched += len(data)
                if stall is not None:
                    deadline.reschedule(loop.time() + stall)
                self._report(part.size, self.total)

    async def _verify_and_publish(self, headers: Headers) -> TransferResult:
        part = self.part
        assert part is not None
        expected_size = self._expected_size()
        if expected_size is not None and part.size < expected_size:
            # The body ended cleanly but early (no length announced): a resumable prefix.
            raise NetworkError(f"got {part.size} of {expected_size} bytes", url=_redact(self.url))
        if self.expected_git_oid is not None and part.git_blob_size != part.size:
            # The size was unknown when we began: hash again from the file.
            await part.start_digests(git_blob_size=part.size, inline=part.size <= INLINE_HASH_LIMIT)
        digests = await part.finish_digests()
        try:
            verified = _check_digests(
                digests,
                sha256=self._expected_digest(),
                git_oid=self.expected_git_oid,
                name=self.dest.name,
                url=_redact(self.url),
            )
        except IntegrityError:
            self._close_part()
            remove_partial(self.part_path, self.sidecar_path)
            raise
        # fsync, rename, fsync the directory: on one worker thread (milliseconds of waiting
        # for the disk that would stall every other transfer; many files' can overlap there).
        self.part = None
        fd = part.detach()
        await _finish_off_loop(
            partial(sync_and_publish, fd, self.part_path, self.dest, self.sidecar_path)
        )
        self._report(part.size, part.size, force=True)
        return self._result(headers, digests, verified=verified)

    def _result(self, headers: Headers, digests: Digests, *, verified: bool) -> TransferResult:
        return TransferResult(
            path=self.dest,
            size=digests.size,
            sha256=digests.sha256,
            verified=verified,
            etag=headers.get("ETag"),
            last_modified=headers.get("Last-Modified"),
            repo_commit=self.repo_commit,
            resumed_from=self.resumed_from,
            bytes_fetched=self.bytes_fetched,
            connections=self.connections,
            steals=self.steals,
        )

    # -- bookkeeping -------------------------------------------------------------------------

    def _report(self, done: int, total: int | None, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.on_progress is None or (not force and now - self.last_report < PROGRESS_INTERVAL):
            return
        self.last_report = now
        self.on_progress(done, total)

    def _report_done(self, done: int) -> None:
        self._report(done, self.total)

    def _record_small_partial(self) -> None:
        """A small file's `.part` that outlives this attempt gets its sidecar now."""
        if not self.unrecorded or self.state is None:
            return
        self.unrecorded = False
        with contextlib.suppress(OSError):
            if self.part_path.exists():
                self.state.save(self.sidecar_path)

    def _spill_held(self) -> None:
        """A held small body whose attempt ends early: what arrived becomes the `.part` (its
        sidecar follows in `_record_small_partial`), the prefix a streamed body would have left.
        A failed write keeps what landed; the attempt's own error is the one that counts."""
        held, self.held = self.held, None
        if held is None or held.size == 0:
            return
        with contextlib.suppress(OSError):
            if self.stray_sidecar:  # replaced by `_record_small_partial`, unless that fails
                self.sidecar_path.unlink(missing_ok=True)
                self.stray_sidecar = False
            write_prefix(self.part_path, held.view[: held.size])

    def _limited_recv_size(self) -> int:
        """Under a bandwidth limit, how much one receive may take from the first (0: no cap)."""
        if not any(bucket.rate is not None for bucket in self.limits):
            return 0
        return read_size_for(RECV_STEP, self.limits)

    def _close_part(self) -> None:
        if self.part is not None:
            part, self.part = self.part, None
            with contextlib.suppress(OSError):
                part.close()


class _Body(Protocol):
    """Where `_stream` puts body bytes: the `.part` (PartFile) or memory (_HeldBody)."""

    size: int

    async def write(self, data: bytes | memoryview) -> None: ...


class _HeldBody:
    """A small body received into memory: one buffer of its announced size, filled in order."""

    __slots__ = ("size", "view")

    def __init__(self, total: int) -> None:
        self.view = memoryview(bytearray(total))
        self.size = 0

    async def write(self, data: bytes | memoryview) -> None:
        end = self.size + len(data)
        self.view[self.size : end] = data  # never past the end: _stream checks the limit first
        self.size = end


def _check_digests(
    digests: Digests, *, sha256: str | None, git_oid: str | None, name: str, url: str
) -> bool:
    """IntegrityError unless the digests are the expected ones (those that are known); whether
    anything was checked."""
    checks: list[tuple[str, str, str]] = []
    if sha256 is not None:
        checks.append(("SHA-256", sha256, digests.sha256))
    if git_oid is not None:
        checks.append(("git blob id", git_oid, digests.git_oid or ""))
    for what, want, got in checks:
        if want != got:
            raise IntegrityError(f"{what} mismatch for {name}", url=url, expected=want, actual=got)
    return bool(checks)


async def _finish_off_loop(call: Callable[[], _T]) -> _T:
    """`call` (the last step of a transfer: the publish) on a worker thread. A cancel that
    arrives once it has started is too late: the thread is waited for and, if the verified file
    made it under its final name, the transfer returns as completed (so the caller records what
    is on disk, instead of calling "cancelled" or "paused" a file that is already complete). A
    failed call still raises the CancelledError."""
    task = asyncio.ensure_future(asyncio.to_thread(call))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        try:
            result = await task
        except Exception:
            pass
        else:
            return result  # published: the cancel came too late (swallowed deliberately)
        raise


def _host_of(url: str) -> str:
    """The key of the per-host connection cap: scheme-less host[:port], lowercased."""
    try:
        return urlsplit(url).netloc.lower()
    except ValueError:
        return ""


def _prefix_records(prefix: int, total: int) -> list[SegmentRecord]:
    """The map of a front-to-back partial of `prefix` bytes."""
    prefix = min(prefix, total)
    records = [SegmentRecord(0, prefix, prefix)] if prefix else []
    if prefix < total:
        records.append(SegmentRecord(prefix, total, 0))
    return records


def _status_error(response: Response, *, url: str, redirected: bool) -> HTTPStatusError:
    """The one mapping from an unusable HTTP status to an error (most specific first)."""
    status = response.status
    headers = response.headers
    code = (headers.get("X-Error-Code") or "").strip() or None
    where = _redact(url)
    detail = f"HTTP {status} {response.reason or ''}".rstrip() + f" from {where}"
    if code:
        detail += f" ({code})"

    def make(cls: type[HTTPStatusError], message: str) -> HTTPStatusError:
        return cls(message, status=status, url=where, error_code=code, redirected=redirected)

    if status in (404, 410):
        return make(NotFoundError, detail)
    if status == 401:
        return make(AuthRequiredError, detail + ": a valid token is required")
    if status == 403:
        if code == "GatedRepo":
            return make(GatedError, detail + ": request access to the repo on the Hub first")
        if redirected:  # a CDN refusing a signed URL (expired?) is not about our token
            return make(ForbiddenError, detail)
        return make(AuthRequiredError, detail + ": the token does not grant access")
    if status in (429, 503):
        error = make(RateLimitedError if status == 429 else ServerBusyError, detail)
        error.retry_after = retry_after_seconds(headers, time.time())
        return error
    return make(HTTPStatusError, detail)


def _translate_exception(
    exc: BaseException, *, url: str, stall: float | None
) -> TransferError | None:
    """The one mapping from foreign exceptions to our tree (most specific first). None means
    "not ours to translate": the caller re-raises it unchanged (a TransferError already, or a
    local OSError such as EACCES that no retry would fix)."""
    where = _redact(url)
    if isinstance(exc, TransferError):
        return None
    if isinstance(exc, NameResolutionError):
        return NetworkError(f"cannot resolve {urlsplit(url).hostname}: {exc.os_error}", url=where)
    if isinstance(exc, ConnectError):
        return NetworkError(f"cannot connect to {exc.host}:{exc.port}: {exc.os_error}", url=where)
    host = urlsplit(url).netloc
    if isinstance(exc, ServerDisconnectedError):
        return NetworkError(f"{host} closed the connection", url=where)
    if isinstance(exc, IncompleteBodyError):
        how = "reset" if exc.reset else "closed"
        return NetworkError(f"{host} {how} the connection before the whole body arrived", url=where)
    if isinstance(exc, ConnectTimeoutError):
        return NetworkError(f"timed out connecting: {exc}", url=where)
    if isinstance(exc, InvalidURLError):
        return NetworkError(f"invalid URL: {exc}", url=where)
    if isinstance(exc, ProtocolError):
        return NetworkError(f"{host} sent an invalid response: {exc}", url=where)
    if isinstance(exc, WireError):
        return NetworkError(f"{type(exc).__name__}: {exc}", url=where)
    if isinstance(exc, ConnectionResetError):
        return NetworkError(f"{host} reset the connection", url=where)
    if isinstance(exc, (ConnectionError, socket.gaierror)):
        return NetworkError(f"{host}: {exc.strerror or exc}", url=where)
    if isinstance(exc, TimeoutError):
        return StalledError(f"no data for {stall:g} s", url=where)
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return disk_full(exc)
    return None


__all__ = ["MIN_CHUNK_SIZE", "PROGRESS_INTERVAL", "READ_BUFSIZE", "fetch_file", "make_session"]
