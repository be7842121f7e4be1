"""What the command line (and any other front end) drives: the manager in this process, or the
daemon that owns the state directory. Both offer the same async methods, so a front end never
needs to know which one it got."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from modelfetch.core.models import KEEP, Keep

if TYPE_CHECKING:
    from modelfetch.core import events as ev
    from modelfetch.core.models import ItemRef
    from modelfetch.core.quant import QuantGroup
    from modelfetch.readonly import ReadOnlyBackend
    from modelfetch.views import FleetView, GroupView

Ref: TypeAlias = "str | int | ItemRef"


class Backend(Protocol):
    async def add(
        self,
        spec: str,
        *,
        quant: str | None = None,
        revision: str | None = None,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
        layout: Any = "plain",
        models_dir: Path | None = None,
        dest_dir: Path | None = None,
        priority: int = 0,
    ) -> int: ...

    async def quants(self, repo: str, revision: str | None = None) -> list[QuantGroup]: ...
    async def pause(self, ref: Ref) -> None: ...
    async def resume(self, ref: Ref) -> None: ...
    async def cancel(self, ref: Ref) -> None: ...
    async def retry(self, ref: Ref) -> None: ...
    async def move(self, ref: Ref, position: int) -> None: ...
    async def set_priority(self, ref: Ref, priority: int) -> None: ...
    async def pause_all(self) -> None: ...
    async def resume_all(self) -> None: ...
    async def forget(self, ref: Ref) -> None: ...
    async def forget_finished(self) -> list[int]: ...
    async def set_limits(
        self,
        *,
        max_active: int | None = None,
        rate_limit: int | None = None,
        max_connections: int | None = None,
        max_connections_per_host: int | None = None,
        connections_per_file: int | None = None,
    ) -> None: ...
    async def fleet(self) -> FleetView: ...
    async def set_fleet_limits(
        self,
        *,
        max_active: int | Keep | None = KEEP,
        max_connections_per_host: int | Keep | None = KEEP,
    ) -> FleetView: ...
    async def set_rate_limit(self, ref: Ref, bytes_per_s: int | None) -> None: ...
    async def set_connections(self, ref: Ref, connections: int | None) -> None: ...
    async def orphan_partials(self) -> list[Path]: ...
    async def remove_orphan_partials(self) -> list[Path]: ...
    async def snapshot(self) -> list[GroupView]: ...
    async def group_view(self, ref: Ref) -> GroupView: ...
    async def wait(self, group_ids: Iterable[int]) -> None: ...
    def events(self) -> AsyncIterator[ev.Event]: ...


@contextlib.asynccontextmanager
async def open_backend(
    *,
    home: Path,
    lazy_kwargs: Callable[[], Mapping[str, Any]] | None = None,
    **manager_kwargs: Any,
) -> AsyncIterator[Backend]:
    """The daemon for `home` if one is running, else a manager in this process
    (`manager_kwargs` go to DownloadManager; `workers=False` edits the queue without running it).

    `lazy_kwargs`, when given, is called only if no daemon runs, for more DownloadManager
    arguments (a `home` among them is ignored): building them needs the manager's module, which
    a command the daemon serves never imports. Nothing here imports aiohttp when no daemon runs."""
    from modelfetch.remote import connect

    remote = await connect(home)
    if remote is not None:
        async with remote:
            yield remote
        return
    from modelfetch.manager import DownloadManager

    kwargs = {**(lazy_kwargs() if lazy_kwargs is not None else {}), **manager_kwargs}
    kwargs.pop("home", None)
    async with DownloadManager(home=home, **kwargs) as manager:
        yield manager


@contextlib.asynccontextmanager
async def open_viewer(
    *,
    home: Path,
    lazy_kwargs: Callable[[], Mapping[str, Any]] | None = None,
    **manager_kwargs: Any,
) -> AsyncIterator[Backend | ReadOnlyBackend]:
    """`open_backend` for commands that only look at the queue (`ls`, `status`).

    When another process holds the state directory's lock and no daemon answers (a `modelfetch
    get` working the queue in its own process), this yields a `ReadOnlyBackend` over what that
    process last committed, instead of raising `StateLockedError`. Check for one with
    `isinstance` to tell the user its `notice`."""
    from modelfetch.core.errors import StateLockedError

    async with contextlib.AsyncExitStack() as stack:
        viewer: Backend | ReadOnlyBackend
        try:
            viewer = await stack.enter_async_context(
                open_backend(home=home, lazy_kwargs=lazy_kwargs, **manager_kwargs)
            )
        except StateLockedError:
            from modelfetch.readonly import ReadOnlyBackend

            viewer = stack.enter_context(ReadOnlyBackend(home))
        yield viewer
