"""Read-only views of the queue, for the CLI, the API and Python callers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from modelfetch.core.models import FileRecord, FileStatus, GroupRecord


@dataclass(frozen=True, slots=True)
class FileView:
    ref: str
    name: str
    status: str
    dest: str
    url: str
    position: int | None
    downloaded: int
    total: int | None
    speed: float | None
    eta: float | None
    attempts: int
    error_kind: str | None
    error_message: str | None
    retry_at: float | None
    pause_reason: str | None
    sha256: str | None
    verified: bool  # completed and checked against the digest the Hub (or server) listed
    idle_for: float | None  # seconds since the last byte, while active
    # On a queue shared by workers: the worker holding an active file (`host/pid/tail`).
    worker: str | None = None


@dataclass(frozen=True, slots=True)
class GroupView:
    id: int
    name: str
    spec: str
    status: str
    dest_dir: str
    position: int | None
    downloaded: int
    total: int | None
    speed: float | None
    eta: float | None
    created_at: float
    finished_at: float | None
    files: list[FileView] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        # What asdict(self) gives (every field is a plain value but `files`), at a tenth of its
        # cost: asdict deep-copies each value, and a page of 1,000 downloads spent more time
        # there than in reading the store.
        out = {name: getattr(self, name) for name in _GROUP_FIELDS}
        out["files"] = [{name: getattr(f, name) for name in _FILE_FIELDS} for f in self.files]
        return out


_FILE_FIELDS = tuple(f.name for f in fields(FileView))
_GROUP_FIELDS = tuple(f.name for f in fields(GroupView) if f.name != "files")


def file_view(
    f: FileRecord,
    position: int | None,
    *,
    downloaded: int | None = None,
    total: int | None = None,
    speed: float | None = None,
    eta: float | None = None,
    idle_for: float | None = None,
    worker: str | None = None,
) -> FileView:
    """A file as the views show it: its stored row, with what a running transfer knows better
    (bytes, total, speed, ETA, idle time) when there is one."""
    return FileView(
        ref=f"{f.group_id}.{f.index}",
        name=f.name,
        status=f.status.value,
        dest=f.dest,
        url=f.url,
        position=position,
        downloaded=f.bytes_done if downloaded is None else downloaded,
        total=total or f.bytes_total or f.expected_size,
        speed=speed,
        eta=eta,
        attempts=f.attempts,
        error_kind=f.error_kind,
        error_message=f.error_message,
        retry_at=f.retry_at,
        pause_reason=f.pause_reason,
        sha256=f.sha256,
        verified=f.status is FileStatus.COMPLETED
        and (f.expected_sha256 is not None or f.expected_git_oid is not None),
        idle_for=idle_for,
        worker=worker if f.status is FileStatus.ACTIVE else None,
    )


def worker_host(worker: str) -> str:
    """The host part of a worker id (`gpu-07/4242/a1b2c3` → `gpu-07`)."""
    return worker.split("/", 1)[0]


def group_view(
    group: GroupRecord,
    position: int | None,
    files: list[FileView],
    *,
    downloaded: int | None = None,
    total: int | None = None,
    speed: float | None = None,
    eta: float | None = None,
) -> GroupView:
    """A group as the views show it: its stored row, with what the running manager knows
    better (bytes, total, speed, ETA) when it has it."""
    return GroupView(
        id=group.id,
        name=group.name,
        spec=group.spec,
        status=group.status.value,
        dest_dir=group.dest_dir,
        position=position,
        downloaded=group.bytes_done if downloaded is None else downloaded,
        total=group.bytes_total if total is None else total,
        speed=speed,
        eta=eta,
        created_at=group.created_at,
        finished_at=group.finished_at,
        files=files,
    )


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One live worker of a shared queue."""

    worker: str  # its lease holder id: host/pid/random
    host: str
    running: int  # files it holds under a live lease
    max_active: int
    accepting: bool  # False: leaving, or cut off from the state database


@dataclass(frozen=True, slots=True)
class FleetView:
    """The workers of a queue shared by several processes, and the caps over all of them."""

    workers: list[WorkerView]
    max_active: int | None  # files at once over the fleet; None: each worker's own only
    max_connections_per_host: int | None  # connections to one host over the fleet

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
