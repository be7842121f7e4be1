"""Adding specs to the queue in order, planning several at once when the manager is local."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfetch.cli.backends import is_local
from modelfetch.core.errors import ModelfetchError

if TYPE_CHECKING:
    from modelfetch.backend import Backend


@dataclass(frozen=True, slots=True)
class Selection:
    """What to download of each spec and where: the per-download options of `get` and `add`."""

    quant: str | None = None
    revision: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    layout: str = "plain"
    root: Path | None = None  # a Hub model's root for `layout` (None: the backend's models dir)
    urls_dir: Path | None = None  # where plain URLs go (None: the backend's models dir)
    # --token, for a daemon whose API takes one for a single download (never stored there);
    # a manager in this process already has it in its HubConfig.
    token: str | None = field(default=None, repr=False)


def daemon_lacks(backend: Backend, name: str) -> bool:
    """True if `backend` is a daemon's client whose `add` takes no `name` argument (an older
    daemon API): the CLI must then say it cannot pass that option on."""
    import inspect

    if is_local(backend):
        return False
    return name not in inspect.signature(backend.add).parameters


async def add_each(
    backend: Backend, specs: Sequence[str], selection: Selection
) -> AsyncGenerator[tuple[str, int | ModelfetchError], None]:
    """Add every spec, in order: (spec, its group id or why it was not added). With the manager
    in this process, the specs are planned PLAN_CONCURRENCY at a time (a HEAD per plain URL,
    a few Hub calls per repo) and each is enqueued as soon as it and those before it are
    planned, so the first downloads start while the rest are probed; 200 URLs one `add` at a
    time spent most of a second in round trips. The daemon is sent the whole list in one
    request (`add_many`), and plans it the same way."""
    if not is_local(backend):
        options: dict[str, Any] = {
            "quant": selection.quant,
            "revision": selection.revision,
            "include": selection.include,
            "layout": selection.layout,
            "models_dir": selection.root,
            "dest_dir": selection.urls_dir,
        }
        if selection.exclude:
            options["exclude"] = list(selection.exclude)
        if selection.token and not daemon_lacks(backend, "hub_token"):
            options["hub_token"] = selection.token  # else its environment's, if any
        add_many = getattr(backend, "add_many", None)
        if add_many is not None and len(specs) > 1:
            from modelfetch.remote_codec import RouteMissingError

            # The whole list in one request: planned and queued together on the daemon.
            try:
                outcomes = await add_many(specs, **options)
            except RouteMissingError:
                outcomes = None  # an older daemon, without batches: one add at a time
            if outcomes is not None:
                for spec, outcome in zip(specs, outcomes, strict=True):
                    yield spec, outcome
                return
        for spec in specs:
            try:
                gid = await backend.add(spec, **options)
            except ModelfetchError as exc:
                yield spec, exc
                continue
            yield spec, gid
        return
    planned = _planned(backend, specs, selection)
    async with contextlib.aclosing(planned):
        async for spec, outcome in planned:
            yield spec, outcome


async def _planned(
    backend: Backend, specs: Sequence[str], selection: Selection
) -> AsyncGenerator[tuple[str, int | ModelfetchError], None]:
    from modelfetch.layout import Layout
    from modelfetch.manager import DownloadManager
    from modelfetch.planner import PlanOptions

    assert isinstance(backend, DownloadManager)
    manager = backend
    # What DownloadManager.add builds for these arguments, and --exclude besides.
    plan_options = PlanOptions(
        models_dir=(selection.root or manager.models_dir).expanduser().absolute(),
        layout=Layout(selection.layout),
        quant=selection.quant,
        revision=selection.revision,
        include=selection.include,
        exclude=selection.exclude,
        dest_dir=selection.urls_dir.expanduser().absolute() if selection.urls_dir else None,
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


def refuse_unsupported(backend: Backend, exclude: Sequence[str], *, token_given: bool) -> None:
    """A daemon whose API cannot take an option: refuse --exclude (it changes what is
    downloaded), say plainly that --token stays here (the daemon downloads with its own)."""
    from modelfetch.config import ConfigError

    if exclude and daemon_lacks(backend, "exclude"):
        raise ConfigError(
            "--exclude: the running daemon cannot take it; stop it (or use --include) and retry"
        )
    if is_local(backend):
        return
    from modelfetch.remote_codec import client_hub_token

    sends = bool(getattr(backend, "sends_hub_token", False))
    unsent = not sends or daemon_lacks(backend, "hub_token")
    if unsent and (token_given or client_hub_token() is not None):
        from modelfetch.cli.consoles import stderr_console

        stderr_console().print(
            "note: the modelfetch daemon serving this home is not on this machine (or too "
            "old to take a token), so your token is not sent: it downloads with its own",
            style="yellow",
        )
