"""Read-only views of the queue, for the CLI, the API and Python callers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
        return asdict(self)
