"""X-ray tubes and generator: limits, anode heat, duty and realistic scatter.

Heat units: HU = f * kVp * mA * s with f = 1.4 for a high-frequency
(constant-potential) generator (Bushberg et al., *The Essential Physics of
Medical Imaging*, 3rd ed., ch. 6: 1.0 single-phase, 1.35 three-phase, 1.4
high-frequency). The anode cools at a constant rate, a simplification of the
manufacturer's cooling curve that is conservative near full load. Duty: at
most ``duty_limit_s`` of exposure time in any ``duty_window_s`` (generator
practice, e.g. 5 s per 2 min).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from firmware_bridge import protocol as P


@dataclass(frozen=True)
class TubeLimits:
    """Rating of one tube/generator channel."""

    kv_min: float = 40.0
    kv_max: float = 150.0
    ma_min: float = 10.0
    ma_max: float = 1000.0
    ms_min: float = 1.0
    ms_max: float = 5000.0
    mas_max: float = 800.0
    power_kw_max: float = 100.0
    heat_capacity_hu: float = 300_000.0
    heat_factor: float = 1.4
    cooling_hu_per_s: float = 1_000.0

    def check(self, t: P.Technique) -> P.ErrorCode:
        """OK, or the first limit the technique breaks."""
        if not self.kv_min <= t.kv <= self.kv_max:
            return P.ErrorCode.KV_OUT_OF_RANGE
        if not self.ma_min <= t.ma <= self.ma_max:
            return P.ErrorCode.MA_OUT_OF_RANGE
        if not self.ms_min <= t.ms <= self.ms_max:
            return P.ErrorCode.TIME_OUT_OF_RANGE
        if t.mas > self.mas_max:
            return P.ErrorCode.MAS_OUT_OF_RANGE
        if t.kv * t.ma / 1000.0 > self.power_kw_max:
            return P.ErrorCode.POWER_OUT_OF_RANGE
        return P.ErrorCode.OK

    def heat_units(self, kv: float, ma: float, ms: float) -> float:
        return self.heat_factor * kv * ma * ms / 1000.0


class Anode:
    """Stored heat of one tube's anode, cooling at a constant rate (board time)."""

    def __init__(self, limits: TubeLimits) -> None:
        self.limits = limits
        self.hu = 0.0
        self._t = 0.0

    def update(self, board_t: float) -> None:
        dt = board_t - self._t
        if dt > 0:
            self.hu = max(0.0, self.hu - dt * self.limits.cooling_hu_per_s)
        self._t = board_t

    def add(self, hu: float) -> None:
        self.hu += hu

    def fits(self, hu: float) -> bool:
        return self.hu + hu <= self.limits.heat_capacity_hu

    @property
    def permille(self) -> int:
        return min(65535, round(1000 * self.hu / self.limits.heat_capacity_hu))


class DutyLog:
    """Exposure time in a sliding window (board time)."""

    def __init__(self, window_s: float = 120.0, limit_s: float = 5.0) -> None:
        self.window_s = window_s
        self.limit_s = limit_s
        self._log: deque[tuple[float, float]] = deque()

    def used(self, board_t: float) -> float:
        while self._log and self._log[0][0] < board_t - self.window_s:
            self._log.popleft()
        return sum(s for _, s in self._log)

    def fits(self, board_t: float, seconds: float) -> bool:
        return self.used(board_t) + seconds <= self.limit_s + 1e-9

    def add(self, board_t: float, seconds: float) -> None:
        self._log.append((board_t, seconds))

    def clear(self) -> None:
        self._log.clear()

    def permille(self, board_t: float) -> int:
        return min(65535, round(1000 * self.used(board_t) / self.limit_s))


@dataclass(frozen=True)
class Scatter:
    """Relative spread of the generator's actual output (1 SD), and skew model.

    Typical of a modern high-frequency generator: kV within ~1 %, mA ~2 %,
    timer ~0.3 %; both tubes fire from one trigger line, so their start skew
    is a few µs of logic and HV rise-time jitter.
    """

    kv_rel: float = 0.01
    ma_rel: float = 0.02
    ms_rel: float = 0.003
    skew_mean_us: float = 4.0
    skew_sd_us: float = 3.0

    def actual(self, rng: random.Random, t: P.Technique) -> tuple[float, float, float]:
        kv = t.kv * (1.0 + rng.gauss(0.0, self.kv_rel))
        ma = t.ma * (1.0 + rng.gauss(0.0, self.ma_rel))
        ms = t.ms * (1.0 + rng.gauss(0.0, self.ms_rel))
        return max(kv, 0.0), max(ma, 0.0), max(ms, 0.0)

    def skew_us(self, rng: random.Random) -> float:
        return abs(rng.gauss(self.skew_mean_us, self.skew_sd_us))
