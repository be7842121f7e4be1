"""`--cache-max`: above the limit, the least recently served files the mirror pulled go.

Only files under the mirror's cache directory count and are removed: a model this host's user
downloaded with `modelfetch get` is theirs, served by the mirror but never deleted by it.
"Last served" is the file's access time, which the mirror sets when a response of it ends
(`touch_served`): it survives restarts without a file of its own, and a read by anything else
only moves it forward. A file being served or still downloading is never removed; a removed
file's download is forgotten from the queue, so `ls` shows what is held.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from modelfetch.core.errors import ModelfetchError
from modelfetch.core.models import ItemRef
from modelfetch.mirror.held import HeldFile, held_index
from modelfetch.mirror.state import MirrorState

__all__ = ["CacheUse", "cache_use", "evict", "touch_served"]

log = logging.getLogger("modelfetch.mirror")


def touch_served(dest: Path) -> None:
    """Record that `dest` was just served (its atime; its mtime is left as it was)."""
    with contextlib.suppress(OSError):
        st = os.stat(dest)
        os.utime(dest, ns=(time.time_ns(), st.st_mtime_ns))


@dataclass(frozen=True, slots=True)
class CacheUse:
    held_bytes: int  # complete files under the cache directory
    files: int
    downloading_bytes: int  # what files being pulled will add
    cache_max: int | None


def _pulled(state: MirrorState) -> list[HeldFile]:
    root = state.puller.cache_dir
    out: list[HeldFile] = []
    for at in held_index(state.manager).files.values():
        out.extend(h for h in at.values() if h.dest.is_relative_to(root))
    return out


def cache_use(state: MirrorState, cache_max: int | None) -> CacheUse:
    pulled = _pulled(state)
    complete = [h for h in pulled if h.complete]
    return CacheUse(
        held_bytes=sum(h.meta.size for h in complete),
        files=len(complete),
        downloading_bytes=sum(h.meta.size for h in pulled if not h.complete),
        cache_max=cache_max,
    )


def _last_served(h: HeldFile) -> float:
    try:
        return os.stat(h.dest).st_atime
    except OSError:
        return 0.0


async def evict(state: MirrorState, cache_max: int) -> list[Path]:
    """Remove least recently served complete files until the held ones fit `cache_max`
    (counting the ones still downloading); the paths removed."""
    pulled = _pulled(state)
    total = sum(h.meta.size for h in pulled)
    removed: list[Path] = []
    if total <= cache_max:
        return removed
    candidates = sorted((h for h in pulled if h.complete), key=_last_served)
    for h in candidates:
        if total <= cache_max:
            break
        if h.dest in state.serving:  # checked and removed with no await between: no race
            continue
        try:
            h.dest.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("mirror: cannot evict %s: %s", h.dest, exc)
            continue
        total -= h.meta.size
        removed.append(h.dest)
        state.held = None
        with contextlib.suppress(ModelfetchError):  # forgotten already, or live again
            await state.manager.forget(ItemRef(h.key[0]))
        log.info("mirror: evicted %s of %s (last served longest ago)", h.meta.path, h.repo_id)
    return removed
