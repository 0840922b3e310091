"""Precision from double examinations, against a hand computation; the precision command."""

import json
import math
import subprocess
import sys

import pytest

from reconstruction.errors import InputError
from reconstruction.precision import precision


def _mig(t, r, mtpm, verdict="pass"):
    return {
        "method": "consistent-marker",
        "segments": {},
        "motion": {
            "segment": "implant",
            "relative_to": "bone",
            "translation_mm": list(t),
            "rotation_deg": list(r),
            "mtpm_mm": mtpm,
        },
        "qc": {"verdict": verdict, "checks": []},
    }


# Four double examinations; values chosen so the hand computation is short.
T = [(0.02, -0.01, 0.05), (-0.02, 0.03, -0.01), (0.04, 0.01, 0.02), (0.0, -0.03, -0.02)]
R = [(0.1, 0.0, -0.05), (-0.1, 0.05, 0.05), (0.05, -0.05, 0.0), (-0.05, 0.0, 0.0)]
M = [0.08, 0.06, 0.1, 0.04]


def test_precision_matches_hand_computation():
    p = precision([_mig(t, r, m) for t, r, m in zip(T, R, M, strict=True)])
    assert p["n"] == 4 and p["method"] == "consistent-marker" and p["excluded"] == []
    # x translation: values 0.02, -0.02, 0.04, 0.00 -> mean 0.01;
    # deviations 0.01, -0.03, 0.03, -0.01 -> squares sum 0.0020 -> SD sqrt(0.002/3).
    sd = math.sqrt(0.0020 / 3)
    tx = {k: v[0] for k, v in p["translation_mm"].items()}
    assert tx["mean"] == pytest.approx(0.01)
    assert tx["sd"] == pytest.approx(sd)
    assert tx["precision"] == pytest.approx(1.96 * sd)
    assert tx["lower"] == pytest.approx(0.01 - 1.96 * sd)
    assert tx["upper"] == pytest.approx(0.01 + 1.96 * sd)
    # RMS about zero: sqrt((4 + 4 + 16 + 0) e-4 / 4).
    assert tx["rms"] == pytest.approx(math.sqrt(24e-4 / 4))
    # 95% prediction interval, t(0.975, 3) = 3.182446305...
    assert tx["prediction"] == pytest.approx(3.182446305284263 * sd * math.sqrt(1.25))
    # y rotation: 0, 0.05, -0.05, 0 -> mean 0, SD sqrt(0.005/3).
    ry = {k: v[1] for k, v in p["rotation_deg"].items()}
    assert ry["mean"] == pytest.approx(0.0, abs=1e-15)
    assert ry["precision"] == pytest.approx(1.96 * math.sqrt(0.005 / 3))
    # MTPM: mean 0.07; deviations 0.01, -0.01, 0.03, -0.03 -> SD sqrt(0.002/3).
    assert p["mtpm_mm"]["mean"] == pytest.approx(0.07)
    assert p["mtpm_mm"]["upper"] == pytest.approx(0.07 + 1.96 * math.sqrt(0.002 / 3))
    json.dumps(p, allow_nan=False)


def test_unusable_migrations_are_excluded_and_listed():
    migs = [_mig(t, r, m) for t, r, m in zip(T, R, M, strict=True)]
    none = _mig(T[0], R[0], M[0])
    none["motion"] = None
    none["qc"]["verdict"] = "retake"
    bad_qc = _mig((5.0, 5.0, 5.0), (9.0, 9.0, 9.0), 9.0, verdict="retake")
    p = precision([migs[0], none, migs[1], bad_qc, migs[2], migs[3]])
    assert p["n"] == 4
    assert [e["index"] for e in p["excluded"]] == [1, 3]
    assert p["translation_mm"]["mean"][0] == pytest.approx(0.01)
    p2 = precision([*migs, bad_qc], include_retake=True)
    assert p2["n"] == 5 and p2["excluded"] == []


def test_too_few_or_wrong_inputs_are_input_errors():
    with pytest.raises(InputError, match="at least 2"):
        precision([_mig(T[0], R[0], M[0])])
    with pytest.raises(InputError, match="migration 2: missing key 'motion'"):
        precision([_mig(T[0], R[0], M[0]), {"method": "x", "segments": {}}])
    bad = _mig(T[0], R[0], M[0])
    bad["motion"]["rotation_deg"] = [1, 2]
    with pytest.raises(InputError, match=r"migration 1: motion\.rotation_deg"):
        precision([bad, _mig(T[1], R[1], M[1])])


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "acquisition.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_precision_command(tmp_path):
    paths = []
    for i, (t, r, m) in enumerate(zip(T, R, M, strict=True)):
        p = tmp_path / f"double{i}.migration.json"
        p.write_text(json.dumps(_mig(t, r, m)))
        paths.append(str(p))
    out = tmp_path / "precision.json"
    run = _cli("precision", *paths, "-o", str(out))
    assert run.returncode == 0, run.stderr
    res = json.loads(out.read_text())
    assert res["n"] == 4
    assert res["translation_mm"]["precision"][0] == pytest.approx(1.96 * math.sqrt(0.002 / 3))
    assert res["inputs"] == paths


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"markers": []}), "not a valid migration result: missing key"),
        (json.dumps([1, 2]), "not a valid migration result: expected a JSON object"),
    ],
)
def test_precision_command_bad_input_is_one_line_exit_2(tmp_path, content, fragment):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_mig(T[0], R[0], M[0])))
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    run = _cli("precision", str(good), str(bad), "-o", str(tmp_path / "p.json"))
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.json" in lines[0] and fragment in lines[0]
    assert not (tmp_path / "p.json").exists()
