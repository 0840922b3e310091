"""``rsa-station reconstruct``: contract JSON, exit status, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("simulator.exam")


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "acquisition.cli", *map(str, args)], capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    r = cli("simulate", "--region", "lower", "--seed", "1", "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def test_writes_the_contract_result(sim):
    out = sim / "result.json"
    r = cli(
        "reconstruct",
        "--station",
        sim / "station.json",
        "--cage",
        sim / "cage.json",
        sim / "A.dcm",
        sim / "B.dcm",
        "-o",
        out,
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert set(d) >= {"views", "markers", "ambiguous", "qc"}
    for v in "AB":
        assert set(d["views"][v]) >= {
            "focus_mm",
            "calibration_rms_px",
            "cage_markers_expected",
            "cage_markers_found",
        }
    for m in d["markers"]:
        assert set(m) >= {"id", "xyz_mm", "crossing_mm", "image_px"}
        assert set(m["image_px"]) == {"A", "B"}
    assert d["qc"]["verdict"] in ("pass", "retake")
    assert [c["code"] for c in d["qc"]["checks"]] == [
        "cage_visibility",
        "cage_visibility",
        "calibration_residual",
        "calibration_residual",
        "marker_count",
        "crossing_error",
    ]
    for c in d["qc"]["checks"]:
        assert set(c) == {"code", "view", "passed", "value", "limit", "message"}


def test_a_linear_for_processing_exam_gives_the_log_exams_markers(sim, tmp_path):
    # the same exposure written "for processing", stored linear in the intensity
    # (Pixel Intensity Relationship LIN): read from the DICOM files and taken to
    # the logarithm, it gives the log exam's markers
    lin = tmp_path / "lin"
    r = cli(
        "simulate", "--region", "lower", "--seed", "1", "--linear", "--for-processing", "--out", lin
    )
    assert r.returncode == 0, r.stderr
    results = {}
    for name, d in (("log", sim), ("lin", lin)):
        out = tmp_path / f"{name}.json"
        args = ["--station", d / "station.json", "--cage", d / "cage.json"]
        r = cli("reconstruct", *args, d / "A.dcm", d / "B.dcm", "-o", out)
        assert r.returncode == 0, r.stderr
        results[name] = json.loads(out.read_text())
    log_m, lin_m = results["log"]["markers"], results["lin"]["markers"]
    assert results["lin"]["qc"]["verdict"] == "pass"
    assert len(lin_m) == len(log_m) >= 8
    for a, b in zip(log_m, lin_m, strict=True):
        d = sum((x - y) ** 2 for x, y in zip(a["xyz_mm"], b["xyz_mm"], strict=True)) ** 0.5
        assert d <= 0.05, (a["id"], d)


def test_views_swapped_is_not_an_error_but_a_retake(sim, tmp_path):
    out = tmp_path / "r.json"
    r = cli(
        "reconstruct",
        "--station",
        sim / "station.json",
        "--cage",
        sim / "cage.json",
        sim / "B.dcm",
        sim / "A.dcm",
        "-o",
        out,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["qc"]["verdict"] == "retake"


@pytest.mark.parametrize(
    "case", ["missing", "not_dicom", "bad_json", "wrong_kind", "size", "truncated_j2k"]
)
def test_unusable_input_exits_2_with_one_line(sim, tmp_path, case):
    station, cage = sim / "station.json", sim / "cage.json"
    a, b = sim / "A.dcm", sim / "B.dcm"
    if case == "missing":
        a = tmp_path / "none.dcm"
    elif case == "not_dicom":
        a = tmp_path / "x.dcm"
        a.write_text("not an image")
    elif case == "bad_json":
        station = tmp_path / "s.json"
        station.write_text("{")
    elif case == "wrong_kind":
        cage = tmp_path / "c.json"
        cage.write_text('{"markers": 3}')
    elif case == "size":
        st = json.loads((sim / "station.json").read_text())
        st["views"]["A"]["detector"]["rows"] += 2
        station = tmp_path / "s.json"
        station.write_text(json.dumps(st))
    elif case == "truncated_j2k":
        # compressed pixel data cut in half: pydicom only warns; it must be one error line
        import pydicom
        from pydicom.uid import JPEG2000Lossless

        ds = pydicom.dcmread(sim / "A.dcm")
        try:
            ds.compress(JPEG2000Lossless)
        except Exception as exc:
            pytest.skip(f"cannot encode JPEG 2000 here: {exc}")
        full = tmp_path / "j2k.dcm"
        ds.save_as(full)
        raw = full.read_bytes()
        a = tmp_path / "cut-j2k.dcm"
        a.write_bytes(raw[: len(raw) // 2])
    r = cli("reconstruct", "--station", station, "--cage", cage, a, b, "-o", tmp_path / "o.json")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "o.json").exists()
    if case == "truncated_j2k":
        assert "truncated pixel data" in r.stderr and str(a) in r.stderr, r.stderr
