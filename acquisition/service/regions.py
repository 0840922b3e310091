"""Exam regions: procedure codes and technique presets.

CPT category III codes for RSA (American Medical Association): 0348T spine,
0349T upper extremity, 0350T lower extremity. Presets are starting points the
technician adjusts per patient; both tubes of a stereo pair get the same
technique because the two views must look alike for the cage check.
"""

from __future__ import annotations

REGIONS = ("spine", "upper", "lower")

PROCEDURE_CODES = {"spine": "0348T", "upper": "0349T", "lower": "0350T"}

# kV, mA, ms per tube: the spine is thick, so the highest kV; the same values
# the simulator's phantoms are rendered with by default.
PRESETS: dict[str, dict[str, float]] = {
    "spine": {"kv": 85.0, "ma": 200.0, "ms": 40.0},
    "upper": {"kv": 70.0, "ma": 250.0, "ms": 40.0},
    "lower": {"kv": 65.0, "ma": 200.0, "ms": 50.0},
}


def preset_technique(region: str) -> dict[str, dict[str, float]]:
    p = PRESETS[region]
    return {"A": dict(p), "B": dict(p)}
