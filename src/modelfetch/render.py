"""What a person (or a script) sees while downloads run: a live rich display, plain lines, NDJSON.

All three are fed the same way: `on_views` with fresh GroupViews (about once a second), `on_event`
with every event, and `tick(now)` a few times a second to redraw. Nothing here computes a speed
or an ETA: both come from the manager's estimator, through the views and the progress events,
and read `—` while unknown. Nothing here does I/O except writing to the stream it was given, and
every time-dependent word ("retrying in 12 s") takes `now` (epoch seconds) as a parameter.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import IO, TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from modelfetch.core import events as ev
from modelfetch.core.format import UNKNOWN, format_bytes, format_duration, format_rate
from modelfetch.core.models import FileStatus, derive_group_status
from modelfetch.views import FileView, GroupView

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.progress_bar import ProgressBar
    from rich.text import Text

# rich is imported by what draws (the live display); the words and the plain and NDJSON
# displays do without it, so `ls`, `status` and a piped `get` do not pay for it here.

__all__ = [
    "STALL_AFTER",
    "Display",
    "JsonDisplay",
    "LiveDisplay",
    "PlainDisplay",
    "event_line",
    "file_state",
    "group_line",
    "group_state",
    "many_line",
    "render_groups",
    "short_error",
    "summary_words",
]

STALL_AFTER = 5.0
"""Seconds without a byte after which an active file reads "stalled N s"."""

MAX_FILE_ROWS = 6
"""Active or waiting files shown under a model; the rest are counted."""

MANY_GROUPS = 8
"""Above this many downloads, the displays collapse: one line for all of them, then only those
that are moving or need attention (`get -I list` with 200 URLs stays one screen)."""

MAX_GROUP_ROWS = 10
"""Downloads shown under the summary line once collapsed; the rest are counted."""

_STATE_WIDTH = 24  # the state column never gets less than this (14 below 100 columns)
_STATE_ROOM = 44  # ...and gets this much before the bar may grow past its minimum

_HTTP_ERROR = re.compile(r"^HTTP (?P<status>\d{3})\b.*? from (?P<url>\S+)")
_FINISHED = frozenset({"completed", "partial", "failed", "cancelled"})


# ------------------------------------------------------------------------------------ words


def _seconds(value: float) -> str:
    """`12 s` below a minute (the countdown reads naturally), else `3m 20s`."""
    whole = max(0, math.ceil(value))
    return f"{whole} s" if whole < 60 else format_duration(whole)


def short_error(message: str | None, kind: str | None = None) -> str:
    """A few words for a status column: `503 from cdn.example`, else the message's first line."""
    if message:
        match = _HTTP_ERROR.match(message)
        if match:
            host = urlsplit(match["url"]).hostname or match["url"]
            return f"{match['status']} from {host}"
        first = message.strip().splitlines()[0] if message.strip() else ""
        head = first.split(": ", 1)[0]
        if len(first) > 48 and len(head) >= 12 and head.count("(") == head.count(")"):
            first = head  # "the body was cut short: <library detail>"
        if first:
            return first if len(first) <= 80 else first[:79] + "…"
    return (kind or "error").replace("_", " ")


def file_state(f: FileView, now: float) -> str | None:
    """Why a file is not simply downloading, in words; None while bytes are moving."""
    status = f.status
    if status == FileStatus.ACTIVE:
        if f.idle_for is not None and f.idle_for >= STALL_AFTER:
            return f"stalled {_seconds(f.idle_for)}"
        return None
    if status == FileStatus.WAITING_RETRY:
        reason = short_error(f.error_message, f.error_kind)
        if f.retry_at is None or f.retry_at - now < 0.5:
            return f"retrying now: {reason}"
        return f"retrying in {_seconds(f.retry_at - now)}: {reason}"
    if status == FileStatus.PAUSED:
        return "paused: disk full" if f.pause_reason == "disk_full" else "paused"
    if status == FileStatus.QUEUED:
        return f"queued #{f.position}" if f.position else "queued"
    if status == FileStatus.FAILED:
        return f"failed: {short_error(f.error_message, f.error_kind)}"
    if status == FileStatus.CANCELLED:
        return "cancelled"
    if status == FileStatus.COMPLETED:
        return "done"
    return status


