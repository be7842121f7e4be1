"""The orchestrator: queue + executor pool + durable state + events.

One coordinator task decides what runs; one task per active file runs a transfer. Every task lives
in the manager's TaskGroup. Every state change is one guarded UPDATE in the store, applied to the
in-memory mirror only when it succeeded, and announced on the bus only after it was committed.
Changes made together without an await in between (the coordinator starting 16 files, a file
completing with its verified digest, pause-all) share one transaction (`_batch`): their events
wait for its commit.

Per-group running totals (`_Tally`: files by status, bytes) and indexes (live destinations, files
waiting to retry) are kept in step with every change of a member's status or byte counts
(`_set`), so progress, `wait()` and the coordinator cost O(1) or O(running) per event, not
O(files in the group) or O(queue).

Stopping a transfer always goes through `_stop()`: it records a `StopReason` on the file's
StopSignal, cancels the task and waits for it; the task's own handler (or `_stop`, if the task was
cancelled before it ran) writes the resulting state. The reason decides whether the `.part` stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import shutil
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from modelfetch.bus import EventBus, Subscription
from modelfetch.core import events as ev
from modelfetch.core.errors import ConflictError, SpecError, UnknownItemError
from modelfetch.core.headers import origin_of
from modelfetch.core.models import (
    LIVE_STATUSES,
    TERMINAL_STATUSES,
    FileRecord,
    FileStatus,
    GroupRecord,
    GroupStatus,
    ItemRef,
    PauseReason,
    StopReason,
)
from modelfetch.core.paths import PART_SUFFIX, part_path, sidecar_path
from modelfetch.core.policy import AttemptHistory, GiveUp, PauseAll, Retry, RetryPolicy
from modelfetch.core.quant import QuantGroup
from modelfetch.core.queue import FileKey, SchedulingQueue, entries_of
from modelfetch.core.rate import RateEstimator
from modelfetch.hubconfig import HubConfig, hub_config_from_env
from modelfetch.layout import Layout, Placement, link_snapshot, write_ref
from modelfetch.recovery import open_store
from modelfetch.requests import GroupRequest
from modelfetch.store import Store
from modelfetch.transfer import (
    ConnectionSlots,
    SegmentRecord,
    TokenBucket,
    TransferSession,
    fetch_file,
    make_session,
    partial_bytes,
)
from modelfetch.transfer.api import (
    StopSignal,
    TransferRequest,
    TransferResult,
)
from modelfetch.views import FileView, GroupView, file_view, group_view

if TYPE_CHECKING:
    # The Hub client and the planner (and aiohttp under them) are imported when a spec must be
    # resolved, not when the manager is: a queue of plain requests never needs them.
    import aiohttp

    from modelfetch.hub import HubClient
    from modelfetch.planner import Planner

_WAITING = frozenset({FileStatus.QUEUED, FileStatus.PAUSED, FileStatus.WAITING_RETRY})
# What `wait()` waits out: a group is settled when none of its files is in one of these.
_UNSETTLED = frozenset({FileStatus.QUEUED, FileStatus.ACTIVE, FileStatus.WAITING_RETRY})


def default_home() -> Path:
    env = os.environ.get("MODELFETCH_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("modelfetch"))


def _host_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts.netloc.lower()


def _partial_paths(dest: str) -> tuple[Path, Path]:
    return part_path(Path(dest)), sidecar_path(Path(dest))


@dataclass(eq=False)
class _Running:
    """One file whose transfer task is running."""

    rec: FileRecord
    stop: StopSignal
    start_offset: int
    done: int
    total: int | None
    rate: RateEstimator
    task: asyncio.Task[None] | None = None
    finalized: bool = False
    reported: bool = False
    saved_done: int = -1
    last_sent: tuple[int, int | None] = (-1, None)


@dataclass(slots=True)
class _Tally:
    """Running totals over one group's files, equal at every moment to a recount of
    `group.files` (tests check this): files per status, and the sums of `bytes_done` and of each
    file's total (`bytes_total`, else `expected_size`; `unknown` counts files with neither)."""

    statuses: dict[FileStatus, int] = field(default_factory=dict)
    bytes_done: int = 0
    bytes_total: int = 0
    unknown: int = 0

    @property
    def settled(self) -> bool:
        statuses = self.statuses
        return not any(statuses.get(s) for s in _UNSETTLED)

    @property
    def live(self) -> bool:
        statuses = self.statuses
        return any(statuses.get(s) for s in LIVE_STATUSES)

    @property
    def total(self) -> int | None:
        return None if self.unknown else self.bytes_total


@dataclass(eq=False)
class _Waiter:
    """One `wait()` call: `pending` are its groups not yet seen settling; `woken` is set when
    the last of them settles (each settle is O(1) here, not a re-check of every group)."""

    pending: set[int]
    woken: asyncio.Future[None]


@dataclass
class ManagerSettings:
    max_active: int = 3
    stall_timeout: float = 30.0
    progress_interval: float = 0.5
    checkpoint_interval: float = 1.0
    disk_check_interval: float = 5.0
    shutdown_grace: float = 5.0
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    # Multi-connection transfers (transfer/segments.py). A file of at least segment_threshold
    # bytes (size known from the plan) is fetched over ranged connections in pieces of at least
    # min_segment_size: 8 at first, more while they add throughput (a server that caps each
    # connection), at most connections_per_file; 1 means one stream per file.
    connections_per_file: int = 16
    segment_threshold: int = 64 << 20
    min_segment_size: int = 16 << 20
    max_connections: int = 32  # concurrent connections over every download
    max_connections_per_host: int = 16  # ... to any one host (0: no per-host cap)
    rate_limit: int | None = None  # bytes/s over every download (None: unlimited)
    allowed_hosts: frozenset[str] | None = None  # hosts transfers may reach (None: any)


