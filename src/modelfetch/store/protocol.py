"""What an engine of the durable state must do: the `StoreReader` and `Store` protocols.

The manager, recovery and the read-only view use only these; `SqliteStore` and
`SqliteStoreReader` are today's engine, and another (PostgreSQL, issue 14) implements the same
methods with the same contract. They are structural (`typing.Protocol`): an engine does not
subclass them, it has the members.

The contract every engine meets, beyond each method's own:
- records are `core.models` dataclasses: a file is keyed by (group id, index), indexes 1..n;
  group ids are assigned by the engine, ascending and never reused;
- every write has committed when its method returns, except inside a batch (see `Store.batch`);
- a value the database rejects (a CHECK, a type) raises `ValueError("rejected by the state
  database: ...")` and writes nothing; a database that cannot be used raises `StateError`;
- once closed, every read and write raises `RuntimeError` (`close` again does nothing);
- no credential is ever stored: records carry URLs pinned to a commit, tokens stripped.

`LeasingStore` is optional, apart from `Store`: the methods an engine shared by several workers
adds (PostgreSQL's), so that each file is worked by one worker at a time under a lease. SQLite
does not need it: its owner holds the whole state directory's lock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from modelfetch.core.errors import StateError, StoreUnavailableError
from modelfetch.core.fleet_share import WorkerLoad
from modelfetch.core.models import KEEP, FileRecord, FileStatus, GroupRecord, Keep
from modelfetch.core.segments import SegmentRecord

__all__ = [
    "KEEP",
    "Claim",
    "FleetLimits",
    "Keep",
    "LeaseLostError",
    "LeasingStore",
    "Store",
    "StoreReader",
    "StoreUnavailableError",
    "WorkerLoad",
]


class StoreReader(Protocol):
    """The stored queue, read: what another process last committed, or the owner's own view.

    Reads never change anything and see every committed write (an owner's reads also see the
    writes of its own open batch)."""

    @property
    def closed(self) -> bool:
        """True once `close` has been called."""
        ...

    def close(self) -> None:
        """Release the connection (and a writer's lock). Safe to call twice."""
        ...

    def __enter__(self) -> Self:
        """The store itself, closed when the block ends."""
        ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """`close()`."""
        ...

    def get_group(self, group_id: int) -> GroupRecord | None:
        """The group with its files (by index), or None."""
        ...

    def groups(
        self,
        *,
        live_only: bool = False,
        added_after: int | None = None,
        limit: int | None = None,
    ) -> list[GroupRecord]:
        """Every group with its files, by id; `live_only`: only groups with a non-terminal file
        (`core.models.LIVE_STATUSES`); `added_after`: only groups with a larger id (with
        `live_only`: those as well as the live ones); `limit`: the first that many of those
        (`added_after` the last id of a page: the next page). A group added while this runs
        may be left out."""
        ...

    def find_group(self, key: str) -> GroupRecord | None:
        """The newest (highest id) group with this dedupe key, or None."""
        ...

    def get_file(self, group_id: int, index: int) -> FileRecord | None:
        """One file, or None."""
        ...

    def files(self, statuses: Collection[FileStatus] | None = None) -> list[FileRecord]:
        """Files by (group id, index), all of them or those in one of `statuses` (empty: none)."""
        ...

    def verified_digest(self, path: str, size: int, mtime_ns: int) -> str | None:
        """The sha256 remembered for `path` if it still has this size and mtime, else None."""
        ...

    def segments(self, group_id: int, index: int) -> tuple[SegmentRecord, ...] | None:
        """The segment map last saved for a file, by start; None when there is none."""
        ...

    def group_limits(self, group_id: int) -> tuple[int | None, int | None]:
        """(rate_limit bytes/s, connections per file) of a group; None where not set or when
        the group does not exist."""
        ...

    def segmented_files(self) -> set[tuple[int, int]]:
        """(group id, index) of every file that has a segment map."""
        ...


class Store(StoreReader, Protocol):
    """The stored queue, owned: one writer per state, held exclusively while it is open.

    Opening one takes the state's exclusive ownership (`StateLockedError` naming the holder's
    pid if another process has it) and brings the schema up to `SCHEMA_VERSION` (a newer one is
    refused with `StateError`). An engine shared by several workers (PostgreSQL) takes no
    exclusive ownership: its owners coordinate per file with leases (`LeasingStore`), and its
    `recover` requeues only active files that no live lease holds. Writes are atomic each: a
    method that fails leaves no trace."""

    # -- groups ---------------------------------------------------------------------------------

    def add_group(self, group: GroupRecord) -> GroupRecord:
        """Insert a group and its files in one transaction and return the same record, updated
        in place only once committed: `id`, each file's `id` and `group_id`, and `created_at`
        (now, when 0; a file's 0 takes the group's). Refused with ValueError: a group that has
        an id already, file indexes that are not exactly 1..n."""
        ...

    def update_group(self, group_id: int, **fields: object) -> None:
        """Set GroupRecord fields (priority, commit, finished_at, ...); `id` and `files` are
        refused with ValueError. A missing group is ignored."""
        ...

    def finish_group(self, group_id: int, finished_at: float) -> None:
        """Record when a group finished. A missing group is ignored."""
        ...

    def forget_group(self, group_id: int) -> bool:
        """Delete a group, its files and their segment maps, whatever their status; False when
        there was no such group."""
        ...

    def forget_finished(self) -> list[int]:
        """Delete, in one transaction, every group whose files are all terminal; return their
        ids, ascending."""
        ...

    # -- files ----------------------------------------------------------------------------------

    def transition(
        self,
        group_id: int,
        index: int,
        to: FileStatus,
        *,
        allowed_from: Collection[FileStatus],
        **fields: object,
    ) -> bool:
        """Set a file's status to `to` (and FileRecord `fields`) only if its status is now in
        `allowed_from`: check and write are one atomic step (compare-and-set), so a stale caller
        can never overwrite a newer state. True when the row changed; False, with nothing
        written, when the file is missing or in another status. ValueError: an empty
        `allowed_from`, a status that is not a FileStatus, a field that is not updatable (`id`,
        `group_id`, `index`, `status`). Reaching `completed` or `cancelled` also forgets the
        file's segment map, in the same step."""
        ...

    def update_file(self, group_id: int, index: int, **fields: object) -> None:
        """Set FileRecord fields without a status guard (validators, expected size, ...).
        `status` is refused with ValueError (use `transition`). A missing file is ignored."""
        ...

    def save_progress(self, rows: Iterable[tuple[int, int, int, int | None]]) -> None:
        """Checkpoint (group_id, index, bytes_done, bytes_total) rows, all or none. A total of
        None keeps the total already known. No rows: nothing happens."""
        ...

    def set_order(
        self, changes: Mapping[tuple[int, int], int], *, priority: int | None = None
    ) -> None:
        """Persist the order keys the scheduling queue returned, {(group id, index): key}, all
        or none; with `priority`, set that priority on the same files too (None: priorities
        unchanged). Files not named keep theirs; a missing file is ignored."""
        ...

    def recover(self) -> list[FileRecord]:
        """At start: every file left `active` (by a crash) goes back to `queued`, keeping its
        byte count, in one transaction. Returns exactly those files, as they are now (queued),
        by (group id, index); an empty list when none was active."""
        ...

    def remember_verified(self, path: str, size: int, mtime_ns: int, sha256: str) -> None:
        """Remember that the file at `path`, with this size and mtime, has this digest (the last
        call for a path wins). Inside a batch it may be written at the batch's commit, but
        `verified_digest` sees it at once."""
        ...

    # -- segment maps and per-download limits ---------------------------------------------------

    def save_segments(
        self, group_id: int, index: int, segments: Sequence[SegmentRecord] | None
    ) -> None:
        """Replace a file's segment map (None or empty: forget it), all or nothing. A missing
        file is ignored."""
        ...

    def set_group_limits(
        self,
        group_id: int,
        *,
        rate_limit: int | Keep | None = KEEP,
        connections: int | Keep | None = KEEP,
    ) -> None:
        """Set (a value) or clear (None) a group's own bandwidth limit in bytes/s (> 0) and its
        connections per file (>= 1); a limit left at KEEP is unchanged."""
        ...

    # -- host holds -----------------------------------------------------------------------------

    def hold_host(self, host: str, until: float) -> None:
        """Hold `host` (`host[:port]`, lower-cased) until `until` (epoch seconds) after it
        answered 429/503: the later of this and a hold already stored wins."""
        ...

    def host_holds(self, now: float) -> dict[str, float]:
        """The holds still in force at `now` (host → until). Ended ones stay in the table,
        one row per host that ever asked to wait, overwritten by its next hold."""
        ...

    # -- batches --------------------------------------------------------------------------------

    def batch(self) -> AbstractContextManager[None]:
        """Writes inside the block join one transaction: one commit when the block ends (and a
        nested `batch` joins the outer one). Another connection sees none of them before.

        Each write stays atomic on its own: one that fails leaves no trace and its exception
        propagates out of the block, and what succeeded before it in the block still commits
        (so a caller that mirrors each successful write in memory stays in step). A failed
        commit raises `StateError` and nothing of the batch is kept."""
        ...

    def begin_batch(self) -> None:
        """`batch()` in two calls, for a batch that outlives one block: writes from here on
        join one transaction until `end_batch`. A batch already open: RuntimeError."""
        ...

    def end_batch(self) -> None:
        """Commit the open batch; no open batch: nothing happens."""
        ...

    @property
    def batching(self) -> bool:
        """True while a batch is open: its writes are not committed yet."""
        ...


# -- leases (an engine shared by several workers) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """One worker's lease on one active file: proof of the right to write it until it lapses.

    `fence` is the claim's fencing token, larger than every token handed out before (for any
    file): a write under a claim names it, and is refused once another claim has replaced it.
    `expires_at` is in epoch seconds of the store's clock (the database server's, one clock for
    the whole fleet); `lease_seconds` is how long a renewal extends it by. `file` is the file
    as it was when claimed (its byte count and, through `segments`, its segment map, are where
    the transfer resumes from)."""

    group_id: int
    index: int
    worker: str
    fence: int
    expires_at: float
    lease_seconds: float
    file: FileRecord


@dataclass(frozen=True, slots=True)
class FleetLimits:
    """Caps over every worker of a shared queue; None: no cap beyond each worker's own."""

    max_active: int | None = None
    max_connections_per_host: int | None = None


