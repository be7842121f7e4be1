"""The downloads a display shows: the latest views, patched by events between two reloads."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from modelfetch.core import events as ev
from modelfetch.core.models import FileStatus, derive_group_status
from modelfetch.views import GroupView


def group_of(event: ev.Event) -> int | None:
    """The download an event is about (from its group id or its `12.3` ref), if any."""
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


class ShownGroups:
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
        if isinstance(event, ev.QueueChanged):
            self._reposition(event.positions)
            return
        gid = group_of(event)
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

    def _reposition(self, positions: dict[str, int]) -> None:
        """The positions of a `queue_changed`: every group with a waiting file, from the same
        `SchedulingQueue.group_positions` the views (and so `ls`) read; a group left out of
        it waits no more. Without this, a move showed the old place until the next reload."""
        for gid, view in self.groups.items():
            position = positions.get(str(gid))
            if view.position != position:
                self.groups[gid] = dataclasses.replace(view, position=position)

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
            # A group none of whose files waits has no place in line (as in the views); one
            # that waits again gets its place from the next `queue_changed` or reload.
            waits = any(x.status == FileStatus.QUEUED for x in files)
            position = group.position if waits else None
            self.groups[group.id] = dataclasses.replace(
                group, files=files, status=status, position=position
            )
            return
