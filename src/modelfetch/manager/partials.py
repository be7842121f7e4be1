"""What of a file is on disk before it is complete: its `.part` and sidecar, and their bytes."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from modelfetch.core.models import LIVE_STATUSES, FileRecord
from modelfetch.core.paths import (
    PART_SUFFIX,
    PARTIAL_SUFFIXES,
    journal_path,
    part_path,
    sidecar_path,
)
from modelfetch.core.segments import SegmentRecord
from modelfetch.store import StoreUnavailableError

if TYPE_CHECKING:
    from modelfetch.manager.coordinator import DownloadManager


def partial_paths(dest: str) -> tuple[Path, Path, Path]:
    """The `.part`, its `.part.json` sidecar and its `.part.map` volatile segment map for a
    destination: what is removed with a partial."""
    path = Path(dest)
    return part_path(path), sidecar_path(path), journal_path(path)


def on_disk(m: DownloadManager, f: FileRecord) -> int:
    """Bytes of `f`'s partial really on disk: the `.part`'s length when it is filled front
    to back, the persisted segment map's count when several connections fill it."""
    try:  # most queued files have no partial yet: one stat, no Path objects
        os.stat(f.dest + PART_SUFFIX)
    except FileNotFoundError:
        return 0
    from modelfetch.transfer.segments import partial_bytes  # (it loads the HTTP client)

    fleet = m._fleet
    if fleet is None:
        return partial_bytes(Path(f.dest), segments_of(m, f))
    key = (f.group_id, f.index)
    if key in fleet.pending_segments:  # saved while the shared store was unreachable
        return partial_bytes(Path(f.dest), fleet.pending_segments[key])
    if fleet.down is None:
        try:
            return partial_bytes(Path(f.dest), segments_of(m, f))
        except StoreUnavailableError as exc:
            fleet.went_down(exc)
    return f.bytes_done  # the map cannot be read now: the count last known


def segments_of(m: DownloadManager, f: FileRecord) -> tuple[SegmentRecord, ...] | None:
    """The stored segment map of `f`; the store is asked only about files that may have
    one (a map is saved only through `on_segments`, and `_segmented` was loaded at start)."""
    key = (f.group_id, f.index)
    if not f.group_id or key not in m._segmented:
        return None
    return m.store.segments(f.group_id, f.index)


def partial_files_unowned(m: DownloadManager) -> list[Path]:
    """`.part` files (and their sidecars and volatile segment maps) under the models directory
    and every known destination directory that no live download owns: what `modelfetch clean`
    removes."""
    owned = {
        p
        for g in m._groups.values()
        for f in g.files
        if f.status in LIVE_STATUSES
        for p in partial_paths(f.dest)
    }
    roots = {m.models_dir, *(Path(g.dest_dir) for g in m.store.groups())}
    found: set[Path] = set()
    for root in roots:
        if not root.is_dir():
            continue
        for pattern in (f"*{suffix}" for suffix in PARTIAL_SUFFIXES):
            found.update(p for p in root.rglob(pattern) if p.is_file())
    return sorted(found - owned)


def remove_paths(paths: list[Path]) -> list[Path]:
    """Delete `paths`; returns those that were there to delete."""
    removed = []
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed
