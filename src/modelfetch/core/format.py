"""How sizes, rates and durations read to a person, and how a person writes a size.

Sizes are binary (`1.5 GiB`): that is how model files are measured on disk. Rates are decimal
(`1.0 MB/s` is 1,000,000 bytes a second): that is what a network monitor or an ISP shows, and
what a user compares a download speed against. An unknown value is `—`, never `0`: zero is a real
reading that means "stalled".
"""

from __future__ import annotations

import math
import re

UNKNOWN = "—"
"""Shown for a value that is not known (yet)."""

_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
_RATE_UNITS = ((1e9, "GB/s", 2), (1e6, "MB/s", 1), (1e3, "kB/s", 0))
_MAX_DURATION = 359_999  # 99h 59m 59s: saturate rather than grow a third hour digit


def format_bytes(n: int | None) -> str:
    """`512 B`, `1.0 KiB`, `1.5 GiB`; `—` for None or a negative count."""
    if n is None or n < 0:
        return UNKNOWN
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in _BINARY_UNITS[1:]:
        value /= 1024
        # Move up a unit when rounding would print 1024.0 of this one.
        if round(value, 1) < 1024 or unit == _BINARY_UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def format_rate(bps: float | None) -> str:
    """`999 B/s`, `12 kB/s`, `118.4 MB/s`, `2.50 GB/s`; `—` for None, negative or not finite."""
    if bps is None or not math.isfinite(bps) or bps < 0:
        return UNKNOWN
    for scale, unit, digits in _RATE_UNITS:
        if bps >= scale:
            return f"{bps / scale:.{digits}f} {unit}"
    return f"{bps:.0f} B/s"


def format_duration(seconds: float | None) -> str:
    """`45s`, `3m 20s`, `1h 04m`; rounded up, at least `1s`, at most `99h 59m`; `—` if unknown.

    Rounded up and never `0s`, so a countdown does not show zero while work is still going on.
    """
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return UNKNOWN
    total = _MAX_DURATION if seconds >= _MAX_DURATION else max(1, math.ceil(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


_SIZE_RE = re.compile(
    r"""^\s*
    (?P<number>\d+(?:\.\d*)?|\.\d+)
    \s*
    (?P<unit>(?P<prefix>[kmgt])?(?P<suffix>ib|b)?)
    (?:/s)?
    \s*$""",
    re.IGNORECASE | re.VERBOSE,
)
_PREFIX_POWER = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str) -> int:
    """A byte count as a person writes it, e.g. for `--limit-rate`.

    `100` and `100B` are bytes; `512k`, `20M`, `1.5G`, `2T` and `20MiB` are binary multiples
    (1024-based, as wget and curl read them); `20kB`, `20MB`, `1GB` are decimal (1000-based).
    Letters may be in either case, a space may separate number and unit, and a trailing `/s`
    is allowed. Fractions are rounded to the nearest byte.
    """
    match = _SIZE_RE.match(text)
    if match is None:
        raise ValueError(
            f"not a size: {text!r} (write a number of bytes with an optional unit, "
            "e.g. 100, 512k, 20M, 1.5G, 20MiB, or 20MB for decimal megabytes)"
        )
    number = float(match["number"])
    prefix = (match["prefix"] or "").lower()
    suffix = (match["suffix"] or "").lower()
    if suffix == "ib" and not prefix:
        raise ValueError(f"not a size: {text!r} ('iB' needs a prefix: KiB, MiB, GiB or TiB)")
    # "20M" and "20MiB" are binary; only a bare "B" after a prefix ("20MB") means decimal.
    base = 1000 if suffix == "b" and prefix else 1024
    multiplier: int = base ** _PREFIX_POWER[prefix]
    size = number * multiplier
    if not math.isfinite(size):
        raise ValueError(f"not a size: {text!r} (too large)")
    return round(size)
