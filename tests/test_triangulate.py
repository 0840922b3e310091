"""Triangulation on the common perpendicular: midpoint for equal precision, the
weighted least-squares point for unequal, the crossing distance either way."""

from __future__ import annotations

import numpy as np
from test_calibration import make_station

from reconstruction.pipeline import triangulate_pairs
from reconstruction.triangulate import common_perpendicular, midpoint, point_between


def _trials(sig_a_px: float, sig_b_px: float, n: int = 4000, seed: int = 7):
    station = make_station()
    va, vb = station.views["A"], station.views["B"]
    rng = np.random.default_rng(seed)
    xyz = rng.uniform([-40, -40, 60], [40, 40, 140], size=(n, 3))
    ra = va.project(xyz) + rng.normal(0, sig_a_px, (n, 2))
    rb = vb.project(xyz) + rng.normal(0, sig_b_px, (n, 2))
    mid, cross = midpoint(va, ra, vb, rb)
    weighted, cross_w, _ = triangulate_pairs(
        va, ra, np.full(n, sig_a_px), vb, rb, np.full(n, sig_b_px)
    )
    return xyz, mid, weighted, cross, cross_w


def _rms(a, b):
    return float(np.sqrt(np.mean(np.sum((a - b) ** 2, axis=1))))


def test_equal_precision_gives_the_midpoint():
    _xyz, mid, weighted, cross, cross_w = _trials(0.1, 0.1)
    assert np.allclose(weighted, mid, atol=1e-12)
    assert np.array_equal(cross, cross_w)


def test_unequal_precision_lands_nearer_the_better_line_and_is_more_accurate():
    """View B three times less precise: across the epipolar plane the midpoint's
    variance is (sa^2 + sb^2) / 4 = 2.5 sa^2, the weighted point's
    sa^2 sb^2 / (sa^2 + sb^2) = 0.9 sa^2; within the plane both are the lines'
    intersection. The error across the lines must shrink by sqrt(0.9 / 2.5); the 3D
    RMS error, which the depth within the plane dominates at this +-21 degree
    set-up, by less (measured 0.060 -> 0.057 mm); the crossing distance (the sync
    check) must not change."""
    xyz, mid, weighted, cross, cross_w = _trials(0.1, 0.3)
    e_mid, e_w = _rms(mid, xyz), _rms(weighted, xyz)
    assert e_w < e_mid, (e_w, e_mid)
    assert np.array_equal(cross, cross_w)
    # the component across the lines (along the common perpendicular) alone
    station = make_station()
    _fa, da = station.views["A"].ray_through(station.views["A"].project(xyz))
    _fb, db = station.views["B"].ray_through(station.views["B"].project(xyz))
    across = np.cross(da, db)
    across /= np.linalg.norm(across, axis=1, keepdims=True)
    c_mid = np.sum((mid - xyz) * across, axis=1)
    c_w = np.sum((weighted - xyz) * across, axis=1)
    ratio = np.std(c_w) / np.std(c_mid)
    assert abs(ratio - np.sqrt(0.9 / 2.5)) < 0.05, ratio


def test_unknown_sigmas_give_the_midpoint():
    station = make_station()
    va, vb = station.views["A"], station.views["B"]
    xyz = np.array([[0.0, 5.0, 100.0], [10.0, -5.0, 80.0]])
    ra, rb = va.project(xyz) + 0.3, vb.project(xyz) - 0.2
    mid, _ = midpoint(va, ra, vb, rb)
    pa, pb = common_perpendicular(va, ra, vb, rb)
    got = point_between(pa, pb, np.array([np.nan, np.inf]), np.array([0.01, np.inf]))
    assert np.allclose(got, mid, atol=1e-12)
