"""Many downloads in one call: planned together, stored and announced in waves as plans land.

`add_many` is what a list (`modelfetch get -I list` through the daemon, `POST
/api/downloads:batch`) needs: every spec planned `PLAN_CONCURRENCY` at a time (a HEAD per plain
URL, the Hub's API for a model), the planned downloads recorded in waves of `RECORD_WAVE` as the
plans land, each wave in one store transaction (13 commits for 200 URLs instead of 200), its
events published after that commit. Waves, not one transaction at the end: the first downloads
start while the rest are still being probed (200 HEADs took 0.25-0.4 s here, time in which
nothing moved). A spec that cannot be planned or queued is reported in its place and the others
are queued anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from modelfetch.core.errors import ModelfetchError
from modelfetch.destinations import FolderChecks
from modelfetch.manager import intake

if TYPE_CHECKING:
    from modelfetch.core.models import GroupRecord
    from modelfetch.manager.coordinator import DownloadManager
    from modelfetch.planner import PlanOptions
    from modelfetch.requests import GroupRequest
    from modelfetch.views import GroupView

__all__ = ["MAX_BATCH", "Outcome", "add_many", "enqueue_many", "views_of"]

MAX_BATCH = 1000
"""Most downloads one batch may carry: planning and recording are bounded by it (a list longer
than this is sent in several batches), and so is the daemon's answer."""

RECORD_WAVE = 16  # planned downloads recorded per transaction while the rest are planned

Outcome = tuple[int, bool] | ModelfetchError
"""Per item: (group id, True if this call created it) or why it was not queued."""


async def enqueue_many(
    m: DownloadManager,
    requests: Sequence[GroupRequest | ModelfetchError],
    *,
    hub_token: str | None = None,
    checks: FolderChecks | None = None,
) -> list[Outcome]:
    """`enqueue` for every request, in order, in one store transaction. An error in the list
    (a spec that could not be planned) stays in its place; a request refused here (a folder
    that cannot be written, a destination another download writes, no room left after the
    requests before it) becomes its error and the rest are queued. Asking twice for one
    thing, in one batch or across batches, is one download, as with `enqueue`. `checks`: the
    folder checks to share with earlier calls of the same list (`add_many`'s waves)."""
    if len(requests) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} downloads in one batch, not {len(requests)}")
    m._require_running()
    m._require_store()
    outcomes: list[Outcome] = []
    created: list[GroupRecord] = []
    if checks is None:
        checks = FolderChecks()
    with m._batch():  # one transaction: nothing in it awaits
        for request in requests:
            if isinstance(request, ModelfetchError):
                outcomes.append(request)
                continue
            try:
                gid, group = intake.record(m, request, hub_token=hub_token, checks=checks)
            except ModelfetchError as exc:
                outcomes.append(exc)
                continue
            if group is not None:
                created.append(group)
            outcomes.append((gid, group is not None))
    await intake.announce(m, created)
    return outcomes


async def add_many(
    m: DownloadManager,
    specs: Sequence[str],
    options: PlanOptions,
    *,
    hub_token: str | None = None,
) -> list[Outcome]:
    """Plan every spec (`PLAN_CONCURRENCY` at a time; Hub specs through the Hub client, with
    `hub_token` if the caller sent one) and `enqueue_many` them in list order, a wave of
    `RECORD_WAVE` at a time as their plans land."""
    if len(specs) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} downloads in one batch, not {len(specs)}")
    m._require_running()
    m._require_store()  # before planning: nothing could be queued
    if hub_token is None:
        planner = m.planner
    else:
        from modelfetch.planner import Planner

        session, client = intake.hub_parts(m, hub_token)
        planner = Planner(
            session,
            client,
            hub_config=client.config,
            probe_session=m._session_or_fail(),
            holds=m._host_holds,
        )
    outcomes: list[Outcome] = []
    wave: list[GroupRequest | ModelfetchError] = []
    checks = FolderChecks()  # one list: its folders looked at once, its free space counted whole
    async for planned in planner.plan_each(specs, options):
        wave.append(planned)
        if len(wave) >= RECORD_WAVE:
            outcomes += await enqueue_many(m, wave, hub_token=hub_token, checks=checks)
            wave = []
            # A turn of the loop between waves, so the coordinator starts the downloads of
            # this one: plans that need no request (a size and a name known, an error) are
            # all done at once, and awaiting a done task does not yield, so without it the
            # first download would start only once the last wave was recorded.
            await asyncio.sleep(0)
    if wave:
        outcomes += await enqueue_many(m, wave, hub_token=hub_token, checks=checks)
    return outcomes


def views_of(m: DownloadManager, group_ids: Sequence[int]) -> dict[int, GroupView]:
    """The views of these groups, all as of one moment (no await: nothing changes between
    two of them), with the queue's positions computed once rather than once per group."""
    from modelfetch.manager import progress

    m._require_running()
    positions = m._queue.positions()
    group_positions = m._queue.group_positions()
    holders = progress.holders_of(m)
    return {
        gid: progress.group_view_of(m, m._group(gid), positions, group_positions, holders)
        for gid in group_ids
    }
