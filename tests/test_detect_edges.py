"""Beads on the border of a metal implant: the background model under the bead.

An independent renderer (tests/test_detect_synthetic.py): tantalum beads are
opaque spheres; a straight, blurred metal border crosses each bead's
neighbourhood and attenuates the primary beam beyond it, the bead hiding what
is behind it (counts = scatter + primary x border x bead transmission).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erfc
from test_detect_synthetic import _match, as_raw, render_beads

from reconstruction.detect import (
    MarkerScale,
    detect_markers,
    full_display,
    noise_bound,
    refit_on_edges,
)

SCALE = MarkerScale(2.0, 6.0)


def border_exam(offset_px: float, seed: int, quanta: float = 400.0, step: float = 0.6):
    """Four beads, each with a metal border ``offset_px`` from its centre; counts, centres."""
    shape = (200, 200)
    rng = np.random.default_rng(seed)
    centres = np.array([[60.3 + 80 * (i // 2), 60.7 + 80 * (i % 2)] for i in range(4)])
    centres = centres + rng.uniform(-0.5, 0.5, (4, 2))
    beads, _ = render_beads(shape, centres, np.full(4, 3.5), quanta=quanta, noiseless=True)
    transmission = (beads - quanta) / quanta  # the scatter floor is `quanta`
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    normal = np.array([np.cos(0.3), np.sin(0.3)])
    border = np.ones(shape)
    for r0, c0 in centres:
        t = (rr - r0) * normal[0] + (cc - c0) * normal[1] - offset_px
        tile = (np.abs(rr - r0) < 40) & (np.abs(cc - c0) < 40)
        border[tile] = (1 - step * 0.5 * erfc(-t / (np.sqrt(2) * 0.8)))[tile]
    expected = quanta + quanta * transmission * border
    return rng.poisson(expected).astype(float), centres


def round_border_exam(offset_px: float, radius_px: float, seed: int, quanta: float = 400.0):
    """Four beads, each ``offset_px`` outside a round metal outline of ``radius_px``
    (a stem end-on, a condyle, a tray's rounded corner); counts, centres."""
    shape = (200, 200)
    rng = np.random.default_rng(seed)
    centres = np.array([[60.3 + 80 * (i // 2), 60.7 + 80 * (i % 2)] for i in range(4)])
    centres = centres + rng.uniform(-0.5, 0.5, (4, 2))
    beads, _ = render_beads(shape, centres, np.full(4, 3.5), quanta=quanta, noiseless=True)
    transmission = (beads - quanta) / quanta
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    normal = np.array([np.cos(0.3), np.sin(0.3)])
    border = np.ones(shape)
    for r0, c0 in centres:
        middle = np.array([r0, c0]) + (offset_px + radius_px) * normal
        t = radius_px - np.hypot(rr - middle[0], cc - middle[1])
        tile = (np.abs(rr - r0) < 40) & (np.abs(cc - c0) < 40)
        border[tile] = (1 - 0.6 * 0.5 * erfc(-t / (np.sqrt(2) * 0.8)))[tile]
    expected = quanta + quanta * transmission * border
    return rng.poisson(expected).astype(float), centres


@pytest.mark.parametrize("offset,radius", [(2.0, 12.0), (3.0, 12.0), (2.0, 20.0)])
def test_a_curved_border_is_followed(offset, radius):
    """A round outline 12-20 px in radius bends across the fit window: a straight step
    leaves the centre 2.2-3.0 bounds off (measured), the curved one 0.6-0.8."""
    edged, bound = [], []
    for seed in range(6):
        counts, truth = round_border_exam(offset, radius, seed)
        raw = as_raw(counts)
        det = detect_markers(raw, SCALE)
        j, ok = _match(det.rc, truth)
        refit = refit_on_edges(full_display(raw), det, np.arange(len(det)), SCALE)
        edged.append(refit.rc[j[ok]] - truth[ok])
        bound.append(noise_bound(refit)[j[ok]])
    rms_edged = np.sqrt(np.mean(np.concatenate(edged) ** 2))
    rms_bound = np.sqrt(np.mean(np.concatenate(bound) ** 2))
    assert len(np.concatenate(edged)) >= 12, "too few beads found to judge"
    assert rms_edged <= 1.2 * rms_bound, (rms_edged, rms_bound)


@pytest.mark.parametrize("offset", [2.0, 4.0, 6.0])
def test_the_step_edge_fit_removes_the_border_bias(offset):
    """With a plane for background the border pulls the centre by 2-4 bounds; the
    step-edge refit brings it back to about its bound."""
    plain, edged, bound = [], [], []
    for seed in range(6):
        counts, truth = border_exam(offset, seed)
        raw = as_raw(counts)
        det = detect_markers(raw, SCALE)
        j, ok = _match(det.rc, truth)
        j = j[ok]
        refit = refit_on_edges(full_display(raw), det, np.arange(len(det)), SCALE)
        plain.append(det.rc[j] - truth[ok])
        edged.append(refit.rc[j] - truth[ok])
        bound.append(noise_bound(refit)[j])
    rms_plain = np.sqrt(np.mean(np.concatenate(plain) ** 2))
    rms_edged = np.sqrt(np.mean(np.concatenate(edged) ** 2))
    rms_bound = np.sqrt(np.mean(np.concatenate(bound) ** 2))
    assert len(np.concatenate(edged)) >= 10, "too few beads found to judge"
    assert rms_edged <= 0.6 * rms_plain, (rms_edged, rms_plain)
    assert rms_edged <= 1.6 * rms_bound, (rms_edged, rms_bound)


def test_the_reported_uncertainty_covers_the_border():
    """The centre's sigma counts the background model's uncertainty: it is at least
    the actual error on a border, and the noise bound alone is smaller."""
    errs, sig, nb = [], [], []
    for seed in range(6):
        counts, truth = border_exam(3.0, seed)
        raw = as_raw(counts)
        det = detect_markers(raw, SCALE)
        refit = refit_on_edges(full_display(raw), det, np.arange(len(det)), SCALE)
        j, ok = _match(refit.rc, truth)
        j = j[ok]
        errs.append(np.abs(refit.rc[j] - truth[ok]).max(axis=1))
        sig.append(refit.sigma_px[j])
        nb.append(noise_bound(refit)[j])
    errs, sig, nb = map(np.concatenate, (errs, sig, nb))
    assert np.sqrt(np.mean(errs**2)) <= np.sqrt(np.mean(sig**2))
    assert np.all(nb <= sig + 1e-12)


def test_beads_on_a_clean_background_keep_the_plain_model():
    """No border: the refit keeps the plain fit (no edge accepted), same centres."""
    counts, _ = render_beads((200, 200), np.array([[60.3, 60.7], [140.2, 139.6]]), [3.5, 3.5])
    raw = as_raw(counts)
    det = detect_markers(raw, SCALE)
    refit = refit_on_edges(full_display(raw), det, np.arange(len(det)), SCALE)
    np.testing.assert_array_equal(refit.rc, det.rc)
    np.testing.assert_array_equal(refit.sigma_px, det.sigma_px)
