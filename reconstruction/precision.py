"""Precision of RSA migration measurement from double examinations.

A double examination is two exams of the same patient minutes apart, the
patient repositioned in between: the true migration between them is zero, so
the migration measured between them is pure measurement error. Following the
RSA guideline (Kaptein et al., Acta Orthop 2024, after Valstar et al. 2005 and
ISO 16087), precision is reported per axis as 1.96 x SD of the N double-exam
migrations, with the systematic error (mean, bias) and the 95% limits
mean ± 1.96 SD.

What is computed, for each translation axis (mm), rotation axis (degrees) and
MTPM (mm), over the N usable double examinations with values x_1..x_N:

- ``mean`` = (1/N) Σ x_i (bias; ideally zero),
- ``sd`` = sqrt(Σ (x_i - mean)² / (N - 1)) (sample SD, n − 1 denominator),
- ``precision`` = 1.96 · sd,
- ``lower`` = mean − 1.96 · sd, ``upper`` = mean + 1.96 · sd (95% limits),
- ``rms`` = sqrt((1/N) Σ x_i²) (error about the true zero, bias included),
- ``prediction`` = t(0.975, N − 1) · sd · sqrt(1 + 1/N): half-width of the 95%
  prediction interval of one further double exam, which small N widens.

MTPM is a length, never negative, so its mean is not a bias: its useful
figure is ``upper``. Migrations whose ``motion`` is null, or whose QC verdict
is ``retake`` (ME or CN over the limit, too few markers), are left out and
listed under ``excluded``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import t as student_t

from reconstruction.errors import InputError

Z95 = 1.96
AXES = ("x", "y", "z")


def _vector(v: Any, n: int, what: str) -> np.ndarray:
    try:
        arr = np.asarray(v, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{what}: expected {n} numbers, got {v!r}") from None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise InputError(f"{what}: expected {n} finite numbers, got {v!r}")
    return arr


def parse_migration(d: Any, what: str = "migration result") -> dict:
    """Validate one migration result dict (CONTRACT.md); returns it unchanged.

    Raises InputError naming ``what`` when it is not a migration result.
    """
    try:
        return check_migration(d)
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from None


def check_migration(d: Any) -> dict:
    """:func:`parse_migration` with messages that do not name the input (for file loaders)."""
    if not isinstance(d, dict):
        raise InputError(f"expected a JSON object, got {type(d).__name__}")
    for key in ("method", "segments", "motion"):
        if key not in d:
            raise InputError(f"missing key {key!r} (not a migration result)")
    m = d["motion"]
    if m is not None:
        if not isinstance(m, dict):
            raise InputError("motion: expected an object or null")
        for key in ("translation_mm", "rotation_deg", "mtpm_mm"):
            if key not in m:
                raise InputError(f"motion: missing key {key!r}")
        _vector(m["translation_mm"], 3, "motion.translation_mm")
        _vector(m["rotation_deg"], 3, "motion.rotation_deg")
        _vector([m["mtpm_mm"]], 1, "motion.mtpm_mm")
    return d


def _stats(x: np.ndarray) -> dict:
    """Column statistics of ``x`` (N, k): see the module docstring."""
    n = len(x)
    mean = x.mean(axis=0)
    sd = x.std(axis=0, ddof=1)
    tq = float(student_t.ppf(0.975, n - 1))
    return {
        "mean": mean.tolist(),
        "sd": sd.tolist(),
        "precision": (Z95 * sd).tolist(),
        "lower": (mean - Z95 * sd).tolist(),
        "upper": (mean + Z95 * sd).tolist(),
        "rms": np.sqrt((x**2).mean(axis=0)).tolist(),
        "prediction": (tq * sd * np.sqrt(1 + 1 / n)).tolist(),
    }


def precision(migrations: list[dict], *, include_retake: bool = False) -> dict:
    """Precision from N double-examination migration results.

    Parameters
    ----------
    migrations : list of dict
        The contract's migration JSON of each double examination.
    include_retake : bool
        Also use migrations whose QC verdict is ``retake`` (their motion must
        still be present).

    Returns
    -------
    dict
        ``n``, ``method`` (the migration method(s) of the inputs), ``sd``
        ("sample, n-1"), per-axis statistics for ``translation_mm`` and
        ``rotation_deg`` (lists in x, y, z order) and for ``mtpm_mm`` (numbers),
        each with ``mean``, ``sd``, ``precision`` (1.96 SD), ``lower``,
        ``upper`` (mean ∓ 1.96 SD), ``rms``, ``prediction``; and ``excluded``.

    Raises
    ------
    InputError
        An item is not a migration result, or fewer than 2 are usable.
    """
    if not isinstance(migrations, list):
        raise InputError("precision: expected a list of migration results")
    used, excluded, methods = [], [], []
    for i, m in enumerate(migrations):
        parse_migration(m, f"migration {i + 1}")
        qc = m.get("qc")
        v = qc.get("verdict") if isinstance(qc, dict) else None
        if m["motion"] is None:
            excluded.append({"index": i, "reason": "no motion (too few markers)"})
        elif v == "retake" and not include_retake:
            excluded.append({"index": i, "reason": "QC verdict retake"})
        else:
            used.append(m)
            if m["method"] not in methods:
                methods.append(m["method"])
    if len(used) < 2:
        why = "".join(f"; migration {e['index'] + 1}: {e['reason']}" for e in excluded)
        raise InputError(
            f"precision needs at least 2 usable double-examination migrations, got {len(used)}"
            f" of {len(migrations)}{why}"
        )
    tr = np.array([m["motion"]["translation_mm"] for m in used], dtype=float)
    rot = np.array([m["motion"]["rotation_deg"] for m in used], dtype=float)
    mtpm = np.array([[m["motion"]["mtpm_mm"]] for m in used], dtype=float)
    mt = {k: v[0] for k, v in _stats(mtpm).items()}
    return {
        "n": len(used),
        "method": methods[0] if len(methods) == 1 else methods,
        "sd": "sample standard deviation (n - 1)",
        "axes": list(AXES),
        "translation_mm": _stats(tr),
        "rotation_deg": _stats(rot),
        "mtpm_mm": mt,
        "excluded": excluded,
    }
