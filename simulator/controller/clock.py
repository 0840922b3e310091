"""Clocks for the virtual sync controller.

The firmware is driven by a wall clock (seconds, monotonic) handed in by its
runner, so tests can inject a :class:`ManualClock`. Generator process times
(ready delay, exposure, prep timeout, backup timer, anode cooling, duty
window) run on *board time*, which advances ``scale`` times faster than the
wall clock; link timers (watchdog, hold dead-man, event retry) always run on
wall time because the host on the other side of the cable does.
"""

from __future__ import annotations

import threading
import time

#: ``clock=fast`` in a sim:// URL.
FAST_SCALE = 50.0


class RealClock:
    """Monotonic wall time."""

    def now(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to (unit tests)."""

    def __init__(self, start: float = 1000.0) -> None:
        self._t = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._t

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._t += seconds
            return self._t


class BoardTime:
    """Board time integrated from wall time at a (changeable) scale factor."""

    def __init__(self, wall_now: float, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ValueError(f"clock scale must be positive, not {scale}")
        self.scale = float(scale)
        self._wall = wall_now
        self.t = 0.0

    def update(self, wall_now: float) -> float:
        if wall_now > self._wall:
            self.t += (wall_now - self._wall) * self.scale
            self._wall = wall_now
        return self.t

    def set_scale(self, wall_now: float, scale: float) -> None:
        if scale <= 0:
            raise ValueError(f"clock scale must be positive, not {scale}")
        self.update(wall_now)
        self.scale = float(scale)

    def wall_at(self, board_t: float) -> float:
        """Wall time at which board time reaches ``board_t``."""
        return self._wall + max(0.0, board_t - self.t) / self.scale


def parse_clock(spec: str | float | None) -> float:
    """Scale factor from 'real', 'fast' or a number."""
    if spec is None or spec == "real":
        return 1.0
    if spec == "fast":
        return FAST_SCALE
    try:
        value = float(spec)
    except ValueError:
        raise ValueError(
            f"clock must be 'real', 'fast' or a positive number, not {spec!r}"
        ) from None
    if value <= 0:
        raise ValueError(f"clock scale must be positive, not {spec!r}")
    return value
