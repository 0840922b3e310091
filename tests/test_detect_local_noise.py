"""The coarse pass where part of the image is far noisier than the rest.

Behind the shoulders of a lateral cervical view the noise is up to tens of
times the image's typical; with a threshold in units of the whole image's
noise its own peaks passed by the thousand (1,800 candidates in one simulated
view, a second of fitting). The threshold now follows the local photon noise
there. Every bead of the quiet part is still found, and in the noisy part every
bead that was found precisely enough to be reported.
"""

from __future__ import annotations

import cv2
import numpy as np
from test_detect_synthetic import render_beads

from reconstruction import detect
from reconstruction.detect import MarkerScale, coarse_candidates, detect_markers, reduced_display
from reconstruction.image import RawImage
from reconstruction.pipeline import MAX_BEAD_SIGMA_MM

SHAPE = (1200, 1000)
NOISY_FROM = 700  # rows below this see 0.7 % of the dose


def scene(seed=0):
    """Beads on a log-transformed (For Presentation-like) MONOCHROME2 image; the rows
    from NOISY_FROM down get 0.7 % of the dose, where the log makes the noise several
    times larger and skewed towards bright (as a photon-starved region shows)."""
    rng = np.random.default_rng(seed)
    quiet = np.array([[150 + 120 * i, 150 + 180 * j] for i in range(4) for j in range(5)], float)
    noisy = np.array([[800 + 150 * i, 150 + 180 * j] for i in range(3) for j in range(5)], float)
    pts = np.r_[quiet, noisy] + rng.uniform(-0.5, 0.5, (35, 2))
    rad = np.full(len(pts), 3.0)
    hi, _ = render_beads(SHAPE, pts, rad, quanta=300.0, scatter=0.3, seed=seed)
    lo, _ = render_beads(SHAPE, pts, rad, quanta=2.0, scatter=0.3, seed=seed + 1)
    counts = hi.copy()
    counts[NOISY_FROM:] = lo[NOISY_FROM:]
    # the scintillator's light spread after the quantum noise: neighbours correlated
    counts = cv2.GaussianBlur(counts, (0, 0), 0.7)
    stored = np.clip(np.rint(12000.0 - 1500.0 * np.log(np.maximum(counts, 0.5))), 0, 16383)
    return RawImage(stored.astype(np.uint16), "MONOCHROME2", 14), pts


def _nearest(pts, rc):
    return np.linalg.norm(pts[:, None] - rc[None], axis=2).min(axis=1) if len(rc) else np.inf


def test_noisy_region_does_not_flood_the_fit_and_usable_beads_are_kept(monkeypatch):
    raw, pts = scene()
    scale = MarkerScale(2.4, 3.6)
    small = reduced_display(raw, scale.factor)
    args = (small, scale.factor, scale, 5.0, 3.0)
    glob, _ = coarse_candidates(*args, clutter_clip=detect.CLUTTER_CLIP)
    local, _ = coarse_candidates(*args, clutter_clip=detect.CLUTTER_CLIP, local_noise=True)

    def in_noisy(rc):
        return int((rc[:, 0] > NOISY_FROM + 10).sum())

    # the global threshold lets the noisy part's own peaks through by the hundred
    assert in_noisy(glob) > 100
    assert in_noisy(local) < 0.3 * in_noisy(glob)
    # every bead of the quiet part is still a candidate and detected
    quiet = pts[:, 0] < NOISY_FROM
    assert np.all(_nearest(pts[quiet], local) < 1.5)
    det = detect_markers(raw, scale)
    assert np.all(_nearest(pts[quiet], det.rc) < 0.2)
    # in the noisy part, every bead the global threshold detected precisely
    # enough to be reported (centre bound within MAX_BEAD_SIGMA_MM at 0.15 mm
    # pixels) is detected as well
    plain = detect.coarse_candidates
    monkeypatch.setattr(
        detect, "coarse_candidates", lambda *a, **k: plain(*a, **{**k, "local_noise": False})
    )
    before = detect_markers(raw, scale)
    usable = before.rc[before.sigma_px * 0.15 <= MAX_BEAD_SIGMA_MM]
    usable = usable[_nearest(usable, pts[~quiet]) < 1.0]
    assert len(usable) >= 5
    assert np.all(_nearest(usable, det.rc) < 0.2)
