"""Real-time cage check: right identifications, verdict, overlay, command and speed guard."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from test_calibration import make_cage, make_station, perturb, render_view

from reconstruction.cagecheck import cage_check
from reconstruction.calibrate import casts_shadow, inside_image
from reconstruction.geometry import Cage
from reconstruction.overlay import draw_cage_check


@pytest.fixture(scope="module")
def synthetic():
    station, cage = make_station(), make_cage()
    truth = perturb(station, seed=11)
    raw, true_rc = render_view(truth["A"], cage.xyz_mm, [1.0] * len(cage.markers), seed=2)
    return station, cage, truth, raw, true_rc


def test_identifies_the_visible_cage_and_passes(synthetic):
    station, cage, truth, raw, true_rc = synthetic
    res = cage_check(station, cage, "A", raw)
    d = res.to_dict()
    assert set(d) == {
        "view",
        "cage_markers_expected",
        "cage_markers_found",
        "passed",
        "value",
        "limit",
        "message",
        "missing",
    }
    visible = casts_shadow(truth["A"], cage.xyz_mm) & inside_image(true_rc, truth["A"].detector, 10)
    assert abs(d["cage_markers_expected"] - visible.sum()) <= 2
    assert d["passed"] and d["value"] >= 0.95
    err = np.linalg.norm(res.detections_rc[res.det_idx] - true_rc[res.marker_idx], axis=1)
    assert np.all(err < 2.0), "every identification is the right marker"
    assert (
        d["message"]
        == f"{d['cage_markers_found']} of {d['cage_markers_expected']} cage markers found"
    )
    rgb = draw_cage_check(raw, res)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3


def test_a_cage_cut_off_fails_and_names_the_missing_markers(synthetic):
    station, cage, _truth, raw, true_rc = synthetic
    cut = raw.pixels.copy()
    # the tube was aimed off: half the field unexposed (flat, no markers)
    cut[:, : cut.shape[1] // 2 + 200] = np.median(cut)
    from reconstruction.image import RawImage

    res = cage_check(station, cage, "A", RawImage(cut, raw.photometric, raw.bits_stored))
    d = res.to_dict()
    assert not d["passed"] and d["value"] < 0.8
    gone = [cage.ids[i] for i in np.flatnonzero(true_rc[:, 1] < cut.shape[1] // 2 + 150)]
    assert set(gone) & set(d["missing"])


def test_unrelated_image_finds_nothing_and_fails():
    station, cage = make_station(), make_cage()
    from test_detect_synthetic import as_raw, render_beads

    counts, _ = render_beads((2400, 2000), np.array([[1200.0, 1000.0]]), np.array([4.0]))
    res = cage_check(station, cage, "B", as_raw(counts))
    assert not res.passed and res.found <= 2


simulator = pytest.importorskip("simulator.exam")


@pytest.fixture(scope="module")
def sim_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "acquisition.cli",
            "simulate",
            "--region",
            "lower",
            "--seed",
            "1",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return out


def test_simulated_frame_identifications_agree_with_truth(sim_files):
    truth = json.loads((sim_files / "truth.json").read_text())
    cage = Cage.from_dict(json.loads((sim_files / "cage.json").read_text()))
    out = sim_files / "check.json"
    png = sim_files / "check.png"
    t0 = time.perf_counter()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "acquisition.cli",
            "cage-check",
            "--station",
            str(sim_files / "station.json"),
            "--cage",
            str(sim_files / "cage.json"),
            "--view",
            "A",
            str(sim_files / "A.dcm"),
            "-o",
            str(out),
            "--overlay",
            str(png),
            "--repeat",
            "3",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert time.perf_counter() - t0 < 30
    d = json.loads(out.read_text())
    visible = sum(m["visible"]["A"] for m in truth["cage_markers"])
    assert d["passed"] and d["cage_markers_found"] >= 0.85 * visible
    assert set(d["missing"]) <= set(cage.ids)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_errors_are_one_line(sim_files, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "acquisition.cli",
            "cage-check",
            "--station",
            str(sim_files / "station.json"),
            "--cage",
            str(sim_files / "cage.json"),
            "--view",
            "A",
            str(tmp_path / "nope.dcm"),
            "-o",
            str(tmp_path / "c.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nope.dcm" in r.stderr
    assert "Traceback" not in r.stderr


def test_check_is_fast_enough_for_real_time(sim_files):
    """Generous guard only (shared, loaded machine); the figure is in docs/benchmarks.md."""
    from acquisition.dicom_reader import read_raw_image
    from reconstruction.geometry import Station

    station = Station.from_dict(json.loads((sim_files / "station.json").read_text()))
    cage = Cage.from_dict(json.loads((sim_files / "cage.json").read_text()))
    image = read_raw_image(sim_files / "A.dcm")
    cage_check(station, cage, "A", image)
    t0 = time.process_time()
    for _ in range(5):
        cage_check(station, cage, "A", image)
    assert (time.process_time() - t0) / 5 < 0.1


def test_overlay_legend_lines_do_not_overlap():
    """The title line and the legend are separate bands of ink with a clear row between."""
    from reconstruction.overlay import GREEN, _legend, legend_line_boxes

    items = [
        ("view B: 69 of 77 cage markers found (PASS) gjpqy", GREEN),
        ("green identified, red missing, yellow other blobs", (255, 255, 255)),
    ]
    rgb = np.full((200, 600, 3), 128, np.uint8)
    _legend(rgb, items)
    (t0, b0, _, w0), (t1, b1, _, w1) = legend_line_boxes(items)
    panel = rgb[0, 0].copy()
    assert np.all(panel < 128), "a darkened panel behind the text"
    area = rgb[: b1 + 3, : max(w0, w1) + 16]
    ink_rows = np.flatnonzero(np.any(area != panel, axis=(1, 2)))
    # ink rows form exactly two bands (one per line) separated by clear panel rows
    breaks = np.flatnonzero(np.diff(ink_rows) > 1)
    assert len(breaks) == 1, ink_rows
    first, second = ink_rows[: breaks[0] + 1], ink_rows[breaks[0] + 1 :]
    assert second.min() - first.max() >= 3, "a clear gap between the two lines"
    assert t0 - 1 <= first.min() and first.max() <= b0 + 1
    assert t1 - 1 <= second.min() and second.max() <= b1 + 1
