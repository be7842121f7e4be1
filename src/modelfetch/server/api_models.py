"""The HTTP API's request and response bodies, as pydantic models.

Requests are validated with these models (a mismatch is a 422). Responses are written from the
engine's own views (`views.GroupView.to_dict()`), and these models describe them in the OpenAPI
document; the tests check that both stay field-for-field the same.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from modelfetch.core.events import EVENT_TYPES
from modelfetch.core.models import MAX_ID
from modelfetch.manager.batch import MAX_BATCH

__all__ = [
    "BATCH_MAX",
    "GROUP_STATUSES",
    "ActionRequest",
    "AddRequest",
    "BatchAddRequest",
    "BatchAddResponse",
    "BatchItem",
    "DownloadLimitsRequest",
    "DownloadList",
    "ErrorBody",
    "ErrorResponse",
    "EventsQuery",
    "FileViewModel",
    "ForgottenResponse",
    "GroupViewModel",
    "HealthResponse",
    "LimitsRequest",
    "LimitsResponse",
    "ListQuery",
    "MoveRequest",
    "OkResponse",
    "PathsResponse",
    "PriorityRequest",
    "QuantList",
    "QuantModel",
    "QuantsQuery",
]

GroupStatusName = Literal[
    "queued", "active", "paused", "completed", "partial", "failed", "cancelled"
]
GROUP_STATUSES: tuple[str, ...] = get_args(GroupStatusName)

# The event types by their wire names, from the registry itself (an enum in the OpenAPI
# document); a Literal needs its values spelled out for the type checker, which sees a str.
if TYPE_CHECKING:
    EventTypeName = str
else:
    EventTypeName = Literal[tuple(EVENT_TYPES)]

PRIORITY_LIMIT = 1_000_000
"""Priorities and positions are bounded so they always fit the store's 64-bit integers."""

LIST_PAGE = 1000
"""Downloads in one page of `GET /api/downloads` unless `limit` says otherwise: a home with a
long history answers its first page in milliseconds, and clients follow `next`."""
LIST_PAGE_MAX = 10_000


def _absolute_path(value: str) -> str:
    # The daemon's working directory means nothing to a client: paths must be absolute.
    if "\x00" in value:
        raise ValueError("a path cannot contain a NUL character")
    if not PurePath(value).is_absolute():
        raise ValueError("must be an absolute path")
    return value


AbsolutePath = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_absolute_path)]
Priority = Annotated[int, Field(ge=-PRIORITY_LIMIT, le=PRIORITY_LIMIT)]


class _Body(BaseModel):
    # Strict: `true` is not the number 1 and "5" is not 5; unknown fields are mistakes.
    model_config = ConfigDict(extra="forbid", strict=True)


# ---------------------------------------------------------------------------------- requests


class _AddOptions(_Body):
    """The options `modelfetch add` takes, for one spec or a batch of them."""

    quant: str | None = Field(default=None, max_length=64, examples=["Q4_K_M"])
    revision: str | None = Field(default=None, max_length=256, examples=["main"])
    include: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list,
        max_length=64,
        description="repo files by glob (e.g. mmproj-*): alone, only these; with a quant, too",
    )
    exclude: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list,
        max_length=64,
        description="repo files left out, by glob (as `hf download --exclude`)",
    )
    layout: Literal["plain", "hf-cache"] = "plain"
    models_dir: AbsolutePath | None = Field(
        default=None, description="root for models (default: the daemon's models directory)"
    )
    dest_dir: AbsolutePath | None = Field(
        default=None, description="directory for a plain URL download"
    )
    priority: Priority = 0


class AddRequest(_AddOptions):
    """A download to add: a spec and the options `modelfetch add` takes."""

    spec: str = Field(
        min_length=1,
        max_length=4096,
        description="owner/name[:QUANT], owner/name/path.gguf, hf://..., or an http(s) URL",
        examples=["owner/name:Q4_K_M"],
    )


BATCH_MAX = MAX_BATCH
"""Specs in one `POST /api/downloads:batch` (more: 413, split the list)."""

