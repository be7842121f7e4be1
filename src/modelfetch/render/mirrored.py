"""One line under `ls`: what the Hub mirror holds of the queue, and against what limit."""

from __future__ import annotations

from collections.abc import Sequence

from modelfetch.core.format import format_bytes
from modelfetch.requests import MIRROR_SPEC_PREFIX
from modelfetch.views import GroupView

__all__ = ["mirror_summary"]


def mirror_summary(views: Sequence[GroupView], cache_max: int | None) -> str | None:
    """None when the mirror pulled nothing; else its files held, their size, the limit."""
    pulled = [v for v in views if v.spec.startswith(MIRROR_SPEC_PREFIX)]
    if not pulled:
        return None
    held = [v for v in pulled if v.status == "completed"]
    size = sum(v.total or v.downloaded for v in held)
    line = f"Hub mirror: {len(held)} file{'s' if len(held) != 1 else ''} held, {format_bytes(size)}"
    if cache_max is not None:
        line += f" of {format_bytes(cache_max)} (--cache-max)"
    moving = len(pulled) - len(held)
    if moving:
        line += f"; {moving} being pulled"
    return line