class DownloadManager:
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
    ) -> None:
        """`workers=False` opens the queue for editing (add, pause, move, ...) without running
        any transfer: what `modelfetch add` uses while no daemon runs. `session` is used (and
        not closed) for Hub API calls and the planner's requests; without it the manager makes
        one on the first spec it resolves. Transfers always use their own session."""
        self.home = (home or default_home()).expanduser().resolve()
        self.settings = settings or ManagerSettings()
        self.hub_config = hub or hub_config_from_env()
        self.models_dir = (models_dir or self.home / "models").expanduser().absolute()
        self._workers = workers
        self._planner: Planner | None = None
        self._external_api_session = session
        self._api_session: aiohttp.ClientSession | None = None
        self._rng = rng or random.Random()
        self.bus = EventBus()
        self._queue = SchedulingQueue()
        self._groups: dict[int, GroupRecord] = {}  # registered through _register only
        self._tallies: dict[int, _Tally] = {}
        self._live_dests: dict[str, dict[FileKey, FileRecord]] = {}
        self._retrying: dict[FileKey, FileRecord] = {}  # status WAITING_RETRY
        # priority -> {group id: its QUEUED files of that priority}: where a new group stands
        self._queued_by_priority: dict[int, dict[int, int]] = {}
        self._segmented: set[FileKey] = set()  # files that may have a segment map in the store
        self._limits: dict[int, tuple[int | None, int | None]] = {}  # store.group_limits cache
        self._waiters: dict[int, list[_Waiter]] = {}
        self._pending: list[ev.Event] | None = None  # events of the open batch
        self._scoped = False  # inside a `_batch()` block: the batch ends with it
        self._flush_handle: asyncio.Handle | None = None  # ends a `_deferred()` batch
        self._running: dict[FileKey, _Running] = {}
        self._histories: dict[FileKey, AttemptHistory] = {}
        self._group_rates: dict[int, RateEstimator] = {}
        self._holds: dict[str, float] = {}
        self._finish_held: set[int] = set()
        self._positions_dirty = False
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
            self.settings.max_connections, self.settings.max_connections_per_host
        )
        self._bandwidth = TokenBucket(self.settings.rate_limit)
        self._group_bandwidth: dict[int, TokenBucket] = {}

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> DownloadManager:
        if self._entered:
            raise RuntimeError("a DownloadManager can be entered once")
        self._entered = True
        # A corrupt or foreign database is moved aside and the queue rebuilt from the `.part`
        # sidecars on disk; what happened is announced once the bus is up.
        self._store, notices = open_store(self.home, models_dir=self.models_dir)
        for message in notices:
            self._emit(ev.Notice(message=message, level="warning"))
        try:
            self._recover()
            self._session = make_session()
            self._tg = asyncio.TaskGroup()
            await self._tg.__aenter__()
        except BaseException:
            self._store.close()
            raise
        # A kill between a publish (the rename) and its commit leaves a verified file under its
        # final name and a row that is not completed: adopt it rather than fetch it again.
        present = [
            f
            for f in self._all_live_files()
            if f.status is FileStatus.QUEUED and os.path.exists(f.dest)
        ]
        for f in present:
            await self._adopt_existing(f)
        if self._workers:
            self._service_tasks = [
                self._tg.create_task(self._coordinate(), name="modelfetch-coordinator"),
                self._tg.create_task(self._ticker(), name="modelfetch-ticker"),
            ]
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
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        running = list(self._running.values())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.shutdown_grace):
                await asyncio.gather(*(self._stop(r, StopReason.SHUTDOWN) for r in running))
        self._checkpoint(force=True)
        for t in self._service_tasks:
            t.cancel()
        if self._tg is not None:
            await self._tg.__aexit__(None, None, None)
        if self._store is not None:
            self._flush()  # the last changes, committed and announced before the bus closes
        self.bus.close()
        self._wake_waiters(list(self._waiters))  # wait() returns once the bus is closed
        if self._session is not None:
            await self._session.close()
        if self._api_session is not None and self._external_api_session is None:
            await self._api_session.close()
        if self._store is not None:
            self._store.close()

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the manager is not running (use `async with DownloadManager()`)")
        return self._store

    def _recover(self) -> None:
        """Crash recovery: rows left active go back to queued, counts reconciled with the disk."""
        store = self.store
        store.recover()
        self._segmented = store.segmented_files()
        with self._batch():
            for group in store.groups(live_only=True):
                for f in group.files:
                    if f.status in _WAITING:
                        on_disk = self._on_disk(f)
                        if on_disk != f.bytes_done:
                            store.update_file(f.group_id, f.index, bytes_done=on_disk)
                            f.bytes_done = on_disk
                self._register(group)
        self._queue.load(entries_of(self._groups.values()))

    # ------------------------------------------------------------------ public API

    @property
    def planner(self) -> Planner:
        """Resolves specs; made on first use. Plain-URL probes go through the transfers' session;
        the Hub client (and, unless one was given, an aiohttp session closed at shutdown) is made
        when a spec first needs the Hub."""
        if self._planner is None:
            self._require_running()
            from modelfetch.planner import Planner

            self._planner = Planner(
                None,
                self._hub_parts,
                hub_config=self.hub_config,
                probe_session=self._session_or_fail(),
            )
        return self._planner

    def _hub_parts(self) -> tuple[aiohttp.ClientSession, HubClient]:
        from modelfetch.hub import HubClient, make_api_session

        if self._api_session is None:
            self._api_session = self._external_api_session or make_api_session()
        return self._api_session, HubClient(self._api_session, self.hub_config)

    async def add(
        self,
        spec: str,
        *,
        quant: str | None = None,
        revision: str | None = None,
        include: Iterable[str] = (),
        layout: Layout | str = Layout.PLAIN,
        models_dir: Path | None = None,
        dest_dir: Path | None = None,
        priority: int = 0,
    ) -> int:
        """Resolve a spec (`owner/name:Q4_K_M`, `owner/name/file.gguf`, a URL, ...) and enqueue
        it; returns the group id. Malformed specs raise SpecError; a repo that does not exist,
        is gated or needs a token raises the matching HTTPStatusError before anything is queued."""
        self._require_running()
        from modelfetch.planner import PlanOptions

        options = PlanOptions(
            models_dir=(models_dir or self.models_dir).expanduser().absolute(),
            layout=Layout(layout),
            quant=quant,
            revision=revision,
            include=tuple(include),
            dest_dir=dest_dir.expanduser().absolute() if dest_dir else None,
            priority=priority,
        )
        request = await self.planner.plan(spec, options)
        return await self.enqueue(request)

    async def quants(self, repo: str, revision: str | None = None) -> list[QuantGroup]:
        self._require_running()
        return await self.planner.quants(repo, revision)

    async def enqueue(self, request: GroupRequest) -> int:
        """Add a download; returns its group id. Asking again for something queued or active
        returns the existing id; for something failed or cancelled, re-queues it."""
        self._require_running()
        existing = self.store.find_group(request.dedupe_key())
        if existing is not None:
            group = self._groups.get(existing.id) or self._register(existing)
            status = group.status
            if status in (GroupStatus.QUEUED, GroupStatus.ACTIVE, GroupStatus.PAUSED):
                return group.id
            if status is GroupStatus.COMPLETED and all(Path(f.dest).exists() for f in group.files):
                return group.id
            await self._requeue(
                group,
                [
                    f
                    for f in group.files
                    if f.status is not FileStatus.COMPLETED or not Path(f.dest).exists()
                ],
            )
            return group.id

        now = time.time()
        files = [
            FileRecord(
                group_id=0,
                index=i,
                url=fr.url,
                dest=str((fr.dest or request.dest_dir / fr.path).absolute()),
                link=str(fr.link.absolute()) if fr.link else None,
                name=fr.path,
                priority=request.priority,
                expected_size=fr.size,
                bytes_total=fr.size,
                expected_sha256=fr.sha256,
                expected_git_oid=fr.git_oid,
                commit=request.commit,
                created_at=now,
            )
            for i, fr in enumerate(request.files, start=1)
        ]
        self._refuse_shared_destinations(files)
        for f in files:
            f.bytes_done = self._on_disk(f)
        group = GroupRecord(
            key=request.dedupe_key(),
            spec=request.spec or request.name,
            name=request.name,
            dest_dir=str(request.dest_dir.absolute()),
            priority=request.priority,
            repo_id=request.repo_id,
            revision=request.revision,
            commit=request.commit,
            quant=request.quant,
            created_at=now,
            files=files,
        )
        with self._batch():
            group = self.store.add_group(group)
            changes = self._queue.add_group(
                group.id, [f.index for f in group.files], request.priority
            )
            self.store.set_order(changes)
            for f in group.files:
                f.order_key = changes.get((f.group_id, f.index), f.order_key)
            self._register(group)
        for f in group.files:
            await self._adopt_existing(f)
        self._emit(
            ev.GroupQueued(
                group_id=group.id,
                name=group.name,
                files=len(group.files),
                total=self._tallies[group.id].total,
                position=self._new_group_position(group.id, request.priority),
            )
        )
        self._wake.set()
        return group.id

    def _new_group_position(self, gid: int, priority: int) -> int | None:
        """`group_positions()[gid]` for a group just appended to the end of its priority class,
        without sorting the queue: 1 + the groups with a waiting file in that class or above."""
        mine = self._queued_by_priority.get(priority, {})
        if gid not in mine:
            return None
        classes = [groups for p, groups in self._queued_by_priority.items() if p >= priority]
        if len(classes) == 1:
            return len(mine)
        ahead: set[int] = set()
        for groups in classes:
            ahead.update(groups)
        return len(ahead)

    def _on_disk(self, f: FileRecord) -> int:
        """Bytes of `f`'s partial really on disk: the `.part`'s length when it is filled front
        to back, the persisted segment map's count when several connections fill it."""
        try:  # most queued files have no partial yet: one stat, no Path objects
            os.stat(f.dest + PART_SUFFIX)
        except FileNotFoundError:
            return 0
        return partial_bytes(Path(f.dest), self._segments_of(f))

    def _segments_of(self, f: FileRecord) -> tuple[SegmentRecord, ...] | None:
        """The stored segment map of `f`; the store is asked only about files that may have
        one (a map is saved only through `on_segments`, and `_segmented` was loaded at start)."""
        key = (f.group_id, f.index)
        if not f.group_id or key not in self._segmented:
            return None
        return self.store.segments(f.group_id, f.index)

    def _refuse_shared_destinations(self, files: list[FileRecord]) -> None:
        """Two live files with one destination would write one `.part` from two streams."""
        taken: dict[str, FileRecord] = {}
        for f in files:
            owners = self._live_dests.get(f.dest)
            other = next(iter(owners.values())) if owners else taken.get(f.dest)
            if other is not None:
                owner = f"download {other.ref}" if other.group_id else f"{other.name!r}"
                raise SpecError(f"{f.dest} is already being written by {owner}")
            taken[f.dest] = f

    async def _adopt_existing(self, f: FileRecord) -> None:
        """A file already at its destination with the expected digest is not fetched again.
        Digests are cached by (path, size, mtime), so a multi-GB file is hashed at most once."""
        expected = f.expected_sha256
        dest = Path(f.dest)
        try:
            st = dest.stat()
        except OSError:
            return
        if expected is None or (f.expected_size is not None and st.st_size != f.expected_size):
            return
        digest = self.store.verified_digest(f.dest, st.st_size, st.st_mtime_ns)
        if digest is None:
            digest = await asyncio.to_thread(_sha256_of, dest)
            with self._batch():
                self.store.remember_verified(f.dest, st.st_size, st.st_mtime_ns, digest)
        if digest != expected:
            return
        with self._batch():
            self._adopted(f, st.st_size, digest)

    def _adopted(self, f: FileRecord, size: int, digest: str) -> None:
        if self._transition(
            f,
            FileStatus.COMPLETED,
            allowed_from=(FileStatus.QUEUED,),
            reason="already present",
            bytes_done=size,
            bytes_total=size,
            sha256=digest,
            finished_at=time.time(),
        ):
            self._publish_links(f)
            self._emit(
                ev.FileCompleted(
                    ref=_file_ref(f),
                    group_id=f.group_id,
                    name=f.name,
                    path=f.dest,
                    sha256=digest,
                    size=size,
                    verified=True,
                )
            )
            self._finish_if_done(f.group_id)

    def _publish_links(self, f: FileRecord) -> None:
        """hf-cache layout: once the blob is verified, point its snapshot path at it."""
        if f.link is None:
            return
        link_snapshot(Placement(dest=Path(f.dest), link=Path(f.link)))
        group = self._groups.get(f.group_id)
        if group is not None and group.repo_id and group.revision and group.commit:
            write_ref(_cache_root(Path(f.link)), group.repo_id, group.revision, group.commit)

    async def pause(self, ref: str | int | ItemRef) -> None:
        await self._pause_files(self._files_of(ref), PauseReason.USER)

    async def resume(self, ref: str | int | ItemRef) -> None:
        self._resume_files(self._files_of(ref))

    async def pause_all(self) -> None:
        await self._pause_files(self._all_live_files(), PauseReason.USER)

    async def resume_all(self) -> None:
        self._resume_files(self._all_live_files())

    async def cancel(self, ref: str | int | ItemRef) -> None:
        ref = self._ref(ref)
        files = self._files_of(ref)
        group = self._group(ref.group_id)
        # The group's own Cancelled event comes after its members' and before GroupFinished.
        self._finish_held.add(group.id)
        try:
            stops = []
            with self._batch():
                for f in files:
                    key = (f.group_id, f.index)
                    if f.status is FileStatus.ACTIVE and key in self._running:
                        stops.append(self._stop(self._running[key], StopReason.CANCEL))
                    elif f.status in _WAITING:
                        self._cancel_waiting(f)
            await asyncio.gather(*stops)
        finally:
            self._finish_held.discard(group.id)
        with self._batch():
            if ref.index is None:
                self._emit(ev.Cancelled(ref=str(ref), group_id=group.id, name=group.name))
            self._maybe_finish_group(group)

    async def retry(self, ref: str | int | ItemRef) -> None:
        """Queue the failed (and cancelled) members again, from the bytes on disk."""
        ref = self._ref(ref)
        group = self._group(ref.group_id)
        await self._requeue(
            group,
            [
                f
                for f in self._files_of(ref)
                if f.status in (FileStatus.FAILED, FileStatus.CANCELLED)
            ],
        )

    async def move(self, ref: str | int | ItemRef, position: int) -> None:
        _, changes = self._reorder(
            ref, lambda target: self._queue.move(target, position), "only waiting downloads move"
        )
        self._apply_order(changes)

    async def move_to_front(self, ref: str | int | ItemRef) -> None:
        await self.move(ref, 1)

    async def set_priority(self, ref: str | int | ItemRef, priority: int) -> None:
        """Higher runs first; within a priority, first come first served."""
        item, changes = self._reorder(
            ref,
            lambda target: self._queue.set_priority(target, priority),
            "its priority no longer matters",
        )
        with self._batch():
            if item.index is None:
                self.store.update_group(item.group_id, priority=priority)
                self._group(item.group_id).priority = priority
            self._apply_order(changes, priority=priority)

    def _reorder(
        self,
        ref: str | int | ItemRef,
        command: Callable[[FileKey | int], dict[FileKey, int]],
        refusal: str,
    ) -> tuple[ItemRef, dict[FileKey, int]]:
        """Run a queue command on a download (`12`) or one of its files (`12.3`); a target the
        queue does not hold is unknown (404) or finished (409)."""
        item = self._ref(ref)
        target: FileKey | int = item.group_id if item.index is None else (item.group_id, item.index)
        try:
            return item, command(target)
        except KeyError:
            self._files_of(item)  # UnknownItemError if it names nothing
            raise ConflictError(f"{item} is finished: {refusal}") from None

    async def orphan_partials(self) -> list[Path]:
        """`.part` files (and their sidecars) under the models directory and every known
        destination directory that no live download owns: what `modelfetch clean` removes."""
        owned = {
            p
            for g in self._groups.values()
            for f in g.files
            if f.status in LIVE_STATUSES
            for p in _partial_paths(f.dest)
        }
        roots = {self.models_dir, *(Path(g.dest_dir) for g in self.store.groups())}
        found: set[Path] = set()
        for root in roots:
            if not root.is_dir():
                continue
            for pattern in ("*.part", "*.part.json"):
                found.update(p for p in root.rglob(pattern) if p.is_file())
        return sorted(found - owned)

    async def remove_orphan_partials(self) -> list[Path]:
        removed = []
        for p in await self.orphan_partials():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
        return removed

    async def forget(self, ref: str | int | ItemRef) -> None:
        """Drop a finished download from the history (files on disk are kept)."""
        ref = self._ref(ref)
        group = self._group(ref.group_id)
        if any(f.status in LIVE_STATUSES for f in group.files):
            raise ConflictError(f"{ref} is still {group.status}: cancel it first")
        with self._batch():
            self.store.forget_group(group.id)
        self._unregister(group.id)

    async def forget_finished(self) -> list[int]:
        with self._batch():
            ids = self.store.forget_finished()
        for gid in ids:
            self._unregister(gid)
        return ids

    async def set_limits(
        self,
        *,
        max_active: int | None = None,
        rate_limit: int | None = None,
        max_connections: int | None = None,
        max_connections_per_host: int | None = None,
        connections_per_file: int | None = None,
    ) -> None:
        """Change limits while running; None leaves a limit as it is. `rate_limit` is bytes/s
        over every download (0: unlimited) and applies at once, also to running transfers, as
        do the connection caps (for new connections). `connections_per_file` applies to files
        that start from now on."""
        if rate_limit is not None:
            if rate_limit < 0:
                raise ValueError("rate_limit must be >= 0 bytes/s (0: unlimited)")
            self.settings.rate_limit = rate_limit or None
            self._bandwidth.set_rate(rate_limit or None)
        if max_connections is not None or max_connections_per_host is not None:
            self._slots.set_limits(total=max_connections, per_host=max_connections_per_host)
            if max_connections is not None:
                self.settings.max_connections = max_connections
            if max_connections_per_host is not None:
                self.settings.max_connections_per_host = max_connections_per_host
        if connections_per_file is not None:
            if connections_per_file < 1:
                raise ValueError("connections_per_file must be at least 1")
            self.settings.connections_per_file = connections_per_file
        if max_active is not None:
            if max_active < 1:
                raise ValueError("max_active must be at least 1")
            self.settings.max_active = max_active
            excess = len(self._running) - max_active
            if excess > 0:
                newest = sorted(
                    self._running.values(), key=lambda r: r.rec.started_at or 0, reverse=True
                )[:excess]
                await asyncio.gather(*(self._stop(r, StopReason.SHUTDOWN) for r in newest))
        self._wake.set()

    async def set_rate_limit(self, ref: str | int | ItemRef, bytes_per_s: int | None) -> None:
        """Cap one download's bandwidth (bytes/s over all its files and connections; None or
        0: no cap of its own). `ref` names the download (for `12.3`, its download 12). Applies
        at once, also while it runs, and is remembered across restarts."""
        if bytes_per_s is not None and bytes_per_s < 0:
            raise ValueError("bytes_per_s must be >= 0 (0 or None: unlimited)")
        group = self._group(self._ref(ref).group_id)
        with self._batch():
            self.store.set_group_limits(group.id, rate_limit=bytes_per_s or None)
        self._limits.pop(group.id, None)
        self._group_bucket(group.id).set_rate(bytes_per_s or None)

    async def set_connections(self, ref: str | int | ItemRef, connections: int | None) -> None:
        """Connections per file for one download (1: a single stream each; None: back to the
        global setting). Remembered across restarts; applies to its files that start next."""
        if connections is not None and connections < 1:
            raise ValueError("connections must be at least 1 (or None for the default)")
        group = self._group(self._ref(ref).group_id)
        with self._batch():
            self.store.set_group_limits(group.id, connections=connections)
        self._limits.pop(group.id, None)

    def _group_limits(self, gid: int) -> tuple[int | None, int | None]:
        """`store.group_limits`, cached: only this manager (holding the lock) changes them."""
        limits = self._limits.get(gid)
        if limits is None:
            limits = self._limits[gid] = self.store.group_limits(gid)
        return limits

    def _group_bucket(self, gid: int) -> TokenBucket:
        bucket = self._group_bandwidth.get(gid)
        if bucket is None:
            rate, _ = self._group_limits(gid)
            bucket = self._group_bandwidth[gid] = TokenBucket(rate)
        return bucket

    async def snapshot(self) -> list[GroupView]:
        """Every group the manager knows, in id order, with positions, speed and ETA."""
        self._require_running()
        positions = self._queue.positions()
        group_positions = self._queue.group_positions()
        return [
            self._group_view(self._groups.get(group.id, group), positions, group_positions)
            for group in self.store.groups()
        ]

    async def group_view(self, ref: str | int | ItemRef) -> GroupView:
        self._require_running()
        group = self._group(self._ref(ref).group_id)
        return self._group_view(group, self._queue.positions(), self._queue.group_positions())

    def _group_view(
        self,
        group: GroupRecord,
        positions: dict[FileKey, int],
        group_positions: dict[int, int],
    ) -> GroupView:
        rate = self._group_rates.get(group.id)
        done = self._group_done(group)
        tally = self._tallies.get(group.id)
        total = tally.total if tally is not None else group.bytes_total
        active = rate is not None and group.status is GroupStatus.ACTIVE
        return group_view(
            group,
            group_positions.get(group.id),
            [self._file_view(f, positions) for f in group.files],
            downloaded=done,
            total=total,
            speed=rate.speed if rate is not None and active else None,
            eta=rate.eta(total, done) if rate is not None and active else None,
        )

    def subscribe(self, *, maxsize: int = 1024, since: int | None = None) -> Subscription:
        return self.bus.subscribe(maxsize=maxsize, since=since)

    async def wait(self, group_ids: Iterable[int]) -> None:
        """Until every given group is settled: nothing queued, active or waiting to retry
        (paused counts as settled, so a disk-full pause ends the wait). Bound it with
        `asyncio.timeout` if needed. Returns as well when the manager shuts down."""
        groups = frozenset(group_ids)
        loop = asyncio.get_running_loop()
        while not self.bus.closed:
            pending = {g for g in groups if not self._settled(g)}
            if not pending:
                return
            # Each group leaves `pending` as it settles (`_wake_waiters`); once all have, every
            # group is checked once more: one may have been queued again in between.
            waiter = _Waiter(pending, loop.create_future())
            for g in pending:
                self._waiters.setdefault(g, []).append(waiter)
            try:
                await waiter.woken
            finally:
                for g in waiter.pending:  # left only when the wait was cancelled
                    waiters = self._waiters.get(g)
                    if waiters is not None and waiter in waiters:
                        waiters.remove(waiter)
                        if not waiters:
                            del self._waiters[g]

    def _wake_waiters(self, gids: Iterable[int]) -> None:
        for gid in gids:
            for waiter in self._waiters.pop(gid, ()):
                waiter.pending.discard(gid)
                if not waiter.pending and not waiter.woken.done():
                    waiter.woken.set_result(None)

    async def events(self) -> AsyncIterator[ev.Event]:
        with self.subscribe() as sub:
            async for e in sub:
                yield e

    # ------------------------------------------------------------------ queue mechanics

    def _require_running(self) -> None:
        if self._store is None or self._closing:
            raise RuntimeError("the manager is not running (use `async with DownloadManager()`)")

    @staticmethod
    def _ref(ref: str | int | ItemRef) -> ItemRef:
        return ref if isinstance(ref, ItemRef) else ItemRef.parse(ref)

    def _group(self, gid: int) -> GroupRecord:
        group = self._groups.get(gid)
        if group is None:
            group = self.store.get_group(gid)
            if group is None:
                raise UnknownItemError(f"no download with id {gid}")
            self._register(group)
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

    def _all_live_files(self) -> list[FileRecord]:
        return [f for g in self._groups.values() for f in g.files if f.status in LIVE_STATUSES]

    def _settled(self, gid: int) -> bool:
        tally = self._tallies.get(gid)
        return tally is None or tally.settled

    # ------------------------------------------------------------------ the in-memory mirror

    def _register(self, group: GroupRecord) -> GroupRecord:
        """Start tracking a group (its files' totals and indexes); the one way into `_groups`."""
        if group.id in self._groups:
            self._unregister(group.id)
        self._groups[group.id] = group
        self._tallies[group.id] = _Tally()
        for f in group.files:
            self._count(f, 1)
        return group

    def _unregister(self, gid: int) -> None:
        group = self._groups.pop(gid, None)
        if group is not None:
            for f in group.files:
                self._count(f, -1)
        self._tallies.pop(gid, None)
        self._limits.pop(gid, None)

    def _set(self, f: FileRecord, fields: dict[str, Any]) -> None:
        """Change fields of a registered file's record, keeping its group's totals and the
        indexes in step; wakes `wait()` calls when the group settles."""
        tracked = f.group_id in self._tallies
        if tracked:
            self._count(f, -1)
        for name, value in fields.items():
            setattr(f, name, value)
        if tracked:
            self._count(f, 1)
            if "status" in fields and f.group_id in self._waiters and self._settled(f.group_id):
                self._wake_waiters([f.group_id])

    def _count(self, f: FileRecord, sign: int) -> None:
        tally = self._tallies[f.group_id]
        status = f.status
        tally.statuses[status] = tally.statuses.get(status, 0) + sign
        tally.bytes_done += sign * f.bytes_done
        total = f.bytes_total if f.bytes_total is not None else f.expected_size
        if total is None:
            tally.unknown += sign
        else:
            tally.bytes_total += sign * total
        if status not in LIVE_STATUSES:
            return
        if status is FileStatus.QUEUED:
            groups = self._queued_by_priority.setdefault(f.priority, {})
            left = groups.get(f.group_id, 0) + sign
            if left:
                groups[f.group_id] = left
            else:
                del groups[f.group_id]
                if not groups:
                    del self._queued_by_priority[f.priority]
        key = (f.group_id, f.index)
        if sign > 0:
            self._live_dests.setdefault(f.dest, {})[key] = f
            if status is FileStatus.WAITING_RETRY:
                self._retrying[key] = f
        else:
            owners = self._live_dests.get(f.dest)
            if owners is not None:
                owners.pop(key, None)
                if not owners:
                    del self._live_dests[f.dest]
            if status is FileStatus.WAITING_RETRY:
                self._retrying.pop(key, None)

    @contextlib.contextmanager
    def _batch(self) -> Iterator[None]:
        """Run a block of changes (no await inside) as one store transaction, committed when
        the block ends; the events it emits are published after the commit, in order. Nested
        blocks join the outer one; an open `_deferred` batch is joined and ends here too.

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
        self._flush()
        if error is not None:
            raise error

    @contextlib.contextmanager
    def _deferred(self) -> Iterator[None]:
        """Like `_batch`, for changes no caller is waiting on (a transfer's end, the
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
            self.store.begin_batch()
            self._pending = []

    def _flush(self) -> None:
        """Commit the open batch, then publish its events."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        pending, self._pending = self._pending, None
        if pending is None:
            return
        self.store.end_batch()  # on failure nothing is announced
        for event in pending:
            self.bus.publish(event)

    def _flush_soon(self) -> None:
        self._flush_handle = None
        try:
            self._flush()
        except Exception as exc:
            # The store refused a commit: what memory says is no longer what the file says.
            # Fail the manager as a failing write inside a transfer task always has.
            if self._tg is None:
                raise
            self._tg.create_task(_raise(exc))

    def _transition(
        self,
        f: FileRecord,
        to: FileStatus,
        *,
        allowed_from: Collection[FileStatus],
        reason: str | None = None,
        **fields: Any,
    ) -> bool:
        """The one way a file changes status: store first, then memory, then the event."""
        previous = f.status
        if not self.store.transition(f.group_id, f.index, to, allowed_from=allowed_from, **fields):
            return False
        key = (f.group_id, f.index)
        if to is FileStatus.COMPLETED or to is FileStatus.CANCELLED:
            self._segmented.discard(key)  # dropped by the store's trigger
        fields["status"] = to
        self._set(f, fields)
        failing = to is FileStatus.WAITING_RETRY or to is FileStatus.FAILED
        self._emit(
            ev.StatusChanged(
                ref=_file_ref(f),
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
            self._positions_dirty = True  # announced by the ticker, at most twice a second
        if key in self._queue:
            if to in TERMINAL_STATUSES:
                self._queue.remove(key)
            else:
                self._queue.set_waiting(key, to is FileStatus.QUEUED)
        return True

    def _emit(self, event: ev.Event) -> None:
        if self._pending is not None:
            self._pending.append(event)  # published when the batch has committed
        else:
            self.bus.publish(event)

    def _apply_order(self, changes: dict[FileKey, int], *, priority: int | None = None) -> None:
        if not changes:
            return
        with self._batch():
            self.store.set_order(changes, priority=priority)
            for (gid, idx), key in changes.items():
                group = self._groups.get(gid)
                f = _member(group, idx) if group is not None else None
                if f is not None:
                    f.order_key = key
                    if priority is not None:
                        self._set(f, {"priority": priority})
            self._emit_positions()
        self._wake.set()

    def _emit_positions(self) -> None:
        positions = self._queue.group_positions()
        self._emit(ev.QueueChanged(positions={str(g): p for g, p in positions.items()}))

    async def _requeue(self, group: GroupRecord, files: list[FileRecord]) -> None:
        with self._batch():
            self._requeue_files(group, files)
        self._wake.set()

    def _requeue_files(self, group: GroupRecord, files: list[FileRecord]) -> None:
        for f in files:
            if f.status in (FileStatus.ACTIVE, FileStatus.QUEUED):
                continue
            if f.status in (FileStatus.PAUSED, FileStatus.WAITING_RETRY):
                self._resume_files([f])
                continue
            on_disk = self._on_disk(f)
            allowed = (FileStatus.FAILED, FileStatus.CANCELLED, FileStatus.COMPLETED)
            key = (f.group_id, f.index)
            if key not in self._queue:
                changes = self._queue.add_group(group.id, [f.index], f.priority)
                self._queue.set_waiting(key, False)
                self._apply_order(changes)
            self._histories.pop(key, None)
            self._transition(
                f,
                FileStatus.QUEUED,
                allowed_from=allowed,
                reason="retry",
                attempts=0,
                error_kind=None,
                error_message=None,
                retry_at=None,
                finished_at=None,
                bytes_done=on_disk,
            )
        if group.finished_at is not None:
            self.store.update_group(group.id, finished_at=None)  # it will finish again
            group.finished_at = None

    def _cancel_waiting(self, f: FileRecord) -> None:
        if self._transition(
            f,
            FileStatus.CANCELLED,
            allowed_from=_WAITING,
            reason="cancelled",
            finished_at=time.time(),
            bytes_done=0,
        ):
            for p in _partial_paths(f.dest):
                p.unlink(missing_ok=True)
            self._emit(ev.Cancelled(ref=_file_ref(f), group_id=f.group_id, name=f.name))
            self._finish_if_done(f.group_id)

    async def _pause_files(self, files: list[FileRecord], reason: PauseReason) -> None:
        stops = []
        with self._batch():
            for f in files:
                key = (f.group_id, f.index)
                if f.status is FileStatus.ACTIVE and key in self._running:
                    why = (
                        StopReason.DISK_FULL
                        if reason is PauseReason.DISK_FULL
                        else StopReason.PAUSE
                    )
                    stops.append(self._stop(self._running[key], why))
                elif f.status in (FileStatus.QUEUED, FileStatus.WAITING_RETRY):
                    self._transition(
                        f,
                        FileStatus.PAUSED,
                        allowed_from=(FileStatus.QUEUED, FileStatus.WAITING_RETRY),
                        reason=reason.value,
                        pause_reason=reason.value,
                        retry_at=None,
                    )
        await asyncio.gather(*stops)

    def _resume_files(self, files: list[FileRecord]) -> None:
        with self._batch():
            for f in files:
                if f.status in (FileStatus.PAUSED, FileStatus.WAITING_RETRY):
                    self._transition(
                        f,
                        FileStatus.QUEUED,
                        allowed_from=(FileStatus.PAUSED, FileStatus.WAITING_RETRY),
                        reason="resumed",
                        pause_reason=None,
                        retry_at=None,
                    )
        self._wake.set()

    def _finish_if_done(self, gid: int) -> None:
        group = self._groups.get(gid)
        if group is not None and gid not in self._finish_held:
            self._maybe_finish_group(group)

    def _maybe_finish_group(self, group: GroupRecord) -> None:
        tally = self._tallies.get(group.id)
        if tally is not None and tally.live:
            return
        if tally is None and any(f.status in LIVE_STATUSES for f in group.files):
            return
        if group.finished_at is not None:
            return
        now = time.time()
        self.store.finish_group(group.id, now)
        group.finished_at = now
        self._group_rates.pop(group.id, None)
        counts = {s: sum(1 for f in group.files if f.status is s) for s in TERMINAL_STATUSES}
        self._emit(
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

    # ------------------------------------------------------------------ the coordinator

    async def _coordinate(self) -> None:
        while not self._closing:
            self._wake.clear()
            now = time.time()
            with self._deferred():  # the retries due and the files started: one commit
                self._promote_due_retries(now)
                self._fill_slots(now)
            delay = self._next_deadline(now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _promote_due_retries(self, now: float) -> None:
        for _, f in sorted(self._retrying.items()):
            if (f.retry_at or 0) <= now and not self._held(f.url, now):
                self._transition(
                    f,
                    FileStatus.QUEUED,
                    allowed_from=(FileStatus.WAITING_RETRY,),
                    reason="retrying",
                    retry_at=None,
                )

    def _held(self, url: str, now: float) -> bool:
        if not self._holds:
            return False
        until = self._holds.get(_host_of(url))
        return until is not None and until > now

    def _next_deadline(self, now: float) -> float | None:
        times = [f.retry_at for f in self._retrying.values() if f.retry_at is not None]
        times += [t for t in self._holds.values() if t > now]
        if not times:
            return None
        return max(0.0, min(times) - now) + 0.01

    def _fill_slots(self, now: float) -> None:
        """Start the first eligible waiting files until `max_active` run. The queue is read
        lazily (starting a file changes no order), so this costs the files it starts and the
        held ones in front of them, not O(queue)."""
        max_active = self.settings.max_active
        if self._closing or len(self._running) >= max_active:
            return
        for key in self._queue.waiting():
            group = self._groups.get(key[0])
            if group is None:
                continue
            f = _member(group, key[1])
            if f is None or f.status is not FileStatus.QUEUED or self._held(f.url, now):
                continue
            self._start(f, now)
            if len(self._running) >= max_active:
                return

    def _start(self, f: FileRecord, now: float) -> None:
        if not self._transition(
            f,
            FileStatus.ACTIVE,
            allowed_from=(FileStatus.QUEUED,),
            reason="started",
            started_at=now,
        ):
            return
        run = _Running(
            rec=f,
            stop=StopSignal(),
            start_offset=f.bytes_done,
            done=f.bytes_done,
            total=f.bytes_total if f.bytes_total is not None else f.expected_size,
            rate=RateEstimator(),
        )
        run.rate.sample(run.done, time.monotonic())
        key = (f.group_id, f.index)
        self._running[key] = run
        self._group_rates.setdefault(f.group_id, RateEstimator())
        assert self._tg is not None
        run.task = self._tg.create_task(self._run_file(run), name=f"modelfetch-{_file_ref(f)}")

    async def _run_file(self, run: _Running) -> None:
        f = run.rec
        key = (f.group_id, f.index)
        handed_over = False
        try:
            self._emit(
                ev.FileStarted(
                    ref=_file_ref(f),
                    group_id=f.group_id,
                    name=f.name,
                    offset=run.done,
                    total=run.total,
                )
            )

            def on_progress(done: int, total: int | None) -> None:
                if not run.reported:
                    # The first report is the resume offset the transfer found on disk: a
                    # baseline, not bytes that moved.
                    run.reported = True
                    run.start_offset = done
                    run.done = done
                    run.rate.rebase(done, time.monotonic())
                    group = self._groups.get(f.group_id)
                    rate = self._group_rates.get(f.group_id)
                    if group is not None and rate is not None:
                        rate.rebase(self._group_done(group), time.monotonic())
                run.done = done
                if total is not None:
                    run.total = total

            def on_segments(segments: tuple[SegmentRecord, ...] | None) -> None:
                self.store.save_segments(f.group_id, f.index, segments)
                if segments:
                    self._segmented.add(key)
                else:
                    self._segmented.discard(key)

            result = await fetch_file(
                self._session_or_fail(),
                self._transfer_request(f),
                on_progress=on_progress,
                stop=run.stop,
                on_segments=on_segments,
                limits=(self._group_bucket(f.group_id), self._bandwidth),
                slots=self._slots,
            )
        except asyncio.CancelledError:
            with self._batch():
                self._finalize_stopped(run)
            raise
        except Exception as exc:  # every failure goes to the policy; a bug is a GiveUp there
            with self._deferred():
                self._finalize_failed(run, exc)
                if f.status is not FileStatus.PAUSED:  # a full disk pauses everything first
                    self._hand_over(key)
        else:
            # The status, the digest cache, the group's end and the start of the next file in
            # line, with whatever other transfers finish in this turn of the loop: one commit.
            with self._deferred():
                self._finalize_completed(run, result)
                self._hand_over(key)
            handed_over = True  # nothing for the coordinator: no retry or hold changed
        finally:
            self._running.pop(key, None)
            if not handed_over:
                self._wake.set()

    def _hand_over(self, key: FileKey) -> None:
        """A finished transfer's slot goes to the next file in line at once, rather than when
        the coordinator next runs."""
        self._running.pop(key, None)
        self._fill_slots(time.time())

    def _session_or_fail(self) -> TransferSession:
        if self._session is None:
            raise RuntimeError("no HTTP session")
        return self._session

    def _transfer_request(self, f: FileRecord) -> TransferRequest:
        credentials = None
        hub = self.hub_config
        if hub.token and origin_of(f.url) == hub.origin:
            credentials = hub.credentials()
        _, connections = self._group_limits(f.group_id)
        return TransferRequest(
            url=f.url,
            dest=Path(f.dest),
            expected_size=f.expected_size,
            expected_sha256=f.expected_sha256,
            expected_git_oid=f.expected_git_oid,
            credentials=credentials,
            stall_timeout=self.settings.stall_timeout,
            allowed_hosts=self.settings.allowed_hosts,
            connections=connections or self.settings.connections_per_file,
            segment_threshold=self.settings.segment_threshold,
            min_segment_size=self.settings.min_segment_size,
            segments=self._segments_of(f),
            checkpoint_interval=self.settings.checkpoint_interval,
        )

    async def _stop(self, run: _Running, reason: StopReason) -> None:
        """Stop a running transfer for `reason` and wait until its state is written."""
        if run.stop.reason is None:
            run.stop.stop(reason)
        task = run.task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        # A task cancelled before it ever ran has not written its state: do it here.
        with self._batch():
            self._finalize_stopped(run)
        if run.stop.reason is StopReason.CANCEL:
            for p in _partial_paths(run.rec.dest):
                p.unlink(missing_ok=True)

    def _finalize_stopped(self, run: _Running) -> None:
        if run.finalized:
            return
        run.finalized = True
        f = run.rec
        reason = run.stop.reason or StopReason.SHUTDOWN
        if reason is StopReason.CANCEL:
            if self._transition(
                f,
                FileStatus.CANCELLED,
                allowed_from=(FileStatus.ACTIVE,),
                reason="cancelled",
                bytes_done=0,
                finished_at=time.time(),
            ):
                self._emit(ev.Cancelled(ref=_file_ref(f), group_id=f.group_id, name=f.name))
            self._finish_if_done(f.group_id)
        elif reason is StopReason.SHUTDOWN:
            self._transition(
                f,
                FileStatus.QUEUED,
                allowed_from=(FileStatus.ACTIVE,),
                reason="requeued",
                bytes_done=self._on_disk(f),
                bytes_total=run.total,
            )
        else:
            pause = PauseReason.DISK_FULL if reason is StopReason.DISK_FULL else PauseReason.USER
            self._transition(
                f,
                FileStatus.PAUSED,
                allowed_from=(FileStatus.ACTIVE,),
                reason=pause.value,
                pause_reason=pause.value,
                bytes_done=self._on_disk(f),
                bytes_total=run.total,
            )

    def _finalize_completed(self, run: _Running, result: TransferResult) -> None:
        run.finalized = True
        f = run.rec
        run.done = result.size
        if self._transition(
            f,
            FileStatus.COMPLETED,
            allowed_from=(FileStatus.ACTIVE,),
            reason="completed",
            bytes_done=result.size,
            bytes_total=result.size,
            sha256=result.sha256,
            etag=result.etag,
            last_modified=result.last_modified,
            commit=result.repo_commit or f.commit,
            finished_at=time.time(),
            error_kind=None,
            error_message=None,
            retry_at=None,
        ):
            self._histories.pop((f.group_id, f.index), None)
            self._remember_verified(f, result)
            self._publish_links(f)
            self._emit(
                ev.FileCompleted(
                    ref=_file_ref(f),
                    group_id=f.group_id,
                    name=f.name,
                    path=str(result.path),
                    sha256=result.sha256,
                    size=result.size,
                    verified=result.verified,
                )
            )
            self._emit_group_progress(f.group_id, time.monotonic())
            self._finish_if_done(f.group_id)

    def _remember_verified(self, f: FileRecord, result: TransferResult) -> None:
        if not result.verified:
            return
        with contextlib.suppress(OSError):
            st = result.path.stat()
            self.store.remember_verified(f.dest, st.st_size, st.st_mtime_ns, result.sha256)

    def _finalize_failed(self, run: _Running, exc: Exception) -> None:
        run.finalized = True
        f = run.rec
        key = (f.group_id, f.index)
        now = time.time()
        moved = run.done > run.start_offset
        history = self._histories.get(key) or AttemptHistory(failures=f.attempts)
        decision = self.settings.policy.decide(
            exc, history, now=now, rng=self._rng, made_progress=moved
        )
        history = history.record(exc, made_progress=moved)
        self._histories[key] = history
        kind = getattr(exc, "kind", type(exc).__name__)
        message = str(exc) or type(exc).__name__
        on_disk = self._on_disk(f)
        if isinstance(decision, Retry):
            if decision.restart_from_zero:
                for p in _partial_paths(f.dest):
                    p.unlink(missing_ok=True)
                on_disk = 0
            if decision.hold_host:
                for host in {_host_of(f.url), _host_of(getattr(exc, "url", None) or f.url)}:
                    self._holds[host] = max(self._holds.get(host, 0.0), decision.at)
            self._transition(
                f,
                FileStatus.WAITING_RETRY,
                allowed_from=(FileStatus.ACTIVE,),
                reason=decision.reason,
                retry_at=decision.at,
                attempts=history.failures,
                error_kind=kind,
                error_message=message,
                bytes_done=on_disk,
                bytes_total=run.total,
            )
        elif isinstance(decision, PauseAll):
            self._transition(
                f,
                FileStatus.PAUSED,
                allowed_from=(FileStatus.ACTIVE,),
                reason=decision.reason,
                pause_reason=PauseReason.DISK_FULL.value,
                error_kind=kind,
                error_message=decision.message,
                bytes_done=on_disk,
                bytes_total=run.total,
            )
            self._emit(ev.Notice(message=decision.message, level="error", ref=_file_ref(f)))
            assert self._tg is not None
            self._tg.create_task(self._pause_for_disk_full())
        else:
            assert isinstance(decision, GiveUp)
            if self._transition(
                f,
                FileStatus.FAILED,
                allowed_from=(FileStatus.ACTIVE,),
                reason="failed",
                attempts=history.failures,
                error_kind=kind,
                error_message=decision.message,
                bytes_done=on_disk,
                finished_at=now,
            ):
                self._emit(
                    ev.FileFailed(
                        ref=_file_ref(f),
                        group_id=f.group_id,
                        name=f.name,
                        error_kind=kind,
                        message=decision.message,
                    )
                )
                self._finish_if_done(f.group_id)

    async def _pause_for_disk_full(self) -> None:
        await self._pause_files(self._all_live_files(), PauseReason.DISK_FULL)

    # ------------------------------------------------------------------ progress

    async def _ticker(self) -> None:
        last_checkpoint = time.monotonic()
        last_disk_check = last_checkpoint
        while not self._closing:
            await asyncio.sleep(self.settings.progress_interval)
            now = time.monotonic()
            self._emit_progress(now)
            if self._positions_dirty:
                self._positions_dirty = False
                self._emit_positions()
            if now - last_checkpoint >= self.settings.checkpoint_interval:
                self._checkpoint()
                last_checkpoint = now
            if now - last_disk_check >= self.settings.disk_check_interval:
                self._resume_when_space_returns()
                last_disk_check = now

    def _emit_progress(self, now: float) -> None:
        groups: set[int] = set()
        for run in list(self._running.values()):
            f = run.rec
            run.rate.sample(run.done, now)
            groups.add(f.group_id)
            self._emit(
                ev.FileProgress(
                    ref=_file_ref(f),
                    group_id=f.group_id,
                    name=f.name,
                    downloaded=run.done,
                    total=run.total,
                    speed=run.rate.speed,
                    eta=run.rate.eta(run.total, run.done),
                )
            )
        for gid in groups:
            self._emit_group_progress(gid, now)

    def _group_done(self, group: GroupRecord) -> int:
        """Bytes of the group on disk: the stored counts, and for running files what moved
        since (O(running files), not O(files))."""
        tally = self._tallies.get(group.id)
        if tally is None:
            return group.bytes_done
        done = tally.bytes_done
        for run in self._running.values():
            if run.rec.group_id == group.id:
                done += run.done - run.rec.bytes_done
        return done

    def _emit_group_progress(self, gid: int, now: float) -> None:
        group = self._groups.get(gid)
        tally = self._tallies.get(gid)
        if group is None or tally is None:
            return
        done = self._group_done(group)
        total = tally.total
        rate = self._group_rates.setdefault(gid, RateEstimator())
        rate.sample(done, now)
        self._emit(
            ev.GroupProgress(
                group_id=gid,
                name=group.name,
                downloaded=done,
                total=total,
                speed=rate.speed,
                eta=rate.eta(total, done),
                files_done=tally.statuses.get(FileStatus.COMPLETED, 0),
                files_total=len(group.files),
            )
        )

    def _checkpoint(self, *, force: bool = False) -> None:
        rows = []
        for run in self._running.values():
            if force or run.done != run.saved_done:
                rows.append((run.rec.group_id, run.rec.index, run.done, run.total))
                run.saved_done = run.done
                self._set(run.rec, {"bytes_done": run.done, "bytes_total": run.total})
        if rows and self._store is not None:
            self._store.save_progress(rows)

    def _resume_when_space_returns(self) -> None:
        """Files paused for a full disk resume on their own, in queue order, as far as the free
        space on their filesystem covers what they still need (plus a small margin)."""
        order = {key: n for n, key in enumerate(self._queue.order())}
        waiting = sorted(
            (
                f
                for f in self._all_live_files()
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
            self._emit(ev.Notice(message=f"space is available again: resuming {names}"))
            self._resume_files(resumed)

    # ------------------------------------------------------------------ views

    def _file_view(self, f: FileRecord, positions: dict[FileKey, int]) -> FileView:
        key = (f.group_id, f.index)
        run = self._running.get(key)
        if run is None:
            return file_view(f, positions.get(key))
        return file_view(
            f,
            positions.get(key),
            downloaded=run.done,
            total=run.total,
            speed=run.rate.speed,
            eta=run.rate.eta(run.total, run.done),
            idle_for=run.rate.idle_for(time.monotonic()),
        )


async def _raise(exc: Exception) -> None:
    raise exc


def _file_ref(f: FileRecord) -> str:
    """`str(f.ref)` without making an ItemRef: every event about a file carries it."""
    return f"{f.group_id}.{f.index}"


def _member(group: GroupRecord, index: int) -> FileRecord | None:
    """The file `index` of a group (files are stored in index order, 1-based)."""
    files = group.files
    if 0 < index <= len(files) and files[index - 1].index == index:
        return files[index - 1]
    return next((f for f in files if f.index == index), None)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_root(link: Path) -> Path:
    """<root>/models--o--n/snapshots/<commit>/<path...> -> <root>"""
    for parent in link.parents:
        if parent.name == "snapshots":
            return parent.parent.parent
    raise ValueError(f"not a snapshot path: {link}")


def _existing_parent(path: Path) -> Path:
    p = path.parent
    while not p.exists() and p != p.parent:
        p = p.parent
    return p
