"""The retry policy as tables: errors in, decisions out; clock and RNG are plain arguments."""

from __future__ import annotations

import dataclasses
import random

import pytest

from modelfetch.core.errors import (
    AuthRequiredError,
    DiskFullError,
    ForbiddenError,
    GatedError,
    HTTPStatusError,
    IntegrityError,
    NetworkError,
    NotFoundError,
    RateLimitedError,
    SchemeError,
    ServerBusyError,
    SpecError,
    StalledError,
    StateError,
    TooManyRedirectsError,
    UnsafePathError,
)
from modelfetch.core.policy import (
    AttemptHistory,
    Decision,
    GiveUp,
    PauseAll,
    Retry,
    RetryPolicy,
    describe,
    hub_page_url,
)

NOW = 1_000.0
POLICY = RetryPolicy()
HUB_URL = "https://huggingface.co/acme/llama-gguf/resolve/abc123/model-Q4_K_M.gguf"
CDN_URL = "https://cdn-lfs.hf.co/repos/ab/cd/sha?X-Amz-Signature=s3cr3t&Expires=1700000000"


def decide(
    error: BaseException,
    history: AttemptHistory | None = None,
    *,
    policy: RetryPolicy = POLICY,
    seed: int = 0,
    made_progress: bool = False,
) -> Decision:
    return policy.decide(
        error,
        history or AttemptHistory(),
        now=NOW,
        rng=random.Random(seed),
        made_progress=made_progress,
    )


def status_error(status: int, **kwargs: object) -> HTTPStatusError:
    return HTTPStatusError(f"HTTP {status}", status=status, url=HUB_URL, **kwargs)  # type: ignore[arg-type]


def fail_repeatedly(
    error: BaseException, times: int, *, policy: RetryPolicy = POLICY, seed: int = 7
) -> list[Decision]:
    """Decide on `times` consecutive failures without progress, one shared RNG."""
    rng = random.Random(seed)
    history = AttemptHistory()
    decisions = []
    for _ in range(times):
        decisions.append(policy.decide(error, history, now=NOW, rng=rng))
        history = history.record(error, made_progress=False)
    return decisions


# ------------------------------------------------------------------------------------- backoff


def test_backoff_is_full_jitter_with_an_exact_sequence_for_a_seed() -> None:
    decisions = fail_repeatedly(NetworkError("connection reset"), 8)
    # Full jitter: the n-th failure waits uniform(0, min(60, 1 * 2**(n-1))).
    ceilings = [1, 2, 4, 8, 16, 32, 60]
    expected_rng = random.Random(7)
    expected = [expected_rng.uniform(0.0, c) for c in ceilings]
    retries = decisions[:7]
    assert all(isinstance(d, Retry) for d in retries)
    delays = [d.delay for d in retries if isinstance(d, Retry)]
    assert delays == expected
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert 0.0 <= delay <= ceiling
    assert all(d.at == NOW + d.delay for d in retries if isinstance(d, Retry))
    assert all(not d.hold_host and not d.restart_from_zero for d in retries if isinstance(d, Retry))
    # The 8th consecutive failure without progress exhausts max_attempts=8.
    final = decisions[7]
    assert isinstance(final, GiveUp)
    assert "Gave up after 8 failed attempts" in final.message
    assert "connection reset" in final.message


@pytest.mark.parametrize("failures", [0, 1, 2, 5, 6, 9, 30, 10_000])
def test_full_jitter_stays_within_its_ceiling_and_spans_it(failures: int) -> None:
    policy = RetryPolicy(max_attempts=100_000)
    ceiling = min(60.0, 2.0 ** min(failures, 10))  # this failure is number failures + 1
    delays = []
    for seed in range(300):
        decision = decide(
            NetworkError("x"), AttemptHistory(failures=failures), policy=policy, seed=seed
        )
        assert isinstance(decision, Retry)
        delays.append(decision.delay)
    assert all(0.0 <= d <= ceiling for d in delays)
    assert min(delays) < 0.1 * ceiling  # full jitter reaches down to zero...
    assert max(delays) > 0.9 * ceiling  # ...and up to the ceiling


