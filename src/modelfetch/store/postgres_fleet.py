"""The fleet's side of the PostgreSQL store: its roster of workers, its limits, its one clock.

- **Roster.** Every worker announces itself each beat (`heartbeat`): live until a few beats
  ahead, on the database's clock, with how many files it may run and whether it takes more. The
  roster (`roster`) is those still live, each with the files it holds under a live lease: what
  `core/fleet_share.py` divides the queue by. `claim` asks it (in the claim's transaction) only
  while the last heartbeat saw another worker, so a lone worker claims in one statement.
- **Limits.** `fleet_limits` is one row: files active at once, connections per upstream host.
- **Clock.** A host hold (429/503) ends at a time one worker computed on its own clock. Stored
  as is, a worker whose clock runs ahead would end every other worker's wait early. The store
  keeps the offset between this host's clock and the database's (measured at each heartbeat)
  and stores and compares holds on the database's clock, as leases are.
"""

from __future__ import annotations

import time
from typing import Final

from modelfetch.core.fleet_share import WorkerLoad, fair_claims
from modelfetch.store.postgres_connect import Connection
from modelfetch.store.postgres_transactions import PostgresTransactions
from modelfetch.store.protocol import KEEP, FleetLimits, Keep

__all__ = ["PostgresFleet"]

_CLOCK: Final = (
    "clock AS (SELECT coalesce(%s::float8, extract(epoch FROM statement_timestamp())) AS now)"
)
_ROSTER: Final = (
    f"WITH {_CLOCK}, held AS (SELECT holder, count(*) AS n FROM files, clock"
    " WHERE files.status = 'active' AND files.lease_expires >= clock.now GROUP BY holder)"
    " SELECT w.worker, coalesce(held.n, 0), w.max_active, w.accepting, clock.now"
    " FROM workers AS w CROSS JOIN clock LEFT JOIN held ON held.holder = w.worker"
    " WHERE w.expires >= clock.now ORDER BY w.worker"
)
_ANNOUNCE: Final = (
    f"WITH {_CLOCK} INSERT INTO workers (worker, max_active, accepting, expires)"
    " SELECT %s, %s, %s, clock.now + %s FROM clock ON CONFLICT (worker) DO UPDATE"
    " SET max_active = excluded.max_active, accepting = excluded.accepting,"
    " expires = excluded.expires"
)
# Workers gone for a day are forgotten (the roster ignores lapsed ones long before).
_FORGET_GONE: Final = (
    f"WITH {_CLOCK} DELETE FROM workers USING clock WHERE workers.expires < clock.now - 86400"
)
# What a claim could take now: queued files, and active ones whose lease lapsed.
_CLAIMABLE: Final = (
    f"WITH {_CLOCK} SELECT count(*) FROM files, clock WHERE files.status IN ('queued', 'active')"
    " AND (files.status = 'queued' OR files.lease_expires < clock.now)"
)
_LIMITS: Final = "SELECT max_active, max_connections_per_host FROM fleet_limits"


