"""Leases, not locks: the `LeasingStore` methods of the PostgreSQL store (`PostgresLeases`).

Several workers drain one queue. A worker `claim`s files: one statement picks queued files in
queue order with `SELECT ... FOR UPDATE SKIP LOCKED` (two workers claiming at once skip each
other's rows instead of waiting or taking the same one) and marks them active with the worker
as holder, a fencing token from the `lease_fence` sequence and an expiry. The worker `renew`s
while it transfers. Every write it makes under the claim names holder and token in its WHERE
clause, so once the lease has lapsed and another worker has claimed the file (a new, larger
token) the stale worker's writes match no row and raise `LeaseLostError`: a worker that was
partitioned away and comes back can never overwrite the new holder's progress.

Time is the database server's clock (`statement_timestamp()`), one clock for every host; tests
pass `now` to move it. A lapsed lease is taken over by the next `claim` (or returned to the
queue by `expire`), keeping the file's byte count and segment map, so the new holder resumes the
`.part` on the shared models directory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from typing import Any, Final

from modelfetch.core.models import FileRecord, FileStatus
from modelfetch.core.segments import SegmentRecord
from modelfetch.store.postgres_connect import Connection
from modelfetch.store.postgres_fleet import PostgresFleet
from modelfetch.store.postgres_listen import queue_changes
from modelfetch.store.protocol import Claim, LeaseLostError
from modelfetch.store.rows import FILE_SELECT, FILE_UPDATABLE, decode_file, encode, set_clause

__all__ = ["PostgresLeases", "replace_segments"]

_CLOCK: Final = (
    "clock AS (SELECT coalesce(%s::float8, extract(epoch FROM statement_timestamp())) AS now)"
)
_F_SELECT: Final = ", ".join(f"f.{column}" for column in FILE_SELECT.split(", "))
_END_LEASE: Final = ", holder = NULL, fence = NULL, lease_expires = NULL"

CLAIM: Final = (
    f"WITH {_CLOCK}, picked AS ("
    " SELECT files.id FROM files, clock"
    " WHERE files.status IN ('queued', 'active')"  # the files_claimable index
    " AND (files.status = 'queued' OR files.lease_expires < clock.now)"
    " ORDER BY files.priority DESC, files.order_key, files.group_id, files.idx"
    " LIMIT %s FOR UPDATE OF files SKIP LOCKED)"
    " UPDATE files AS f SET status = 'active', holder = %s, fence = nextval('lease_fence'),"
    " lease_expires = clock.now + %s"
    f" FROM picked, clock WHERE f.id = picked.id RETURNING f.fence, f.lease_expires, {_F_SELECT}"
)
RENEW: Final = (
    f"WITH {_CLOCK} UPDATE files AS f SET lease_expires = clock.now + v.secs"
    " FROM unnest(%s::bigint[], %s::text[], %s::float8[]) AS v(fence, holder, secs), clock"
    " WHERE f.fence = v.fence AND f.holder = v.holder AND f.status = 'active'"
    " RETURNING f.fence, f.lease_expires"
)
PROGRESS: Final = (
    "UPDATE files AS f SET bytes_done = v.done, bytes_total = coalesce(v.total, f.bytes_total)"
    " FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::bigint[])"
    " AS v(fence, holder, done, total)"
    " WHERE f.fence = v.fence AND f.holder = v.holder AND f.status = 'active' RETURNING f.fence"
)
EXPIRE: Final = (
    f"WITH {_CLOCK} UPDATE files AS f SET status = 'queued'{_END_LEASE} FROM clock"
    f" WHERE f.status = 'active' AND f.lease_expires < clock.now RETURNING {_F_SELECT}"
)
# The advisory lock capped claims take turns under ("mfclaims" as a bigint).
CLAIM_LOCK: Final = int.from_bytes(b"mfclaims", "big")
# Files that may still start under the fleet's cap: the cap less the files with a live lease.
_ROOM: Final = (
    f"WITH {_CLOCK} SELECT l.max_active - (SELECT count(*) FROM files, clock"
    " WHERE files.status = 'active' AND files.lease_expires >= clock.now)"
    " FROM fleet_limits AS l"
)
_STILL_HELD: Final = "SELECT holder = %s AND fence = %s FROM files WHERE group_id = %s AND idx = %s"
_TRANSITION_SQL: Final[dict[tuple[tuple[str, ...], bool], str]] = {}


def replace_segments(
    db: Connection, file_id: int, segments: Sequence[SegmentRecord] | None
) -> None:
    """A file's segment map, replaced inside the caller's transaction (the file row locked)."""
    db.execute("DELETE FROM file_segments WHERE file_id = %s", [file_id], prepare=True)
    if segments:
        db.execute(
            "INSERT INTO file_segments (file_id, seg_start, seg_end, done)"
            " SELECT %s, * FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[])",
            [
                file_id,
                [s.start for s in segments],
                [s.end for s in segments],
                [s.done for s in segments],
            ],
            prepare=True,
        )


def _order(claim: Claim) -> tuple[int, int, int, int]:
    return (-claim.file.priority, claim.file.order_key, claim.group_id, claim.index)


class PostgresLeases(PostgresFleet):
    """The `LeasingStore` methods, on the store's connection."""

    def claim(
        self, worker: str, *, lease_seconds: float, limit: int, now: float | None = None
    ) -> list[Claim]:
        if not worker:
            raise ValueError("a claim needs a worker id")
        if lease_seconds <= 0 or limit < 0:
            raise ValueError("lease_seconds must be > 0 and limit >= 0")
        if limit == 0:
            return []
        cap = self.fleet_limits().max_active
        if cap is None and self._peers == 0:  # the usual case: the claim is one statement
            rows = self._execute(CLAIM, [now, limit, worker, lease_seconds]).fetchall()
        else:
            with self._transaction() as db:
                room = self._fair_room(db, worker, limit, now)  # other workers may be idle
                if cap is not None and room > 0:
                    room = min(room, self._capped_room(db, now))
                rows = []
                if room > 0:
                    params = [now, room, worker, lease_seconds]
                    rows = db.execute(CLAIM, params, prepare=True).fetchall()
        claims = [self._claim_of(row, worker, lease_seconds) for row in rows]
        return sorted(claims, key=_order)

    def _capped_room(self, db: Connection, now: float | None) -> int:
        """Files that may start under the fleet's cap. Claims take turns while it is set; never
        wait for the turn: the driver is synchronous, and the holder may be a batch on this
        very event loop. A claim that finds it taken claims nothing now; the holder's commit
        notifies every worker, which claims again."""
        turn = db.execute(
            "SELECT pg_try_advisory_xact_lock(%s)", [CLAIM_LOCK], prepare=True
        ).fetchone()
        if turn is None or not turn[0]:
            return 0
        row = db.execute(_ROOM, [now], prepare=True).fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    def renew(self, claims: Iterable[Claim], *, now: float | None = None) -> list[Claim]:
        by_fence = {c.fence: c for c in claims}
        if not by_fence:
            return []
        held = by_fence.values()
        rows = self._execute(
            RENEW,
            [now, list(by_fence), [c.worker for c in held], [c.lease_seconds for c in held]],
        ).fetchall()
        renewed = [dataclasses.replace(by_fence[int(f)], expires_at=float(e)) for f, e in rows]
        return sorted(renewed, key=_order)

    def release(self, claim: Claim, status: FileStatus, **fields: object) -> None:
        if FileStatus(status) is FileStatus.ACTIVE:
            raise ValueError("release leaves active: give the status the file goes to")
        if not self.transition_claimed(
            claim, status, allowed_from={FileStatus.ACTIVE}, **fields
        ):  # held, yet not active: cannot happen (the table's CHECK), but never pass silently
            raise LeaseLostError(self._lost_message([claim]), [claim])

    def transition_claimed(
        self,
        claim: Claim,
        to: FileStatus,
        *,
        allowed_from: Collection[FileStatus],
        **fields: object,
    ) -> bool:
        allowed = [FileStatus(s).value for s in allowed_from]
        target = FileStatus(to)
        key = (tuple(fields), target is FileStatus.ACTIVE)
        sql = _TRANSITION_SQL.get(key)
        if sql is None:
            assignments, _ = set_clause(fields, FILE_UPDATABLE, "FileRecord")
            extra = f", {assignments.replace('?', '%s')}" if assignments else ""
            if target is not FileStatus.ACTIVE:
                extra += _END_LEASE
            sql = (
                f"UPDATE files SET status = %s{extra} WHERE group_id = %s AND idx = %s"
                " AND holder = %s AND fence = %s AND status = ANY(%s)"
            )
            if len(_TRANSITION_SQL) < 256:
                _TRANSITION_SQL[key] = sql
        if not allowed:
            raise ValueError("allowed_from is empty: the transition could never happen")
        params = [
            target.value,
            *map(encode, fields.values()),
            claim.group_id,
            claim.index,
            claim.worker,
            claim.fence,
            allowed,
        ]
        if self._execute(sql, params).rowcount == 1:
            return True
        self._check_held(claim)  # the rare path: one more round trip to say why
        return False

    def save_claimed_progress(self, rows: Iterable[tuple[Claim, int, int | None]]) -> None:
        latest = {claim.fence: (claim, done, total) for claim, done, total in rows}
        if not latest:
            return
        values = list(latest.values())
        written = self._execute(
            PROGRESS,
            [
                list(latest),
                [c.worker for c, _, _ in values],
                [done for _, done, _ in values],
                [total for _, _, total in values],
            ],
        ).fetchall()
        lost = set(latest) - {int(row[0]) for row in written}
        if lost:
            claims = [latest[fence][0] for fence in sorted(lost)]
            raise LeaseLostError(self._lost_message(claims), claims)

    def save_claimed_segments(self, claim: Claim, segments: Sequence[SegmentRecord] | None) -> None:
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM files WHERE group_id = %s AND idx = %s AND holder = %s"
                " AND fence = %s FOR UPDATE",
                [claim.group_id, claim.index, claim.worker, claim.fence],
                prepare=True,
            ).fetchone()
            if row is None:
                raise LeaseLostError(self._lost_message([claim]), [claim])
            replace_segments(db, int(row[0]), segments)

    def expire(self, now: float | None = None) -> list[FileRecord]:
        rows = self._execute(EXPIRE, [now]).fetchall()
        return sorted((decode_file(row) for row in rows), key=lambda f: (f.group_id, f.index))

    def holders(self) -> dict[tuple[int, int], tuple[str, float]]:
        db = self._conn
        with self._errors():
            rows = db.execute(
                "SELECT group_id, idx, holder, lease_expires FROM files WHERE holder IS NOT NULL"
            ).fetchall()
        return {(int(g), int(i)): (str(h), float(e)) for g, i, h, e in rows}

    def queue_changes(self) -> AsyncIterator[None]:
        return queue_changes(self._url)

    # -- internals ------------------------------------------------------------------------------

    def _replace_segments(
        self, db: Connection, file_id: int, segments: Sequence[SegmentRecord] | None
    ) -> None:
        replace_segments(db, file_id, segments)

    def _claim_of(self, row: Sequence[Any], worker: str, lease_seconds: float) -> Claim:
        record = decode_file(row[2:])
        return Claim(
            group_id=record.group_id,
            index=record.index,
            worker=worker,
            fence=int(row[0]),
            expires_at=float(row[1]),
            lease_seconds=lease_seconds,
            file=record,
        )

    def _check_held(self, claim: Claim) -> None:
        db = self._conn
        with self._errors():
            row = db.execute(
                _STILL_HELD, [claim.worker, claim.fence, claim.group_id, claim.index]
            ).fetchone()
        if row is None or not row[0]:
            raise LeaseLostError(self._lost_message([claim]), [claim])

    def _lost_message(self, claims: Sequence[Claim]) -> str:
        named = ", ".join(f"{c.group_id}.{c.index}" for c in claims[:5])
        more = f" and {len(claims) - 5} more" if len(claims) > 5 else ""
        return (
            f"lease lost on file {named}{more}: another worker holds it now (or it left the"
            f" queue); {claims[0].worker} must stop writing it"
        )
