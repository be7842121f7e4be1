"""What happened, as typed immutable values with a sequence number, and their JSON form.

Every event has `seq` and `ts`, both set by the bus when it is published (`seq` counts 1, 2, 3...
per bus; `ts` is epoch seconds). `ref` names a file as `"12.3"` or a whole group as `"12"`.

The JSON form (`to_dict`) is a flat object with `"type"` (snake_case), `"seq"`, `"ts"` and the
fields. An unknown speed, ETA, retry time or error is left out rather than sent as a fake zero;
`from_dict` reads it back as None.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "EVENT_TYPES",
    "Cancelled",
    "Event",
    "FileCompleted",
    "FileFailed",
    "FileProgress",
    "FileStarted",
    "GroupFinished",
    "GroupProgress",
    "GroupQueued",
    "Missed",
    "Notice",
    "QueueChanged",
    "Snapshot",
    "SnapshotPage",
    "StatusChanged",
    "from_dict",
    "to_dict",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """Base of every event. Not published itself."""

    type: ClassVar[str] = "event"
    seq: int = 0  # set by the bus
    ts: float = 0.0  # set by the bus


@dataclass(frozen=True, kw_only=True, slots=True)
class GroupQueued(Event):
    type: ClassVar[str] = "group_queued"
    group_id: int
    name: str
    files: int
    total: int | None
    position: int | None


@dataclass(frozen=True, kw_only=True, slots=True)
class FileStarted(Event):
    type: ClassVar[str] = "file_started"
    ref: str
    group_id: int
    name: str
    offset: int  # bytes already on disk when this attempt began (resumed from)
    total: int | None


@dataclass(frozen=True, kw_only=True, slots=True)
class FileProgress(Event):
    type: ClassVar[str] = "file_progress"
    ref: str
    group_id: int
    name: str
    downloaded: int
    total: int | None
    speed: float | None  # bytes/s; None while unknown
    eta: float | None  # seconds; None while unknown


@dataclass(frozen=True, kw_only=True, slots=True)
class GroupProgress(Event):
    type: ClassVar[str] = "group_progress"
    group_id: int
    name: str
    downloaded: int
    total: int | None
    speed: float | None
    eta: float | None
    files_done: int
    files_total: int


@dataclass(frozen=True, kw_only=True, slots=True)
class StatusChanged(Event):
    type: ClassVar[str] = "status_changed"
    ref: str
    group_id: int
    name: str
    status: str  # a FileStatus value
    previous: str
    reason: str | None = None  # e.g. a pause reason, or why a retry is waiting
    retry_at: float | None = None  # epoch seconds, when status is waiting_retry
    error_kind: str | None = None
    error_message: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class FileCompleted(Event):
    type: ClassVar[str] = "file_completed"
    ref: str
    group_id: int
    name: str
    path: str
    sha256: str
    size: int
    verified: bool = False  # checked against a digest the server or the Hub listed


@dataclass(frozen=True, kw_only=True, slots=True)
class FileFailed(Event):
    type: ClassVar[str] = "file_failed"
    ref: str
    group_id: int
    name: str
    error_kind: str
    message: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Cancelled(Event):
    type: ClassVar[str] = "cancelled"
    ref: str  # "12" for a whole group, "12.3" for one file
    group_id: int
    name: str


@dataclass(frozen=True, kw_only=True, slots=True)
class GroupFinished(Event):
    type: ClassVar[str] = "group_finished"
    group_id: int
    name: str
    status: str  # a GroupStatus value
    completed: int
    failed: int
    cancelled: int
    dest_dir: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Notice(Event):
    type: ClassVar[str] = "notice"
    message: str
    level: str = "info"  # "info" | "warning" | "error"
    ref: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Missed(Event):
    """`count` events were lost between the previous event and the next one (a subscriber fell
    behind, or asked to replay from before the bus's history). Reload a Snapshot to catch up."""

    type: ClassVar[str] = "missed"
    count: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Snapshot(Event):
    """The state to start from, for a client that (re)connects: `items` are downloads in id
    order as of `seq`. When `next` is not None, more follow in `SnapshotPage`s (the list is
    long, and is sent a page at a time); the events after `seq` come after the last page."""

    type: ClassVar[str] = "snapshot"
    items: list[dict[str, Any]]
    next: int | None = None  # the last id of `items` while pages follow; None: that was all
    # The newest event these items may reflect (>= seq; None: seq): see SnapshotPage.
    as_of: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class SnapshotPage(Event):
    """The next downloads of a `Snapshot` (those with an id above the previous page's `next`).
    `seq` is the snapshot's; `as_of` the newest event these items may reflect (>= seq: a page
    is read when it is sent). Events after `seq` replayed over a page set what they carry
    again, so once they are applied up to the largest `as_of`, the view is the daemon's at
    that seq."""

    type: ClassVar[str] = "snapshot_page"
    items: list[dict[str, Any]]
    next: int | None = None  # as in Snapshot: None on the last page
    as_of: int | None = None  # None: seq


@dataclass(frozen=True, kw_only=True, slots=True)
class QueueChanged(Event):
    """The waiting order changed (a move, a priority change): the new positions, 1..n, of the
    groups that have a waiting file, keyed by group id as a string (JSON object keys)."""

    type: ClassVar[str] = "queue_changed"
    positions: dict[str, int]


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (
        GroupQueued,
        QueueChanged,
        FileStarted,
        FileProgress,
        GroupProgress,
        StatusChanged,
        FileCompleted,
        FileFailed,
        Cancelled,
        GroupFinished,
        Notice,
        Missed,
        Snapshot,
        SnapshotPage,
    )
}
"""Every event type by its wire name."""

OMITTED_WHEN_NONE = frozenset({"speed", "eta", "retry_at", "error_kind", "error_message"})
"""Fields left out of the JSON form when unknown, so no client mistakes them for zero."""


# Event class -> its field names: `dataclasses.fields` builds a tuple on each call, and the
# daemon encodes every event once per stream that is behind (200 small downloads: ~1,500).
_FIELD_NAMES: dict[type[Event], tuple[str, ...]] = {}


def _field_names(cls: type[Event]) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def to_dict(event: Event) -> dict[str, Any]:
    """The JSON-ready form: {"type", "seq", "ts", ...fields}; unknown speed/eta/retry/error
    fields are left out."""
    out: dict[str, Any] = {"type": event.type}
    for name in _field_names(type(event)):
        value = getattr(event, name)
        if value is None and name in OMITTED_WHEN_NONE:
            continue
        if isinstance(value, list):
            value = [dict(item) if isinstance(item, dict) else item for item in value]
        elif isinstance(value, dict):
            value = dict(value)
        out[name] = value
    return out


def from_dict(data: dict[str, Any]) -> Event:
    """The event `to_dict` made. ValueError for an unknown type or a missing field; fields this
    version does not know are ignored, so an older reader accepts a newer writer's events."""
    kind = data.get("type")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown event type: {kind!r}")
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in data:
            values[field.name] = data[field.name]
        elif field.name in OMITTED_WHEN_NONE:
            values[field.name] = None
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ValueError(f"{kind} event without its {field.name!r} field")
    return cls(**values)
