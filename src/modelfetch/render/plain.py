"""The plain display for a pipe or a log: a line per state change, progress lines at intervals."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import IO

from modelfetch.core import events as ev
from modelfetch.render.collapse import MANY_GROUPS, MAX_GROUP_ROWS, many_line
from modelfetch.render.model import ShownGroups, group_of
from modelfetch.render.words import event_line, group_line
from modelfetch.views import GroupView


class PlainDisplay:
    """For a pipe or a log: a line per state change, and every `interval` seconds one line per
    model that is downloading. Above MANY_GROUPS models, the periodic lines are one summary line
    plus one per model that is moving, and the routine events (queued, started from zero, a
    model completed) get no line of their own: a file's `done` line says it."""

    def __init__(self, stream: IO[str], *, interval: float = 5.0) -> None:
        self.stream = stream
        self.interval = interval
        self._model = ShownGroups()
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
        if not self._model.wants(group_of(event)) and not isinstance(event, ev.Notice):
            return
        if self.many() and _routine(event):
            return
        line = event_line(event, event.ts or self._now)
        if line:
            self._write(line)

    def due(self, now: float) -> bool:
        """Whether `tick(now)` would write the periodic progress lines."""
        return self._last != 0.0 and now - self._last >= self.interval

    def tick(self, now: float) -> None:
        self._now = now
        if self._last == 0.0:
            self._last = now
            return
        if now - self._last < self.interval:
            return
        self._last = now
        shown = self._model.shown()
        if self.many():
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

    def many(self) -> bool:
        """Whether it shows one summary line for the downloads it follows (more than
        MANY_GROUPS), not a line each."""
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
