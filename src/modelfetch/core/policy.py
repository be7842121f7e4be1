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

The disk's refusals (EACCES, EPERM, EROFS, ENOTDIR, EISDIR, EIO...) are final: no retry cures
them, and the message says what to fix. "Connection refused" from a host that never answered
(`host_answered=False`: the caller remembers who answered) gets `refused_retries` retries,
counted down in the waiting reason, then gives up naming the host; a host that answered
before and now refuses is down for a while, and is retried like any network error. The words
of every decision come from `core/messages.py`.
"""

from __future__ import annotations

import errno
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeAlias

from modelfetch.core.errors import (
    AuthRequiredError,
    ConnectFailedError,
    DiskFullError,
    ForbiddenError,
    GatedError,
    HTTPStatusError,
    IntegrityError,
    LocalFileError,
    NetworkError,
    NotFoundError,
    RateLimitedError,
    ServerBusyError,
    StalledError,
)
from modelfetch.core.messages import describe, hub_page_url, is_file_error, never_answered

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
# A file operation the OS refused for one of these may work on the next attempt (a folder
# removed mid-download is made again; a busy file frees up). Every other errno is final:
# EACCES, EPERM, EROFS, ENOTDIR, EISDIR, EIO... do not go away by themselves.
_TRANSIENT_FILE_ERRNOS = frozenset({errno.ENOENT, errno.EAGAIN, errno.EBUSY, errno.EINTR})


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again at `at` (same clock as the `now` given to `decide`), `delay` seconds from now."""

    at: float
    delay: float
    reason: str
    hold_host: bool = False  # 429/503: hold back every download from that host until `at`
    restart_from_zero: bool = False  # drop the partial file first (its bytes failed the check)
    message: str | None = None  # what to show while waiting, instead of the error's own text


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
    refusals: int = 0  # consecutive refused connections, before the one being decided

    def record(self, error: BaseException, *, made_progress: bool) -> AttemptHistory:
        """The history after the attempt that raised `error`; `made_progress` if it wrote bytes."""
        refused = isinstance(error, ConnectFailedError) and error.refused
        return replace(
            self,
            failures=0 if made_progress else self.failures + 1,
            refusals=self.refusals + 1 if refused and not made_progress else 0,
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
    # "Connection refused" from a host that never answered (a wrong port, a server that is not
    # up): this many retries, counted down in the waiting reason, then give up naming the host.
    # A host that answered before and then refuses is retried like any network error.
    refused_retries: int = 3

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")
        for name in ("base_delay", "max_delay", "retry_after_cap"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be a number of seconds >= 0")
        if min(self.integrity_retries, self.forbidden_redirect_retries, self.refused_retries) < 0:
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
        host_answered: bool = True,
    ) -> Decision:
        """What to do after an attempt raised `error`.

        `history` is the file's history before this attempt; `made_progress` says whether this
        attempt wrote any bytes (then it does not count against `max_attempts`);
        `host_answered` whether the host a `ConnectFailedError` names ever answered us (the
        caller remembers that across files; unknown counts as answered: retried as before).
        """
        failures = 0 if made_progress else history.failures + 1

        if isinstance(error, DiskFullError):
            return PauseAll("disk_full", describe(error))

        if isinstance(error, LocalFileError | OSError) and is_file_error(error):
            code = error.errno
            if code in _TRANSIENT_FILE_ERRNOS and failures < self.max_attempts:
                delay = self.backoff(failures, rng)
                return Retry(now + delay, delay, "file system error")
            return GiveUp(describe(error))

        if (
            isinstance(error, ConnectFailedError)
            and error.refused
            and not host_answered
            and not made_progress
        ):
            refusals = history.refusals + 1
            if refusals > self.refused_retries:
                return GiveUp(never_answered(error, refusals))
            delay = self.backoff(refusals, rng)
            countdown = f"connection refused by {error.host} (retry {refusals} of "
            countdown += f"{self.refused_retries})"
            return Retry(now + delay, delay, countdown, message=countdown)

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
