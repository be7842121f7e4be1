"""Pure parsers for the HTTP headers a transfer depends on.

Every function here takes text (and, where time matters, `now` in epoch seconds) and returns plain
values; garbage in gives `None` out, never an exception, because a server's bad header must not
crash a download, only make us less informed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_CONTENT_RANGE = re.compile(r"bytes[ \t]+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"bytes[ \t]+\*/(\d+)", re.IGNORECASE)
_SECONDS = re.compile(r"-?\d+(?:\.\d+)?")


class ContentRange(NamedTuple):
    """`bytes a-b/N` → (a, b, N); `bytes a-b/*` → (a, b, None); `bytes */N` → (None, None, N)."""

    start: int | None
    end: int | None  # inclusive, as on the wire
    total: int | None


def parse_content_range(value: str | None) -> ContentRange | None:
    """Parse a Content-Range header; anything inconsistent (end < start, end >= total) is None."""
    if value is None:
        return None
    text = value.strip()
    unsatisfied = _UNSATISFIED_RANGE.fullmatch(text)
    if unsatisfied:
        return ContentRange(None, None, int(unsatisfied.group(1)))
    match = _CONTENT_RANGE.fullmatch(text)
    if not match:
        return None
    start, end = int(match.group(1)), int(match.group(2))
    total = None if match.group(3) == "*" else int(match.group(3))
    if end < start or (total is not None and end >= total):
        return None
    return ContentRange(start, end, total)


def total_size(
    *, status: int, content_range: str | None, content_length: str | None, offset: int
) -> int | None:
    """The full size of the resource a 200/206 describes.

    A Content-Range total wins; `*` stays unknown rather than being invented from the length.
    Without a Content-Range, Content-Length plus the offset the body starts at.
    """
    if status == 206 and content_range is not None:
        parsed = parse_content_range(content_range)
        return parsed.total if parsed is not None else None
    length = parse_content_length(content_length)
    if length is None:
        return None
    return length + (offset if status == 206 else 0)


def parse_content_length(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip()
    return int(text) if text.isdigit() and text.isascii() else None


def unwrap_etag(value: str | None) -> str | None:
    """`W/"abc"` / `"abc"` / `abc` → `abc`; empty → None."""
    if value is None:
        return None
    text = value.strip()
    if text.startswith(("W/", "w/")):
        text = text[2:].strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
    return text or None


def is_strong_etag(value: str | None) -> bool:
    """A strong, quoted entity tag: the only kind RFC 9110 allows in If-Range."""
    if value is None:
        return False
    text = value.strip()
    return len(text) >= 3 and text[0] == '"' and text[-1] == '"' and '"' not in text[1:-1]


def linked_digest(value: str | None) -> str | None:
    """The SHA-256 an `X-Linked-Etag` announces, lowercased, or None.

    Only exactly 64 hex digits count. Never call this on a plain `ETag`: a CDN's ETag can be 64 hex
    (a Xet block hash) without being the content's SHA-256.
    """
    inner = unwrap_etag(value)
    if inner is None or not _HEX64.fullmatch(inner):
        return None
    return inner.lower()


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from `Retry-After` (delay-seconds or an HTTP date, relative to `now`).

    Garbage → None; a negative delay or a date in the past → 0. Capping is the policy's job.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _SECONDS.fullmatch(text):
        seconds = float(text)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    # Here, not at the top: email.utils is most of this module's import, and only a date
    # (rare: servers send seconds) needs it.
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" zone: RFC 5322 says UTC with unknown local offset
        when = when.replace(tzinfo=UTC)
    try:
        return max(0.0, when.timestamp() - now)
    except (OverflowError, OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One rate-limit window from a `RateLimit` header (IETF httpapi draft, either syntax)."""

    remaining: int | None
    reset: float | None  # seconds until the window resets
    limit: int | None = None
    policy: str | None = None


