"""Queue commands on live downloads: pause, resume, cancel, retry, reorder, forget."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from modelfetch.core import events as ev
from modelfetch.core.errors import ConflictError
from modelfetch.core.models import (
    LIVE_STATUSES,
    FileRecord,
    FileStatus,
    GroupRecord,
    GroupStatus,
    ItemRef,
    PauseReason,
    StopReason,
)
from modelfetch.core.queue import FileKey
from modelfetch.manager import files
from modelfetch.manager.groups import WAITING, file_ref, member
from modelfetch.manager.partials import on_disk, partial_paths
from modelfetch.manager.transitions import finish_if_done, maybe_finish_group

RETRYABLE = frozenset({FileStatus.FAILED, FileStatus.CANCELLED})
"""What `retry` queues again."""
INTERRUPTIBLE = frozenset({FileStatus.QUEUED, FileStatus.ACTIVE, FileStatus.WAITING_RETRY})
"""What a Ctrl-C pauses: what the command was working on, not what was paused already."""

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from typing import Any

    from modelfetch.manager.coordinator import DownloadManager
    from modelfetch.requests import GroupRequest


async def pause_files(m: DownloadManager, targets: list[FileRecord], reason: PauseReason) -> None:
    stops: list[Coroutine[Any, Any, None]] = []
    why = _STOP_FOR.get(reason, StopReason.PAUSE)  # finalize maps it back to `reason`
    with m._batch():
        for f in targets:
            key = (f.group_id, f.index)
            if f.status is FileStatus.ACTIVE and key in m._running:
                stops.append(files.stop(m, m._running[key], why))
            elif f.status in (FileStatus.QUEUED, FileStatus.WAITING_RETRY):
                m._transition(
                    f,
                    FileStatus.PAUSED,
                    allowed_from=(FileStatus.QUEUED, FileStatus.WAITING_RETRY),
                    reason=reason.value,
                    pause_reason=reason.value,
                    retry_at=None,
                )
    await asyncio.gather(*stops)


_STOP_FOR = {
    PauseReason.DISK_FULL: StopReason.DISK_FULL,
    PauseReason.INTERRUPTED: StopReason.INTERRUPT,
}
"""How a running file is stopped for each pause reason (a user's pause otherwise)."""


async def interrupt(m: DownloadManager, group_ids: Iterable[int] | None) -> list[int]:
    """Ctrl-C in the foreground: pause what is queued, running or waiting to retry in these
    groups (every group for None) as interrupted; what the user paused stays as it is. Returns
    the groups that had something paused, in id order.

    On a queue shared with other workers (`fleet.py`) nothing is paused: this worker stops
    claiming, and what it was running goes back to the queue (bytes kept) for the others;
    returns the groups of those files."""
    if m._fleet is not None:
        return await fleet_leave(m, group_ids)
    if group_ids is None:
        targets = m._book.all_live_files()
    else:
        wanted = set(group_ids)
        targets = [f for f in m._book.all_live_files() if f.group_id in wanted]
    targets = [f for f in targets if f.status in INTERRUPTIBLE]
    await pause_files(m, targets, PauseReason.INTERRUPTED)
    return sorted({f.group_id for f in targets if f.status is FileStatus.PAUSED})


async def fleet_leave(m: DownloadManager, group_ids: Iterable[int] | None) -> list[int]:
    assert m._fleet is not None
    m._fleet.leaving = True
    wanted = None if group_ids is None else set(group_ids)
    runs = [r for r in m._running.values() if wanted is None or r.rec.group_id in wanted]
    await asyncio.gather(*(files.stop(m, r, StopReason.SHUTDOWN) for r in runs))
    return sorted({r.rec.group_id for r in runs})


def resume_interrupted(m: DownloadManager) -> list[int]:
    """Queue again what an earlier Ctrl-C paused (not what the user paused); returns the
    groups resumed, in id order."""
    targets = [
        f
        for f in m._book.all_live_files()
        if f.status is FileStatus.PAUSED and f.pause_reason == PauseReason.INTERRUPTED.value
    ]
    resume_files(m, targets)
    return sorted({f.group_id for f in targets})


def resume_files(m: DownloadManager, targets: list[FileRecord]) -> None:
    with m._batch():
        for f in targets:
            if f.status in (FileStatus.PAUSED, FileStatus.WAITING_RETRY):
                m._transition(
                    f,
                    FileStatus.QUEUED,
                    allowed_from=(FileStatus.PAUSED, FileStatus.WAITING_RETRY),
                    reason="resumed",
                    pause_reason=None,
                    retry_at=None,
                )
    m._wake.set()


async def cancel(m: DownloadManager, ref: ItemRef) -> None:
    targets = m._files_of(ref)
    group = m._group(ref.group_id)
    # The group's own Cancelled event comes after its members' and before GroupFinished.
    m._finish_held.add(group.id)
    try:
        stops = []
        with m._batch():
            for f in targets:
                key = (f.group_id, f.index)
                if f.status is FileStatus.ACTIVE and key in m._running:
                    stops.append(files.stop(m, m._running[key], StopReason.CANCEL))
                elif f.status in WAITING:
                    _cancel_waiting(m, f)
        await asyncio.gather(*stops)
    finally:
        m._finish_held.discard(group.id)
    with m._batch():
        if ref.index is None:
            m._emit(ev.Cancelled(ref=str(ref), group_id=group.id, name=group.name))
        maybe_finish_group(m, group)


def _cancel_waiting(m: DownloadManager, f: FileRecord) -> None:
    if m._transition(
        f,
        FileStatus.CANCELLED,
        allowed_from=WAITING,
        reason="cancelled",
        finished_at=time.time(),
        bytes_done=0,
    ):
        for p in partial_paths(f.dest):
            p.unlink(missing_ok=True)
        m._emit(ev.Cancelled(ref=file_ref(f), group_id=f.group_id, name=f.name))
        finish_if_done(m, f.group_id)


def requeue(m: DownloadManager, group: GroupRecord, targets: list[FileRecord]) -> None:
    """Queue finished (failed, cancelled, or completed but gone) files again, from the bytes
    on disk; paused or retrying ones are resumed."""
    with m._batch():
        for f in targets:
            if f.status in (FileStatus.ACTIVE, FileStatus.QUEUED):
                continue
            if f.status in (FileStatus.PAUSED, FileStatus.WAITING_RETRY):
                resume_files(m, [f])
                continue
            bytes_on_disk = on_disk(m, f)
            allowed = (FileStatus.FAILED, FileStatus.CANCELLED, FileStatus.COMPLETED)
            key = (f.group_id, f.index)
            if key not in m._queue:
                changes = m._queue.add_group(group.id, [f.index], f.priority)
                m._queue.set_waiting(key, False)
                apply_order(m, changes)
            m._histories.pop(key, None)
            m._transition(
                f,
                FileStatus.QUEUED,
                allowed_from=allowed,
                reason="retry",
                attempts=0,
                error_kind=None,
                error_message=None,
                retry_at=None,
                finished_at=None,
                bytes_done=bytes_on_disk,
            )
        if group.finished_at is not None:
            m.store.update_group(group.id, finished_at=None)  # it will finish again
            group.finished_at = None
    m._wake.set()


def retry(m: DownloadManager, ref: ItemRef) -> None:
    """`retry`: queue failed or cancelled members again (and completed ones whose file is
    gone); a target with nothing to retry is refused with why, instead of a silent no-op."""
    group = m._group(ref.group_id)
    members = m._files_of(ref)
    targets = [
        f
        for f in members
        if f.status in RETRYABLE or (f.status is FileStatus.COMPLETED and not Path(f.dest).exists())
    ]
    if not targets:
        status = members[0].status.value if ref.index is not None else group.status.value
        if status == FileStatus.COMPLETED.value:
            raise ConflictError(f"{ref} is finished (completed): nothing to retry")
        hint = f" (`modelfetch resume {ref}` queues it)" if status == "paused" else ""
        raise ConflictError(f"{ref} is {status}, nothing failed: nothing to retry{hint}")
    requeue(m, group, targets)


def move(m: DownloadManager, ref: ItemRef, position: int) -> None:
    """`move`: only what waits has a place in line to change (a running, paused or finished
    download would silently keep its state, and `ls` would show no new position)."""
    members = m._files_of(ref)
    if not any(f.status is FileStatus.QUEUED for f in members):
        status = (
            members[0].status.value
            if ref.index is not None
            else m._group(ref.group_id).status.value
        )
        raise ConflictError(f"{ref} is not waiting ({status}): only waiting downloads move")
    _, changes = reorder(
        m, ref, lambda target: m._queue.move(target, position), "only waiting downloads move"
    )
    apply_order(m, changes)


def queued_as(m: DownloadManager, request: GroupRequest) -> int | None:
    """The live download with the same request (spec and destination), if there is one."""
    existing = m.store.find_group(request.dedupe_key())
    if existing is None:
        return None
    group = m._groups.get(existing.id) or existing
    live = (GroupStatus.QUEUED, GroupStatus.ACTIVE, GroupStatus.PAUSED)
    return group.id if group.status in live else None


def reorder(
    m: DownloadManager,
    ref: str | int | ItemRef,
    command: Callable[[FileKey | int], dict[FileKey, int]],
    refusal: str,
) -> tuple[ItemRef, dict[FileKey, int]]:
    """Run a queue command on a download (`12`) or one of its files (`12.3`); a target the
    queue does not hold is unknown (404) or finished (409)."""
    item = m._ref(ref)
    target: FileKey | int = item.group_id if item.index is None else (item.group_id, item.index)
    try:
        return item, command(target)
    except KeyError:
        m._files_of(item)  # UnknownItemError if it names nothing
        raise ConflictError(f"{item} is finished: {refusal}") from None


def set_priority(m: DownloadManager, ref: str | int | ItemRef, priority: int) -> None:
    item, changes = reorder(
        m,
        ref,
        lambda target: m._queue.set_priority(target, priority),
        "its priority no longer matters",
    )
    with m._batch():
        if item.index is None:
            m.store.update_group(item.group_id, priority=priority)
            m._group(item.group_id).priority = priority
        apply_order(m, changes, priority=priority)


def apply_order(
    m: DownloadManager, changes: dict[FileKey, int], *, priority: int | None = None
) -> None:
    """Store and mirror the order keys (and priority) a queue command changed."""
    if not changes:
        return
    with m._batch():
        m.store.set_order(changes, priority=priority)
        for (gid, idx), key in changes.items():
            group = m._groups.get(gid)
            f = member(group, idx) if group is not None else None
            if f is not None:
                f.order_key = key
                if priority is not None:
                    m._book.set(f, {"priority": priority})
        emit_positions(m)
    m._wake.set()


def emit_positions(m: DownloadManager) -> None:
    positions = m._queue.group_positions()
    m._emit(ev.QueueChanged(positions={str(g): p for g, p in positions.items()}))


def forget(m: DownloadManager, ref: ItemRef) -> None:
    group = m._group(ref.group_id)
    if any(f.status in LIVE_STATUSES for f in group.files):
        raise ConflictError(f"{ref} is still {group.status}: cancel it first")
    with m._batch():
        m.store.forget_group(group.id)
    m._book.unregister(group.id)


def forget_finished(m: DownloadManager) -> list[int]:
    with m._batch():
        ids = m.store.forget_finished()
    for gid in ids:
        m._book.unregister(gid)
    return ids


def resume_when_space_returns(m: DownloadManager) -> None:
    """Files paused for a full disk resume on their own, in queue order, as far as the free
    space on their filesystem covers what they still need (plus a small margin)."""
    order = {key: n for n, key in enumerate(m._queue.order())}
    waiting = sorted(
        (
            f
            for f in m._book.all_live_files()
            if f.status is FileStatus.PAUSED and f.pause_reason == PauseReason.DISK_FULL.value
        ),
        key=lambda f: order.get((f.group_id, f.index), 0),
    )
    budgets: dict[int, int] = {}
    resumed = []
    for f in waiting:
        need = max(0, (f.expected_size or f.bytes_total or 0) - f.bytes_done)
        try:
            parent = _existing_parent(Path(f.dest))
            device = parent.stat().st_dev
            if device not in budgets:
                budgets[device] = shutil.disk_usage(parent).free
        except OSError:
            continue
        margin = min(64 << 20, need // 10)
        if budgets[device] >= need + margin:
            budgets[device] -= need + margin
            resumed.append(f)
    if resumed:
        names = ", ".join(f.name for f in resumed[:3]) + ("…" if len(resumed) > 3 else "")
        m._emit(ev.Notice(message=f"space is available again: resuming {names}"))
        resume_files(m, resumed)


def _existing_parent(path: Path) -> Path:
    p = path.parent
    while not p.exists() and p != p.parent:
        p = p.parent
    return p
