"""Pieces every benchmark uses: seed ranges, and simulated exam files on disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def parse_seeds(text: str) -> list[int]:
    """``"1-3"`` -> [1, 2, 3]; ``"1,4"`` -> [1, 4]."""
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(x) for x in text.split(",")]


def simulate_files(out: Path, region: str = "lower", seed: int = 1) -> Path:
    """Write one simulated exam (station.json, cage.json, A.dcm, B.dcm, truth.json)
    to ``out`` with the ``rsa-station simulate`` command, as a user would."""
    cmd = [sys.executable, "-m", "acquisition.cli", "simulate"]
    cmd += ["--region", region, "--seed", str(seed), "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    return out
