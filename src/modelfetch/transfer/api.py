"""The contract between the manager and the transfer of one file.

A transfer gets a plan (`TransferRequest`), a stop signal and a progress callback; it writes bytes,
reports counts and either returns a `TransferResult` or raises a `TransferError` subclass from
`modelfetch.core.errors`. It never touches the store, never emits events, never retries: the
manager and `core/policy.py` do that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modelfetch.core.models import StopReason
from modelfetch.core.segments import SegmentRecord
from modelfetch.transfer.stages import Stages

ProgressCallback = Callable[[int, "int | None"], None]
"""on_progress(bytes_on_disk, total_or_None). Called once at the start (with the resumed offset),
at most ~10 times a second while bytes move, and once at the end with the exact final count.
In segmented mode bytes_on_disk is the sum over the segment map, not a prefix."""

PrefixCallback = Callable[[int], None]
"""on_prefix(contiguous_bytes): the bytes [0, n) are on disk in the `.part` (written, so another
file descriptor reads them), reported with each progress report. Unlike on_progress it is the
same in segmented mode: the segment map's prefix. A smaller n than before means the `.part`
started over. Not called while a small body is held in memory (nothing is on disk then)."""

ReceivedCallback = Callable[[], None]
"""on_received(): every byte of the body is in and its connection is free; what is left is the
publish (the hash's tail, fsync, rename). Called at most once, on a front-to-back transfer
only, so a caller that bounds how many files download at once can start the next one while
the disk finishes this one."""

SegmentsCallback = Callable[["tuple[SegmentRecord, ...] | None"], None]
"""on_segments(records_or_None): persist the segment map of a segmented `.part` (records), or
forget it (None: the partial is gone, or is a plain front-to-back prefix again). The caller
stores it and hands it back as `TransferRequest.segments` on the next attempt: for a segmented
`.part` that map is the only record of which bytes are on disk. Called (synchronously, so a
store write has committed when it returns) before a fresh segmented `.part` is created, about
every `checkpoint_interval` while bytes move, and whenever the transfer stops, fails or ends."""

SEGMENT_THRESHOLD = 64 << 20
MIN_SEGMENT_SIZE = 16 << 20
MIN_STEAL_SIZE = 4 << 20


@dataclass(frozen=True, slots=True)
class Credentials:
    """A bearer token and the one origin (scheme, host, port) it may be sent to."""

    token: str
    origin: str  # e.g. "https://huggingface.co" or "http://127.0.0.1:8123"

    def __repr__(self) -> str:  # never leak the token into logs or tracebacks
        return f"Credentials(origin={self.origin!r}, token=***)"


@dataclass(frozen=True, slots=True)
class TransferRequest:
    url: str
    dest: Path  # final path; bytes go to dest + ".part" beside it
    expected_size: int | None = None
    expected_sha256: str | None = None  # lowercase hex; if None, X-Linked-Etag is used if sent
    expected_git_oid: str | None = None  # sha1 of "blob <len>\0" + content, for non-LFS files
    credentials: Credentials | None = field(default=None, repr=False)
    stall_timeout: float = 30.0
    connect_timeout: float = 30.0
    max_redirects: int = 10
    chunk_size: int = 4 << 20
    allowed_schemes: frozenset[str] = frozenset({"http", "https"})
    # Hosts a transfer may reach, the first URL and every redirect hop (lowercase names or IP
    # literals); None: any. E.g. {"127.0.0.1", "localhost"} keeps a test or an air-gapped
    # mirror setup from being redirected anywhere else.
    allowed_hosts: frozenset[str] | None = None
    # Multi-connection (segmented) mode: used when connections > 1 and the size is known (the
    # plan's expected_size) and at least segment_threshold, or when `segments` says the `.part`
    # is segmented already. connections = 1 is the plain single stream; above 1 it is the most
    # connections one file may use (up to 8 open at once, more while they add throughput).
    connections: int = 1
    segment_threshold: int = SEGMENT_THRESHOLD
    min_segment_size: int = MIN_SEGMENT_SIZE  # pieces handed out front to back are >= this
    min_steal_size: int = MIN_STEAL_SIZE  # never split a remainder below 2x this
    segments: tuple[SegmentRecord, ...] | None = None  # as last given to on_segments
    checkpoint_interval: float = 1.0  # seconds between on_segments calls while bytes move


@dataclass(frozen=True, slots=True)
class TransferResult:
    path: Path
    size: int
    sha256: str  # always computed, verified when an expected digest was known
    verified: bool  # True when checked against an expected sha256 or git oid
    etag: str | None
    last_modified: str | None
    repo_commit: str | None  # X-Repo-Commit from the resolve hop
    resumed_from: int  # bytes already on disk when this attempt began
    bytes_fetched: int  # bytes received over the network in this attempt
    connections: int = 1  # the most connections this attempt opened at once
    steals: int = 0  # segmented: how often an idle connection took over half of another's rest
    stages: Stages | None = None  # where this attempt's time went (transfer/stages.py)
    mtime_ns: int | None = None  # the published file's mtime, when known without a stat


class StopSignal:
    """Set by the manager before it cancels a transfer task, read by the transfer in its
    CancelledError handler: the reason decides whether the `.part` survives."""

    __slots__ = ("reason",)

    def __init__(self) -> None:
        self.reason: StopReason | None = None

    def stop(self, reason: StopReason) -> None:
        self.reason = reason