def test_the_cap_bounds_the_delay() -> None:
    policy = RetryPolicy(base_delay=2.0, max_delay=5.0, max_attempts=50)
    decisions = fail_repeatedly(StalledError("no bytes for 30 s"), 40, policy=policy)
    delays = [d.delay for d in decisions if isinstance(d, Retry)]
    assert len(delays) == 40
    assert max(delays) <= 5.0
    assert max(delays) > 4.0  # the cap is reached, not just respected


def test_progress_resets_the_budget() -> None:
    error = NetworkError("connection reset")
    exhausted = AttemptHistory(failures=POLICY.max_attempts - 1)
    assert isinstance(decide(error, exhausted), GiveUp)
    # The same failure after an attempt that wrote bytes is not counted against the budget.
    decision = decide(error, exhausted, made_progress=True)
    assert isinstance(decision, Retry)
    assert decision.delay <= POLICY.base_delay  # and backs off as if it were the first
    after = exhausted.record(error, made_progress=True)
    assert after.failures == 0
    assert isinstance(decide(error, after), Retry)


def test_history_record_is_pure_and_counts_by_kind() -> None:
    start = AttemptHistory()
    h1 = start.record(NetworkError("x"), made_progress=False)
    h2 = h1.record(IntegrityError("bad digest"), made_progress=True)
    h3 = h2.record(ForbiddenError("403", status=403, redirected=True), made_progress=False)
    assert start == AttemptHistory(0, 0, 0)
    assert h1 == AttemptHistory(failures=1, integrity_failures=0, forbidden_retries=0)
    assert h2 == AttemptHistory(failures=0, integrity_failures=1, forbidden_retries=0)
    assert h3 == AttemptHistory(failures=1, integrity_failures=1, forbidden_retries=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        start.failures = 3  # type: ignore[misc]


# ----------------------------------------------------------------------------- classification

TRANSIENT = [
    NetworkError("connection refused"),
    StalledError("no bytes for 30 s"),
    TimeoutError("connect timed out"),
    TimeoutError(),
    status_error(500),
    status_error(502),
    status_error(504),
    status_error(408),
    status_error(599),
]


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: f"{type(e).__name__}-{e}")
def test_transient_errors_back_off(error: BaseException) -> None:
    decision = decide(error, seed=3)
    assert isinstance(decision, Retry)
    assert decision.delay == random.Random(3).uniform(0.0, 1.0)
    assert decision.hold_host is False
    assert decision.restart_from_zero is False
    assert decision.reason


@pytest.mark.parametrize(
    ("error", "fragments"),
    [
        (NotFoundError("Entry not found", status=404, url=HUB_URL), ["Not found", "404", HUB_URL]),
        (NotFoundError("gone", status=410, url=HUB_URL), ["Gone", "410", HUB_URL]),
        (status_error(410), ["Gone", "410"]),
        (status_error(404), ["Not found", "404"]),
        (status_error(400), ["HTTP 400"]),
        (status_error(416), ["HTTP 416"]),
        (
            AuthRequiredError("401", status=401, url=HUB_URL),
            ["HF_TOKEN", "https://huggingface.co/acme/llama-gguf", "401"],
        ),
        (status_error(401), ["HF_TOKEN"]),
        (
            GatedError("gated", status=403, url=HUB_URL, error_code="GatedRepo"),
            ["gated", "accept its terms", "https://huggingface.co/acme/llama-gguf", "HF_TOKEN"],
        ),
        (ForbiddenError("Forbidden", status=403, url=HUB_URL), ["Access denied", "403"]),
        (
            TooManyRedirectsError("11 redirects", url=HUB_URL),
            ["Too many redirects", "11 redirects"],
        ),
        (SchemeError("ftp://x/y"), ["scheme", "ftp://x/y"]),
        (UnsafePathError("../../etc/passwd"), ["outside the download folder", "../../etc/passwd"]),
        (SpecError("no quantization Q9 in acme/llama-gguf"), ["no quantization Q9"]),
        (StateError("database is locked"), ["database is locked"]),
        (KeyError("boom"), ["Internal error", "KeyError", "boom", "bug"]),
        (ZeroDivisionError(), ["Internal error", "ZeroDivisionError"]),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else "",
)
def test_final_errors_give_up_at_once_with_a_useful_message(
    error: BaseException, fragments: list[str]
) -> None:
    decision = decide(error)
    assert isinstance(decision, GiveUp)
    for fragment in fragments:
        assert fragment in decision.message
    assert "\n" not in decision.message


# ---------------------------------------------------------------------- rate limits and busy


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (RateLimitedError("429", status=429, url=HUB_URL, retry_after=30.0), "rate limited"),
        (ServerBusyError("503", status=503, url=HUB_URL, retry_after=30.0), "server busy"),
        (status_error(429, retry_after=30.0), "rate limited"),
        (status_error(503, retry_after=30.0), "server busy"),
    ],
)
def test_retry_after_is_honoured_and_holds_the_host(error: HTTPStatusError, reason: str) -> None:
    decision = decide(error)
    assert isinstance(decision, Retry)
    assert decision == Retry(at=NOW + 30.0, delay=30.0, reason=decision.reason, hold_host=True)
    assert reason in decision.reason


@pytest.mark.parametrize(
    ("retry_after", "delay"),
    [(0.0, 0.0), (-5.0, 0.0), (899.0, 899.0), (900.0, 900.0), (86_400.0, 900.0), (1e308, 900.0)],
)
def test_retry_after_is_clamped(retry_after: float, delay: float) -> None:
    decision = decide(RateLimitedError("429", status=429, retry_after=retry_after))
    assert isinstance(decision, Retry)
    assert decision.delay == delay
    assert decision.at == NOW + delay


def test_without_retry_after_a_busy_host_gets_the_backoff_and_is_held() -> None:
    decisions = fail_repeatedly(ServerBusyError("503", status=503), 3, seed=11)
    rng = random.Random(11)
    expected = [rng.uniform(0.0, c) for c in (1.0, 2.0, 4.0)]
    assert [d.delay for d in decisions if isinstance(d, Retry)] == expected
    assert all(isinstance(d, Retry) and d.hold_host for d in decisions)


def test_rate_limits_count_against_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    error = RateLimitedError("429", status=429, url=HUB_URL, retry_after=5.0)
    decisions = fail_repeatedly(error, 3, policy=policy)
    assert [type(d) for d in decisions] == [Retry, Retry, GiveUp]
    final = decisions[-1]
    assert isinstance(final, GiveUp)
    assert "Gave up after 3 failed attempts" in final.message
    assert "Rate limited (HTTP 429) by huggingface.co" in final.message
    assert "asked to wait 5s" in final.message


# ----------------------------------------------------------------- integrity and expired URLs


def test_an_integrity_failure_restarts_from_zero_once_then_gives_up() -> None:
    error = IntegrityError("sha256 mismatch", expected="aa" * 32, actual="bb" * 32)
    first = decide(error)
    assert first == Retry(
        at=NOW,
        delay=0.0,
        reason="integrity check failed; downloading again from zero",
        hold_host=False,
        restart_from_zero=True,
    )
    history = AttemptHistory().record(error, made_progress=True)
    second = decide(error, history, made_progress=True)
    assert isinstance(second, GiveUp)
    assert "corrupt" in second.message
    assert "aa" * 32 in second.message and "bb" * 32 in second.message


def test_integrity_retries_are_configurable() -> None:
    error = IntegrityError("size mismatch")
    assert isinstance(decide(error, policy=RetryPolicy(integrity_retries=0)), GiveUp)
    history = AttemptHistory(integrity_failures=2)
    assert isinstance(decide(error, history, policy=RetryPolicy(integrity_retries=3)), Retry)


def test_a_403_from_a_redirect_target_re_resolves_once() -> None:
    error = ForbiddenError("Forbidden", status=403, url=CDN_URL, redirected=True)
    first = decide(error)
    assert first == Retry(at=NOW, delay=0.0, reason="re-resolving expired URL")
    history = AttemptHistory().record(error, made_progress=False)
    second = decide(error, history)
    assert isinstance(second, GiveUp)
    assert "still refused after renewing the link" in second.message
    assert "403" in second.message


def test_progress_gives_back_the_re_resolve() -> None:
    # The link expired, was renewed, and expired again hours of progress later.
    error = ForbiddenError("Forbidden", status=403, url=CDN_URL, redirected=True)
    history = AttemptHistory(forbidden_retries=1)
    assert isinstance(decide(error, history), GiveUp)
    assert isinstance(decide(error, history, made_progress=True), Retry)
    assert history.record(error, made_progress=True).forbidden_retries == 0


def test_a_403_not_from_a_redirect_gives_up() -> None:
    decision = decide(ForbiddenError("Forbidden", status=403, url=HUB_URL, redirected=False))
    assert isinstance(decision, GiveUp)


# ----------------------------------------------------------------------------------- disk full


@pytest.mark.parametrize(
    ("error", "fragments"),
    [
        (
            DiskFullError("ENOSPC", needed=3 * 1024**3, free=int(1.5 * 1024**3)),
            ["needs 3.0 GiB", "1.5 GiB free"],
        ),
        (DiskFullError("ENOSPC", needed=512 * 1024**2), ["needs 512.0 MiB"]),
        (DiskFullError("ENOSPC", free=0), ["0 B free"]),
        (DiskFullError("No space left on device"), ["No space left on device"]),
    ],
)
def test_disk_full_pauses_everything(error: DiskFullError, fragments: list[str]) -> None:
    decision = decide(error, AttemptHistory(failures=100))
    assert isinstance(decision, PauseAll)
    assert decision.reason == "disk_full"
    assert decision.message.startswith("Disk full")
    assert "Free some space, then resume." in decision.message
    for fragment in fragments:
        assert fragment in decision.message


# ------------------------------------------------------------------------------------ messages


def test_messages_never_include_a_signed_urls_query() -> None:
    for error in (
        ForbiddenError("Forbidden", status=403, url=CDN_URL, redirected=True),
        HTTPStatusError("Internal Server Error", status=500, url=CDN_URL),
        TooManyRedirectsError("loop", url=CDN_URL),
    ):
        text = describe(error)
        assert "s3cr3t" not in text
        assert "X-Amz-Signature" not in text
        assert "https://cdn-lfs.hf.co/repos/ab/cd/sha" in text


def test_user_info_is_stripped_from_urls() -> None:
    text = describe(NotFoundError("404", status=404, url="https://user:pw@example.com/f.gguf"))
    assert "pw" not in text
    assert "https://example.com/f.gguf" in text


@pytest.mark.parametrize(
    ("url", "page"),
    [
        (HUB_URL, "https://huggingface.co/acme/llama-gguf"),
        ("http://127.0.0.1:8123/o/n/resolve/main/sub/f.gguf", "http://127.0.0.1:8123/o/n"),
        (
            "https://huggingface.co/datasets/o/n/resolve/main/x.bin",
            "https://huggingface.co/datasets/o/n",
        ),
        ("https://huggingface.co/o/n/blob/main/x.bin", None),
        ("https://cdn.example.com/file.gguf", None),
        ("ftp://huggingface.co/o/n/resolve/main/x", None),
        (None, None),
        ("", None),
    ],
)
def test_hub_page_url(url: str | None, page: str | None) -> None:
    assert hub_page_url(url) == page


def test_gated_without_a_hub_url_still_says_what_to_do() -> None:
    text = describe(GatedError("gated", status=403, url=None))
    assert "gated" in text
    assert "accept its terms" in text
    assert "HF_TOKEN" in text


def test_describe_is_one_line_for_every_error() -> None:
    errors: list[BaseException] = [
        *TRANSIENT,
        IntegrityError("bad"),
        DiskFullError("full"),
        RateLimitedError("429", status=429),
        ServerBusyError("503", status=503),
        RuntimeError("oops"),
    ]
    for error in errors:
        text = describe(error)
        assert text
        assert "\n" not in text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"base_delay": -1.0},
        {"max_delay": float("nan")},
        {"retry_after_cap": -1.0},
        {"integrity_retries": -1},
        {"forbidden_redirect_retries": -1},
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_decisions_are_immutable_values() -> None:
    decision = decide(NetworkError("x"))
    assert isinstance(decision, Retry)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.delay = 0.0  # type: ignore[misc]
    assert decide(NetworkError("x")) == decision  # same seed, same inputs, same answer
