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

ProgressCallback = Callable[[int, "int | None"], None]
"""on_progress(bytes_on_disk, total_or_None). Called once at the start (with the resumed offset),
at most ~10 times a second while bytes move, and once at the end with the exact final count."""


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


class StopSignal:
    """Set by the manager before it cancels a transfer task, read by the transfer in its
    CancelledError handler: the reason decides whether the `.part` survives."""

    __slots__ = ("reason",)

    def __init__(self) -> None:
        self.reason: StopReason | None = None

    def stop(self, reason: StopReason) -> None:
        self.reason = reason