def group_state(g: GroupView, now: float) -> str | None:
    """Why a model is not simply downloading, in words; None while bytes are moving."""
    status = g.status
    if status == "active":
        active = [f for f in g.files if f.status == FileStatus.ACTIVE]
        idle = [f.idle_for for f in active if f.idle_for is not None]
        if active and len(idle) == len(active) and min(idle) >= STALL_AFTER:
            return f"stalled {_seconds(min(idle))}"
        return None
    if status == "queued":
        if g.position:
            return f"queued #{g.position}"
        retrying = [f for f in g.files if f.status == FileStatus.WAITING_RETRY]
        if retrying:
            return file_state(min(retrying, key=lambda f: f.retry_at or 0.0), now)
        return "queued"
    if status == "paused":
        if any(f.pause_reason == "disk_full" for f in g.files):
            return "paused: disk full"
        return "paused"
    if status == "completed":
        return "done"
    if status in ("failed", "partial"):
        failed = sum(1 for f in g.files if f.status == FileStatus.FAILED)
        return f"failed: {failed} of {len(g.files)} files" if failed else status
    return status


def _percent(done: int, total: int | None) -> str:
    if not total:
        return UNKNOWN
    return f"{min(100.0, 100.0 * done / total):.0f}%"


def _bytes(done: int, total: int | None) -> str:
    return f"{format_bytes(done)} / {format_bytes(total)}"


def _files_done(g: GroupView) -> str:
    done = sum(1 for f in g.files if f.status == FileStatus.COMPLETED)
    return f"{done}/{len(g.files)} files" if g.files else ""


def group_line(g: GroupView, now: float) -> str:
    """A plain line for a model: `name  42%  1.0 GiB / 2.4 GiB  45.1 MB/s  ETA 31s  (1/3 files)`."""
    state = group_state(g, now)
    parts = [
        g.name,
        _percent(g.downloaded, g.total),
        _bytes(g.downloaded, g.total),
        format_rate(g.speed),
        f"ETA {format_duration(g.eta)}",
    ]
    if state:
        parts.append(state)
    files = _files_done(g)
    if files:
        parts.append(f"({files})")
    return "  ".join(parts)


def event_line(event: ev.Event, now: float) -> str | None:
    """A plain line for an event worth a line of its own (state changes, not progress)."""
    if isinstance(event, ev.GroupQueued):
        where = f" #{event.position}" if event.position else ""
        count = "1 file" if event.files == 1 else f"{event.files} files"
        return f"queued{where}: {event.name} ({count}, {format_bytes(event.total)})"
    if isinstance(event, ev.FileStarted):
        if event.offset:
            return f"resuming {event.ref} {event.name} from {format_bytes(event.offset)}"
        return f"started {event.ref} {event.name}"
    if isinstance(event, ev.StatusChanged):
        reason = short_error(event.error_message, event.error_kind)
        if event.status == FileStatus.WAITING_RETRY:
            wait = _seconds(event.retry_at - now) if event.retry_at is not None else "a moment"
            return f"retrying {event.ref} {event.name} in {wait}: {reason}"
        if event.status == FileStatus.PAUSED:
            why = ": disk full" if event.reason == "disk_full" else ""
            return f"paused {event.ref} {event.name}{why}"
        return None
    if isinstance(event, ev.FileCompleted):
        size = format_bytes(event.size)
        return f"done {event.ref} {event.name} ({size}, sha256 {event.sha256[:12]}…)"
    if isinstance(event, ev.FileFailed):
        return f"failed {event.ref} {event.name}: {event.message}"
    if isinstance(event, ev.Cancelled):
        return f"cancelled {event.ref} {event.name}"
    if isinstance(event, ev.GroupFinished):
        count = f"{event.completed} completed"
        if event.failed:
            count += f", {event.failed} failed"
        if event.cancelled:
            count += f", {event.cancelled} cancelled"
        return f"finished {event.name}: {event.status} ({count})"
    if isinstance(event, ev.Notice):
        return f"{event.level}: {event.message}"
    return None


# ------------------------------------------------------------------------------------ state


def _group_of(event: ev.Event) -> int | None:
    gid = getattr(event, "group_id", None)
    if isinstance(gid, int):
        return gid
    ref = getattr(event, "ref", None)
    if isinstance(ref, str) and ref:
        head = ref.partition(".")[0]
        if head.isdigit():
            return int(head)
    return None


def _index_of(ref: str) -> int | None:
    _, dot, tail = ref.partition(".")
    return int(tail) if dot and tail.isdigit() else None


