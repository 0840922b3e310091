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


def test_reduction_by_powers_of_two_reads_the_frame_as_reduced_display_does():
    """2 x 2 steps in bands of rows: the area mean of detect.reduced_display up to the
    integer rounding of each step; bits above BitsStored cleared, LUT and inversion kept."""
    from reconstruction.cage_detect import reduced_display_pow2
    from reconstruction.detect import reduced_display
    from reconstruction.image import RawImage

    rng = np.random.default_rng(3)
    px = rng.integers(0, 1 << 14, size=(2397, 1999), dtype=np.uint16)
    for image in (
        RawImage(px, "MONOCHROME2", 14),
        RawImage(px | np.uint16(0xC000), "MONOCHROME1", 14, 2.0, -5.0),  # garbage high bits
        RawImage((px | np.uint16(0xC000)).astype(">u2"), "MONOCHROME2", 14),  # byte order
        RawImage(px.astype(np.uint32) | np.uint32(1 << 20), "MONOCHROME2", 14),
    ):
        for k in (1, 2, 4, 8):
            got = reduced_display_pow2(image, k)
            ref = reduced_display(image, k)
            assert got.dtype == np.float32 and got.shape == ref.shape
            # each 2 x 2 step may round to a stored unit (half a unit, x slope <= 2)
            assert np.max(np.abs(got - ref)) <= np.log2(k) + 1e-3
    with pytest.raises(ValueError):
        reduced_display_pow2(RawImage(px), 3)


def test_sparse_nonzero_is_find_non_zero():
    import cv2

    from reconstruction.cage_detect import _sparse_nonzero

    rng = np.random.default_rng(0)
    for shape in ((600, 500), (601, 499), (7, 3)):
        m = ((rng.random(shape) < 0.02) * 255).astype(np.uint8)
        m[-1, -1] = 255  # a pixel in the tail after the last whole 8-byte word
        r, c = _sparse_nonzero(m)
        nz = cv2.findNonZero(m).reshape(-1, 2)
        assert np.array_equal(r, nz[:, 1]) and np.array_equal(c, nz[:, 0])
    r, c = _sparse_nonzero(np.zeros((9, 9), np.uint8))
    assert len(r) == len(c) == 0


def test_cage_marker_centres_are_refined_to_a_fraction_of_a_pixel():
    """Candidates on the image reduced by 4, re-centred by the disc centroid at full
    resolution, both photometric interpretations."""
    from test_detect_synthetic import as_raw, render_beads

    from reconstruction.cage_detect import (
        cage_candidates,
        pow2_factor,
        reduced_display_pow2,
        refine_centres,
    )
    from reconstruction.detect import MarkerScale

    rng = np.random.default_rng(5)
    g = np.stack(np.meshgrid(np.arange(150, 2300, 160), np.arange(150, 1900, 160)), -1)
    true_rc = g.reshape(-1, 2) + rng.uniform(-0.5, 0.5, (g.size // 2, 2))
    counts, _ = render_beads((2400, 2000), true_rc, np.full(len(true_rc), 3.8), seed=2)
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        raw = as_raw(counts, photometric)
        scale = MarkerScale(0.8 * 3.8, 1.2 * 3.8)
        k = pow2_factor(scale)
        assert k == 4
        rc, _ = cage_candidates(reduced_display_pow2(raw, k), k, scale)
        fine = refine_centres(raw, rc, scale)
        d = np.linalg.norm(true_rc[:, None] - fine[None], axis=2)
        assert np.all(d.min(axis=1) < 0.25), "every marker found and centred"
        assert np.median(d.min(axis=1)) < 0.12


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
    """Guard at 4x the 10 ms target: generous for a loaded 2-core machine (the check
    takes 6-12 ms of CPU there, the figures are in docs/benchmarks.md) but it fails
    if the check falls back to, say, full-resolution processing (~100 ms and more).
    CPU time of the whole process (OpenCV's threads included), best of 7."""
    from acquisition.dicom_reader import read_raw_image
    from reconstruction.geometry import Station

    station = Station.from_dict(json.loads((sim_files / "station.json").read_text()))
    cage = Cage.from_dict(json.loads((sim_files / "cage.json").read_text()))
    image = read_raw_image(sim_files / "A.dcm")
    cage_check(station, cage, "A", image)
    best = float("inf")
    for _ in range(7):
        t0 = time.process_time()
        cage_check(station, cage, "A", image)
        best = min(best, time.process_time() - t0)
    assert best < 0.040, f"cage check took {1e3 * best:.1f} ms of CPU"


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
