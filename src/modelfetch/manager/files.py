"""The per-file task: start a file, run its transfer, stop it for a reason, hand its slot on.

Stopping a transfer always goes through `stop()`: it records a `StopReason` on the file's
StopSignal, cancels the task and waits for it; the task's own handler (or `stop`, if the task was
cancelled before it ran) writes the resulting state. The reason decides whether the `.part` stays.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelfetch.core import events as ev
from modelfetch.core.errors import IntegrityError
from modelfetch.core.headers import origin_of
from modelfetch.core.models import FileRecord, FileStatus, StopReason
from modelfetch.core.queue import FileKey
from modelfetch.core.rate import RateEstimator
from modelfetch.core.segments import SegmentRecord
from modelfetch.manager.finalize import finalize_completed, finalize_failed, finalize_stopped
from modelfetch.manager.groups import file_ref, group_done, member
from modelfetch.manager.intake import group_token
from modelfetch.manager.limits import group_bucket, group_limits
from modelfetch.manager.partials import partial_paths, segments_of
from modelfetch.manager.scheduling import choose_starts, is_held
from modelfetch.transfer.api import Credentials, StopSignal, TransferRequest

if TYPE_CHECKING:
    from modelfetch.manager.coordinator import DownloadManager


@dataclass(eq=False)
class RunningFile:
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


def downloading(m: DownloadManager) -> int:
    """The running files that count against `max_active`: those whose bytes are all in and
    which only publish (hash, fsync, rename) count not, up to `max_active` of them, so that a
    slow disk lets at most twice `max_active` files run, not an unbounded pile."""
    return len(m._running) - min(len(m._publishing), m.settings.max_active)


def fill_from_queue(m: DownloadManager, now: float) -> None:
    """`DownloadManager._fill_slots` of a private queue: its in-memory order decides."""
    waiting = m._queue.waiting()  # one pass: each round reads on where the last stopped
    while True:
        chosen = choose_starts(
            waiting,
            m._groups,
            free=m.settings.max_active - downloading(m),
            holds=m._holds,
            now=now,
        )
        refused = 0
        for f in chosen:
            if not start(m, f, now):
                refused += 1
        if not refused:
            break
    if m._expedited:
        _start_expedited(m, now)


def _start_expedited(m: DownloadManager, now: float) -> None:
    """Files a client waits on start beyond `max_active`, up to `max_expedited` more."""
    ceiling = m.settings.max_active + m.settings.max_expedited
    for key in sorted(m._expedited):
        group = m._groups.get(key[0])
        f = None if group is None else member(group, key[1])
        if f is None or f.status not in (FileStatus.QUEUED, FileStatus.WAITING_RETRY):
            m._expedited.discard(key)  # running, finished, paused or gone: nothing to speed up
            continue
        startable = f.status is FileStatus.QUEUED and not is_held(m._holds, f.url, now)
        if startable and downloading(m) < ceiling:
            start(m, f, now)


def start(m: DownloadManager, f: FileRecord, now: float) -> bool:
    """Mark a queued file active and start its transfer task in the manager's TaskGroup;
    False if the store refused the change (the row was no longer queued)."""
    if not m._transition(
        f,
        FileStatus.ACTIVE,
        allowed_from=(FileStatus.QUEUED,),
        reason="started",
        started_at=now,
    ):
        return False
    run = RunningFile(
        rec=f,
        stop=StopSignal(),
        start_offset=f.bytes_done,
        done=f.bytes_done,
        total=f.bytes_total if f.bytes_total is not None else f.expected_size,
        rate=RateEstimator(),
    )
    run.rate.sample(run.done, time.monotonic())
    key = (f.group_id, f.index)
    m._running[key] = run
    m._group_rates.setdefault(f.group_id, RateEstimator())
    assert m._tg is not None
    run.task = m._tg.create_task(run_file(m, run), name=f"modelfetch-{file_ref(f)}")
    return True


async def run_file(m: DownloadManager, run: RunningFile) -> None:
    f = run.rec
    key = (f.group_id, f.index)
    handed_over = False
    try:
        m._emit(
            ev.FileStarted(
                ref=file_ref(f),
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
                group = m._groups.get(f.group_id)
                rate = m._group_rates.get(f.group_id)
                if group is not None and rate is not None:
                    rate.rebase(group_done(m._tallies, m._running, group), time.monotonic())
            run.done = done
            if total is not None:
                run.total = total

        def on_segments(segments: tuple[SegmentRecord, ...] | None) -> None:
            (m._fleet or m.store).save_segments(f.group_id, f.index, segments)
            if segments:
                m._segmented.add(key)
            else:
                m._segmented.discard(key)

        def on_prefix(prefix: int) -> None:
            m.arrivals.report(key, prefix, run.total)

        def on_received() -> None:
            # Its download is over; its publish goes on: the next file in line starts now.
            m._publishing.add(key)
            with m._deferred():
                m._fill_slots(time.time())

        from modelfetch.transfer.fetch import fetch_file  # only a working manager needs it

        result = await fetch_file(
            m._session_or_fail(),
            transfer_request(m, f),
            on_progress=on_progress,
            stop=run.stop,
            on_segments=on_segments,
            limits=(group_bucket(m, f.group_id), m._bandwidth),
            slots=m._slots,
            on_prefix=on_prefix,
            on_received=on_received,
        )
    except asyncio.CancelledError:
        with m._batch():
            finalize_stopped(m, run)
        if run.stop.reason is StopReason.CANCEL:
            m.arrivals.broken(key)
        raise
    except Exception as exc:  # every failure goes to the policy; a bug is a GiveUp there
        with m._deferred():
            finalize_failed(m, run, exc)
            if isinstance(exc, IntegrityError) or f.status is FileStatus.FAILED:
                m.arrivals.broken(key)  # a reader streaming it must not finish with these bytes
            if f.status is not FileStatus.PAUSED:  # a full disk pauses everything first
                hand_over(m, key)
    else:
        # The status, the digest cache, the group's end and the start of the next file in
        # line, with whatever other transfers finish in this turn of the loop: one commit.
        with m._deferred():
            finalize_completed(m, run, result)
            hand_over(m, key)
        m.arrivals.completed(key, result.size)
        handed_over = True  # nothing for the coordinator: no retry or hold changed
    finally:
        m._running.pop(key, None)
        m._publishing.discard(key)
        if not handed_over:
            m._wake.set()


def hand_over(m: DownloadManager, key: FileKey) -> None:
    """A finished transfer's slot goes to the next file in line at once, rather than when
    the coordinator next runs."""
    m._running.pop(key, None)
    m._publishing.discard(key)
    m._fill_slots(time.time())


def transfer_request(m: DownloadManager, f: FileRecord) -> TransferRequest:
    credentials = None
    hub = m.hub_config
    # A token the daemon's client sent for this download wins over the daemon's own; either
    # goes to the Hub's origin only (a redirect elsewhere is the transfer's to refuse it).
    token = group_token(m, f.group_id) or hub.token
    if token and origin_of(f.url) == hub.origin:
        credentials = Credentials(token, hub.origin)
    _, connections = group_limits(m, f.group_id)
    settings = m.settings
    return TransferRequest(
        url=f.url,
        dest=Path(f.dest),
        expected_size=f.expected_size,
        expected_sha256=f.expected_sha256,
        expected_git_oid=f.expected_git_oid,
        credentials=credentials,
        stall_timeout=settings.stall_timeout,
        allowed_hosts=settings.allowed_hosts,
        connections=connections or settings.connections_per_file,
        segment_threshold=settings.segment_threshold,
        min_segment_size=settings.min_segment_size,
        segments=segments_of(m, f),
        checkpoint_interval=settings.checkpoint_interval,
    )


async def stop(m: DownloadManager, run: RunningFile, reason: StopReason) -> None:
    """Stop a running transfer for `reason` and wait until its state is written."""
    if run.stop.reason is None:
        run.stop.stop(reason)
    task = run.task
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task])
    # A task cancelled before it ever ran has not written its state: do it here.
    with m._batch():
        finalize_stopped(m, run)
    if run.stop.reason is StopReason.CANCEL:
        for p in partial_paths(run.rec.dest):
            p.unlink(missing_ok=True)
