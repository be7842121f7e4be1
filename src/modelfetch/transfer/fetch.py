"""Fetch one file over HTTP: the resume decision and the attempt loop, from plan to published file.

The flow of one `fetch_file` call:
  1. Look at `<dest>.part` and its sidecar (`_usable_partial`): a prefix we can trust becomes
     the resume offset; anything else is deleted.
  2. GET with `Range: bytes=N-` + `If-Range`, following redirects ourselves (redirects.py: the
     token never leaves its origin, the Hub's `X-Linked-*` headers are read from the hop that
     sends them).
  3. 206 appends; 200 starts over; 416 publishes a complete partial or starts over once.
  4. Stream into the `.part` (receive.py: pwrite on the loop, SHA-256 on the part's digest
     thread, hashing.py), with a stall deadline around every read.
  5. Verify size and digest, fsync, rename into place, fsync the directory (publish.py).
A small body fetched from zero (at most SMALL_BODY_LIMIT) is received into memory instead, and
steps 4-5 happen in one worker-thread call (`_receive_small`); if it stops early, what arrived is
written as the `.part` then, so it resumes exactly like a streamed body.
A large file with a known size may instead go segmented (segment_setup.py, segments.py).
Every failure leaves as a `TransferError` subclass (failures.py). The HTTP client is our own
(transfer/wire/): importing aiohttp would cost more than a whole small download.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

from modelfetch.core.paths import journal_path
from modelfetch.core.segments import SegmentMap
from modelfetch.transfer.api import (
    PrefixCallback,
    ProgressCallback,
    ReceivedCallback,
    SegmentsCallback,
    StopSignal,
    TransferRequest,
    TransferResult,
)
from modelfetch.transfer.failures import status_error, translate_exception
from modelfetch.transfer.limiter import ConnectionSlots, TokenBucket
from modelfetch.transfer.partstate import PartState
from modelfetch.transfer.publish import remove_partial
from modelfetch.transfer.segment_journal import resumable_map
from modelfetch.transfer.segment_setup import SegmentingTransfer
from modelfetch.transfer.session import TransferSession


async def fetch_file(
    session: TransferSession,
    request: TransferRequest,
    *,
    on_progress: ProgressCallback | None = None,
    stop: StopSignal | None = None,
    on_segments: SegmentsCallback | None = None,
    limits: Sequence[TokenBucket] = (),
    slots: ConnectionSlots | None = None,
    on_prefix: PrefixCallback | None = None,
    on_received: ReceivedCallback | None = None,
) -> TransferResult:
    """Download `request.url` to `request.dest`, resuming from `<dest>.part` when it is still the
    beginning of the same file. Returns only after the verified file is under its final name;
    raises a `TransferError` subclass otherwise (CancelledError passes through, see StopSignal).

    Shared limits (owned by the caller, the same objects for every transfer they govern):
    `limits` are bandwidth buckets every received byte passes through (e.g. the download's own
    and the global one); `slots` caps concurrent connections in total and per host. Segmented
    mode (`request.connections > 1`) needs `on_segments` to persist its map for a resume across
    processes; without it a stopped segmented `.part` cannot be resumed by a later call.
    `on_received` is told when only the publish is left (see ReceivedCallback)."""
    transfer = _Transfer(session, request, on_progress, stop)
    transfer.on_segments = on_segments
    transfer.on_prefix = on_prefix
    transfer.on_received = on_received
    transfer.limits = tuple(limits)
    transfer.slots = slots
    return await transfer.run()


class _Transfer(SegmentingTransfer):
    """One `fetch_file` call: its steps come from the layers below (see transfer/state.py)."""

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
            await self._save_segments()
            raise
        except Exception as exc:
            self._close_part()
            self._spill_held()
            self._record_small_partial()
            await self._save_segments()
            translated = translate_exception(exc, url=self.url, stall=self.stall_timeout)
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
                    raise status_error(response, url=self.url, redirected=redirected)
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
                        raise status_error(response, url=self.url, redirected=redirected)
                    # Our prefix is longer than the file, or the server forgot it: start over.
                    restarted_after_416 = True
                    self._start_over()
                    offset = 0
                    continue
                return await self._receive(response, offset)
            finally:
                response.close()

    # -- before the first request: is the partial on disk still ours? ------------------------

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
        """The segment map of this segmented `.part`: the one handed back by the caller (the
        durable map), joined with the volatile one beside the `.part` when this kernel wrote it
        (after a kill: transfer/segment_journal.py); None if neither fits."""
        if state.total is None:
            return None
        return resumable_map(
            journal_path(self.dest), state.token, state.total, self.request.segments, size
        )

    def _forget_stale_map(self) -> None:
        """A map was handed in but the `.part` it described is gone or not segmented."""
        if self.request.segments is not None and self.on_segments is not None:
            self.on_segments(None)

    def _start_over(self) -> None:
        remove_partial(self.part_path, self.sidecar_path)
        self.state = None
        self._report(0, self._known_total(), force=True)


__all__ = ["fetch_file"]
