"""Segmented mode's start: whether a file goes segmented, its first ranged request, its `.part`.

A large file with a known size may go segmented (several ranged connections, see
transfer/segments.py). `_run_segmented` makes the first ranged request here, with the same
redirect, validator and cross-check rules as a single stream, allocates the `.part` and hands
over to `SegmentedFetch`, whose other connections ask through `_open_range_from`; it falls back
to the single stream when the server answers a ranged request with the whole body. The segment
map goes to the caller (`on_segments`) before the `.part` changes and whenever it stops, always
after an fdatasync of the bytes it claims; a volatile copy beside the `.part` is rewritten every
few MiB for a restart after a kill (transfer/checkpoints.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace

from modelfetch.core.errors import IntegrityError, NetworkError, TransferError
from modelfetch.core.headers import is_strong_etag, parse_content_range
from modelfetch.core.paths import journal_path
from modelfetch.core.segments import SegmentMap, SegmentRecord
from modelfetch.transfer.api import TransferResult
from modelfetch.transfer.checkpoints import JOURNAL_BYTES, JOURNAL_INTERVAL, Checkpoints
from modelfetch.transfer.failures import redact_url, status_error
from modelfetch.transfer.partstate import PartState
from modelfetch.transfer.publish import remove_partial
from modelfetch.transfer.receive import ReceivingTransfer
from modelfetch.transfer.redirects import host_of
from modelfetch.transfer.segments import FirstPiece, SegmentedFetch, SegmentSettings, piece_size
from modelfetch.transfer.sink import SegmentedPartFile
from modelfetch.transfer.wire import Response

NEAR_REQUEST = 2 << 20  # the most one request asks for on a near path (see _open_range_from)


class SegmentingTransfer(ReceivingTransfer):
    """A transfer in segmented mode, up to the handover to `SegmentedFetch` and back."""

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
            # The connections checkpoint the volatile map this often; the durable map is
            # saved every request.checkpoint_interval (self.checkpoints).
            checkpoint_interval=JOURNAL_INTERVAL,
            checkpoint_bytes=JOURNAL_BYTES,
        )
        started_over = False
        while True:
            resuming = self.state is not None and self.state.segmented
            self.segmap = segmap
            # The map is recorded before the `.part` changes, so a crash can never pair a new
            # file with an old map.
            await self.checkpoints.save(segmap, None)
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
                    raise status_error(response, url=self.url, redirected=redirected)
                self._cross_check_plan()
                if status == 200:
                    # Range ignored, or If-Range found another file: one stream from zero.
                    self.segmap = None
                    if self.on_segments is not None:
                        self.on_segments(None)
                    journal_path(self.dest).unlink(missing_ok=True)
                    return await self._receive(response, 0)
                parsed = parse_content_range(response.headers.get("Content-Range"))
                if parsed is None or parsed.start != start:
                    raise NetworkError(
                        f"asked for bytes from {start},"
                        f" got {response.headers.get('Content-Range')}",
                        url=redact_url(self.url),
                    )
                kept = resuming or offset > 0
                if parsed.total != total or (kept and self._partial_is_stale(response)):
                    if parsed.total is not None and parsed.total != total:
                        self._check_announced_size(parsed.total)  # the plan disagrees: refuse
                    if started_over or not kept:
                        raise IntegrityError(
                            f"server announces {parsed.total} bytes, expected {total}",
                            url=redact_url(self.url),
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
                self.clock.mark_head()
                self._begin_segmented_part(response, total, fresh=not resuming)
                part = self.part
                assert isinstance(part, SegmentedPartFile)
                await self.checkpoints.save(segmap, part.fd)
                await part.start_digests(git_blob_size=total if self.expected_git_oid else None)
                headers = response.headers
                if first is None:
                    response.close()
                    response = None
                    break
                fetch = SegmentedFetch(
                    segmap=segmap,
                    part=part,
                    open_range=self._open_range_from(self.url, redirected, near=response.near_path),
                    host=host_of(self.url),
                    settings=settings,
                    slots=self.slots,
                    limits=self.limits,
                    on_progress=self._report_done,
                    on_checkpoint=self._checkpoint,
                    url=redact_url(self.url),
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
                self.clock.mark_last_byte()
            finally:
                self.bytes_fetched += fetch.bytes_fetched
                self.steals = segmap.steals
                self.connections = fetch.peak
                self.reopened = fetch.reopened
            break
        # Complete and durable: if publishing fails, a retry needs no bytes again (the publish's
        # own fsync then finds nothing left to write), and the volatile map is not needed.
        await self.checkpoints.save(segmap, part.fd)
        self.checkpoints.discard_journal()
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
                url=redact_url(self.url),
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
                token=secrets.token_hex(8),  # this `.part`'s incarnation (segment_journal.py)
            )
            self.state.save(self.sidecar_path)
        elif self.state.token is None:  # begun by a modelfetch without volatile maps
            self.state = replace(self.state, token=secrets.token_hex(8))
            self.state.save(self.sidecar_path)
        self.total = total
        part = self.part = SegmentedPartFile(self.part_path, total)
        part.check_free_space(total)
        part.allocate()
        assert self.state.token is not None
        self.checkpoints.open_journal(journal_path(self.dest), token=self.state.token, total=total)

    def _open_range_from(
        self, url: str, redirected: bool, *, near: bool = False
    ) -> Callable[[int, int], Awaitable[Response]]:
        """How the other connections ask for a piece: straight at the URL the first request
        ended at (the CDN), with the partial's validator, checking every answer.

        On a near path (`near`: a short round trip, transfer/wire/window.py) each request asks
        for at most NEAR_REQUEST bytes, and the connection asks again where the body ended: a
        server queues up to its socket send buffer (4 MiB on Linux) ahead of a reader that
        the CPU holds back, and a kill or a tail steal throws that queue away; a request's
        own end bounds it. A round trip there costs microseconds; on a far path (a CDN) it
        would cost milliseconds per request, so pieces are asked for whole. SegmentedFetch
        takes a body that ends before its segment as an early end and asks again from there
        (its `reopened` count includes these)."""
        validator = self.state.validator if self.state is not None else None
        total = self.total

        async def open_range(start: int, end: int) -> Response:
            if near:
                end = min(end, start + NEAR_REQUEST)
            response, hopped = await self._request(start, end=end, url=url, validator=validator)
            try:
                if response.status == 206:
                    parsed = parse_content_range(response.headers.get("Content-Range"))
                    if parsed is None or parsed.start != start or parsed.total != total:
                        raise NetworkError(
                            f"asked for bytes {start}-{end - 1}/{total},"
                            f" got {response.headers.get('Content-Range')}",
                            url=redact_url(url),
                        )
                    return response
                if response.status == 200:
                    if validator:
                        raise IntegrityError(
                            "the file changed on the server during the download",
                            url=redact_url(url),
                        )
                    raise NetworkError("the server stopped honouring Range", url=redact_url(url))
                raise status_error(response, url=self.url, redirected=redirected or hopped)
            except BaseException:
                response.close()
                raise

        return open_range

    _checkpoints: Checkpoints | None = None

    @property
    def checkpoints(self) -> Checkpoints:
        """The durable and the volatile map of this transfer (made on first use: on_segments
        and the request are set by then)."""
        if self._checkpoints is None:
            self._checkpoints = Checkpoints(
                self.part_path, self.on_segments, self.request.checkpoint_interval
            )
        return self._checkpoints

    def _checkpoint(self) -> None:
        """The connections' frequent checkpoint (see SegmentSettings.checkpoint_bytes)."""
        if self.segmap is not None and self.part is not None:
            self.checkpoints.frequent(self.segmap, self.part)

    async def _save_segments(self) -> None:
        """Persist the current map durably as the transfer stops or fails (fetch.py's
        handlers), or forget it (None) once the `.part` is gone; never raises."""
        if self.segmap is None:
            return
        part = self.part
        fd = part.fd if part is not None else None
        await self.checkpoints.save(self.segmap, fd, stopping=True)


def _prefix_records(prefix: int, total: int) -> list[SegmentRecord]:
    """The map of a front-to-back partial of `prefix` bytes."""
    prefix = min(prefix, total)
    records = [SegmentRecord(0, prefix, prefix)] if prefix else []
    if prefix < total:
        records.append(SegmentRecord(prefix, total, 0))
    return records
