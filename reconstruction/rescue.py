"""Looking for a clear bead's other shadow on a metal band, along its epipolar line.

An implant's beads often lie over the implant's own metal in one view: on a
stem or a tray about as wide as the bead. There the disc fit of
:mod:`reconstruction.detect` runs onto the metal and the candidate is refused
(fifth session: about a dozen implant beads of the 36 default exams, the
largest cause of lost beads). Looking everywhere with a model that follows
such a background would find a bead on every metal corner (a step-edge
refit of all refused candidates, fourth session: 31 of 37 accepted fits were
not beads). Here the search is confined to where a bead must be: the refused
candidates within a few pixels of the epipolar line of a bead that the other
view shows clearly and that found no partner. Each is fitted with the band
model (:func:`reconstruction.band.fit_on_band`) and kept only as a whole
bead of the expected size and sharpness; the caller then requires it to be
the only such fit on the line, to lie within the matching gate and to match
the clear bead's diameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reconstruction.band import BandFit, fit_on_band
from reconstruction.detect import Detections, MarkerScale

# A band fit's centre error beyond its noise: on the simulator's 11 lost
# implant beads of the default exams (sixth session, two random starts each)
# the 21 converged fits' centres were 0.05-0.40 px off (RMS 0.24 px) against
# noise bounds of 0.03-0.12 px: the background's shape under the bead is not
# all in the model. Added in quadrature, so that matching gates and 3D
# weights see it.
BAND_MODEL_SIGMA_PX = 0.25
# how far from the epipolar line a refused candidate may start (px): the
# candidate's coarse position is within about a pixel of the bead's centre
LINE_SEARCH_PX = 3.0
# residual over the disc (noise units) above which the fit is not one disc
MAX_BAND_CHI = 1.6


@dataclass(frozen=True)
class Partner:
    """A bead found on a band near one or more of the clear beads' lines."""

    fit: BandFit

    @property
    def sigma_px(self) -> float:
        """Centre standard error with the model's share (px)."""
        return float(np.hypot(self.fit.sigma, BAND_MODEL_SIGMA_PX))


def fit_partners(
    display: np.ndarray,
    scale: MarkerScale,
    starts: np.ndarray,
    lines: np.ndarray,
    existing_rc: np.ndarray,
    blur_range: tuple[float, float],
    min_snr: float,
) -> list[Partner]:
    """Band fits of refused candidates near epipolar lines that pass as one bead.

    Parameters
    ----------
    display : ndarray
        Display image of the view searched.
    scale : MarkerScale
        Shadow radii (px) a bead may have in that view, room included.
    starts : ndarray (m, 2)
        The view's refused candidates (row, col).
    lines : ndarray (k, 3)
        Epipolar lines ``a r + b c + d = 0`` with ``a^2 + b^2 = 1``, one per
        clear bead of the other view.
    existing_rc : ndarray (n, 2)
        The view's detections: a fit that lands on one is not a new bead.
    blur_range : (float, float)
        Plausible blur (px), from the view's cage markers.
    min_snr : float
        Smallest matched-filter signal-to-noise ratio of a bead.

    Returns
    -------
    list of Partner
        One per refused candidate near a line whose fit is one bead (two
        candidates may give one bead; which line a fit belongs to, the
        caller decides).
    """
    starts = np.asarray(starts, float).reshape(-1, 2)
    lines = np.asarray(lines, float).reshape(-1, 3)
    if len(starts) == 0 or len(lines) == 0:
        return []
    dist = np.abs(starts @ lines[:, :2].T + lines[:, 2])  # (m, k)
    # the largest bead and five pixels of band around it (13 -> 12 px for the
    # elbow: the same centres within 0.01 px RMS, a third less time)
    h = int(np.ceil(scale.r_max)) + 5
    r_lo, r_hi = 0.5 * scale.r_min, 1.5 * scale.r_max
    # the fit's own bounds of the blur lie outside what a bead may have
    blur_bounds = (min(0.3, 0.5 * blur_range[0]), max(3.0, 1.5 * blur_range[1]))
    out = []
    for i in np.flatnonzero((dist <= LINE_SEARCH_PX).any(axis=1)):
        fit = fit_on_band(
            display,
            starts[i],
            0.5 * (scale.r_min + scale.r_max),
            (r_lo, r_hi),
            h,
            blur_range=blur_bounds,
        )
        if fit is not None and _is_bead(
            fit, starts[i], h, (r_lo, r_hi), existing_rc, scale, blur_range, min_snr
        ):
            out.append(Partner(fit))
    return out


def _is_bead(fit, start, h, radius_range, existing_rc, scale, blur_range, min_snr) -> bool:
    """One whole bead: not at a bound of the fit, the size, blur, significance
    and residual of one, and not a detection already made."""
    r_lo, r_hi = radius_range
    moved = np.abs(fit.rc - start).max()
    if not fit.converged or not np.isfinite(fit.sigma) or moved >= h / 2 - 0.05:
        return False
    if not (r_lo + 0.05 < fit.radius < r_hi - 0.05):
        return False
    if not (scale.r_min <= fit.radius <= scale.r_max):
        return False
    if not (blur_range[0] <= fit.blur <= blur_range[1]):
        return False
    if not fit.snr >= min_snr or fit.chi > MAX_BAND_CHI:
        return False
    existing = np.asarray(existing_rc, float).reshape(-1, 2)
    return not (len(existing) and np.hypot(*(existing - fit.rc).T).min() < max(1.0, scale.r_min))


def as_detections(partners: list[Partner]) -> Detections:
    """Partners as detection rows (their sigma includes the model's share)."""
    if not partners:
        return Detections.empty()
    f = [p.fit for p in partners]
    noise = np.array([x.noise for x in f])
    contrast = np.array([x.contrast for x in f])
    return Detections(
        rc=np.array([x.rc for x in f]),
        radius_px=np.array([x.radius for x in f]),
        blur_px=np.array([x.blur for x in f]),
        contrast=contrast,
        relative_contrast=contrast / noise,
        residual=np.array([x.chi for x in f]),
        sigma_px=np.array([p.sigma_px for p in partners]),
        noise=noise,
        rejected=[],
        model_shift_px=np.full(len(f), np.nan),
        blur_sigma_px=np.full(len(f), np.nan),
    )
