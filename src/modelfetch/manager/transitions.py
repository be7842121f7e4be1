"""Status changes: the guarded store write, then memory, then the event, published after commit.

Every state change is one guarded UPDATE in the store, applied to the in-memory mirror only when
it succeeded, and announced on the bus only after it was committed. Changes made together
without an await in between (the coordinator starting 16 files, a file completing with its
verified digest, pause-all) share one transaction (`batch`): their events wait for its commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING, Any, Protocol, cast

from modelfetch.bus import EventBus
from modelfetch.core import events as ev
from modelfetch.core.models import (
    LIVE_STATUSES,
    TERMINAL_STATUSES,
    FileRecord,
    FileStatus,
    GroupRecord,
)
from modelfetch.core.queue import FileKey, SchedulingQueue
from modelfetch.manager.groups import GroupBook, file_ref
from modelfetch.store import Store, StoreUnavailableError

if TYPE_CHECKING:
    from modelfetch.manager.coordinator import DownloadManager


class StatusWriter(Protocol):
    """What writes a guarded status change: the store, or a fleet worker's fenced writes."""

    def transition(
        self,
        group_id: int,
        index: int,
        to: FileStatus,
        *,
        allowed_from: Collection[FileStatus],
        **fields: object,
    ) -> bool: ...


class BatchedStatusWriter(StatusWriter, Protocol):
    """A writer that can also take a change whose guard its caller checked, with its batch."""

    @property
    def batching(self) -> bool: ...

    def transition_in_batch(
        self,
        group_id: int,
        index: int,
        to: FileStatus,
        *,
        allowed_from: Collection[FileStatus],
        **fields: object,
    ) -> None: ...


async def _raise(exc: Exception) -> None:
    raise exc