class _Model:
    """The views being shown, patched by events between two reloads of the views."""

    def __init__(self) -> None:
        self.wanted: set[int] | None = None  # None: every group
        self.groups: dict[int, GroupView] = {}
        self.order: list[int] = []

    def track(self, group_ids: Iterable[int] | None) -> None:
        self.wanted = None if group_ids is None else set(group_ids)
        if self.wanted is not None:
            self.order = [g for g in self.order if g in self.wanted]
            self.groups = {g: v for g, v in self.groups.items() if g in self.wanted}

    def wants(self, gid: int | None) -> bool:
        return gid is not None and (self.wanted is None or gid in self.wanted)

    def set_views(self, views: Sequence[GroupView]) -> None:
        for view in views:
            if not self.wants(view.id):
                continue
            if view.id not in self.groups:
                self.order.append(view.id)
            self.groups[view.id] = view

    def shown(self) -> list[GroupView]:
        return [self.groups[g] for g in self.order if g in self.groups]

    def apply(self, event: ev.Event) -> None:
        gid = _group_of(event)
        if not self.wants(gid) or gid is None:
            return
        group = self.groups.get(gid)
        if isinstance(event, ev.GroupQueued):
            if group is None:
                self.order.append(gid)
                self.groups[gid] = GroupView(
                    id=gid,
                    name=event.name,
                    spec=event.name,
                    status="queued",
                    dest_dir="",
                    position=event.position,
                    downloaded=0,
                    total=event.total,
                    speed=None,
                    eta=None,
                    created_at=event.ts,
                    finished_at=None,
                )
            return
        if group is None:
            return
        if isinstance(event, ev.GroupProgress):
            self.groups[gid] = dataclasses.replace(
                group,
                downloaded=event.downloaded,
                total=event.total if event.total is not None else group.total,
                speed=event.speed,
                eta=event.eta,
            )
        elif isinstance(event, ev.GroupFinished):
            self.groups[gid] = dataclasses.replace(
                group, status=event.status, speed=None, eta=None, finished_at=event.ts
            )
        elif isinstance(event, ev.FileProgress | ev.StatusChanged | ev.FileCompleted):
            self._patch_file(group, event)

    def _patch_file(
        self, group: GroupView, event: ev.FileProgress | ev.StatusChanged | ev.FileCompleted
    ) -> None:
        index = _index_of(event.ref)
        files = list(group.files)
        for i, f in enumerate(files):
            if _index_of(f.ref) != index:
                continue
            if isinstance(event, ev.FileProgress):
                moved = event.downloaded > f.downloaded
                files[i] = dataclasses.replace(
                    f,
                    downloaded=event.downloaded,
                    total=event.total if event.total is not None else f.total,
                    speed=event.speed,
                    eta=event.eta,
                    idle_for=0.0 if moved else f.idle_for,
                )
            elif isinstance(event, ev.StatusChanged):
                active = event.status == FileStatus.ACTIVE
                files[i] = dataclasses.replace(
                    f,
                    status=event.status,
                    retry_at=event.retry_at,
                    error_kind=event.error_kind or f.error_kind,
                    error_message=event.error_message or f.error_message,
                    pause_reason=event.reason if event.status == FileStatus.PAUSED else None,
                    position=f.position if event.status == FileStatus.QUEUED else None,
                    speed=f.speed if active else None,
                    eta=f.eta if active else None,
                    idle_for=0.0 if active and f.status != FileStatus.ACTIVE else f.idle_for,
                )
            else:
                files[i] = dataclasses.replace(
                    f,
                    status=FileStatus.COMPLETED.value,
                    downloaded=event.size,
                    total=event.size,
                    sha256=event.sha256,
                    speed=None,
                    eta=None,
                )
            status = derive_group_status([FileStatus(x.status) for x in files]).value
            self.groups[group.id] = dataclasses.replace(group, files=files, status=status)
            return


# ------------------------------------------------------------------------------------ rich


def _bar(done: int, total: int | None, width: int, now: float) -> ProgressBar:
    from rich.progress_bar import ProgressBar

    if not total:
        return ProgressBar(total=None, completed=0, width=width, pulse=True, animation_time=now)
    return ProgressBar(total=float(total), completed=float(min(done, total)), width=width)