class PostgresFleet(PostgresTransactions):
    """Roster, fleet limits and the clock offset, on the store's connection."""

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        super().__init__(url, read_only=read_only)
        self._peers = 0  # other live workers at the last heartbeat
        self._offset: float | None = None  # the database's clock less this host's, seconds
        self._tidied = False  # long-gone workers forgotten: each worker does it as it starts

    # -- limits ---------------------------------------------------------------------------------

    def fleet_limits(self) -> FleetLimits:
        db = self._conn
        with self._errors():
            row = db.execute(_LIMITS, prepare=True).fetchone()
        if row is None:
            return FleetLimits()
        return FleetLimits(
            max_active=None if row[0] is None else int(row[0]),
            max_connections_per_host=None if row[1] is None else int(row[1]),
        )

    def set_fleet_limits(
        self,
        *,
        max_active: int | Keep | None = KEEP,
        max_connections_per_host: int | Keep | None = KEEP,
    ) -> FleetLimits:
        for name, cap in (
            ("max_active", max_active),
            ("max_connections_per_host", max_connections_per_host),
        ):
            if isinstance(cap, int) and cap < 1:
                raise ValueError(f"the fleet's {name} must be at least 1 (or None: no cap)")
        with self._transaction() as db:
            db.execute(
                "INSERT INTO fleet_limits (id) VALUES (1) ON CONFLICT (id) DO NOTHING",
                prepare=True,
            )
            if max_active is not KEEP:
                db.execute("UPDATE fleet_limits SET max_active = %s", [max_active], prepare=True)
            if max_connections_per_host is not KEEP:
                db.execute(
                    "UPDATE fleet_limits SET max_connections_per_host = %s",
                    [max_connections_per_host],
                    prepare=True,
                )
        return self.fleet_limits()

    # -- roster ---------------------------------------------------------------------------------

    def heartbeat(
        self, worker: str, *, max_active: int, accepting: bool, lapse_seconds: float
    ) -> list[WorkerLoad]:
        if not worker or max_active < 1 or lapse_seconds <= 0:
            raise ValueError("a heartbeat needs a worker id, max_active >= 1, lapse_seconds > 0")
        with self._transaction() as db:
            if not self._tidied:  # once is enough: the roster skips lapsed rows anyway
                db.execute(_FORGET_GONE, [None], prepare=True)
            db.execute(
                _ANNOUNCE, [None, worker, max_active, accepting, lapse_seconds], prepare=True
            )
            roster = self._roster(db, None)
        self._tidied = True
        self._peers = sum(1 for w in roster if w.worker != worker)
        return roster

    def roster(self) -> list[WorkerLoad]:
        db = self._conn
        with self._errors():
            return self._roster(db, None)

    def leave(self, worker: str) -> None:
        self._execute("DELETE FROM workers WHERE worker = %s", [worker])
        self._peers = 0

    # -- for claims and holds -------------------------------------------------------------------

    def _fair_room(self, db: Connection, worker: str, limit: int, now: float | None) -> int:
        """How many files `worker` may claim of `limit`, sharing the queue with the roster."""
        if self._peers == 0:
            return limit
        row = db.execute(_CLAIMABLE, [now], prepare=True).fetchone()
        claimable = 0 if row is None else int(row[0])
        return fair_claims(worker, self._roster(db, now), claimable, limit)

    def _roster(self, db: Connection, now: float | None) -> list[WorkerLoad]:
        before = time.time()
        rows = db.execute(_ROSTER, [now], prepare=True).fetchall()
        if now is None and rows:
            self._offset = float(rows[0][4]) - (before + time.time()) / 2
        return [
            WorkerLoad(worker=str(w), running=int(n), max_active=int(cap), accepting=bool(a))
            for w, n, cap, a, _ in rows
        ]

    def _clock_offset(self) -> float:
        """The database's clock less this host's (measured once, then at every heartbeat)."""
        if self._offset is None:
            db = self._conn
            before = time.time()
            with self._errors():
                row = db.execute(
                    "SELECT extract(epoch FROM clock_timestamp())::float8", prepare=True
                ).fetchone()
            if row is None:  # cannot happen: a SELECT of one value
                return 0.0
            self._offset = float(row[0]) - (before + time.time()) / 2
        return self._offset

    def hold_host(self, host: str, until: float) -> None:
        self._execute(
            "INSERT INTO host_holds (host, until) VALUES (%s, %s) ON CONFLICT (host)"
            " DO UPDATE SET until = greatest(host_holds.until, excluded.until)",
            [host, float(until) + self._clock_offset()],
        )

    def host_holds(self, now: float) -> dict[str, float]:
        offset = self._clock_offset()
        db = self._conn
        with self._errors():
            rows = db.execute(
                "SELECT host, until FROM host_holds WHERE until > %s",
                [float(now) + offset],
                prepare=True,
            ).fetchall()
        return {str(h): float(u) - offset for h, u in rows}