class Transitions:
    """Writes status changes through the store and holds the open batch and its events."""

    def __init__(
        self,
        *,
        bus_of: Callable[[], EventBus],
        book: GroupBook,
        queue: SchedulingQueue,
        segmented: set[FileKey],
        store_of: Callable[[], Store],
        writer_of: Callable[[], StatusWriter] | None = None,
        task_group_of: Callable[[], asyncio.TaskGroup | None],
        on_commit: Callable[[], None] = lambda: None,
        on_unavailable: Callable[[StoreUnavailableError], bool] = lambda exc: False,
    ) -> None:
        # Read at each publish: the owner's bus may be replaced before it starts (tests do).
        self._bus_of = bus_of
        self._book = book
        self._queue = queue
        self._segmented = segmented  # files that may have a segment map in the store
        self._store_of = store_of
        self._writer_of: Callable[[], StatusWriter] = writer_of or store_of
        self._task_group_of = task_group_of
        # A fleet worker's: told of each commit, and of a commit the unreachable store lost
        # (True: it keeps what it needs to write that again later, so the events still go out).
        self._on_commit = on_commit
        self._on_unavailable = on_unavailable
        self._pending: list[ev.Event] | None = None  # events of the open batch
        self._scoped = False  # inside a `batch()` block: the batch ends with it
        self._flush_handle: asyncio.Handle | None = None  # ends a `deferred()` batch
        self.positions_dirty = False  # queue positions changed since they were last announced

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Run a block of changes (no await inside) as one store transaction, committed when
        the block ends; the events it emits are published after the commit, in order. Nested
        blocks join the outer one; an open `deferred` batch is joined and ends here too.

        A block that raises still commits what it wrote before the error (each write is whole
        or absent, and memory mirrors exactly the writes that succeeded), publishes those
        events, and re-raises. If the commit fails, nothing of the batch is announced."""
        if self._scoped:
            yield
            return
        self._open_batch()
        self._scoped = True
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:  # committed below, then raised again
            error = exc
        finally:
            self._scoped = False
        self.flush()
        if error is not None:
            raise error

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Like `batch`, for changes no caller is waiting on (a transfer's end, the
        coordinator): the batch stays open for the rest of this turn of the event loop, so
        the changes of every task that runs in it share one commit, made (and then announced)
        by a callback that runs before anything scheduled after the first of them."""
        if self._scoped:
            yield
            return
        self._open_batch()
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush_soon)
        yield  # an exception propagates; what was written before it is committed by the flush

    def _open_batch(self) -> None:
        if self._pending is None:
            self._store_of().begin_batch()
            self._pending = []

    def flush(self) -> None:
        """Commit the open batch, then publish its events."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            self._store_of().end_batch()  # on failure nothing is announced
        except StoreUnavailableError as exc:
            if not self._on_unavailable(exc):
                raise
        else:
            self._on_commit()
        for event in pending:
            self._bus_of().publish(event)

    def _flush_soon(self) -> None:
        self._flush_handle = None
        try:
            self.flush()
        except Exception as exc:
            # The store refused a commit: what memory says is no longer what the file says.
            # Fail the manager as a failing write inside a transfer task always has.
            task_group = self._task_group_of()
            if task_group is None:
                raise
            task_group.create_task(_raise(exc))

    def emit(self, event: ev.Event) -> None:
        if self._pending is not None:
            self._pending.append(event)  # published when the batch has committed
        else:
            self._bus_of().publish(event)

    def transition(
        self,
        f: FileRecord,
        to: FileStatus,
        *,
        allowed_from: Collection[FileStatus],
        reason: str | None = None,
        **fields: Any,
    ) -> bool:
        """The one way a file changes status: store first, then memory, then the event.

        Inside a batch, a store that is this manager's alone (SQLite: one writer, locked)
        takes the change with the batch's other writes (`transition_in_batch`), its guard
        checked here against memory, which mirrors every write of that store; a shared store
        (a fleet's) checks the guard itself, now."""
        previous = f.status
        writer = self._writer_of()
        later = getattr(writer, "transition_in_batch", None)
        if (
            later is not None
            and self._pending is not None
            and cast(BatchedStatusWriter, writer).batching
        ):
            if previous not in allowed_from:
                return False
            later(f.group_id, f.index, to, allowed_from=allowed_from, **fields)
        elif not writer.transition(f.group_id, f.index, to, allowed_from=allowed_from, **fields):
            return False
        key = (f.group_id, f.index)
        if to is FileStatus.COMPLETED or to is FileStatus.CANCELLED:
            self._segmented.discard(key)  # dropped by the store's trigger
        fields["status"] = to
        self._book.set(f, fields)
        failing = to is FileStatus.WAITING_RETRY or to is FileStatus.FAILED
        self.emit(
            ev.StatusChanged(
                ref=file_ref(f),
                group_id=f.group_id,
                name=f.name,
                status=to.value,
                previous=previous.value,
                reason=reason,
                retry_at=f.retry_at if to is FileStatus.WAITING_RETRY else None,
                error_kind=f.error_kind if failing else None,
                error_message=f.error_message if failing else None,
            )
        )
        if previous is FileStatus.QUEUED or to is FileStatus.QUEUED:
            self.positions_dirty = True  # announced by the ticker, at most twice a second
        if key in self._queue:
            if to in TERMINAL_STATUSES:
                self._queue.remove(key)
            else:
                self._queue.set_waiting(key, to is FileStatus.QUEUED)
        return True


def finish_if_done(m: DownloadManager, gid: int) -> None:
    """After a member's change: end its group if nothing of it is live (unless a cancel of
    the whole group holds the end back to announce its own event first)."""
    group = m._groups.get(gid)
    if group is not None and gid not in m._finish_held:
        maybe_finish_group(m, group)


def maybe_finish_group(m: DownloadManager, group: GroupRecord) -> None:
    tally = m._tallies.get(group.id)
    if tally is not None and tally.live:
        return
    if tally is None and any(f.status in LIVE_STATUSES for f in group.files):
        return
    if group.finished_at is not None:
        return
    now = time.time()
    try:
        m.store.finish_group(group.id, now)
    except StoreUnavailableError as exc:
        if m._fleet is None:
            raise
        m._fleet.went_down(exc)  # finished once the store is back (`fleet._ride_out`)
        return
    group.finished_at = now
    m._group_rates.pop(group.id, None)
    counts = {s: sum(1 for f in group.files if f.status is s) for s in TERMINAL_STATUSES}
    m._emit(
        ev.GroupFinished(
            group_id=group.id,
            name=group.name,
            status=group.status.value,
            completed=counts[FileStatus.COMPLETED],
            failed=counts[FileStatus.FAILED],
            cancelled=counts[FileStatus.CANCELLED],
            dest_dir=group.dest_dir,
        )
    )
