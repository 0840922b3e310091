"""Cage identification and calibration on an independent synthetic station.

The station, cage and renderer here are our own small ones (not the
simulator's): a uniplanar set-up with two detectors side by side, an irregular
two-plane cage, and a geometry on the day drawn anywhere within the stated
tolerances. Other tests import the generators from here.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from test_detect_synthetic import as_raw, render_beads

from reconstruction.cage_id import identify
from reconstruction.calibrate import PoseModel, calibrate, casts_shadow, inside_image
from reconstruction.detect import MarkerScale, detect_markers
from reconstruction.geometry import Cage, CageMarker, Detector, Station, Tolerance, ViewGeometry

SP = 0.15


def make_station(rows: int = 2400, cols: int = 2000, sp: float = SP) -> Station:
    views = {}
    for name, sx in (("A", -1.0), ("B", 1.0)):
        centre = np.array([-sx * 150.0, 0.0, -20.0])
        rc, cc = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
        origin = centre - (cols - 1) / 2 * sp * rc - (rows - 1) / 2 * sp * cc
        det = Detector(origin, rc, cc, np.array([sp, sp]), rows, cols)
        views[name] = ViewGeometry(np.array([sx * 600.0, 0.0, 1500.0]), det)
    return Station("synthetic", views, Tolerance(60.0, 3.0, 1.0))


def make_cage(seed: int = 0) -> Cage:
    rng = np.random.default_rng(seed)
    markers = []
    for i, (x, y) in enumerate(
        np.array(np.meshgrid(np.arange(-300, 301, 40), np.arange(-150, 151, 50))).reshape(2, -1).T
    ):
        j = rng.uniform(-6, 6, 2)
        markers.append(
            CageMarker(f"F{i + 1}", np.array([x + j[0], y + j[1], 0.0]), "fiducial", 1.0)
        )
    for i, (x, y) in enumerate(
        np.array(np.meshgrid(np.arange(-270, 271, 60), np.arange(-150, 151, 60))).reshape(2, -1).T
    ):
        j = rng.uniform(-8, 8, 2)
        markers.append(
            CageMarker(f"C{i + 1}", np.array([x + j[0], y + j[1], 175.0]), "control", 1.0)
        )
    return Cage("synthetic-two-plane", tuple(markers))


def perturb(station: Station, seed: int, frac: float = 1.0) -> dict[str, ViewGeometry]:
    """A geometry on the day: every view off by up to ``frac`` of the tolerances."""
    rng = np.random.default_rng(seed)
    tol = station.tolerance
    out = {}
    for name, v in station.views.items():

        def ball(r):
            d = rng.standard_normal(3)
            return d / np.linalg.norm(d) * r * rng.uniform(0.6, 1.0) * frac

        rot = Rotation.from_rotvec(np.radians(ball(tol.detector_deg)))
        det = v.detector
        c0 = det.center_mm
        origin = c0 + ball(tol.detector_mm) + rot.apply(det.origin_mm - c0)
        d2 = Detector(
            origin,
            rot.apply(det.row_cosines),
            rot.apply(det.column_cosines),
            det.pixel_spacing_mm,
            det.rows,
            det.columns,
        )
        out[name] = ViewGeometry(v.focus_mm + ball(tol.focus_mm), d2)
    return out


def shadow_radius_px(view: ViewGeometry, xyz: np.ndarray, diameter_mm) -> np.ndarray:
    n = view.detector.normal
    sid = abs((view.detector.origin_mm - view.focus_mm) @ n)
    sod = np.abs((xyz - view.focus_mm) @ n)
    return 0.5 * np.asarray(diameter_mm) * sid / sod / view.detector.pixel_spacing_mm.mean()


def render_view(
    view,
    points,
    diameters,
    *,
    quanta=300.0,
    seed=0,
    photometric="MONOCHROME1",
    texture=0.0,
    noiseless=False,
):
    """Render the shadows of spheres (cage markers, beads) on a view's detector."""
    counts = shadow_counts(
        view, points, diameters, quanta=quanta, seed=seed, texture=texture, noiseless=noiseless
    )
    return as_raw(counts, photometric), view.project(points)


def shadow_counts(view, points, diameters, **render) -> np.ndarray:
    """Detector counts of the spheres' shadows on ``view`` (render_beads' keywords;
    pixel_mm defaults to the station's SP)."""
    det = view.detector
    rc = view.project(points)
    rad = shadow_radius_px(view, points, diameters)
    vis = casts_shadow(view, points) & inside_image(rc, det, -10)
    render.setdefault("pixel_mm", SP)
    counts, _ = render_beads((det.rows, det.columns), rc[vis], rad[vis], **render)
    return counts


def cage_scale(view: ViewGeometry, cage: Cage) -> MarkerScale:
    r = shadow_radius_px(view, cage.xyz_mm, [m.diameter_mm for m in cage.markers])
    return MarkerScale(0.8 * r.min(), 1.25 * r.max())


@pytest.fixture(scope="module")
def setup():
    station, cage = make_station(), make_cage()
    truth = perturb(station, seed=7)
    imgs = {
        k: render_view(truth[k], cage.xyz_mm, [1.0] * len(cage.markers), seed=i)
        for i, k in enumerate("AB")
    }
    return station, cage, truth, imgs


@pytest.mark.parametrize("view", ["A", "B"])
def test_identification_and_calibration_recover_the_day_geometry(setup, view):
    station, cage, truth, imgs = setup
    raw, true_rc = imgs[view]
    model = PoseModel(station.views[view], station.tolerance)
    det = detect_markers(raw, cage_scale(station.views[view], cage))
    ident = identify(model, cage.xyz_mm, det.rc)
    visible = casts_shadow(truth[view], cage.xyz_mm) & inside_image(
        true_rc, truth[view].detector, 12
    )
    # every identification is right, and nearly every visible marker is identified
    err = np.linalg.norm(det.rc[ident.det_idx] - true_rc[ident.marker_idx], axis=1)
    assert np.all(err < 1.0)
    assert len(ident.marker_idx) >= 0.97 * visible.sum()
    cal = calibrate(
        model, cage.xyz_mm[ident.marker_idx], det.rc[ident.det_idx], det.sigma_px[ident.det_idx]
    )
    assert np.linalg.norm(cal.view.focus_mm - truth[view].focus_mm) < 1.0
    assert cal.rms_px < 0.15
    assert cal.inliers.mean() > 0.97
    # the calibrated view reprojects anything to well under a tenth of a pixel
    pts = np.random.default_rng(0).uniform([-60, -60, 40], [60, 60, 160], (50, 3))
    assert np.abs(cal.view.project(pts) - truth[view].project(pts)).max() < 0.1
