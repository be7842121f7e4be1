"""The state of one `fetch_file` call, and the checks and bookkeeping all its steps share.

A transfer is one object built in layers, each a module with one job, each layer a subclass of
the one before: `TransferState` (here: what is known, the counters, progress, cleanup of a
partial that outlives an attempt), `RequestingTransfer` (redirects.py: requests and where they
may go), `ReceivingTransfer` (receive.py: a response's body into the `.part` or memory, verified
and published), `SegmentingTransfer` (segment_setup.py: segmented mode), and fetch.py's
`_Transfer` (the whole call: the resume decision and the attempt loop).
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from pathlib import Path

from modelfetch.core.errors import IntegrityError
from modelfetch.core.headers import origin_of, parse_content_range
from modelfetch.core.paths import part_path, sidecar_path
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
from modelfetch.transfer.failures import redact_url
from modelfetch.transfer.hashing import Digests
from modelfetch.transfer.limiter import ConnectionSlots, Slot, TokenBucket, read_size_for
from modelfetch.transfer.partstate import PartState
from modelfetch.transfer.publish import write_prefix
from modelfetch.transfer.segments import RECV_STEP
from modelfetch.transfer.session import TransferSession
from modelfetch.transfer.sink import HeldBody, PartFile
from modelfetch.transfer.stages import StageClock
from modelfetch.transfer.wire import Headers, Response

MIN_CHUNK_SIZE = 1 << 20
PROGRESS_INTERVAL = 0.1
_HEX = re.compile(r"[0-9a-f]+")


def _normalise_hex(value: str | None, length: int, field: str) -> str | None:
    if value is None:
        return None
    text = value.strip().lower()
    if len(text) != length or not _HEX.fullmatch(text):
        raise ValueError(f"{field} must be {length} hex digits, got {value!r}")
    return text


class TransferState:
    """The state of one `fetch_file` call (see the module docstring for the layers above it)."""

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
        self.on_prefix: PrefixCallback | None = None
        self.on_received: ReceivedCallback | None = None
        self.limits: tuple[TokenBucket, ...] = ()
        self.slots: ConnectionSlots | None = None
        self.resume_map: SegmentMap | None = None  # the segmented partial found on disk
        self.segmap: SegmentMap | None = None  # the map in use, while segmented
        self.slot: Slot | None = None  # the connection slot held by the request in flight
        self.steals = 0
        self.connections = 1
        self.reopened = 0
        self.unrecorded = False  # a small file's `.part` whose sidecar is not written yet
        self.held: HeldBody | None = None  # a small body received into memory, not on disk yet
        # No `.part` was found, and a sidecar without one (left by a crash between two unlinks)
        # may still be there: it is removed when a `.part` is begun or published, not by an
        # unlink on every start (an unlink takes the directory's lock, which the worker
        # threads' creates and renames in the same directory hold while the journal commits).
        self.stray_sidecar = False
        self.clock = StageClock()
        self.pwrite_seconds = 0.0  # of `.part`s closed so far (a live one counts its own)

    # -- what is known: the plan, the Hub's headers, the partial ------------------------------

    def _known_total(self) -> int | None:
        if self.total is not None:
            return self.total
        if self.state is not None and self.state.total is not None:
            return self.state.total
        return self.request.expected_size

    def _cross_check_plan(self) -> None:
        """The plan and the Hub must agree on what the file is before we spend bandwidth on it."""
        if (
            self.expected_sha256 is not None
            and self.linked_sha256 is not None
            and self.expected_sha256 != self.linked_sha256
        ):
            raise IntegrityError(
                "the Hub now serves a different file than planned (X-Linked-Etag differs)",
                url=redact_url(self.url),
                expected=self.expected_sha256,
                actual=self.linked_sha256,
            )
        want = self.request.expected_size
        if want is not None and self.linked_size is not None and want != self.linked_size:
            raise IntegrityError(
                f"the Hub announces {self.linked_size} bytes, the plan expects {want}",
                url=redact_url(self.url),
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

    def _check_announced_size(self, announced: int | None) -> None:
        """A server announcing another size than planned serves another file: refuse it before
        a byte is written (and leave any partial alone: it may still be the right file's)."""
        expected = self._expected_size()
        if announced is not None and expected is not None and announced != expected:
            raise IntegrityError(
                f"server announces {announced} bytes, expected {expected}",
                url=redact_url(self.url),
                expected=str(expected),
                actual=str(announced),
            )

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

    def _total_after_416(self, headers: Headers) -> int | None:
        parsed = parse_content_range(headers.get("Content-Range"))
        if parsed is not None and parsed.start is None and parsed.total is not None:
            return parsed.total
        if self.state is not None and self.state.total is not None:
            return self.state.total
        return self._expected_size()

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
            stages=self.clock.stages(self.pwrite_seconds),
            mtime_ns=digests.mtime_ns,
        )

    # -- bookkeeping -------------------------------------------------------------------------

    def _report(self, done: int, total: int | None, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_report < PROGRESS_INTERVAL:
            return
        self.last_report = now
        if self.on_progress is not None:
            self.on_progress(done, total)
        if self.on_prefix is not None and self.held is None:
            self.on_prefix(self.segmap.prefix if self.segmap is not None else done)

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
            self.pwrite_seconds += part.pwrite_seconds
            with contextlib.suppress(OSError):
                part.close()
