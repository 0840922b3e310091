"""Quality-control checks and their limits: the one configuration place.

Codes and default limits are fixed by ``CONTRACT.md``; a site may tighten a
limit, never loosen it by default. Each check carries a sentence for the
technician, who must know before the patient leaves whether to retake.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class QCLimits:
    """Default limits of every QC code (CONTRACT.md; Kaptein et al. 2024 guideline)."""

    cage_visibility: float = 0.8  # found / expected, >=
    calibration_residual: float = 0.5  # RMS px, <=
    marker_count: int = 3  # patient markers, >=
    crossing_error: float = 0.2  # mm, <=
    segment_markers: int = 3  # fewest matched markers in a segment, >=
    mean_error: float = 0.35  # mm, <=
    condition_number: float = 150.0  # <=
    tube_skew: float = 500.0  # µs, <=


DEFAULT_LIMITS = QCLimits()


@dataclass(frozen=True)
class QCCheck:
    code: str
    view: str | None
    passed: bool
    value: float | None
    limit: float
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def at_least(
    code: str, view: str | None, value: float | None, limit: float, message: str
) -> QCCheck:
    """A check that passes when ``value >= limit`` (a missing value fails)."""
    return QCCheck(code, view, value is not None and value >= limit, value, limit, message)


def at_most(
    code: str, view: str | None, value: float | None, limit: float, message: str
) -> QCCheck:
    """A check that passes when ``value <= limit`` (a missing value fails)."""
    return QCCheck(code, view, value is not None and value <= limit, value, limit, message)


def verdict(checks: list[QCCheck]) -> dict:
    """The contract's ``qc`` object: ``pass`` when every check passed, else ``retake``."""
    return {
        "verdict": "pass" if checks and all(c.passed for c in checks) else "retake",
        "checks": [c.to_dict() for c in checks],
    }
