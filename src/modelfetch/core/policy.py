"""What to do after a file's attempt failed: retry (when), give up (why), or pause everything.

The whole policy is one immutable value, `RetryPolicy`, and what it must remember about one file
is another, `AttemptHistory`. Nothing here sleeps or reads a clock, and jitter comes only from
the RNG the caller passes along with `now`; the caller gets back a `Decision` to carry out.
Retry-After headers are parsed by the transfer into `HTTPStatusError.retry_after`; nothing here
reads headers.

The manager's loop for one file, after an attempt raised `error`:

    decision = policy.decide(error, history, now=now, rng=rng, made_progress=moved)
    history = history.record(error, made_progress=moved)

where `moved` says whether that attempt wrote any bytes. Progress resets the budget of
consecutive failures, so a flaky connection that keeps making headway is never given up on.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeAlias
from urllib.parse import urlsplit, urlunsplit

from modelfetch.core.errors import (
    AuthRequiredError,
    DiskFullError,
    ForbiddenError,
    GatedError,
    HTTPStatusError,
    IntegrityError,
    ModelfetchError,
    NetworkError,
    NotFoundError,
    RateLimitedError,
    SchemeError,
    ServerBusyError,
    SpecError,
    StalledError,
    TooManyRedirectsError,
    UnsafePathError,
)
from modelfetch.core.format import format_bytes, format_duration

if TYPE_CHECKING:
    import random

__all__ = [
    "AttemptHistory",
    "Decision",
    "GiveUp",
    "PauseAll",
    "Retry",
    "RetryPolicy",
    "describe",
    "hub_page_url",
]

# Statuses a plain HTTPStatusError may carry that are worth another try. 5xx is added by range.
_TRANSIENT_STATUSES = frozenset({408})
# Never grow the backoff exponent past this: 2**64 seconds is already far beyond any cap.
_MAX_EXPONENT = 64


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again at `at` (same clock as the `now` given to `decide`), `delay` seconds from now."""

    at: float
    delay: float
    reason: str
    hold_host: bool = False  # 429/503: hold back every download from that host until `at`
    restart_from_zero: bool = False  # drop the partial file first (its bytes failed the check)


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop retrying this file; `message` is for a person."""

    message: str


@dataclass(frozen=True, slots=True)
class PauseAll:
    """Stop every download (keep their partial files) until a person resumes them."""

    reason: str  # "disk_full"
    message: str


Decision: TypeAlias = Retry | GiveUp | PauseAll


@dataclass(frozen=True, slots=True)
class AttemptHistory:
    """What the policy remembers about one file between attempts. Start from `AttemptHistory()`."""

    failures: int = 0  # consecutive failures without progress, before the one being decided
    integrity_failures: int = 0
    forbidden_retries: int = 0

    def record(self, error: BaseException, *, made_progress: bool) -> AttemptHistory:
        """The history after the attempt that raised `error`; `made_progress` if it wrote bytes."""
        return replace(
            self,
            failures=0 if made_progress else self.failures + 1,
            integrity_failures=self.integrity_failures + isinstance(error, IntegrityError),
            # A signed URL may expire again after hours of good progress: that is a new expiry,
            # not the same one, so progress gives the re-resolve budget back.
            forbidden_retries=(
                0 if made_progress else self.forbidden_retries + isinstance(error, ForbiddenError)
            ),
        )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_delay: float = 1.0  # full-jitter exponential backoff: uniform(0, min(cap, base*2**n))
    max_delay: float = 60.0
    max_attempts: int = 8  # consecutive failed attempts WITHOUT progress; progress resets it
    retry_after_cap: float = 900.0  # 15 min cap on what a server may ask
    integrity_retries: int = 1  # one more try from zero after a digest/size mismatch
    forbidden_redirect_retries: int = 1  # a 403 from a redirect target: re-resolve once

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")
        for name in ("base_delay", "max_delay", "retry_after_cap"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be a number of seconds >= 0")
        if self.integrity_retries < 0 or self.forbidden_redirect_retries < 0:
            raise ValueError("retry budgets must be >= 0")

    def backoff(self, failures: int, rng: random.Random) -> float:
        """Full jitter: uniform(0, min(max_delay, base_delay * 2**(failures - 1))).

        `failures` counts this one, so the first failure waits up to `base_delay`.
        """
        exponent = min(max(failures - 1, 0), _MAX_EXPONENT)
        return rng.uniform(0.0, min(self.max_delay, self.base_delay * 2.0**exponent))

    def decide(
        self,
        error: BaseException,
        history: AttemptHistory,
        *,
        now: float,
        rng: random.Random,
        made_progress: bool = False,
    ) -> Decision:
        """What to do after an attempt raised `error`.

        `history` is the file's history before this attempt; `made_progress` says whether this
        attempt wrote any bytes (then it does not count against `max_attempts`).
        """
        failures = 0 if made_progress else history.failures + 1

        if isinstance(error, DiskFullError):
            return PauseAll("disk_full", describe(error))

        if isinstance(error, IntegrityError):
            if history.integrity_failures < self.integrity_retries:
                return Retry(
                    now,
                    0.0,
                    "integrity check failed; downloading again from zero",
                    restart_from_zero=True,
                )
            return GiveUp(_after_retries(error, history.integrity_failures + 1))

        if isinstance(error, ForbiddenError) and error.redirected:
            used = 0 if made_progress else history.forbidden_retries
            if used < self.forbidden_redirect_retries:
                return Retry(now, 0.0, "re-resolving expired URL")
            if self.forbidden_redirect_retries:
                return GiveUp(f"{describe(error)}; still refused after renewing the link")
            return GiveUp(describe(error))

        if isinstance(error, HTTPStatusError) and _is_host_busy(error):
            if failures >= self.max_attempts:
                return GiveUp(_after_retries(error, failures))
            if error.retry_after is not None and not math.isnan(error.retry_after):
                delay = min(max(error.retry_after, 0.0), self.retry_after_cap)
            else:
                delay = self.backoff(failures, rng)
            return Retry(now + delay, delay, _short_reason(error), hold_host=True)

        if _is_transient(error):
            if failures >= self.max_attempts:
                return GiveUp(_after_retries(error, failures))
            delay = self.backoff(failures, rng)
            return Retry(now + delay, delay, _short_reason(error))

        # Everything else is final: a missing file, a missing token, a gate, a 403, a 410,
        # a redirect loop, a scheme we do not speak, an unsafe path, a bad spec, or a bug.
        return GiveUp(describe(error))


# These are final whatever status they carry; every other HTTPStatusError is judged by status.
_FINAL_HTTP_ERRORS = (NotFoundError, AuthRequiredError, GatedError, ForbiddenError)


def _is_host_busy(error: HTTPStatusError) -> bool:
    if isinstance(error, RateLimitedError | ServerBusyError):
        return True
    # A transfer should raise the subclasses; a plain error with the status means the same.
    return not isinstance(error, _FINAL_HTTP_ERRORS) and error.status in (429, 503)


def _is_transient(error: BaseException) -> bool:
    if isinstance(error, NetworkError | TimeoutError):
        return True
    if isinstance(error, HTTPStatusError) and not isinstance(error, _FINAL_HTTP_ERRORS):
        return error.status in _TRANSIENT_STATUSES or 500 <= error.status <= 599
    return False


def _short_reason(error: BaseException) -> str:
    """A few words for a status line ("waiting: <reason>")."""
    if isinstance(error, StalledError):
        return "stalled"
    if isinstance(error, NetworkError):
        return "network error"
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, HTTPStatusError):
        if error.status == 429:
            return "rate limited (HTTP 429)"
        if error.status == 503:
            return "server busy (HTTP 503)"
        return f"server error (HTTP {error.status})"
    return type(error).__name__


def _after_retries(error: BaseException, failures: int) -> str:
    tries = "attempt" if failures == 1 else "attempts"
    return f"Gave up after {failures} failed {tries}. {describe(error)}"


# --------------------------------------------------------------------------------------- messages

_HUB_PATH = re.compile(
    r"^/(?P<kind>(?:datasets|spaces)/)?(?P<owner>[^/]+)/(?P<name>[^/]+)/resolve/"
)


def hub_page_url(url: str | None) -> str | None:
    """`https://hf.co/owner/name` for `https://hf.co/owner/name/resolve/...`, else None."""
    if not url:
        return None
    parts = urlsplit(url)
    match = _HUB_PATH.match(parts.path)
    if parts.scheme not in ("http", "https") or match is None:
        return None
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    path = f"/{match['kind'] or ''}{match['owner']}/{match['name']}"
    return urlunsplit((parts.scheme, host, path, "", ""))


def _safe_url(url: str | None) -> str | None:
    """The URL without user info, query or fragment: signed CDN URLs carry secrets there."""
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _host(url: str | None) -> str | None:
    return urlsplit(url).hostname if url else None


def _with_detail(headline: str, error: ModelfetchError) -> str:
    """Append the error's own text when it adds something to the headline."""
    detail = error.message.strip()
    if not detail or detail.lower() in headline.lower():
        return headline
    return f"{headline} ({detail})"


