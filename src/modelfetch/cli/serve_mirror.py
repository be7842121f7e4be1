"""`serve --mirror`: its flags settled with `[mirror]` of config.toml; the daemon run with it."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelfetch.cli.consoles import stderr_console
from modelfetch.core.errors import SpecError

if TYPE_CHECKING:
    from modelfetch.config import Config
    from modelfetch.manager import DownloadManager

__all__ = ["MirrorFlags", "MirrorPlan", "mirror_plan_of", "serve_with_mirror"]

DEFAULT_MIRROR_PORT = 8766


@dataclass(frozen=True, slots=True)
class MirrorFlags:
    mirror: bool | None
    host: str | None
    port: int | None
    cache_max: str | None


@dataclass(frozen=True, slots=True)
class MirrorPlan:
    host: str | None  # a listener of its own, or None (the daemon's origin only)
    port: int
    cache_max: int | None


def mirror_plan_of(cfg: Config, flags: MirrorFlags) -> MirrorPlan | None:
    """None without a mirror; flags win over the config file; `--mirror-host` implies it."""
    from modelfetch.config_mirror import cache_max_of

    file = cfg.mirror
    host = flags.host if flags.host is not None else file.host
    enabled = flags.mirror if flags.mirror is not None else (file.enabled or flags.host is not None)
    if not enabled:
        if flags.host is not None or flags.cache_max is not None or flags.port is not None:
            raise SpecError("--mirror-host, --mirror-port and --cache-max need --mirror")
        return None
    from modelfetch.core.store_url import store_engine

    if store_engine(cfg.store_url) == "postgres":
        where = cfg.sources.get("store", "the store URL")
        raise SpecError(
            f"--mirror serves this host's own queue, not one shared over PostgreSQL ({where}):"
            " run the mirror with a home of its own (its SQLite queue) and point the fleet's"
            " HF_ENDPOINT at it"
        )
    try:
        cache_max = cache_max_of(flags.cache_max) if flags.cache_max is not None else file.cache_max
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    port = flags.port if flags.port is not None else (file.port or DEFAULT_MIRROR_PORT)
    if not 0 <= port <= 65535:
        raise SpecError(f"--mirror-port must be a port number (0-65535), not {port}")
    return MirrorPlan(host, port, cache_max)


async def serve_with_mirror(
    serve_fn: Callable[..., Coroutine[Any, Any, None]],
    manager: DownloadManager,
    plan: MirrorPlan,
    host: str,
    port: int,
    token: str | None,
) -> None:
    import asyncio

    from modelfetch.mirror import MirrorOptions, make_state, mount
    from modelfetch.mirror.service import run_mirror

    state = make_state(manager, MirrorOptions(cache_max=plan.cache_max))
    where = f" and read-only on {plan.host}:{plan.port}" if plan.host else ""
    stderr_console().print(
        f"Hub mirror at the daemon's address{where}: set HF_ENDPOINT to it on each client"
    )
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(
            serve_fn(
                manager, host=host, port=port, token=token, extend=lambda app: mount(app, state)
            )
        )
        tasks.create_task(
            run_mirror(
                state,
                host=plan.host,
                port=plan.port,
                cache_max=plan.cache_max,
                on_listening=lambda url: stderr_console().print(
                    f"Hub mirror (read-only) listening on {url}"
                ),
            )
        )
