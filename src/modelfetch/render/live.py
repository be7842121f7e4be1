"""The live rich display on a terminal: a table of downloads and their files, redrawn on tick."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from modelfetch.core import events as ev
from modelfetch.core.format import UNKNOWN, format_duration, format_rate
from modelfetch.core.models import FileStatus
from modelfetch.render.collapse import (
    MANY_GROUPS,
    MAX_GROUP_ROWS,
    count_in,
    rows_worth_showing,
    summary_words,
    totals,
)
from modelfetch.render.model import ShownGroups, group_of
from modelfetch.render.words import (
    FINISHED,
    bytes_of,
    event_line,
    file_state,
    files_done,
    group_state,
    percent,
)
from modelfetch.views import GroupView

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.progress_bar import ProgressBar
    from rich.text import Text

# rich is imported by what draws; the words and the plain and NDJSON displays do without it,
# so `ls`, `status` and a piped `get` do not pay for it.

MAX_FILE_ROWS = 6
"""Active or waiting files shown under a model; the rest are counted."""

_STATE_WIDTH = 24  # the state column never gets less than this (14 below 100 columns)
_STATE_ROOM = 44  # ...and gets this much before the bar may grow past its minimum


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
    rows = rows_worth_showing(groups) if many else list(groups)
    fixed = 4 + 21 + 9 + 5  # pct, bytes, speed, the gaps between the six columns
    narrow = width < 100
    state_min = 14 if narrow else _STATE_WIDTH
    names = min(44, max(name_width, names_width(groups)))
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
        downloaded, total, speed = totals(groups)
        head = Text(f"{len(groups)} downloads", style="bold")
        head.append(f" {count_in(groups, 'completed')}/{len(groups)} done", style="dim")
        table.add_row(
            head,
            _bar(downloaded, total, bar_width, now),
            percent(downloaded, total),
            bytes_of(downloaded, total),
            format_rate(speed),
            Text(summary_words(groups), style="cyan", no_wrap=True, overflow="ellipsis"),
        )
    for g in rows[:MAX_GROUP_ROWS] if many else rows:
        state = group_state(g, now)
        files = files_done(g)
        name = Text(g.name, style="bold")
        if files and len(g.files) > 1:
            name.append(f" {files}", style="dim")
        table.add_row(
            name,
            _bar(g.downloaded, g.total, bar_width, now),
            percent(g.downloaded, g.total),
            bytes_of(g.downloaded, g.total),
            format_rate(g.speed),
            _state_text(state, f"ETA {format_duration(g.eta)}"),
        )
        if g.status in FINISHED or (many and len(g.files) == 1):
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
                percent(f.downloaded, f.total),
                bytes_of(f.downloaded, f.total),
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


def names_width(groups: Sequence[GroupView]) -> int:
    """Width the name column wants for these downloads and their files (at most 44)."""
    widths = [len(g.name) + len(files_done(g)) + 1 for g in groups]
    widths += [len(f.name.rsplit("/", 1)[-1]) + 2 for g in groups for f in g.files]
    return min(44, max(widths, default=0))


class LiveDisplay:
    """A rich Live region, redrawn on `tick` (no refresh thread: state is only touched from the
    caller's loop). Messages print above it."""

    def __init__(self, console: Console, *, hint: str | None = None) -> None:
        self.console = console
        self.hint = hint
        self._model = ShownGroups()
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
        if isinstance(event, ev.Notice | ev.FileFailed) and self._model.wants(group_of(event)):
            line = event_line(event, self._now)
            if line:
                from rich.text import Text

                self.console.print(Text(line, style="yellow"))

    def renderable(self, now: float, *, hint: bool = True) -> RenderableType:
        shown = self._model.shown()
        self._width = max(self._width, names_width(shown))
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