def describe(error: BaseException) -> str:
    """One line a person can act on. Never includes a token or a signed URL's query string."""
    if isinstance(error, DiskFullError):
        return _describe_disk_full(error)
    if isinstance(error, HTTPStatusError):
        return _describe_http(error)
    if isinstance(error, StalledError):
        return _with_detail("The download stalled: no data arrived for too long", error)
    if isinstance(error, NetworkError):
        return _with_detail("Network error", error)
    if isinstance(error, TooManyRedirectsError):
        return _with_detail("Too many redirects", error) + _at(error.url)
    if isinstance(error, SchemeError):
        return _with_detail("Refused a URL whose scheme is not http or https", error)
    if isinstance(error, IntegrityError):
        headline = "The downloaded file is corrupt: it does not match the expected checksum or size"
        line = _with_detail(headline, error)
        if error.expected and error.actual:
            line += f"; expected {error.expected}, got {error.actual}"
        return line
    if isinstance(error, UnsafePathError):
        return _with_detail("Refused a destination outside the download folder", error)
    if isinstance(error, SpecError):
        return error.message
    if isinstance(error, TimeoutError):
        return f"Timed out{': ' + str(error) if str(error) else ''}"
    if isinstance(error, ModelfetchError):
        return error.message
    text = str(error)
    what = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return f"Internal error ({what}); please report this bug"


