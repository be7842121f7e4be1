"""The tables `ls` and `status` print: a row per download, or a row per file of one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from modelfetch.core.format import UNKNOWN, format_bytes, format_rate
from modelfetch.render.words import file_state, group_state, short_error
from modelfetch.views import GroupView, worker_host

if TYPE_CHECKING:
    from rich.table import Table


def group_progress(v: GroupView) -> str:
    """`42%` of a download (`—` while its size is unknown)."""
    if not v.total:
        return UNKNOWN
    return f"{min(100.0, 100.0 * v.downloaded / v.total):.0f}%"


def _group_error(v: GroupView) -> str:
    """The first error among a download's files (a retry's reason is in its status already)."""
    for f in v.files:
        if f.status == "failed" or (f.status == "paused" and f.error_message):
            return short_error(f.error_message, f.error_kind)
    return ""


def _held_on(v: GroupView) -> str:
    """` on gpu-07, gpu-08 +1`: the hosts running a download's active files, on a queue shared
    by workers ("" when no worker is known: one host's queue)."""
    hosts = list(dict.fromkeys(worker_host(f.worker) for f in v.files if f.worker is not None))
    if not hosts:
        return ""
    more = f" +{len(hosts) - 2}" if len(hosts) > 2 else ""
    return f" on {', '.join(hosts[:2])}{more}"


def queue_table(views: Sequence[GroupView], now: float) -> Table:
    """`ls`: id, name, status, progress, size, speed, queue position, error."""
    from rich.console import JustifyMethod
    from rich.table import Table

    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("ID", "right"),
        ("NAME", "left"),
        ("STATUS", "left"),
        ("PROGRESS", "right"),
        ("SIZE", "right"),
        ("SPEED", "right"),
        ("POS", "right"),
        ("ERROR", "left"),
    )
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=name != "ERROR")
    for v in views:
        table.add_row(
            str(v.id),
            v.name,
            group_state(v, now) if v.status in ("queued", "paused") else v.status + _held_on(v),
            group_progress(v),
            f"{format_bytes(v.downloaded)} / {format_bytes(v.total)}",
            format_rate(v.speed),
            f"#{v.position}" if v.position else "",
            _group_error(v),
        )
    return table


def files_table(v: GroupView, now: float) -> Table:
    """`status ID`: a row per file of one download."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("ID", "FILE", "STATUS", "PROGRESS", "SIZE", "SPEED", "POS", "ERROR"):
        table.add_column(name, no_wrap=name != "ERROR")
    for f in v.files:
        pct = f"{min(100.0, 100.0 * f.downloaded / f.total):.0f}%" if f.total else UNKNOWN
        state = file_state(f, now) or f.status
        if f.worker is not None:  # a queue shared by workers: which host runs it
            state = f"{state} on {worker_host(f.worker)}"
        if f.status in ("failed", "waiting_retry"):
            state = state.split(":", 1)[0]  # the reason is in the error column
        shows_error = f.status in ("failed", "waiting_retry", "paused")
        error = (f.error_message or "") if shows_error else ""
        table.add_row(
            f.ref,
            f.name,
            state,
            pct,
            f"{format_bytes(f.downloaded)} / {format_bytes(f.total)}",
            format_rate(f.speed),
            f"#{f.position}" if f.position else "",
            error,
        )
    return table
