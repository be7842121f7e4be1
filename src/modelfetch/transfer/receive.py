"""A response's body: streamed into the `.part` or held in memory, then verified and published.

`_receive` checks what the answer announces (Content-Encoding, Content-Range, the size against
the plan) and picks the way: a small body fetched from zero (at most SMALL_BODY_LIMIT) is
received into memory and published by one worker-thread call (`_receive_small`); any other goes
into the `.part` (`_begin_part`: its sidecar, its preallocation, its digests) and is verified and
published from there (`_verify_and_publish`). `_stream` is the one receive loop: every chunk is a
view of the connection's receive buffer (no bytes object per chunk), goes through the bandwidth
limits and into the sink, under a stall deadline that measures the network only.
"""

from __future__ import annotations

import asyncio
from functools import partial

from modelfetch.core.errors import IntegrityError, NetworkError, TransferError
from modelfetch.core.headers import is_strong_etag, parse_content_range, total_size
from modelfetch.transfer.api import TransferResult
from modelfetch.transfer.failures import redact_url
from modelfetch.transfer.hashing import INLINE_HASH_LIMIT
from modelfetch.transfer.limiter import read_size_for
from modelfetch.transfer.partstate import PartState
from modelfetch.transfer.publish import (
    check_digests,
    finish_off_loop,
    remove_partial,
    sync_and_publish,
    verify_and_publish_body,
)
from modelfetch.transfer.redirects import RequestingTransfer
from modelfetch.transfer.sink import Body, HeldBody, PartFile, require_space
from modelfetch.transfer.wire import Headers, Response

SMALL_PART_LIMIT = 4 << 20  # files up to this size write their sidecar only if they stop early
# Bodies up to this size, fetched from zero, are received into memory and written, hashed and
# published in one worker-thread call (`_receive_small`). Measured with 16 files at a time from
# nginx on loopback (2 vCPUs): at 256 and 512 KiB the loop's CPU falls by 40-45% and the wall
# time holds or improves; at 1 MiB and 4 MiB the loop still saves CPU but the wall time grows
# (15% and 35%: allocating, faulting in and copying a fresh buffer per file, and the GIL waits
# of the worker, cost more than the streaming path's fixed per-file work at those sizes).
SMALL_BODY_LIMIT = 512 << 10
assert SMALL_BODY_LIMIT <= SMALL_PART_LIMIT  # a held body's prefix is recorded only if it stops


class ReceivingTransfer(RequestingTransfer):
    """A transfer's bodies: received, checked against the plan, verified, published."""

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
        self.clock.mark_head()
        headers = response.headers
        encoding = (headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity":
            raise TransferError(
                f"server applied Content-Encoding {encoding!r} despite identity",
                url=redact_url(self.url),
            )
        if response.status == 206:
            parsed = parse_content_range(headers.get("Content-Range"))
            if parsed is None or parsed.start is None:
                raise NetworkError("206 without a usable Content-Range", url=redact_url(self.url))
            if parsed.start != offset:
                raise NetworkError(
                    f"asked for bytes from {offset}, got {parsed.start}", url=redact_url(self.url)
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
        self.clock.mark_last_byte()
        response.release()
        if self.total is not None and part.size < self.total:
            raise NetworkError(
                f"connection closed after {part.size} of {self.total} bytes",
                url=redact_url(self.url),
            )
        self._received()
        return await self._verify_and_publish(headers)

    def _received(self) -> None:
        """Every byte is in: the connection's slot goes back now (the publish needs none: a
        small file's fsync took 20 ms here, as long as its download), and the caller hears
        that only the publish is left (`on_received`, at most once)."""
        if self.slot is not None:
            self.slot.release()
            self.slot = None
        callback, self.on_received = self.on_received, None
        if callback is not None:
            callback()

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
                    url=redact_url(self.url),
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
        body = self.held = HeldBody(total)
        await self._stream(response, body)
        self.clock.mark_last_byte()
        response.release()
        if body.size < total:
            raise NetworkError(
                f"connection closed after {body.size} of {total} bytes", url=redact_url(self.url)
            )
        self._received()
        self.held = None  # from here on the worker thread owns the bytes and the disk side
        want_sha256 = self._expected_digest()
        verify = partial(
            check_digests,
            sha256=want_sha256,
            git_oid=self.expected_git_oid,
            name=self.dest.name,
            url=redact_url(self.url),
        )
        digests = await finish_off_loop(
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
        body.recycle()  # the publish is over: nothing reads its bytes any more
        self.unrecorded = False
        self._report(total, total, force=True)
        verified = want_sha256 is not None or self.expected_git_oid is not None
        return self._result(headers, digests, verified=verified)

    async def _stream(self, response: Response, part: Body) -> None:
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
                        url=redact_url(self.url),
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
            raise NetworkError(
                f"got {part.size} of {expected_size} bytes", url=redact_url(self.url)
            )
        if self.expected_git_oid is not None and part.git_blob_size != part.size:
            # The size was unknown when we began: hash again from the file.
            await part.start_digests(git_blob_size=part.size, inline=part.size <= INLINE_HASH_LIMIT)
        digests = await part.finish_digests()
        self.clock.mark_hash_done(digests.busy)
        try:
            verified = check_digests(
                digests,
                sha256=self._expected_digest(),
                git_oid=self.expected_git_oid,
                name=self.dest.name,
                url=redact_url(self.url),
            )
        except IntegrityError:
            self._close_part()
            remove_partial(self.part_path, self.sidecar_path)
            raise
        # fsync, rename, fsync the directory: on one worker thread (milliseconds of waiting
        # for the disk that would stall every other transfer; many files' can overlap there).
        self.part = None
        self.pwrite_seconds += part.pwrite_seconds
        fd = part.detach()
        self.clock.fsync, self.clock.rename = await finish_off_loop(
            partial(sync_and_publish, fd, self.part_path, self.dest, self.sidecar_path)
        )
        self._report(part.size, part.size, force=True)
        return self._result(headers, digests, verified=verified)
