"""Download speed and time remaining: the one estimator every renderer shows verbatim.

Bytes and elapsed time are decayed separately and the speed is their ratio:

    decay     = exp(-dt / tau)
    acc_bytes = acc_bytes * decay + delta_bytes
    acc_secs  = acc_secs  * decay + dt
    speed     = acc_bytes / acc_secs

A burst of bytes adds to both sums, so it weighs exactly its share and never spikes the reading;
a tick without bytes still adds time, so a stall pulls the speed toward zero instead of freezing
it. That is why `sample` must be called on every tick, moving or not.

The first sample is only a baseline: a resumed download starts with gigabytes already on disk,
which did not arrive "just now". A counter that goes backwards (a file restarted from zero, a
shard boundary on a per-file counter) re-baselines without a sample and keeps the average.

Clock values are plain floats in seconds from any monotonic clock; the caller reads the clock.
"""

from __future__ import annotations

import math

__all__ = ["RateEstimator"]


class RateEstimator:
    """Time-decayed speed (bytes/s) and a smoothed ETA for one byte counter."""

    __slots__ = (
        "_acc_bytes",
        "_acc_secs",
        "_counted_bytes",
        "_eta",
        "_eta_at",
        "_eta_tau",
        "_last_increase_at",
        "_prev_at",
        "_prev_bytes",
        "_tau",
        "_warmup",
    )

    def __init__(self, tau: float = 15.0, warmup: float = 1.5, eta_tau: float = 5.0) -> None:
        """`tau`: how many recent seconds the speed reflects (long: bursty input reads steady).
        `warmup`: observed seconds before any speed is reported. `eta_tau`: ETA smoothing."""
        if not (tau > 0 and eta_tau > 0 and warmup >= 0):
            raise ValueError("tau and eta_tau must be > 0 and warmup >= 0")
        self._tau = tau
        self._warmup = warmup
        self._eta_tau = eta_tau
        self._acc_bytes = 0.0
        self._acc_secs = 0.0
        self._counted_bytes = False
        self._prev_bytes: int | None = None
        self._prev_at = 0.0
        self._last_increase_at: float | None = None
        self._eta: float | None = None
        self._eta_at = 0.0

    def reset(self) -> None:
        """Forget everything, as if just created."""
        self._acc_bytes = 0.0
        self._acc_secs = 0.0
        self._counted_bytes = False
        self._prev_bytes = None
        self._prev_at = 0.0
        self._last_increase_at = None
        self._eta = None
        self._eta_at = 0.0

    def sample(self, downloaded: int, now: float) -> None:
        """Record the cumulative byte count at `now`. Call on every tick, even without new bytes."""
        prev = self._prev_bytes
        if prev is None:
            self._rebase(downloaded, now)
            self._last_increase_at = now
            return
        if downloaded < prev:
            self._rebase(downloaded, now)
            return
        if downloaded > prev:
            self._last_increase_at = now
        dt = now - self._prev_at
        if dt <= 0:
            # No time has passed: keep the old baseline so these bytes are counted, with the
            # time they took, at the next sample.
            return
        decay = math.exp(-dt / self._tau)
        delta = downloaded - prev
        self._acc_bytes = self._acc_bytes * decay + delta
        self._acc_secs = self._acc_secs * decay + dt
        self._counted_bytes = self._counted_bytes or delta > 0
        self._prev_bytes = downloaded
        self._prev_at = now

    def rebase(self, downloaded: int, now: float) -> None:
        """Take `downloaded` as the new baseline without counting the jump as speed.

        For a counter that moved for a reason other than transfer, e.g. a group's aggregate when
        one of its files starts by resuming bytes already on disk. The average is kept.
        """
        if self._prev_bytes is None:
            self._last_increase_at = now
        self._rebase(downloaded, now)

    def _rebase(self, downloaded: int, now: float) -> None:
        self._prev_bytes = downloaded
        self._prev_at = now

    @property
    def speed(self) -> float | None:
        """Bytes per second; None until `warmup` seconds were observed and bytes have moved.

        Once bytes have moved, a stall decays the speed toward 0 (and may end at a real 0.0).
        """
        if self._acc_secs < self._warmup or self._acc_secs <= 0:
            return None
        rate = self._acc_bytes / self._acc_secs
        if math.isfinite(rate) and rate > 0:
            return rate
        return 0.0 if self._counted_bytes else None

    def eta(self, total: int | None, downloaded: int) -> float | None:
        """Seconds remaining; None when `total` is unknown or 0, when done, or with no speed.

        Smoothed: the previous estimate is counted down by the time between samples, then
        pulled toward the raw `remaining / speed` with weight 1 - exp(-dt / eta_tau). The
        count-down keeps a steady transfer's ETA from lagging behind the truth. Asking twice
        without a new sample gives the same answer.
        """
        if total is None or total <= 0 or downloaded >= total:
            self._eta = None
            return None
        rate = self.speed
        if not rate:
            self._eta = None
            return None
        raw = (total - downloaded) / rate
        at = self._prev_at
        if self._eta is None:
            self._eta = raw
        else:
            dt = at - self._eta_at
            if dt > 0:
                predicted = max(self._eta - dt, 0.0)
                alpha = 1.0 - math.exp(-dt / self._eta_tau)
                self._eta = predicted + alpha * (raw - predicted)
        self._eta_at = at
        return self._eta

    def idle_for(self, now: float) -> float | None:
        """Seconds since the counter last increased (or since the baseline); None before it."""
        if self._last_increase_at is None:
            return None
        return max(0.0, now - self._last_increase_at)
