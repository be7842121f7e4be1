"""One `Range: bytes=` header against a file of known size, as RFC 9110 and the Hub answer it."""

from __future__ import annotations

from typing import Literal

__all__ = ["UNSATISFIABLE", "parse_range"]

UNSATISFIABLE: Literal["unsatisfiable"] = "unsatisfiable"
_MAX_DIGITS = 20  # no offset of a real file needs more; a longer number is garbage


def _number(text: str) -> int | None:
    text = text.strip()
    if not text or len(text) > _MAX_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def parse_range(header: str, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """(start, end exclusive) of a single range; UNSATISFIABLE (416); None: ignore the header
    and send the whole file (RFC 9110 lets a server ignore a malformed or multi-range one)."""
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    if not first.strip():  # a suffix: the last n bytes
        n = _number(last)
        if n is None:
            return None
        if n == 0 or size == 0:
            return UNSATISFIABLE
        return max(0, size - n), size
    start = _number(first)
    end_incl = _number(last) if last.strip() else None
    if start is None or (last.strip() and end_incl is None):
        return None
    if end_incl is not None and end_incl < start:
        return None
    if start >= size:
        return UNSATISFIABLE
    end = size if end_incl is None else min(end_incl + 1, size)
    return start, end