def _at(url: str | None) -> str:
    safe = _safe_url(url)
    return f" at {safe}" if safe else ""


def _describe_disk_full(error: DiskFullError) -> str:
    if error.needed is not None and error.free is not None:
        space = f"needs {format_bytes(error.needed)}, {format_bytes(error.free)} free"
    elif error.needed is not None:
        space = f"needs {format_bytes(error.needed)}"
    elif error.free is not None:
        space = f"{format_bytes(error.free)} free"
    else:
        space = error.message
    return f"Disk full ({space}). Free some space, then resume."


def _describe_http(error: HTTPStatusError) -> str:
    status = error.status
    url = _safe_url(error.url)
    page = hub_page_url(error.url)
    where = f" {url}" if url else ""
    if isinstance(error, GatedError):
        if page:
            return (
                f"{_repo_id(page)} is gated: accept its terms at {page} while signed in, "
                "then set HF_TOKEN to a token from that account."
            )
        return (
            "This repository is gated: accept its terms on its model page while signed in, "
            "then set HF_TOKEN to a token from that account."
        )
    if isinstance(error, AuthRequiredError) or (type(error) is HTTPStatusError and status == 401):
        what = _repo_id(page) if page else (url or "This file")
        line = (
            f"{what} needs a Hugging Face token (HTTP {status}): "
            "set HF_TOKEN to a token that can read it"
        )
        if page:
            line += f"; if it should be public, check the name at {page}"
        return line
    if status == 410:
        return _with_detail(f"Gone (HTTP 410):{where}", error) + "; it no longer exists"
    if isinstance(error, NotFoundError) or status == 404:
        return (
            _with_detail(f"Not found (HTTP {status}):{where}", error)
            + "; check the repository, file name and revision"
        )
    if isinstance(error, ForbiddenError) or status == 403:
        if error.redirected:
            return (
                _with_detail(f"Access denied by the download server (HTTP 403):{where}", error)
                + "; its signed link may have expired"
            )
        return _with_detail(f"Access denied (HTTP 403):{where}", error)
    if status in (429, 503):
        kind = "Rate limited" if status == 429 else "Server busy"
        host = _host(error.url)
        line = _with_detail(f"{kind} (HTTP {status}){' by ' + host if host else ''}", error)
        if error.retry_after is not None:
            line += f"; asked to wait {format_duration(error.retry_after)}"
        return line
    return _with_detail(f"The server answered HTTP {status}{_at(error.url)}", error)


def _repo_id(page: str) -> str:
    """`owner/name` (or `datasets/owner/name`) from a Hub page URL."""
    return urlsplit(page).path.lstrip("/")
