"""One queue, one shared models directory: the marker file that proves a worker sees the same one.

Workers on several hosts resume each other's `.part` files, so they must all write into the same
(shared, e.g. NFS) models directory. A host that mounted the wrong thing (its local disk) would
download everything again and leave the queue pointing at files other hosts cannot see. So the
queue has an id (`queue_identity`, created by the first worker that checks) and the first worker
writes it into `<models dir>/.modelfetch-queue`; every later worker must find that same id there,
or is refused with a clear message before it claims anything.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Final

from modelfetch.core.errors import StateError
from modelfetch.store.postgres_connect import Connection

__all__ = ["MARKER_NAME", "check_models_dir"]

MARKER_NAME: Final = ".modelfetch-queue"
# Two first workers starting together: the one that did not create the id waits this long for
# the other's marker, and only while the id is this young.
_RACE_SECONDS: Final = 10.0


def check_models_dir(db: Connection, where: str, models_dir: Path) -> None:
    """Mark `models_dir` for this queue (its first worker) or check its marker (every other)."""
    created = db.execute(
        "INSERT INTO queue_identity (id, queue_id) VALUES (1, gen_random_uuid()::text)"
        " ON CONFLICT (id) DO NOTHING RETURNING queue_id"
    ).fetchone()
    marker = models_dir / MARKER_NAME
    if created is not None:
        _write_marker(marker, str(created[0]))
        return
    row = db.execute(
        "SELECT queue_id, extract(epoch FROM now()) - created_at FROM queue_identity"
    ).fetchone()
    assert row is not None
    queue_id, age = str(row[0]), float(row[1])
    deadline = time.monotonic() + max(0.0, _RACE_SECONDS - age)
    while True:
        found = _read_marker(marker)
        if found == queue_id:
            return
        if found is not None:
            raise StateError(
                f"{models_dir} belongs to another modelfetch queue (its {MARKER_NAME} names"
                f" queue {found[:36]!r}, {where} is queue {queue_id!r}): give each queue its"
                " own models directory"
            )
        if time.monotonic() >= deadline:
            raise StateError(
                f"{models_dir} is not the models directory the workers of {where} share (it has"
                f" no {MARKER_NAME} marker): mount the shared directory there, or point the"
                " models directory at it"
            )
        time.sleep(0.1)


def _read_marker(marker: Path) -> str | None:
    try:
        return marker.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read {marker}: {exc}") from exc


def _write_marker(marker: Path, queue_id: str) -> None:
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        partial = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
        partial.write_text(queue_id + "\n", encoding="utf-8")
        os.replace(partial, marker)  # whole or absent: a reader never sees half an id
    except OSError as exc:
        raise StateError(f"cannot write the queue marker {marker}: {exc}") from exc