class LeaseLostError(StateError):
    """A write under a claim was refused: the lease lapsed and was taken over (or the file was
    requeued, or forgotten). The worker must stop writing that file at once. `claims` names
    the leases that were lost."""

    kind = "lease_lost"

    def __init__(self, message: str, claims: Sequence[Claim] = ()) -> None:
        super().__init__(message)
        self.claims = tuple(claims)


@runtime_checkable
class LeasingStore(Protocol):
    """Claims on files of a queue several workers share (`SELECT ... FOR UPDATE SKIP LOCKED`).

    A file is claimed with a lease: a holder (the worker's id), a fencing token and an expiry.
    The worker renews it while the file transfers. A lease that lapses (its worker died or lost
    the database) goes back to the queue: the next `claim` (or `expire`) makes another worker
    its holder, with a larger token, and every later write under the old claim raises
    `LeaseLostError`. Leaving `active` by any route ends the lease."""

    def claim(
        self, worker: str, *, lease_seconds: float, limit: int, now: float | None = None
    ) -> list[Claim]:
        """Take up to `limit` files (queued ones, and active ones whose lease lapsed before
        `now`) in queue order (priority, highest first, then order key), each marked active,
        held by `worker` until `now + lease_seconds`, in one statement. Files another worker is
        claiming at the same moment are skipped, never waited for nor claimed twice. `now`
        None: the store's clock. Returns the claims in queue order; none left: []."""
        ...

    def renew(self, claims: Iterable[Claim], *, now: float | None = None) -> list[Claim]:
        """Extend each lease still held to `now + claim.lease_seconds`, in one statement;
        returns those claims, renewed, and leaves out the lost ones (never raises for them)."""
        ...

    def release(self, claim: Claim, status: FileStatus, **fields: object) -> None:
        """End the lease: the file leaves `active` for `status` (not active) with FileRecord
        `fields`, in one guarded statement. `LeaseLostError` when the lease is no longer held."""
        ...

    def transition_claimed(
        self,
        claim: Claim,
        to: FileStatus,
        *,
        allowed_from: Collection[FileStatus],
        **fields: object,
    ) -> bool:
        """`Store.transition` under the claim: written only while the lease is held
        (`LeaseLostError` otherwise); False when the lease is held but the status is not in
        `allowed_from`. Reaching a status other than active ends the lease."""
        ...

    def save_claimed_progress(self, rows: Iterable[tuple[Claim, int, int | None]]) -> None:
        """`Store.save_progress` under claims, (claim, bytes_done, bytes_total) rows, one
        statement: the rows of leases still held are written; if any lease was lost,
        `LeaseLostError` names those claims (their rows are not written)."""
        ...

    def save_claimed_segments(self, claim: Claim, segments: Sequence[SegmentRecord] | None) -> None:
        """`Store.save_segments` under the claim, all or nothing; `LeaseLostError` when the
        lease is no longer held."""
        ...

    def expire(self, now: float | None = None) -> list[FileRecord]:
        """Return every active file whose lease lapsed before `now` to `queued` (bytes and
        segment map kept); those files as they are now, by (group id, index)."""
        ...

    def holders(self) -> dict[tuple[int, int], tuple[str, float]]:
        """(group id, index) of every leased file -> (its holder, when its lease expires)."""
        ...

    def fleet_limits(self) -> FleetLimits:
        """The limits of the whole fleet (None: no cap beyond each worker's own)."""
        ...

    def set_fleet_limits(
        self,
        *,
        max_active: int | Keep | None = KEEP,
        max_connections_per_host: int | Keep | None = KEEP,
    ) -> FleetLimits:
        """Set (>= 1), clear (None) or keep (KEEP) each fleet-wide cap; returns them all.
        `claim` holds to `max_active`: claims are taken one worker at a time while it is set,
        counting active files with a live lease. Each worker holds to its share of
        `max_connections_per_host` (`core/fleet_share.connection_share`)."""
        ...

    def heartbeat(
        self, worker: str, *, max_active: int, accepting: bool, lapse_seconds: float
    ) -> list[WorkerLoad]:
        """Announce `worker` as live for `lapse_seconds` (on the store's clock), running up to
        `max_active` files and taking more (`accepting`) or not; returns the live roster
        (`roster`), this worker in it. A worker that stops announcing itself drops out of
        the roster when its last announcement lapses."""
        ...

    def roster(self) -> list[WorkerLoad]:
        """The live workers, by id, each with the files it holds under a live lease."""
        ...

    def leave(self, worker: str) -> None:
        """`worker` drops out of the roster now (it is closing)."""
        ...

    def queue_changes(self) -> AsyncIterator[None]:
        """Yield once listening, then whenever any connection has committed a change of the
        queue (a file's status, holder or place; a group; a host hold), several folded into
        one at times; not for byte counts or renewals. On its own connection; raises
        StoreUnavailableError when that is lost (listen again later)."""
        ...


def holder_ids(store: LeasingStore) -> dict[tuple[int, int], str]:
    """(group id, index) of every leased file -> the worker holding it: what the views show."""
    return {key: holder for key, (holder, _) in store.holders().items()}
