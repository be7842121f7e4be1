"""The NDJSON display for `--json`: the event stream, one JSON object per line."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import IO

from modelfetch.core import events as ev
from modelfetch.render.model import ShownGroups, group_of
from modelfetch.views import GroupView


class JsonDisplay:
    """The event stream as NDJSON (`core.events.to_dict`), one event per line, for the tracked
    groups; a group's stream ends with its `group_finished` (later events of it are dropped).
    Messages go to `messages` (stderr), so `stream` stays pure NDJSON."""

    def __init__(self, stream: IO[str], messages: IO[str]) -> None:
        self.stream = stream
        self.messages = messages
        self._model = ShownGroups()
        self._closed: set[int] = set()
        self.finished: dict[int, ev.GroupFinished] = {}

    def begin(self) -> None:
        pass

    def track(self, group_ids: Iterable[int] | None) -> None:
        self._model.track(group_ids)

    def on_views(self, views: Sequence[GroupView]) -> None:
        pass

    def on_event(self, event: ev.Event) -> None:
        gid = group_of(event)
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
