"""Beads over an implant's metal band: the band model, and the search along epipolar lines.

Synthetic windows hold the estimator to its own model (no bias, an honest
sigma, where the plain disc fit runs onto the metal); simulated exams hold the
search to ground truth: implant beads lost before the sixth session are found
within tens of micrometres, and no bead is guessed where two fit one line.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf, erfc

from reconstruction.band import _Design, _knot_of, fit_on_band
from reconstruction.detect import MarkerScale, _window_noise, fit_markers
from reconstruction.geometry import Cage, Station
from reconstruction.pipeline import reconstruct

TRUE = np.array([60.3, 59.7])
SCALE = MarkerScale(2.0, 5.0)


def _bead_on_band(rng, theta_deg=10.0, offset=1.5, noise=57.0, n=121):
    """A 4 px opaque bead (blur 1 px) on an 8 px wide metal bar of height 450,
    1.5 px off the bar's axis, over a sloped background (display units)."""
    r, c = np.mgrid[0:n, 0:n].astype(float)
    th = np.radians(theta_deg)
    a = np.cos(th) * (r - TRUE[0]) + np.sin(th) * (c - TRUE[1]) - offset
    t = -np.sin(th) * (r - TRUE[0]) + np.cos(th) * (c - TRUE[1])
    bar = 0.5 * (erf((a + 4.0) / np.sqrt(2)) - erf((a - 4.0) / np.sqrt(2)))
    background = 100 + 0.5 * r + 450.0 * bar * (1 + 0.002 * t)
    occ = 0.5 * erfc((np.hypot(r - TRUE[0], c - TRUE[1]) - 4.0) / np.sqrt(2))
    return background * (1 - occ) + 800.0 * occ + rng.normal(0, noise, (n, n))


def _band_fit(img, start):
    h = SCALE.half_window
    ci = np.rint(start).astype(int)
    noise = float(_window_noise(img[None, ci[0] - h : ci[0] + h + 1, ci[1] - h : ci[1] + h + 1])[0])
    return fit_on_band(img, start, 3.5, (1.0, 7.5), h, noise)


def test_the_sparse_design_is_the_dense_one():
    """The band's design is kept sparse (sums over pixels): its products must be
    those of the explicit matrix [h(a) c, h(a) c t, o] times the weights."""
    rng = np.random.default_rng(3)
    m, knots = 300, np.arange(-6.0, 7.0)
    k = len(knots)
    left, frac = _knot_of(rng.uniform(-7, 7, m), knots)
    clear, tl, occ, w = (
        rng.uniform(0, 1, m),
        rng.normal(0, 1, m),
        rng.uniform(0, 1, m),
        rng.uniform(0.5, 2, m),
    )
    dense = np.zeros((m, 2 * k + 1))
    rows = np.arange(m)
    dense[rows, left] = (1 - frac) * clear
    dense[rows, left + 1] = frac * clear
    dense[:, k : 2 * k] = dense[:, :k] * tl[:, None]
    dense[:, -1] = occ
    dense *= w[:, None]
    design = _Design(left, frac, clear, tl, occ, w, k)
    g1, g2 = rng.normal(size=2 * k + 1), rng.normal(size=(2 * k + 1, 4))
    v1, v2 = rng.normal(size=m), rng.normal(size=(m, 4))
    np.testing.assert_allclose(design.apply(g1), dense @ g1, atol=1e-12)
    np.testing.assert_allclose(design.apply(g2), dense @ g2, atol=1e-12)
    np.testing.assert_allclose(design.transpose_apply(v1), dense.T @ v1, atol=1e-12)
    np.testing.assert_allclose(design.transpose_apply(v2), dense.T @ v2, atol=1e-12)
    np.testing.assert_allclose(design.normal(), dense.T @ dense, atol=1e-12)


@pytest.mark.parametrize("theta_deg", [10.0, 75.0])
def test_a_bead_on_a_bar_is_centred_without_bias_and_with_an_honest_sigma(theta_deg):
    rng = np.random.default_rng(1)
    errors, sigmas = [], []
    for _ in range(30):
        img = _bead_on_band(rng, theta_deg)
        fit = _band_fit(img, TRUE + rng.uniform(-1, 1, 2))
        errors.append(fit.rc - TRUE)
        sigmas.append(fit.sigma)
        assert abs(fit.radius - 4.0) < 0.4 and abs(fit.blur - 1.0) < 0.4
    errors, sigma = np.array(errors), float(np.mean(sigmas))
    rms = float(np.sqrt(np.mean(errors**2)))
    # about 0.11 px each (measured); the bias is far below the scatter
    assert 0.7 * sigma <= rms <= 1.4 * sigma
    assert np.all(np.abs(errors.mean(0)) <= 3 * sigma / np.sqrt(len(errors)))


