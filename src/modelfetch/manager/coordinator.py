"""`DownloadManager`: owns the TaskGroup and the public API, and runs the coordinator task.

One coordinator task decides what runs; one task per active file runs a transfer
(`manager/files.py`). Every task lives in the manager's TaskGroup. The state the pieces share
lives here: the in-memory mirror (`GroupBook`), the scheduling queue, the status writer
(`Transitions`), the running files, retry histories and per-host holds. The other modules of
the package are functions over this state; each says its job in its first line.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from modelfetch.bus import EventBus, Subscription
from modelfetch.core import events as ev
from modelfetch.core.errors import StoreUnavailableError, UnknownItemError
from modelfetch.core.models import (
    FileRecord,
    FileStatus,
    GroupRecord,
    ItemRef,
    PauseReason,
)
from modelfetch.core.network import NetworkSettings
from modelfetch.core.policy import AttemptHistory
from modelfetch.core.quant import QuantGroup
from modelfetch.core.queue import FileKey, SchedulingQueue
from modelfetch.core.rate import RateEstimator
from modelfetch.hubconfig import HubConfig, hub_config_from_env
from modelfetch.layout import Layout
from modelfetch.manager import control, files, holds, intake, lifecycle, progress
from modelfetch.manager.arrivals import Arrivals
from modelfetch.manager.groups import GroupBook, group_done, wait_settled
from modelfetch.manager.limits_commands import LimitsCommands
from modelfetch.manager.partials import partial_files_unowned, remove_paths
from modelfetch.manager.scheduling import due_retries, next_wake_in
from modelfetch.manager.settings import ManagerSettings, default_home
from modelfetch.manager.transitions import Transitions
from modelfetch.requests import GroupRequest
from modelfetch.store import Store
from modelfetch.transfer.limiter import ConnectionSlots, TokenBucket
from modelfetch.views import GroupView

if TYPE_CHECKING:
    # The Hub client and the planner (and aiohttp under them) are imported when a spec must be
    # resolved, not when the manager is: a queue of plain requests never needs them.
    import aiohttp

    from modelfetch.hub import HubClient
    from modelfetch.manager.files import RunningFile
    from modelfetch.manager.fleet_worker import FleetWorker
    from modelfetch.planner import Planner
    from modelfetch.transfer.session import TransferSession


class DownloadManager(LimitsCommands):
    """Owns a state directory and works its queue while entered (`async with`)."""

    def __init__(
        self,
        *,
        home: Path | None = None,
        settings: ManagerSettings | None = None,
        hub: HubConfig | None = None,
        models_dir: Path | None = None,
        session: aiohttp.ClientSession | None = None,
        rng: random.Random | None = None,
        workers: bool = True,
        store_url: str | None = None,
    ) -> None:
        """`workers=False` opens the queue for editing (add, pause, move, ...) without running
        any transfer: what `modelfetch add` uses while no daemon runs. `session` is used (and
        not closed) for Hub API calls and the planner's requests; without it the manager makes
        one on the first spec it resolves. Transfers always use their own session.
        `store_url` names the state database (`recovery.open_store`): None or `sqlite:`, the
        file in `home`; `postgresql://...`, a queue shared with other workers (`fleet.py`)."""
        self.home = (home or default_home()).expanduser().resolve()
        self.settings = settings or ManagerSettings()
        self.hub_config = hub or hub_config_from_env()
        self.models_dir = (models_dir or self.home / "models").expanduser().absolute()
        self._workers = workers
        self.store_url = store_url
        self._fleet: FleetWorker | None = None  # set at start on a store shared by workers
        self._planner: Planner | None = None
        self._external_api_session = session
        self._api_session: aiohttp.ClientSession | None = None
        self._network: NetworkSettings | None = None  # resolved at start (settings or env)
        self._rng = rng or random.Random()
        self.bus = EventBus()
        # The contiguous bytes of each active file on disk, for readers that stream it (mirror).
        self.arrivals = Arrivals()
        self._queue = SchedulingQueue()
        book = self._book = GroupBook()
        # The book's tables under the names the rest of the package (and the tests) read.
        self._groups = book.groups
        self._tallies = book.tallies
        self._live_dests = book.live_dests
        self._retrying = book.retrying
        self._queued_by_priority = book.queued_by_priority
        self._waiters = book.waiters
        self._segmented: set[FileKey] = set()  # files that may have a segment map in the store
        self._tx = Transitions(
            bus_of=lambda: self.bus,
            book=book,
            queue=self._queue,
            segmented=self._segmented,
            store_of=lambda: self.store,
            writer_of=lambda: self._fleet or self.store,
            task_group_of=lambda: self._tg,
            on_commit=lambda: self._fleet.committed() if self._fleet else None,
            on_unavailable=lambda exc: self._fleet.absorb(exc) if self._fleet else False,
        )
        self._batch = self._tx.batch
        self._deferred = self._tx.deferred
        self._flush = self._tx.flush
        self._emit = self._tx.emit
        self._transition = self._tx.transition
        self._running: dict[FileKey, RunningFile] = {}
        self._publishing: set[FileKey] = set()  # running, every byte in: only the publish left
        self._expedited: set[FileKey] = set()  # queued files a client waits on (`expedite`)
        self._histories: dict[FileKey, AttemptHistory] = {}
        self._group_rates: dict[int, RateEstimator] = {}
        # Hosts that asked to wait (429/503): every request to one waits, and the hold is kept.
        self._host_holds = holds.host_holds(self)
        self._holds = self._host_holds.holds  # the mapping the scheduling step reads
        # Fleet mode: who holds each active file (the leases at the last sync), for the views.
        self._holders: dict[FileKey, str] = {}
        self._finish_held: set[int] = set()
        self._wake = asyncio.Event()
        self._closing = False
        self._entered = False
        self._store: Store | None = None
        self._session: TransferSession | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._service_tasks: list[asyncio.Task[None]] = []
        # Shared by every transfer: the connection caps and the global bandwidth bucket; each
        # download (group) also gets its own bucket, unlimited until set_rate_limit.
        self._slots = ConnectionSlots(
            self.settings.max_connections,
            self.settings.max_connections_per_host,
            holds=self._host_holds,
        )
        self._bandwidth = TokenBucket(self.settings.rate_limit)
        self._group_bandwidth: dict[int, TokenBucket] = {}

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> DownloadManager:
        if self._entered:
            raise RuntimeError("a DownloadManager can be entered once")
        self._entered = True
        await lifecycle.start(self)
        if self._workers:  # a process that works the queue continues what Ctrl-C paused
            control.resume_interrupted(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop taking work, park active transfers (keeping `.part` files), persist, return."""
        await lifecycle.shutdown(self)

    @property
    def shares_queue(self) -> bool:
        """True when this manager is one worker of a queue other processes work too."""
        return self._fleet is not None

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the manager is not running (use `async with DownloadManager()`)")
        return self._store

    # ------------------------------------------------------------------ adding downloads

    @property
    def planner(self) -> Planner:
        """Resolves specs; made on first use. Plain-URL probes go through the transfers' session;
        the Hub client (and, unless one was given, an aiohttp session closed at shutdown) is made
        when a spec first needs the Hub."""
        if self._planner is None:
            self._require_running()
            self._planner = intake.make_planner(self)
        return self._planner

    async def add(
        self,
        spec: str,
        *,
        quant: str | None = None,
        revision: str | None = None,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
        layout: Layout | str = Layout.PLAIN,
        models_dir: Path | None = None,
        dest_dir: Path | None = None,
        priority: int = 0,
    ) -> int:
        """Resolve a spec (`owner/name:Q4_K_M`, `owner/name/file.gguf`, a URL, ...) and enqueue
        it; returns the group id. Malformed specs raise SpecError; a repo that does not exist,
        is gated or needs a token raises the matching HTTPStatusError before anything is queued."""
        self._require_running()
        options = intake.plan_options(
            self,
            quant=quant,
            revision=revision,
            include=include,
            exclude=exclude,
            layout=layout,
            models_dir=models_dir,
            dest_dir=dest_dir,
            priority=priority,
        )
        request = await self.planner.plan(spec, options)
        return await self.enqueue(request)

    async def quants(self, repo: str, revision: str | None = None) -> list[QuantGroup]:
        self._require_running()
        return await self.planner.quants(repo, revision)

    async def enqueue(self, request: GroupRequest, *, hub_token: str | None = None) -> int:
        """Add a download; returns its group id. Asking again for something queued or active
        returns the existing id; for something failed or cancelled, re-queues it. `hub_token`:
        a Hub token its transfers to the Hub's origin carry instead of the manager's own
        (memory only, never stored)."""
        self._require_running()
        return await intake.enqueue(self, request, hub_token=hub_token)

    def hub_client(
        self,
        token: str | None = None,
        *,
        anonymous: bool = False,
        retry_delays: Sequence[float] | None = None,
    ) -> HubClient:
        """A Hub API client on the manager's API session: with its own token, with `token`
        instead (sent to the Hub's origin only, kept nowhere), or with none (`anonymous`)."""
        self._require_running()
        return intake.hub_parts(self, token, anonymous=anonymous, retry_delays=retry_delays)[1]

    def expedite(self, group_id: int, index: int) -> None:
        """A client is waiting for this file's bytes now: start it at once if it is queued,
        beyond `max_active` (up to `max_expedited` more files at a time)."""
        self._require_running()
        self._expedited.add((group_id, index))
        self._wake.set()

    def file_record(self, group_id: int, index: int) -> FileRecord | None:
        """The live record of one file (status, bytes, destination), or None if unknown."""
        self._require_running()
        group = self._groups.get(group_id) or self.store.get_group(group_id)
        return next((f for f in group.files if f.index == index), None) if group else None

    def groups(self) -> list[GroupRecord]:
        """Every stored download with its files (the store's rows, the live ones as in memory)."""
        self._require_running()
        return [self._groups.get(g.id, g) for g in self.store.groups()]

    # ------------------------------------------------------------------ queue commands

    async def pause(self, ref: str | int | ItemRef) -> None:
        self._require_store()
        await control.pause_files(self, self._files_of(ref), PauseReason.USER)

    async def resume(self, ref: str | int | ItemRef) -> None:
        self._require_store()
        control.resume_files(self, self._files_of(ref))

    async def pause_all(self) -> None:
        self._require_store()
        await control.pause_files(self, self._book.all_live_files(), PauseReason.USER)

    async def resume_all(self) -> None:
        self._require_store()
        control.resume_files(self, self._book.all_live_files())

    async def cancel(self, ref: str | int | ItemRef) -> None:
        self._require_store()
        await control.cancel(self, self._ref(ref))

    async def retry(self, ref: str | int | ItemRef) -> None:
        """Queue the failed (and cancelled) members again, from the bytes on disk; nothing of
        them to retry (all completed, or still live) is a ConflictError saying why."""
        self._require_store()
        control.retry(self, self._ref(ref))

    async def move(self, ref: str | int | ItemRef, position: int) -> None:
        """Move a waiting download or file; one with nothing waiting is a ConflictError."""
        self._require_store()
        control.move(self, self._ref(ref), position)

    async def interrupt(self, group_ids: Iterable[int] | None = None) -> list[int]:
        """Ctrl-C: pause these groups' unpaused files (None: all) as interrupted, for the next
        manager with workers to resume; returns the groups that had something paused."""
        return await control.interrupt(self, group_ids)

    def queued_as(self, request: GroupRequest) -> int | None:
        """The live download `enqueue(request)` would return unchanged (for "already queued")."""
        self._require_running()
        return control.queued_as(self, request)

    async def move_to_front(self, ref: str | int | ItemRef) -> None:
        await self.move(ref, 1)

    async def set_priority(self, ref: str | int | ItemRef, priority: int) -> None:
        """Higher runs first; within a priority, first come first served."""
        self._require_store()
        control.set_priority(self, ref, priority)

    async def orphan_partials(self) -> list[Path]:
        """`.part` files (and their sidecars) under the models directory and every known
        destination directory that no live download owns: what `modelfetch clean` removes."""
        return partial_files_unowned(self)

    async def remove_orphan_partials(self) -> list[Path]:
        return remove_paths(await self.orphan_partials())

    async def forget(self, ref: str | int | ItemRef) -> None:
        """Drop a finished download from the history (files on disk are kept)."""
        self._require_store()
        control.forget(self, self._ref(ref))

    async def forget_finished(self) -> list[int]:
        self._require_store()
        return control.forget_finished(self)

    # ------------------------------------------------------------------ reading

    async def snapshot(
        self, *, after: int | None = None, limit: int | None = None
    ) -> list[GroupView]:
        """Every group the manager knows, in id order, with positions, speed and ETA; a page
        of them with `after` (the previous page's last id) and `limit` (at most that many)."""
        self._require_running()
        positions = self._queue.positions()
        group_positions = self._queue.group_positions()
        holders = progress.holders_of(self)
        try:
            groups = self.store.groups(added_after=after, limit=limit)
        except StoreUnavailableError:
            if self._fleet is None:
                raise
            # The shared queue's database is unreachable: what this worker follows of it.
            groups = [g for i, g in sorted(self._groups.items()) if after is None or i > after]
            groups = groups[:limit]
        return [
            progress.group_view_of(
                self, self._groups.get(group.id, group), positions, group_positions, holders
            )
            for group in groups
        ]

    async def group_view(self, ref: str | int | ItemRef) -> GroupView:
        self._require_running()
        group = self._group(self._ref(ref).group_id)
        return progress.group_view_of(
            self,
            group,
            self._queue.positions(),
            self._queue.group_positions(),
            progress.holders_of(self),
        )

    def subscribe(self, *, maxsize: int = 1024, since: int | None = None) -> Subscription:
        return self.bus.subscribe(maxsize=maxsize, since=since)

    async def wait(self, group_ids: Iterable[int]) -> None:
        """Until every given group is settled: nothing queued, active or waiting to retry
        (paused counts as settled, so a disk-full pause ends the wait). Bound it with
        `asyncio.timeout` if needed. Returns as well when the manager shuts down."""
        await wait_settled(self._book, group_ids, settled=self._settled, bus=self.bus)

    async def events(self) -> AsyncIterator[ev.Event]:
        with self.subscribe() as sub:
            async for e in sub:
                yield e

    # ------------------------------------------------------------------ lookups

    def _require_running(self) -> None:
        if self._store is None or self._closing:
            raise RuntimeError("the manager is not running (use `async with DownloadManager()`)")

    def _require_store(self) -> None:
        """Refuse a change while the shared queue's database is unreachable (never lost)."""
        if self._fleet is not None and self._fleet.down is not None:
            raise StoreUnavailableError(
                f"nothing changed: the shared queue's database is unreachable ({self._fleet.down});"
                " try again once it is back"
            )

    @staticmethod
    def _ref(ref: str | int | ItemRef) -> ItemRef:
        return ref if isinstance(ref, ItemRef) else ItemRef.parse(ref)

    def _group(self, gid: int) -> GroupRecord:
        group = self._groups.get(gid)
        if group is None:
            group = self.store.get_group(gid)
            if group is None:
                raise UnknownItemError(f"no download with id {gid}")
            self._book.register(group)
        return group

    def _files_of(self, ref: str | int | ItemRef) -> list[FileRecord]:
        ref = self._ref(ref)
        group = self._group(ref.group_id)
        if ref.index is None:
            return list(group.files)
        for f in group.files:
            if f.index == ref.index:
                return [f]
        raise UnknownItemError(f"download {ref.group_id} has no file {ref.index}")

    def _settled(self, gid: int) -> bool:
        return self._book.settled(gid)

    def _group_done(self, group: GroupRecord) -> int:
        return group_done(self._tallies, self._running, group)

    def _session_or_fail(self) -> TransferSession:
        """The transfer session, made on first use: a manager that only edits or lists the
        queue (`ls`, `add` of Hub specs) never loads the HTTP client."""
        if self._session is None:
            if self._network is None:
                raise RuntimeError("the manager is not started")
            from modelfetch.transfer.session import make_session

            self._session = make_session(network=self._network)
        return self._session

    # ------------------------------------------------------------------ the service tasks

    async def _coordinate(self) -> None:
        while not self._closing:
            self._wake.clear()
            if self._fleet is not None and self._fleet.down is not None:
                await self._wake.wait()  # nothing starts until the shared store is back
                continue
            now = time.time()
            with self._deferred():  # the retries due and the files started: one commit
                for f in due_retries(self._retrying, self._holds, now):
                    self._transition(
                        f,
                        FileStatus.QUEUED,
                        allowed_from=(FileStatus.WAITING_RETRY,),
                        reason="retrying",
                        retry_at=None,
                    )
                self._fill_slots(now)
            retry_times = (f.retry_at for f in self._retrying.values())
            delay = next_wake_in(retry_times, self._holds, now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _fill_slots(self, now: float) -> None:
        """Start the first eligible waiting files until `max_active` run. The queue is read
        lazily (starting a file changes no order), so this costs the files it starts and the
        held ones in front of them, not O(queue); a start the store refuses leaves its slot to
        the next file in line."""
        if self._closing:
            return
        if self._fleet is not None:  # the shared queue's order decides, through claims
            from modelfetch.manager.fleet import fill_slots

            fill_slots(self, self._fleet, now)
            return
        files.fill_from_queue(self, now)

    async def _pause_for_disk_full(self) -> None:
        # A file that only publishes needs no more room (its bytes are in the `.part`, or a
        # small one's few in memory, whose write fails on its own if they do not fit): it
        # finishes rather than being paused with every byte already in.
        targets = [
            f for f in self._book.all_live_files() if (f.group_id, f.index) not in self._publishing
        ]
        await control.pause_files(self, targets, PauseReason.DISK_FULL)