Spec = Annotated[
    str,
    Field(
        min_length=1,
        max_length=4096,
        description="owner/name[:QUANT], owner/name/path.gguf, hf://..., or an http(s) URL",
    ),
]


class BatchAddRequest(_AddOptions):
    """Many downloads to add with the same options (a list file: `modelfetch get -I list`)."""

    specs: list[Spec] = Field(
        min_length=1,
        description=f"at most {BATCH_MAX}, each queued as `POST /api/downloads` would",
        examples=[["https://example.org/a.bin", "owner/name:Q4_K_M"]],
    )


class ActionRequest(_Body):
    """State-changing calls without parameters take an empty JSON object (or an empty body)."""


class MoveRequest(_Body):
    position: int = Field(ge=1, le=PRIORITY_LIMIT, description="1 is the front of the queue")


class PriorityRequest(_Body):
    priority: Priority = Field(description="higher runs first")


class LimitsRequest(_Body):
    """Limits for the whole daemon; an omitted (or null) field stays as it is."""

    max_active: int | None = Field(default=None, ge=1, le=256, description="files at once")
    rate_limit: int | None = Field(
        default=None, ge=0, le=1 << 50, description="bytes/s over every download; 0: unlimited"
    )
    max_connections: int | None = Field(
        default=None, ge=1, le=1024, description="connections at once over every download"
    )
    max_connections_per_host: int | None = Field(
        default=None, ge=0, le=1024, description="connections at once to one host; 0: no cap"
    )
    connections_per_file: int | None = Field(
        default=None, ge=1, le=64, description="ranged connections per large file"
    )


class FleetLimitsRequest(_Body):
    """Caps over every worker of a shared queue; an omitted field stays, null removes it."""

    max_active: int | None = Field(
        default=None, ge=1, le=1 << 20, description="files at once over the fleet; null: none"
    )
    max_connections_per_host: int | None = Field(
        default=None,
        ge=1,
        le=1 << 20,
        description="connections to one upstream host over the fleet; null: none",
    )


class DownloadLimitsRequest(_Body):
    """Limits of one download; an omitted field stays as it is, null removes it."""

    rate_limit: int | None = Field(
        default=None, ge=0, le=1 << 50, description="bytes/s for this download; 0 or null: none"
    )
    connections: int | None = Field(
        default=None, ge=1, le=64, description="connections per file; null: the global setting"
    )


class EventsQuery(_Body):
    types: list[EventTypeName] | None = Field(
        default=None,
        min_length=1,
        description=(
            "only events of these types (repeat the parameter or separate by commas); "
            "`snapshot`, `snapshot_page` and `missed` come whatever it says"
        ),
    )


class ListQuery(_Body):
    status: list[GroupStatusName] | None = Field(
        default=None,
        min_length=1,
        description="only downloads in these states (repeat the parameter or separate by commas)",
    )
    q: str | None = Field(
        default=None, max_length=512, description="case-insensitive text in the name, spec or files"
    )
    after: int | None = Field(
        default=None, ge=0, le=MAX_ID, description="the previous page's `next`: list after it"
    )
    limit: int = Field(
        default=LIST_PAGE, ge=1, le=LIST_PAGE_MAX, description="at most this many downloads"
    )


class QuantsQuery(_Body):
    repo: str = Field(min_length=1, max_length=512, examples=["owner/name"])
    revision: str | None = Field(default=None, max_length=256)


# --------------------------------------------------------------------------------- responses


class FileViewModel(BaseModel):
    """One file of a download (mirrors `views.FileView`)."""

    ref: str = Field(description='"12.3": file 3 of download 12')
    name: str
    status: Literal[
        "queued", "active", "paused", "waiting_retry", "completed", "failed", "cancelled"
    ]
    dest: str
    url: str
    position: int | None = Field(description="place among waiting files, 1 first")
    downloaded: int
    total: int | None
    speed: float | None = Field(description="bytes/s; null while unknown")
    eta: float | None = Field(description="seconds; null while unknown")
    attempts: int
    error_kind: str | None
    error_message: str | None
    retry_at: float | None = Field(description="epoch seconds of the next attempt")
    pause_reason: str | None
    sha256: str | None
    verified: bool = Field(description="completed and checked against the listed digest")
    idle_for: float | None = Field(description="seconds since the last byte, while active")
    worker: str | None = Field(
        default=None,
        description="on a queue shared by workers: who holds this active file (host/pid/id)",
        examples=["gpu-07/4242/a1b2c3"],
    )


