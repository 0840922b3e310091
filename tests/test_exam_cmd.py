"""``rsa-station exam --simulate``: one whole exam through the station's own code path
(serial link to the virtual controller, virtual detectors, cage check, reconstruction, QC)."""

import json
import subprocess
import sys

import numpy as np
import pydicom
import pytest


@pytest.fixture(scope="module")
def lower_exam(tmp_path_factory):
    out = tmp_path_factory.mktemp("exam") / "out"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "acquisition.cli",
            "exam",
            "--simulate",
            "--region",
            "lower",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    return p, out


def test_exam_writes_the_contract_files(lower_exam):
    p, out = lower_exam
    assert p.returncode == 0, p.stderr
    assert "verdict" in p.stdout and p.stderr == ""
    r = json.loads((out / "result.json").read_text())
    for key in ("views", "markers", "ambiguous", "qc"):
        assert key in r
    assert set(r["views"]) == {"A", "B"}
    for v in r["views"].values():
        for key in (
            "focus_mm",
            "calibration_rms_px",
            "cage_markers_expected",
            "cage_markers_found",
        ):
            assert key in v
    codes = [c["code"] for c in r["qc"]["checks"]]
    for code in (
        "cage_visibility",
        "calibration_residual",
        "marker_count",
        "crossing_error",
        "tube_skew",
    ):
        assert code in codes
    skew = next(c for c in r["qc"]["checks"] if c["code"] == "tube_skew")
    assert skew["value"] == pytest.approx(abs(r["exposure"]["skew_us"]))
    assert skew["limit"] == 500.0 and skew["passed"] == (skew["value"] <= 500.0)
    assert r["qc"]["verdict"] == (
        "pass" if all(c["passed"] for c in r["qc"]["checks"]) else "retake"
    )
    assert r["exam"]["procedure_code"] == "0350T"


def test_exam_images_are_the_linked_dx_pair(lower_exam):
    _, out = lower_exam
    a = pydicom.dcmread(out / "A.dcm")
    b = pydicom.dcmread(out / "B.dcm")
    assert a.Modality == b.Modality == "DX"
    assert a.StudyInstanceUID == b.StudyInstanceUID
    assert a.ReferencedImageSequence[0].ReferencedSOPInstanceUID == b.SOPInstanceUID
    assert (a.Rows, a.Columns) == (2400, 2000)  # full resolution, as the station file says
    r = json.loads((out / "result.json").read_text())
    # the actual technique the board reported is what the images carry
    assert float(a.KVP) == pytest.approx(r["exposure"]["tubes"]["A"]["kv"], abs=0.05)


def test_exam_result_matches_ground_truth(lower_exam):
    """The markers the station reports are the simulated patient's beads, and the skew is
    the one the virtual board measured for that exposure."""
    _, out = lower_exam
    r = json.loads((out / "result.json").read_text())
    truth = json.loads((out / "truth.json").read_text())
    assert truth["exposure_id"] == r["exposure"]["exposure_id"]
    beads = np.array([b["xyz_mm"] for b in truth["beads"]])
    assert len(r["markers"]) >= 3
    for m in r["markers"]:
        d = np.linalg.norm(beads - np.array(m["xyz_mm"]), axis=1).min()
        assert d < 0.3, (m["id"], d)
    assert r["tube_skew_us"] == pytest.approx(truth["trigger"]["skew_us"])
    for v in "AB":
        cc = r["cage_checks"][v]
        assert cc["cage_markers_expected"] > 0 and 0 <= cc["latency_s"] < 5.0


def test_exam_bad_region_is_a_usage_error():
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "acquisition.cli",
            "exam",
            "--simulate",
            "--region",
            "skull",
            "--out",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "invalid choice" in p.stderr