def render_groups(
    groups: Sequence[GroupView],
    now: float,
    *,
    width: int = 120,
    hint: str | None = None,
    name_width: int = 0,
) -> RenderableType:
    """The live display: one row per model, then rows for its active or waiting files.

    The numbers keep their width; on a narrow terminal the bar shrinks first, then the names,
    and the state words are cut with `…`. `name_width` keeps the name column from jumping as
    rows come and go. Above MANY_GROUPS models, one summary row stands for all of them, followed
    by at most MAX_GROUP_ROWS of those that are moving, waiting to retry, paused or failed."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    many = len(groups) > MANY_GROUPS
    rows = _rows_worth_showing(groups) if many else list(groups)
    fixed = 4 + 21 + 9 + 5  # pct, bytes, speed, the gaps between the six columns
    narrow = width < 100
    state_min = 14 if narrow else _STATE_WIDTH
    names = min(44, max(name_width, _name_width(groups)))
    if many:
        names = max(names, len(f"{len(groups)} downloads {len(groups)}/{len(groups)} done"))
    bar_width = max(8 if narrow else 10, min(30, width - fixed - names - _STATE_ROOM))
    names = max(12, min(names, width - fixed - bar_width - state_min))
    table = Table.grid(padding=(0, 1), expand=False)
    table.add_column("name", no_wrap=True, overflow="ellipsis", width=names)
    table.add_column("bar", no_wrap=True, width=bar_width)
    table.add_column("pct", justify="right", no_wrap=True, min_width=4)
    table.add_column("bytes", justify="right", no_wrap=True, min_width=21)
    table.add_column("speed", justify="right", no_wrap=True, min_width=9)
    state_width = max(state_min, width - fixed - names - bar_width)
    table.add_column("state", no_wrap=True, overflow="ellipsis", max_width=state_width)
    if many:
        downloaded, total, speed = _totals(groups)
        head = Text(f"{len(groups)} downloads", style="bold")
        head.append(f" {_count(groups, 'completed')}/{len(groups)} done", style="dim")
        table.add_row(
            head,
            _bar(downloaded, total, bar_width, now),
            _percent(downloaded, total),
            _bytes(downloaded, total),
            format_rate(speed),
            Text(summary_words(groups), style="cyan", no_wrap=True, overflow="ellipsis"),
        )
    for g in rows[:MAX_GROUP_ROWS] if many else rows:
        state = group_state(g, now)
        files = _files_done(g)
        name = Text(g.name, style="bold")
        if files and len(g.files) > 1:
            name.append(f" {files}", style="dim")
        table.add_row(
            name,
            _bar(g.downloaded, g.total, bar_width, now),
            _percent(g.downloaded, g.total),
            _bytes(g.downloaded, g.total),
            format_rate(g.speed),
            _state_text(state, f"ETA {format_duration(g.eta)}"),
        )
        if g.status in _FINISHED or (many and len(g.files) == 1):
            continue  # (a one-file download's row says all its file's row would)
        shown = [
            f
            for f in g.files
            if f.status
            in (FileStatus.ACTIVE, FileStatus.WAITING_RETRY, FileStatus.PAUSED, FileStatus.FAILED)
        ]
        if g.status == "paused" and all(f.status == FileStatus.PAUSED for f in shown):
            shown = []  # the model row already says it
        for f in shown[:MAX_FILE_ROWS]:
            fstate = file_state(f, now)
            table.add_row(
                Text("  " + f.name.rsplit("/", 1)[-1], style="dim" if fstate else ""),
                _bar(f.downloaded, f.total, bar_width, now),
                _percent(f.downloaded, f.total),
                _bytes(f.downloaded, f.total),
                format_rate(f.speed) if f.status == FileStatus.ACTIVE else UNKNOWN,
                _state_text(fstate, f"ETA {format_duration(f.eta)}"),
            )
        if len(shown) > MAX_FILE_ROWS:
            table.add_row(Text(f"  … {len(shown) - MAX_FILE_ROWS} more", style="dim"))
    if many and len(rows) > MAX_GROUP_ROWS:
        table.add_row(Text(f"… {len(rows) - MAX_GROUP_ROWS} more", style="dim"))
    if hint:
        return Group(table, Text(hint, style="dim"))
    return table


def _rows_worth_showing(groups: Sequence[GroupView]) -> list[GroupView]:
    """What a collapsed display lists: downloads moving first, then those waiting to retry,
    paused or stalled, then failed ones; plainly queued and completed ones are only counted."""
    moving = [g for g in groups if g.status == "active"]
    waiting = [
        g
        for g in groups
        if g.status in ("queued", "paused")
        and (g.status == "paused" or any(f.status == FileStatus.WAITING_RETRY for f in g.files))
    ]
    failed = [g for g in groups if g.status in ("failed", "partial")]
    return moving + waiting + failed


def _count(groups: Sequence[GroupView], status: str) -> int:
    return sum(1 for g in groups if g.status == status)


def _totals(groups: Sequence[GroupView]) -> tuple[int, int | None, float | None]:
    """Bytes done, bytes in all (None while any size is unknown), and the sum of the speeds the
    manager estimated for each download (None while none is known)."""
    downloaded = sum(g.downloaded for g in groups)
    sizes = [g.total for g in groups]
    total = None if any(t is None for t in sizes) else sum(t or 0 for t in sizes)
    speeds = [g.speed for g in groups if g.speed is not None and g.status == "active"]
    return downloaded, total, (sum(speeds) if speeds else None)


def summary_words(groups: Sequence[GroupView]) -> str:
    """`3 active, 185 queued, 2 failed`: how many downloads are in each state (none omitted)."""
    order = ("active", "queued", "paused", "completed", "partial", "failed", "cancelled")
    counts = {status: _count(groups, status) for status in order}
    words = {"completed": "done"}
    return ", ".join(f"{n} {words.get(s, s)}" for s, n in counts.items() if n) or "nothing"


def _state_text(state: str | None, moving: str) -> Text:
    from rich.text import Text

    if state is None:
        text, style = moving, ""
    elif state.startswith(("failed", "paused: disk")):
        text, style = state, "red"
    elif state.startswith(("retrying", "stalled")):
        text, style = state, "yellow"
    elif state == "done":
        text, style = "done ✓", "green"
    else:
        text, style = state, "cyan"
    return Text(text, style=style, no_wrap=True, overflow="ellipsis")


def _name_width(groups: Sequence[GroupView]) -> int:
    widths = [len(g.name) + len(_files_done(g)) + 1 for g in groups]
    widths += [len(f.name.rsplit("/", 1)[-1]) + 2 for g in groups for f in g.files]
    return min(44, max(widths, default=0))


# ------------------------------------------------------------------------------------ displays


class Display(Protocol):
    def begin(self) -> None: ...
    def track(self, group_ids: Iterable[int] | None) -> None: ...
    def on_views(self, views: Sequence[GroupView]) -> None: ...
    def on_event(self, event: ev.Event) -> None: ...
    def tick(self, now: float) -> None: ...
    def message(self, text: str, *, style: str | None = None) -> None: ...
    def end(self) -> None: ...
    def abort(self) -> None: ...


class LiveDisplay:
    """A rich Live region, redrawn on `tick` (no refresh thread: state is only touched from the
    caller's loop). Messages print above it."""

    def __init__(self, console: Console, *, hint: str | None = None) -> None:
        self.console = console
        self.hint = hint
        self._model = _Model()
        self._live: Live | None = None
        self._now = 0.0
        self._width = 0

    def begin(self) -> None:
        from rich.live import Live
        from rich.text import Text

        self._live = Live(
            Text(""),
            console=self.console,
            auto_refresh=False,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start()

    def track(self, group_ids: Iterable[int] | None) -> None:
        self._model.track(group_ids)

    def on_views(self, views: Sequence[GroupView]) -> None:
        self._model.set_views(views)

    def on_event(self, event: ev.Event) -> None:
        self._model.apply(event)
        if isinstance(event, ev.Notice | ev.FileFailed) and self._model.wants(_group_of(event)):
            line = event_line(event, self._now)
            if line:
                from rich.text import Text

                self.console.print(Text(line, style="yellow"))

    def renderable(self, now: float, *, hint: bool = True) -> RenderableType:
        shown = self._model.shown()
        self._width = max(self._width, _name_width(shown))
        return render_groups(
            shown,
            now,
            width=self.console.width,
            hint=self.hint if hint else None,
            name_width=self._width,
        )

    def tick(self, now: float) -> None:
        self._now = now
        if self._live is not None:
            self._live.update(self.renderable(now), refresh=True)

    def message(self, text: str, *, style: str | None = None) -> None:
        from rich.text import Text

        self.console.print(Text(text, style=style or ""))

    def end(self) -> None:
        if self._live is not None:
            if self._now:
                self._live.update(self.renderable(self._now, hint=False), refresh=True)
            self._live.stop()
            self._live = None

    def abort(self) -> None:
        """Leave at once: give the terminal its cursor back, without a final redraw."""
        self.console.file.write("\n\x1b[?25h")
        self.console.file.flush()


class PlainDisplay:
    """For a pipe or a log: a line per state change, and every `interval` seconds one line per
    model that is downloading. Above MANY_GROUPS models, the periodic lines are one summary line
    plus one per model that is moving, and the routine events (queued, started from zero, a
    model completed) get no line of their own: a file's `done` line says it."""

    def __init__(self, stream: IO[str], *, interval: float = 5.0) -> None:
        self.stream = stream
        self.interval = interval
        self._model = _Model()
        self._last = 0.0
        self._now = 0.0

    def begin(self) -> None:
        pass

    def track(self, group_ids: Iterable[int] | None) -> None:
        self._model.track(group_ids)

    def on_views(self, views: Sequence[GroupView]) -> None:
        self._model.set_views(views)

    def on_event(self, event: ev.Event) -> None:
        self._model.apply(event)
        if not self._model.wants(_group_of(event)) and not isinstance(event, ev.Notice):
            return
        if self._many() and _routine(event):
            return
        line = event_line(event, event.ts or self._now)
        if line:
            self._write(line)

    def tick(self, now: float) -> None:
        self._now = now
        if self._last == 0.0:
            self._last = now
            return
        if now - self._last < self.interval:
            return
        self._last = now
        shown = self._model.shown()
        if self._many():
            self._write(many_line(shown))
            moving = [g for g in shown if g.status == "active"]
            for g in moving[:MAX_GROUP_ROWS]:
                self._write("  " + group_line(g, now))
            if len(moving) > MAX_GROUP_ROWS:
                self._write(f"  … {len(moving) - MAX_GROUP_ROWS} more downloading")
            return
        for g in shown:
            if g.status in ("active", "queued"):
                self._write(group_line(g, now))

    def message(self, text: str, *, style: str | None = None) -> None:
        self._write(text)

    def end(self) -> None:
        self.stream.flush()

    def abort(self) -> None:
        self.stream.flush()

    def _many(self) -> bool:
        wanted = self._model.wanted
        count = len(wanted) if wanted is not None else len(self._model.groups)
        return count > MANY_GROUPS

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()


def _routine(event: ev.Event) -> bool:
    """An event that needs no line of its own among many downloads."""
    if isinstance(event, ev.GroupQueued):
        return True
    if isinstance(event, ev.FileStarted):
        return not event.offset
    if isinstance(event, ev.GroupFinished):
        return event.status == "completed"
    return False


def many_line(groups: Sequence[GroupView]) -> str:
    """`200 downloads: 45%  1.2 GiB / 2.4 GiB  45.1 MB/s  (3 active, 185 queued, 12 done)`."""
    downloaded, total, speed = _totals(groups)
    return (
        f"{len(groups)} downloads: {_percent(downloaded, total)}  {_bytes(downloaded, total)}  "
        f"{format_rate(speed)}  ({summary_words(groups)})"
    )


class JsonDisplay:
    """The event stream as NDJSON (`core.events.to_dict`), one event per line, for the tracked
    groups; a group's stream ends with its `group_finished` (later events of it are dropped).
    Messages go to `messages` (stderr), so `stream` stays pure NDJSON."""

    def __init__(self, stream: IO[str], messages: IO[str]) -> None:
        self.stream = stream
        self.messages = messages
        self._model = _Model()
        self._closed: set[int] = set()
        self.finished: dict[int, ev.GroupFinished] = {}

    def begin(self) -> None:
        pass

    def track(self, group_ids: Iterable[int] | None) -> None:
        self._model.track(group_ids)

    def on_views(self, views: Sequence[GroupView]) -> None:
        pass

    def on_event(self, event: ev.Event) -> None:
        gid = _group_of(event)
        if gid is not None and (not self._model.wants(gid) or gid in self._closed):
            return
        if isinstance(event, ev.GroupFinished):
            self._closed.add(event.group_id)
            self.finished[event.group_id] = event
        self.write(event)

    def write(self, event: ev.Event) -> None:
        self.stream.write(json.dumps(ev.to_dict(event), separators=(",", ":")) + "\n")
        self.stream.flush()

    def tick(self, now: float) -> None:
        pass

    def message(self, text: str, *, style: str | None = None) -> None:
        self.messages.write(text + "\n")
        self.messages.flush()

    def end(self) -> None:
        self.stream.flush()

    def abort(self) -> None:
        self.stream.flush()
