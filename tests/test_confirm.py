"""Confirming faint cage markers where the calibrated geometry puts them.

The test statistic must be calibrated (about unit spread where there is no
marker, under white and correlated noise), must see a faint marker of known
place and size, and must not see one in noise, on an edge or in texture.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_calibration import make_cage, make_station, perturb, shadow_radius_px
from test_detect_synthetic import as_raw, render_beads

from reconstruction.calibrate import casts_shadow, inside_image
from reconstruction.confirm import (
    confirm_markers,
    display_gatherer,
    marker_snr,
    window_half,
)
from reconstruction.lightweight import erfc
from reconstruction.pipeline import analyse_view

RADIUS = 3.5  # px, a 1 mm cage marker at 0.15 mm pixels
BLUR = 1.0


def noise_image(shape, sigma, b, rng):
    """White noise, or noise correlated as a detector's blur does: blurred by a
    Gaussian of sigma b, its correlation is exp(-d^2 / (4 b^2))."""
    z = rng.standard_normal(shape)
    if b > 0:
        z = cv2.GaussianBlur(z, (0, 0), b)
        z /= z.std()
    return sigma * z


def add_discs(img, centres, radius, contrast):
    rr, cc = np.mgrid[0 : img.shape[0], 0 : img.shape[1]].astype(float)
    out = img.copy()
    for r0, c0 in centres:
        sl = (slice(int(r0) - 12, int(r0) + 13), slice(int(c0) - 12, int(c0) + 13))
        rho = np.hypot(rr[sl] - r0, cc[sl] - c0)
        o = 0.5 * erfc((rho - radius) / (np.sqrt(2) * BLUR))
        out[sl] = out[sl] * (1 - o) + (out[sl] + contrast) * o
    return out


def grid(n, spacing=40, offset=30, jitter=0.5, rng=None):
    k = int(np.ceil(np.sqrt(n)))
    pts = np.array(
        [(offset + i * spacing, offset + j * spacing) for i in range(k) for j in range(k)]
    )
    pts = pts[:n].astype(float)
    if rng is not None:
        pts += rng.uniform(-jitter, jitter, pts.shape)
    return pts


@pytest.mark.parametrize("b", [0.0, 0.7])
def test_statistic_has_unit_spread_without_a_marker(b):
    rng = np.random.default_rng(1)
    img = 1000.0 + noise_image((1300, 1300), 20.0, b, rng)
    pts = grid(900, spacing=42, offset=25, rng=rng)
    gather = display_gatherer(img)
    win, centre = gather(pts, window_half(RADIUS))
    snr, misfit = marker_snr(win, centre, np.full(len(pts), RADIUS))
    assert 0.8 < np.std(snr) < 1.25, np.std(snr)
    assert abs(np.mean(snr)) < 0.15
    assert np.median(misfit) < 1.2
    assert not confirm_markers(gather, pts, np.full(len(pts), RADIUS)).any()


def test_a_faint_marker_at_its_place_is_seen_and_nothing_where_there_is_none():
    rng = np.random.default_rng(2)
    img = 1000.0 + noise_image((900, 900), 20.0, 0.7, rng)
    # a tilted background, as behind a shoulder
    img += np.add.outer(np.linspace(0, 300, 900), np.linspace(0, 150, 900))
    pts = grid(100, spacing=80, offset=40, rng=rng)
    with_marker = pts[::2]
    # 4 noise sigmas: a matched-filter SNR of about 9 under this correlation
    img = add_discs(img, with_marker, RADIUS, contrast=80.0)
    seen = confirm_markers(display_gatherer(img), pts, np.full(len(pts), RADIUS))
    assert seen[::2].mean() >= 0.95
    assert not seen[1::2].any()


def test_an_edge_or_texture_is_not_a_marker():
    rng = np.random.default_rng(3)
    rows = cols = 700
    img = 1000.0 + noise_image((rows, cols), 20.0, 0.7, rng)
    # texture: smooth structure ten times the pixel noise
    img += 200.0 * noise_image((rows, cols), 1.0, 4.0, rng)
    # and a metal border across the lower half
    rr, cc = np.mgrid[0:rows, 0:cols]
    img += np.where(rr + 0.3 * cc > 500, 3000.0, 0.0)
    pts = grid(200, spacing=45, offset=30, rng=rng)
    seen = confirm_markers(display_gatherer(img), pts, np.full(len(pts), RADIUS))
    assert not seen.any()


def test_faint_markers_are_counted_and_absent_ones_never():
    """Our own station (test_calibration): the lower 45 % of view A behind dense
    anatomy (under 1 % of the dose there), and 30 % of the cage markers in it
    truly absent (as behind metal). Faint markers are confirmed where the
    calibration puts them; an absent one never counts."""
    station, cage = make_station(), make_cage()
    truth = perturb(station, seed=7)
    view = truth["A"]
    rows, cols = view.detector.rows, view.detector.columns
    xyz = cage.xyz_mm
    rc = view.project(xyz)
    rad = shadow_radius_px(view, xyz, [1.0] * len(xyz))
    cut = int(0.55 * rows)
    band = rc[:, 0] > cut
    hidden = band & (np.random.default_rng(0).random(len(xyz)) < 0.3)
    keep = casts_shadow(view, xyz) & inside_image(rc, view.detector, -10) & ~hidden
    quanta, dense = 300.0, 2.2
    counts, _ = render_beads((rows, cols), rc[keep], rad[keep], quanta=quanta, seed=1)
    faint, _ = render_beads((rows, cols), rc[keep], rad[keep], quanta=dense, seed=2)
    counts[cut:] = faint[cut:] * quanta / dense
    raw = as_raw(counts, "MONOCHROME1")
    absent = set(np.flatnonzero(hidden).tolist())

    v = analyse_view("A", station, cage, raw, include_beads=False)
    confirmed = set(v.confirmed_marker_idx.tolist())
    assert len(confirmed) >= 5
    assert not confirmed & absent
    assert not set(v.found_marker_idx.tolist()) & absent
    assert v.n_found == len(
        (set(v.found_marker_idx.tolist()) | confirmed) & set(np.flatnonzero(v.expected))
    )
