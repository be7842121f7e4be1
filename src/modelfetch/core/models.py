"""Plain data shared by every layer: statuses, ids, and the rows the store keeps.

Ids: every download is a *group* (a model = its shards and extra files; a plain URL = a group of
one). A group has an integer id `G`; its files are numbered 1..n inside it and addressed as `G.k`.
Users and the API use these strings: `12` means the whole group, `12.3` its third file.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

from modelfetch.core.errors import SpecError, UnknownItemError


class Keep(enum.Enum):
    """The "leave it as it is" default of optional setters (None means "clear")."""

    KEEP = "keep"


KEEP: Final = Keep.KEEP


class FileStatus(enum.StrEnum):
    QUEUED = "queued"
    ACTIVE = "active"
    PAUSED = "paused"
    WAITING_RETRY = "waiting_retry"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({FileStatus.COMPLETED, FileStatus.FAILED, FileStatus.CANCELLED})
"""Statuses a file leaves only by an explicit retry / re-request."""

LIVE_STATUSES = frozenset(
    {FileStatus.QUEUED, FileStatus.ACTIVE, FileStatus.PAUSED, FileStatus.WAITING_RETRY}
)


class GroupStatus(enum.StrEnum):
    QUEUED = "queued"
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StopReason(enum.StrEnum):
    """Why a running transfer is being stopped; decides whether its `.part` survives."""

    CANCEL = "cancel"  # the user cancelled: delete the partial file
    PAUSE = "pause"  # the user paused: keep it
    SHUTDOWN = "shutdown"  # the manager is closing: keep it, resume on next start
    DISK_FULL = "disk_full"  # out of space: keep what we have, pause everything
    INTERRUPT = "interrupt"  # Ctrl-C in the foreground: keep it; the next run resumes it

    @property
    def keeps_partial(self) -> bool:
        return self is not StopReason.CANCEL


class PauseReason(enum.StrEnum):
    USER = "user"
    DISK_FULL = "disk_full"
    SHUTDOWN = "shutdown"
    # Ctrl-C in a foreground `get` or `run`: paused like USER, but the next process that works
    # the queue resumes it by itself (a download the user paused stays paused).
    INTERRUPTED = "interrupted"


def derive_group_status(statuses: list[FileStatus]) -> GroupStatus:
    """A group's status is a function of its members' statuses, never stored."""
    if not statuses:
        return GroupStatus.CANCELLED
    present = set(statuses)
    if FileStatus.ACTIVE in present:
        return GroupStatus.ACTIVE
    if present <= {FileStatus.COMPLETED}:
        return GroupStatus.COMPLETED
    if present <= {FileStatus.CANCELLED}:
        return GroupStatus.CANCELLED
    live = present & LIVE_STATUSES
    if live:
        if live <= {FileStatus.PAUSED}:
            return GroupStatus.PAUSED
        return GroupStatus.QUEUED
    # Only terminal members remain, and not all of one kind.
    if FileStatus.COMPLETED in present:
        return GroupStatus.PARTIAL
    if FileStatus.FAILED in present:
        return GroupStatus.FAILED
    return GroupStatus.CANCELLED


MAX_ID = (1 << 63) - 1  # SQLite's integers: a larger id can name nothing


@dataclass(frozen=True, slots=True)
class ItemRef:
    """`12` (group 12) or `12.3` (file 3 of group 12)."""

    group_id: int
    index: int | None = None

    @classmethod
    def parse(cls, text: str | int) -> ItemRef:
        raw = str(text).strip()
        head, dot, tail = raw.partition(".")
        try:
            gid = int(head)
            idx = int(tail) if dot else None
        except ValueError:
            raise SpecError(
                f"not an id: {text!r} (use 12 for a download, 12.3 for one of its files)"
            ) from None
        if gid < 1 or (idx is not None and idx < 1):
            raise SpecError(f"not an id: {text!r} (ids start at 1)")
        if gid > MAX_ID or (idx is not None and idx > MAX_ID):
            raise UnknownItemError(f"no download with id {raw}")
        return cls(gid, idx)

    def __str__(self) -> str:
        return f"{self.group_id}" if self.index is None else f"{self.group_id}.{self.index}"


@dataclass(slots=True)
class FileRecord:
    """One file of a group, as the store keeps it. Never holds a secret."""

    group_id: int
    index: int  # 1-based position inside the group
    url: str  # what to fetch: a Hub resolve URL pinned to a commit, or a plain URL
    dest: str  # absolute final path
    name: str  # display name (the repo path, or the file name)
    status: FileStatus = FileStatus.QUEUED
    priority: int = 0
    order_key: int = 0
    bytes_done: int = 0
    bytes_total: int | None = None
    expected_size: int | None = None
    expected_sha256: str | None = None
    expected_git_oid: str | None = None  # sha1 of the git blob, for small non-LFS files
    etag: str | None = None
    last_modified: str | None = None
    commit: str | None = None
    sha256: str | None = None  # the verified digest, once completed
    attempts: int = 0
    error_kind: str | None = None
    error_message: str | None = None
    retry_at: float | None = None  # epoch seconds, when waiting_retry
    pause_reason: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    link: str | None = None  # hf-cache layout: the snapshot path to point at `dest` once verified
    id: int = 0  # the store's row id; 0 until inserted

    @property
    def ref(self) -> ItemRef:
        return ItemRef(self.group_id, self.index)


@dataclass(slots=True)
class GroupRecord:
    """One requested download: a model (many files) or a URL (one file)."""

    key: str  # dedupe key: the normalised request (spec + destination), never a secret
    spec: str  # what the user asked for, as written (tokens stripped)
    name: str  # display name: owner/name:QUANT, or the file name
    dest_dir: str
    priority: int = 0
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None
    quant: str | None = None
    created_at: float = 0.0
    finished_at: float | None = None
    id: int = 0
    files: list[FileRecord] = field(default_factory=list)

    @property
    def status(self) -> GroupStatus:
        return derive_group_status([f.status for f in self.files])

    @property
    def bytes_done(self) -> int:
        return sum(f.bytes_done for f in self.files)

    @property
    def bytes_total(self) -> int | None:
        totals = [
            f.bytes_total if f.bytes_total is not None else f.expected_size for f in self.files
        ]
        if any(t is None for t in totals):
            return None
        return sum(t for t in totals if t is not None)