class GroupViewModel(BaseModel):
    """One download: a model (its shards and extra files) or a URL (mirrors `views.GroupView`)."""

    id: int
    name: str
    spec: str
    status: GroupStatusName
    dest_dir: str
    position: int | None = Field(description="place among waiting downloads, 1 first")
    downloaded: int
    total: int | None
    speed: float | None
    eta: float | None
    created_at: float
    finished_at: float | None
    files: list[FileViewModel]


class DownloadList(BaseModel):
    seq: int = Field(description="the last event seq this list reflects (for /api/events?since=)")
    downloads: list[GroupViewModel]
    next: int | None = Field(
        description="ask again with `after` set to this for the rest (which may be empty);"
        " null: that was the last page"
    )


class ErrorBody(BaseModel):
    kind: str = Field(
        description="a modelfetch error kind (spec, unknown_item, not_found, ...), or one of "
        "invalid, unauthorized, forbidden_host, unsupported_media_type, "
        "method_not_allowed, route_not_found, unavailable, internal"
    )
    message: str
    accepted_forms: str | None = Field(default=None, description="with kind=spec")
    details: list[dict[str, Any]] | None = Field(default=None, description="with kind=invalid")
    upstream_status: int | None = Field(default=None, description="the Hub's HTTP status")
    error_code: str | None = Field(default=None, description="the Hub's X-Error-Code")
    retry_after: float | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class BatchItem(BaseModel):
    """What became of one spec of a batch: its download, or the error that `POST
    /api/downloads` would have answered for it alone."""

    spec: str
    status: int = Field(description="201 queued, 200 already queued, else the error's status")
    download: GroupViewModel | None = None
    error: ErrorBody | None = None


class BatchAddResponse(BaseModel):
    since: int = Field(
        description="the last event seq before this batch: /api/events?since= this replays "
        "everything it caused"
    )
    seq: int = Field(description="the last event seq the downloads in `results` reflect")
    results: list[BatchItem] = Field(description="one per spec, in the order sent")


class OkResponse(BaseModel):
    ok: bool = True


class ForgottenResponse(BaseModel):
    forgotten: list[int]


class PathsResponse(BaseModel):
    paths: list[str]


class LimitsResponse(BaseModel):
    max_active: int
    rate_limit: int | None = Field(description="bytes/s over every download; null: unlimited")
    max_connections: int
    max_connections_per_host: int = Field(description="0: no per-host cap")
    connections_per_file: int


class FleetWorkerModel(BaseModel):
    worker: str = Field(
        description="lease holder id: host/pid/random", examples=["gpu-07/4242/a1b2c3"]
    )
    host: str
    running: int = Field(description="files it holds under a live lease")
    max_active: int
    accepting: bool = Field(description="false: leaving, or cut off from the state database")


class FleetResponse(BaseModel):
    workers: list[FleetWorkerModel] = Field(description="the live workers, by id")
    max_active: int | None = Field(description="files at once over the fleet; null: no cap")
    max_connections_per_host: int | None = Field(
        description="connections to one upstream host over the fleet; null: no cap"
    )


class QuantModel(BaseModel):
    name: str = Field(examples=["Q4_K_M", "UD-Q4_K_M"])
    base: str
    ud: bool
    paths: list[str]
    total_size: int
    shard_count: int
    complete: bool
    missing: list[str]
    extra: list[str]
    description: str


class QuantList(BaseModel):
    repo: str
    revision: str | None
    quants: list[QuantModel]


class HealthResponse(BaseModel):
    status: Literal["ok"]
    version: str
    pid: int
    home: str
    started_at: float
    seq: int