def test_the_plain_disc_fit_runs_onto_the_bar_where_the_band_fit_does_not():
    """Why the band model exists: from starts within a pixel, the detection's
    disc (with its step edge) runs pixels off or to a radius far over the
    bead's in most draws (14 of 20 measured); the band fit never does."""
    rng = np.random.default_rng(2)
    lost = 0
    for _ in range(20):
        img = _bead_on_band(rng)
        fit = fit_markers(
            img.astype(np.float32), TRUE[None] + rng.uniform(-1, 1, 2), SCALE, edge_idx=np.arange(1)
        )
        lost += np.hypot(*(fit.params[0, :2] - TRUE)) > 1.0 or fit.params[0, 2] > 1.5 * SCALE.r_max
        band = _band_fit(img, TRUE + rng.uniform(-1, 1, 2))
        assert np.hypot(*(band.rc - TRUE)) < 0.5
    assert lost >= 10


simulator = pytest.importorskip("simulator.exam")


def _run(region, seed, cage):
    ex = simulator.simulate_exam(region, seed, cage=cage)
    station, cage_ = Station.from_dict(ex.station), Cage.from_dict(ex.cage)
    images = {k: f.to_raw_image() for k, f in ex.frames.items()}
    return ex, reconstruct(station, cage_, images)


def _nearest(ex, res):
    truth = np.array([b["xyz_mm"] for b in ex.truth["beads"]])
    got = np.array([m.xyz_mm for m in res.markers]).reshape(-1, 3)
    d = np.linalg.norm(got[:, None] - truth[None], axis=2)
    return d.argmin(1), d.min(1)


# Exams whose implant beads over the ulnar stem or the tibial tray were lost in
# one view before the search (bench_reconstruct accuracy --why, fifth session):
# recall 0.80-0.92, now 1.00; the beads found are 10-34 µm off in 3D.
LOST_BEFORE = [("upper", 2, "biplanar"), ("upper", 4, "biplanar"), ("lower", 6, "uniplanar")]


@pytest.mark.parametrize("region,seed,cage", LOST_BEFORE)
def test_implant_beads_over_metal_are_found_without_false_markers(region, seed, cage):
    ex, res = _run(region, seed, cage)
    j, dist = _nearest(ex, res)
    beads = ex.truth["beads"]
    assert np.all(dist < 0.5), "no false marker"
    both = {i for i, b in enumerate(beads) if b["visible"]["A"] and b["visible"]["B"]}
    assert both <= set(j.tolist()), "every bead visible in both views"
    implant = [k for k, i in enumerate(j) if "component" in beads[i]["id"]]
    assert len(implant) >= 3, "the implant's segment"
    # each within 40 µm (the band model's share of the sigma: 0.25 px)
    assert np.all(dist[implant] <= 0.040)
    assert res.verdict == "pass"


def test_two_clear_beads_whose_lines_cross_two_band_fits_are_not_guessed():
    """Elbow, biplanar cage, seed 5: ulnar_component-1 and -6 lie on nearly one
    epipolar plane, and both of their shadows in view B lie over the stem; each
    line passes within the gate of both band fits. Neither is paired; both
    are reported ambiguous."""
    ex, res = _run("upper", 5, "biplanar")
    j, dist = _nearest(ex, res)
    assert np.all(dist < 0.5), "no false marker"
    ids = {ex.truth["beads"][i]["id"] for i in j}
    assert "ulnar_component-1" not in ids and "ulnar_component-6" not in ids
    # ... and reported as the contract says of beads that cannot be matched
    # without ambiguity
    amb = [np.array(a["image_px"]["A"]) for a in res.to_dict()["ambiguous"] if "A" in a["image_px"]]
    for bead in ("ulnar_component-1", "ulnar_component-6"):
        truth = next(b for b in ex.truth["beads"] if b["id"] == bead)["image_px"]["A"]
        assert any(np.hypot(*(a - truth)) < 0.5 for a in amb), bead