def parse_ratelimit(value: str | None) -> RateLimit | None:
    """Parse `RateLimit: limit=10, remaining=0, reset=5` (drafts 00-06) or the structured-field
    form `"default";r=0;t=5` (draft 07+; several comma-separated policies allowed).

    With several policies, the binding one is returned: an exhausted one (r=0) with the longest
    reset, else the one with the fewest remaining requests. Garbage → None.
    """
    if value is None or not value.strip():
        return None
    items = [item.strip() for item in value.split(",") if item.strip()]
    if any(item.startswith('"') or ";" in item for item in items):
        windows = [w for w in (_parse_structured_item(item) for item in items) if w is not None]
        if not windows:
            return None
        exhausted = [w for w in windows if w.remaining == 0]
        if exhausted:
            return max(exhausted, key=lambda w: w.reset if w.reset is not None else -1.0)
        return min(windows, key=lambda w: w.remaining if w.remaining is not None else math.inf)
    fields: dict[str, str] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq:
            return None
        fields[key.strip().lower()] = raw.strip()
    limit = _non_negative_int(fields.get("limit"))
    remaining = _non_negative_int(fields.get("remaining"))
    reset = _non_negative_number(fields.get("reset"))
    if limit is None and remaining is None and reset is None:
        return None
    return RateLimit(remaining=remaining, reset=reset, limit=limit)


def _parse_structured_item(item: str) -> RateLimit | None:
    name, *params = (part.strip() for part in item.split(";"))
    if not (len(name) >= 2 and name[0] == '"' and name[-1] == '"') and not re.fullmatch(
        r"[A-Za-z*][A-Za-z0-9_.*-]*", name
    ):
        return None
    values: dict[str, str] = {}
    for param in params:
        key, eq, raw = param.partition("=")
        if not eq:
            return None
        values[key.strip().lower()] = raw.strip()
    remaining = _non_negative_int(values.get("r"))
    reset = _non_negative_number(values.get("t"))
    if remaining is None and reset is None:
        return None
    return RateLimit(remaining=remaining, reset=reset, policy=name.strip('"'))


def _non_negative_int(text: str | None) -> int | None:
    if text is None or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def _non_negative_number(text: str | None) -> float | None:
    if text is None or not _SECONDS.fullmatch(text):
        return None
    number = float(text)
    return max(0.0, number) if math.isfinite(number) else None


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup that also works on a plain dict (a CIMultiDict already is)."""
    direct = headers.get(name)
    if direct is not None:
        return direct
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def retry_after_seconds(headers: Mapping[str, str], now: float) -> float | None:
    """How long a 429/503 asks us to wait: `Retry-After`, else the `RateLimit` reset of an
    exhausted window, else `RateLimit-Reset` (draft 00-06, seconds). None when nothing usable."""
    retry_after = parse_retry_after(header(headers, "Retry-After"), now)
    if retry_after is not None:
        return retry_after
    window = parse_ratelimit(header(headers, "RateLimit"))
    if window is not None and window.reset is not None and window.remaining in (0, None):
        return window.reset
    return _non_negative_number((header(headers, "RateLimit-Reset") or "").strip())


def origin_of(url: str) -> str:
    """`scheme://host:port` with the scheme and host lowercased and the default port explicit,
    so `https://HF.co` and `https://hf.co:443/x` compare equal. ValueError if there is no host."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = parts.hostname  # lowercased, brackets of an IPv6 literal removed
    if not scheme or not host:
        raise ValueError(f"not an absolute URL: {url!r}")
    port = parts.port  # raises ValueError for a non-numeric or out-of-range port
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
    host = host.rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" if port is None else f"{scheme}://{host}:{port}"


def content_disposition_filename(value: str | None) -> str | None:
    """The file name a Content-Disposition suggests (`filename*=UTF-8''…` preferred over
    `filename="…"`), undecorated; the caller must still pass it through `sanitize_filename`."""
    if value is None:
        return None
    plain: str | None = None
    for param in _split_params(value)[1:]:
        key, eq, raw = param.partition("=")
        if not eq:
            continue
        key = key.strip().lower()
        raw = raw.strip()
        if key == "filename*":
            charset, _, rest = raw.partition("'")
            _, _, encoded = rest.partition("'")
            try:
                decoded = unquote(encoded, encoding=charset or "utf-8", errors="strict")
            except (LookupError, UnicodeDecodeError):
                continue
            if decoded:
                return decoded
        elif key == "filename":
            if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            plain = raw or None
    return plain


def _split_params(value: str) -> list[str]:
    """Split on `;` outside double quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts
