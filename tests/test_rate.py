"""The estimator's behaviour on scripted clocks (after gglib's rate.rs tests)."""

from __future__ import annotations

import pytest

from modelfetch.core.rate import RateEstimator

TICK = 0.25
MB = 1_000_000


def drive(
    est: RateEstimator, now: float, bytes_: int, rate: float, steps: int, total: int | None = None
) -> tuple[float, int]:
    """Feed `steps` ticks at `rate` bytes/s; returns the clock and the counter after them."""
    step = int(rate * TICK)
    for _ in range(steps):
        now += TICK
        bytes_ += step
        est.sample(bytes_, now)
        est.eta(total, bytes_)
    return now, bytes_


def test_first_sample_never_reports_a_rate() -> None:
    # A resumed download reports 2 GiB already on disk in its first sample.
    est = RateEstimator()
    est.sample(2 << 30, 100.0)
    assert est.speed is None
    assert est.eta(4 << 30, 2 << 30) is None


def test_a_resumed_start_is_not_counted_as_speed() -> None:
    est = RateEstimator()
    est.sample(0, 0.0)
    est.rebase(5 << 30, 0.1)  # the file turned out to be resumed from 5 GiB
    drive(est, 0.1, 5 << 30, 10 * MB, 40)
    speed = est.speed
    assert speed is not None
    assert speed == pytest.approx(10 * MB, rel=0.01)


def test_converges_to_a_constant_rate() -> None:
    est = RateEstimator()
    est.sample(0, 0.0)
    drive(est, 0.0, 0, 100 * MB, 240)
    speed = est.speed
    assert speed is not None
    assert abs(speed - 100 * MB) / (100 * MB) < 0.02


def test_bursty_input_reads_as_steady() -> None:
    # All of a 2 s window's bytes land in one 250 ms tick; the mean is 50 MB/s.
    est = RateEstimator()
    est.sample(0, 0.0)
    now, bytes_ = 0.0, 0
    readings: list[float] = []
    for i in range(320):
        now += TICK
        if i % 8 == 0:
            bytes_ += 100 * MB
        est.sample(bytes_, now)
        if i >= 240:  # the steady state over the last 20 s
            speed = est.speed
            assert speed is not None
            readings.append(speed)
    assert len(readings) == 80
    assert abs(min(readings) - 50 * MB) / (50 * MB) < 0.15
    assert abs(max(readings) - 50 * MB) / (50 * MB) < 0.15


def test_stall_decays_the_rate_toward_zero() -> None:
    est = RateEstimator()
    est.sample(0, 0.0)
    now, bytes_ = drive(est, 0.0, 0, 100 * MB, 120)
    before = est.speed
    assert before is not None
    for _ in range(240):  # 60 s without a byte, ticks still arriving
        now += TICK
        est.sample(bytes_, now)
    after = est.speed
    assert after is not None  # a real reading near zero, not "unknown"
    assert after < before * 0.05


def test_a_very_long_stall_reads_as_zero_not_unknown() -> None:
    est = RateEstimator()
    est.sample(0, 0.0)
    now, bytes_ = drive(est, 0.0, 0, 1 * MB, 20)
    est.sample(bytes_, now + 1e6)  # the decay underflows to exactly 0
    assert est.speed == 0.0


def test_no_bytes_during_warmup_is_unknown_not_zero() -> None:
    est = RateEstimator()
    est.sample(0, 0.0)
    for i in range(1, 20):
        est.sample(0, i * TICK)
    assert est.speed is None


def test_shard_boundary_does_not_disturb_the_rate() -> None:
    est = RateEstimator()
    est.sample(0, 0.0)
    now, _ = drive(est, 0.0, 0, 100 * MB, 160)
    before = est.speed
    assert before is not None
    est.sample(0, now + TICK)  # the per-file counter restarts at zero
    after = est.speed
    assert after is not None
    assert abs(after - before) / before < 0.10
    # ...and it keeps measuring from the new baseline.
    drive(est, now + TICK, 0, 100 * MB, 8)
    resumed = est.speed
    assert resumed is not None
    assert abs(resumed - 100 * MB) / (100 * MB) < 0.10


def test_bytes_reported_twice_at_the_same_instant_are_not_lost() -> None:
    est = RateEstimator(warmup=0.0)
    est.sample(0, 0.0)
    est.sample(10 * MB, 1.0)
    est.sample(20 * MB, 1.0)  # same instant: no time to divide by yet
    est.sample(20 * MB, 2.0)
    speed = est.speed
    assert speed is not None
    # Without the same-instant fix the second 10 MB would vanish and this would read ~5 MB/s.
    assert speed == pytest.approx(10 * MB, rel=1e-9)


def test_eta_is_none_until_a_rate_exists() -> None:
    est = RateEstimator()
    est.sample(0, 0.0)
    est.sample(1 * MB, 0.25)
    assert est.speed is None
    assert est.eta(1_000 * MB, 1 * MB) is None


def test_eta_counts_down_on_a_steady_transfer() -> None:
    est = RateEstimator()
    total = 10_000 * MB  # 10 GB at 100 MB/s = 100 s
    est.sample(0, 0.0)
    _, bytes_ = drive(est, 0.0, 0, 100 * MB, 240, total)
    eta = est.eta(total, bytes_)
    assert eta is not None
    assert abs(eta - 40.0) < 5.0  # 60 s in, 4 GB left at 100 MB/s


def test_eta_does_not_lag_behind_a_steady_countdown() -> None:
    # A plain EMA of a falling value trails it by ~eta_tau seconds; the count-down does not.
    est = RateEstimator()
    total = 10_000 * MB
    est.sample(0, 0.0)
    _, bytes_ = drive(est, 0.0, 0, 100 * MB, 240, total)
    eta = est.eta(total, bytes_)
    assert eta is not None
    assert abs(eta - 40.0) < 1.0


def test_eta_is_stable_when_asked_twice_without_a_sample() -> None:
    est = RateEstimator()
    total = 10_000 * MB
    est.sample(0, 0.0)
    _, bytes_ = drive(est, 0.0, 0, 100 * MB, 40, total)
    assert est.eta(total, bytes_) == est.eta(total, bytes_)


def test_eta_clears_on_completion() -> None:
    est = RateEstimator()
    total = 10_000 * MB
    est.sample(0, 0.0)
    now, bytes_ = drive(est, 0.0, 0, 100 * MB, 40, total)
    assert est.eta(total, bytes_) is not None
    est.sample(total, now + TICK)
    assert est.eta(total, total) is None


@pytest.mark.parametrize("total", [0, None])
def test_unknown_or_zero_total_yields_no_eta(total: int | None) -> None:
    est = RateEstimator()
    est.sample(0, 0.0)
    _, bytes_ = drive(est, 0.0, 0, 50 * MB, 40, total)
    assert est.speed is not None
    assert est.eta(total, bytes_) is None


def test_eta_grows_during_a_stall() -> None:
    est = RateEstimator()
    total = 10_000 * MB
    est.sample(0, 0.0)
    now, bytes_ = drive(est, 0.0, 0, 100 * MB, 80, total)
    before = est.eta(total, bytes_)
    assert before is not None
    for _ in range(120):
        now += TICK
        est.sample(bytes_, now)
        est.eta(total, bytes_)
    after = est.eta(total, bytes_)
    assert after is not None
    assert after > before


def test_idle_for_counts_from_the_last_increase() -> None:
    est = RateEstimator()
    assert est.idle_for(5.0) is None
    est.sample(100, 10.0)
    assert est.idle_for(12.0) == 2.0
    est.sample(200, 13.0)
    est.sample(200, 20.0)  # no new bytes
    assert est.idle_for(21.5) == 8.5
    est.sample(50, 22.0)  # backwards is not an increase
    assert est.idle_for(22.0) == 9.0
    assert est.idle_for(0.0) == 0.0  # never negative


def test_reset_forgets_everything() -> None:
    est = RateEstimator()
    est.sample(0, 0.0)
    drive(est, 0.0, 0, 100 * MB, 40, 10_000 * MB)
    est.reset()
    assert est.speed is None
    assert est.idle_for(100.0) is None
    est.sample(5 << 30, 100.0)  # a fresh baseline, not a jump of 5 GiB
    est.sample(5 << 30, 102.0)
    assert est.speed is None  # warm, but no bytes have moved since the reset


def test_invalid_time_constants_are_refused() -> None:
    with pytest.raises(ValueError):
        RateEstimator(tau=0)
    with pytest.raises(ValueError):
        RateEstimator(eta_tau=-1)
    with pytest.raises(ValueError):
        RateEstimator(warmup=-1)
