"""Adding specs to the queue in order, planning several at once when the manager is local."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING

from modelfetch.cli.backends import is_local
from modelfetch.core.errors import ModelfetchError

if TYPE_CHECKING:
    from modelfetch.backend import Backend


async def add_each(
    backend: Backend,
    specs: Sequence[str],
    *,
    quant: str | None,
    revision: str | None,
    include: Sequence[str],
    layout: str,
) -> AsyncGenerator[tuple[str, int | ModelfetchError], None]:
    """Add every spec, in order: (spec, its group id or why it was not added). With the manager
    in this process, the specs are planned PLAN_CONCURRENCY at a time (a HEAD per plain URL,
    a few Hub calls per repo) and each is enqueued as soon as it and those before it are
    planned, so the first downloads start while the rest are probed; 200 URLs one `add` at a
    time spent most of a second in round trips. The daemon is asked one `add` at a time."""
    if not is_local(backend):
        for spec in specs:
            try:
                gid = await backend.add(
                    spec, quant=quant, revision=revision, include=include, layout=layout
                )
            except ModelfetchError as exc:
                yield spec, exc
                continue
            yield spec, gid
        return
    from modelfetch.layout import Layout
    from modelfetch.manager import DownloadManager
    from modelfetch.planner import PlanOptions

    assert isinstance(backend, DownloadManager)
    manager = backend
    # What DownloadManager.add builds for these arguments.
    plan_options = PlanOptions(
        models_dir=manager.models_dir,
        layout=Layout(layout),
        quant=quant,
        revision=revision,
        include=tuple(include),
    )
    planned = manager.planner.plan_each(specs, plan_options)
    async with contextlib.aclosing(planned):
        i = 0
        async for outcome in planned:
            spec, i = specs[i], i + 1
            if isinstance(outcome, ModelfetchError):
                yield spec, outcome
                continue
            try:
                gid = await manager.enqueue(outcome)
            except ModelfetchError as exc:
                yield spec, exc
                continue
            yield spec, gid
