"""A transfer's outcome written as state: completed, stopped, or failed through the policy.

A stop is written by its reason (cancelled, requeued at shutdown, paused); a failure does what
`RetryPolicy.decide` says: wait without a slot (holding the host after a 429/503), pause
everything for a full disk, or give up.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from modelfetch.core import events as ev
from modelfetch.core.errors import ConnectFailedError, HTTPStatusError, LocalFileError
from modelfetch.core.messages import is_file_error
from modelfetch.core.models import FileRecord, FileStatus, PauseReason, StopReason
from modelfetch.core.policy import AttemptHistory, GiveUp, PauseAll, Retry
from modelfetch.layout import Placement, link_snapshot, write_ref
from modelfetch.manager.groups import file_ref
from modelfetch.manager.partials import on_disk, partial_paths
from modelfetch.manager.progress import emit_group_progress
from modelfetch.manager.scheduling import host_of
from modelfetch.manager.transitions import finish_if_done
from modelfetch.store import StoreUnavailableError
from modelfetch.transfer.api import TransferResult

if TYPE_CHECKING:
    from modelfetch.manager.coordinator import DownloadManager
    from modelfetch.manager.files import RunningFile


# The hosts (`host:port`) that ever answered one of a manager's requests: a host that refuses
# connections after it answered is down for a while (retried as any network error); one that
# never answered is likely a wrong address (a few retries, then the file fails naming it).
# Kept beside the manager rather than in it: it is memory only, and only the policy's input.
_ANSWERED: weakref.WeakKeyDictionary[DownloadManager, set[str]] = weakref.WeakKeyDictionary()


_PAUSE_FOR = {
    StopReason.DISK_FULL: PauseReason.DISK_FULL,
    StopReason.INTERRUPT: PauseReason.INTERRUPTED,
}
"""The pause a stopped transfer is recorded as, by why it was stopped (a user's otherwise)."""


def answered_hosts(m: DownloadManager) -> set[str]:
    found = _ANSWERED.get(m)
    if found is None:
        found = _ANSWERED[m] = set()
    return found


def _learn_answers(m: DownloadManager, f: FileRecord, exc: Exception, moved: bool) -> None:
    """What this failure tells about who answered: an HTTP status came from its hop, and a
    failure on a redirect target means the first hop answered with the redirect."""
    seen = answered_hosts(m)
    failing = getattr(exc, "url", None)
    if isinstance(exc, HTTPStatusError) and failing:
        seen.add(host_of(failing))
    if failing and host_of(failing) != host_of(f.url):
        seen.add(host_of(f.url))
    if moved and failing and not isinstance(exc, ConnectFailedError):
        seen.add(host_of(failing))


def _has_answered(m: DownloadManager, f: FileRecord, exc: ConnectFailedError) -> bool:
    """Whether the host that refused `f`'s connection ever answered. A completed file does not
    say which redirect target served it, so one from the same first hop vouches for them all."""
    seen = answered_hosts(m)
    host = host_of(exc.url or f.url)
    return host in seen or (host != host_of(f.url) and _VIA + host_of(f.url) in seen)


_VIA = "via "  # `via hub:443`: a file first asked of that host completed (through its redirect)


def _as_transfer_error(exc: Exception, f: FileRecord) -> Exception:
    """A file error names the file: a raw OSError from the disk side (the transfer lets a few
    through, e.g. fsync's EIO) becomes a LocalFileError, and one without a path gets `dest`."""
    if isinstance(exc, LocalFileError):
        if exc.path is None:
            fixed = LocalFileError(
                f"{f.dest}: {exc.cause}", path=f.dest, errno=exc.errno, cause=exc.cause
            )
            fixed.__cause__ = exc
            return fixed
        return exc
    if isinstance(exc, OSError) and is_file_error(exc):
        wrapped = LocalFileError.from_os_error(exc, f.dest)
        wrapped.__cause__ = exc
        return wrapped
    return exc


def finalize_stopped(m: DownloadManager, run: RunningFile) -> None:
    """The state a stop leaves, by its reason: cancelled (no `.part`), queued again after a
    shutdown, or paused (by the user or for a full disk) with its `.part`."""
    if run.finalized:
        return
    run.finalized = True
    f = run.rec
    reason = run.stop.reason or StopReason.SHUTDOWN
    if reason is StopReason.CANCEL:
        if m._transition(
            f,
            FileStatus.CANCELLED,
            allowed_from=(FileStatus.ACTIVE,),
            reason="cancelled",
            bytes_done=0,
            finished_at=time.time(),
        ):
            m._emit(ev.Cancelled(ref=file_ref(f), group_id=f.group_id, name=f.name))
        finish_if_done(m, f.group_id)
    elif reason is StopReason.SHUTDOWN:
        m._transition(
            f,
            FileStatus.QUEUED,
            allowed_from=(FileStatus.ACTIVE,),
            reason="requeued",
            bytes_done=on_disk(m, f),
            bytes_total=run.total,
        )
    else:
        pause = _PAUSE_FOR.get(reason, PauseReason.USER)
        m._transition(
            f,
            FileStatus.PAUSED,
            allowed_from=(FileStatus.ACTIVE,),
            reason=pause.value,
            pause_reason=pause.value,
            bytes_done=on_disk(m, f),
            bytes_total=run.total,
        )


def finalize_completed(m: DownloadManager, run: RunningFile, result: TransferResult) -> None:
    run.finalized = True
    f = run.rec
    run.done = result.size
    answered_hosts(m).update((host_of(f.url), _VIA + host_of(f.url)))
    if m._transition(
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
        m._histories.pop((f.group_id, f.index), None)
        _remember_verified(m, f, result)
        publish_links(m, f)
        m._emit(
            ev.FileCompleted(
                ref=file_ref(f),
                group_id=f.group_id,
                name=f.name,
                path=str(result.path),
                sha256=result.sha256,
                size=result.size,
                verified=result.verified,
            )
        )
        emit_group_progress(m, f.group_id, time.monotonic())
        finish_if_done(m, f.group_id)


def _remember_verified(m: DownloadManager, f: FileRecord, result: TransferResult) -> None:
    if not result.verified:
        return
    with contextlib.suppress(OSError, StoreUnavailableError):  # a cache: it may be missed
        if result.mtime_ns is not None:  # read by the publishing thread: no stat on the loop
            m.store.remember_verified(f.dest, result.size, result.mtime_ns, result.sha256)
            return
        st = result.path.stat()
        m.store.remember_verified(f.dest, st.st_size, st.st_mtime_ns, result.sha256)


def finalize_failed(m: DownloadManager, run: RunningFile, exc: Exception) -> None:
    """Ask the retry policy about a failure and do what it decides."""
    run.finalized = True
    f = run.rec
    key = (f.group_id, f.index)
    now = time.time()
    moved = run.done > run.start_offset
    exc = _as_transfer_error(exc, f)
    _learn_answers(m, f, exc, moved)
    answered = not isinstance(exc, ConnectFailedError) or _has_answered(m, f, exc)
    history = m._histories.get(key) or AttemptHistory(failures=f.attempts)
    decision = m.settings.policy.decide(
        exc, history, now=now, rng=m._rng, made_progress=moved, host_answered=answered
    )
    history = history.record(exc, made_progress=moved)
    m._histories[key] = history
    kind = getattr(exc, "kind", type(exc).__name__)
    message = str(exc) or type(exc).__name__
    bytes_on_disk = on_disk(m, f)
    if isinstance(decision, Retry):
        if decision.restart_from_zero:
            for p in partial_paths(f.dest):
                p.unlink(missing_ok=True)
            bytes_on_disk = 0
        if decision.hold_host:
            for host in {host_of(f.url), host_of(getattr(exc, "url", None) or f.url)}:
                m._host_holds.hold(host, decision.at)  # stored, and held for every request
        m._transition(
            f,
            FileStatus.WAITING_RETRY,
            allowed_from=(FileStatus.ACTIVE,),
            reason=decision.reason,
            retry_at=decision.at,
            attempts=history.failures,
            error_kind=kind,
            error_message=decision.message or message,
            bytes_done=bytes_on_disk,
            bytes_total=run.total,
        )
    elif isinstance(decision, PauseAll):
        m._transition(
            f,
            FileStatus.PAUSED,
            allowed_from=(FileStatus.ACTIVE,),
            reason=decision.reason,
            pause_reason=PauseReason.DISK_FULL.value,
            error_kind=kind,
            error_message=decision.message,
            bytes_done=bytes_on_disk,
            bytes_total=run.total,
        )
        m._emit(ev.Notice(message=decision.message, level="error", ref=file_ref(f)))
        assert m._tg is not None
        m._tg.create_task(m._pause_for_disk_full())
    else:
        assert isinstance(decision, GiveUp)
        if m._transition(
            f,
            FileStatus.FAILED,
            allowed_from=(FileStatus.ACTIVE,),
            reason="failed",
            attempts=history.failures,
            error_kind=kind,
            error_message=decision.message,
            bytes_done=bytes_on_disk,
            finished_at=now,
        ):
            m._emit(
                ev.FileFailed(
                    ref=file_ref(f),
                    group_id=f.group_id,
                    name=f.name,
                    error_kind=kind,
                    message=decision.message,
                )
            )
            finish_if_done(m, f.group_id)


def publish_links(m: DownloadManager, f: FileRecord) -> None:
    """hf-cache layout: once the blob is verified, point its snapshot path at it."""
    if f.link is None:
        return
    link_snapshot(Placement(dest=Path(f.dest), link=Path(f.link)))
    group = m._groups.get(f.group_id)
    if group is not None and group.repo_id and group.revision and group.commit:
        write_ref(_cache_root(Path(f.link)), group.repo_id, group.revision, group.commit)


def _cache_root(link: Path) -> Path:
    """<root>/models--o--n/snapshots/<commit>/<path...> -> <root>"""
    for parent in link.parents:
        if parent.name == "snapshots":
            return parent.parent.parent
    raise ValueError(f"not a snapshot path: {link}")
