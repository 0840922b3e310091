"""Is a faint cage marker there, where the calibrated geometry puts it?

Markers behind dense anatomy (the shoulders in a lateral cervical view) are
too faint for the blind search, which must find markers anywhere among
thousands of places and so needs a high threshold. Once the view is
calibrated, a missing marker's shadow is known to a fraction of a pixel, and
its size from the geometry: whether it is there is then one test at one
place, the matched filter of detection theory (Kay, *Fundamentals of
Statistical Signal Processing, Vol. II: Detection Theory*, 1998, ch. 7,
linear model with unknown nuisance parameters). The shadow's contrast over a
plane background (both fitted by linear least squares) is compared with its
standard error under the window's own noise, correlated as the detector's
blur correlates it. A marker confirmed this way counts as found; its centre is
not measured and it takes no part in the calibration.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from reconstruction.detect import _gather, correlation_width_from_ratio
from reconstruction.lightweight import erfc

#: Contrast over its standard error for a faint marker to count as seen, both
#: against the pixel noise and against the local null (:data:`NULL_PLACES`).
#: One test per missing marker (tens per image): 5 leaves about one false
#: confirmation in 100,000 images under Gaussian noise; texture and edges,
#: which are not Gaussian, are held off by the local null and
#: :data:`MAX_MISFIT`.
CONFIRM_SNR = 5.0
#: Largest RMS residual over the noise for the window to count as a disc on a
#: plane (an edge, a bead or a metal border in the window raises it).
MAX_MISFIT = 1.5
#: Blur (px, Gaussian sigma) of the template: a typical detector's; the test
#: stays valid with another (only its power changes).
TEMPLATE_BLUR_PX = 1.0


def window_half(radius_px: float) -> int:
    """Half size of the test window for a shadow of ``radius_px`` (its blurred
    edge and a ring of background around it)."""
    return int(np.ceil(radius_px + 3 * TEMPLATE_BLUR_PX + 1.5))


def _kernel(half: int, b: float) -> np.ndarray:
    """1D factor K of the window's noise correlation ``exp(-d^2 / (4 b^2))``.

    The correlation is separable: C = K (x) K, so C v is ``K @ v @ K`` on a window.
    """
    off = np.arange(-half, half + 1, dtype=float)
    if b <= 0:
        return np.eye(len(off))
    return np.exp(-((off[:, None] - off[None]) ** 2) / (4 * b * b))


def correlation_width(win: np.ndarray) -> float:
    """Width b (px) of the noise's Gaussian autocorrelation, from windows (n, h, w).

    As :func:`reconstruction.detect.noise_correlation` (pixel differences at
    lags 1 and 2; here their mean absolute values, squared for the variance
    ratio), pooled over the windows; smooth structure in them can only raise
    it, which makes the test more cautious. Stripes near two pixels' period
    (an anti-scatter grid) lower it, but they are in the 16 places of the
    local null as well, which then holds the test back. Both directions are
    pooled (not the more correlated one, as the global estimate does): over
    these few windows the two differ by chance by a few per cent, and the
    larger would drop markers at the threshold.
    """
    # mean absolute differences (a median over every pixel of every window
    # cost more than the test itself); windows are centred on the disc, which
    # adds to both lags alike
    d1 = np.mean(np.abs(np.diff(win, axis=2))) + np.mean(np.abs(np.diff(win, axis=1)))
    d2 = np.mean(np.abs(win[:, :, 2:] - win[:, :, :-2])) + np.mean(np.abs(win[:, 2:] - win[:, :-2]))
    return correlation_width_from_ratio(float((d2 / max(d1, 1e-12)) ** 2))


def marker_snr(
    win: np.ndarray, centre: np.ndarray, radius_px: np.ndarray, b: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Contrast over its standard error of a marker's shadow at a known place.

    Parameters
    ----------
    win : ndarray (n, 2h + 1, 2h + 1)
        Windows of display values (markers bright) around the nearest pixel of
        each predicted centre.
    centre : ndarray (n, 2)
        Predicted centre relative to its window's middle pixel (px).
    radius_px : ndarray (n,)
        Shadow radius from the geometry (px).
    b : float, optional
        Noise correlation width (:func:`correlation_width` of ``win`` if not given).

    Returns
    -------
    snr : ndarray (n,)
        Fitted contrast (the shadow's level minus the plane's at the centre)
        over its standard error; the model is the opaque disc of
        :func:`reconstruction.detect._model` with shape and place fixed.
    misfit : ndarray (n,)
        RMS residual over the pixel noise.
    """
    n, w, _ = win.shape
    half = w // 2
    if n == 0:
        return np.zeros(0), np.zeros(0)
    if b is None:
        b = correlation_width(win)
    b = round(float(b), 2)
    off = np.arange(-half, half + 1, dtype=float)
    dr, dc = (a.ravel() for a in np.meshgrid(off, off, indexing="ij"))
    y = win.reshape(n, -1).astype(np.float64)
    rho = np.hypot(dr[None] - centre[:, 0:1], dc[None] - centre[:, 1:2])
    o = 0.5 * erfc((rho - radius_px[:, None]) / (np.sqrt(2.0) * TEMPLATE_BLUR_PX))
    clear = 1.0 - o
    x = np.stack([clear, dr[None] * clear, dc[None] * clear, o], axis=-1)  # (n, m, 4)
    xt = x.transpose(0, 2, 1)
    inv = np.linalg.inv(xt @ x)
    coef = (inv @ (xt @ y[..., None]))[..., 0]
    res = y - (x @ coef[..., None])[..., 0]
    # pixel noise from the mean absolute first difference (sqrt(pi / 2) of the
    # differences' sigma for Gaussian noise), corrected for the correlation as
    # detect.correlated_sigma does; edges and texture raise it (a cautious test)
    mad = 0.5 * (
        np.mean(np.abs(np.diff(win, axis=2)), axis=(1, 2))
        + np.mean(np.abs(np.diff(win, axis=1)), axis=(1, 2))
    )
    rho1 = np.exp(-1 / (4 * b * b)) if b > 0 else 0.0
    sigma = np.sqrt(np.pi / 2) * mad / np.sqrt(2 * (1 - rho1)) + 1e-12
    # the contrast against the plane at the centre, and its variance under
    # correlated noise: g^T (X^T X)^-1 X^T C X (X^T X)^-1 g sigma^2
    g = np.stack([-np.ones(n), -centre[:, 0], -centre[:, 1], np.ones(n)], axis=1)  # (n, 4)
    contrast = np.einsum("ni,ni->n", g, coef)
    a = (inv @ g[..., None])[..., 0]  # (XtX)^-1 g
    xa = (x @ a[..., None])[..., 0]  # X (XtX)^-1 g
    k = _kernel(half, b)
    cxa = (k @ xa.reshape(n, w, w) @ k).reshape(n, -1)
    var = np.einsum("nm,nm->n", xa, cxa) * sigma**2
    misfit = np.sqrt(np.mean(res**2, axis=1)) / sigma
    return contrast / np.sqrt(var), misfit


#: Places around each predicted shadow (on a circle of NULL_RADIUS shadow radii)
#: where the same statistic is taken as its local null: clutter (bone texture,
#: the edges of anatomy) is not pixel noise, and only the statistic's own
#: spread nearby says how large it gets where there is no marker.
NULL_PLACES = 16
NULL_RADIUS = 3.0


def confirm_markers(
    gather: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    pred_rc: np.ndarray,
    radius_px: np.ndarray,
) -> np.ndarray:
    """Which of the markers predicted at ``pred_rc`` are seen there (bool per marker).

    Parameters
    ----------
    gather : callable
        ``gather(points, half)`` returns the display windows (n, 2 half + 1,
        2 half + 1) around the nearest pixels of ``points`` (n, 2) and each
        point's offset from its window's middle pixel (n, 2); pixels past the
        image's edge repeat the edge.
    pred_rc : ndarray (n, 2)
        Predicted shadow centres (px).
    radius_px : ndarray (n,)
        Their radii from the geometry (px).

    A marker is seen when its contrast is :data:`CONFIRM_SNR` standard errors
    both of the pixel noise and of the local null (median and MAD of the
    statistic at :data:`NULL_PLACES` places around it), and a disc on a plane
    explains its window (:data:`MAX_MISFIT`).
    """
    n = len(pred_rc)
    if n == 0:
        return np.zeros(0, bool)
    half = window_half(float(np.max(radius_px)))
    ang = np.linspace(0.0, 2 * np.pi, NULL_PLACES, endpoint=False)
    ring = np.stack([np.sin(ang), np.cos(ang)], axis=1)
    around = pred_rc[:, None, :] + NULL_RADIUS * radius_px[:, None, None] * ring[None]
    pts = np.r_[pred_rc, around.reshape(-1, 2)]
    win, centre = gather(pts, half)
    snr, misfit = marker_snr(win, centre, np.r_[radius_px, np.repeat(radius_px, NULL_PLACES)])
    null = snr[n:].reshape(n, NULL_PLACES)
    med = np.median(null, axis=1)
    spread = 1.4826 * np.median(np.abs(null - med[:, None]), axis=1)
    z = (snr[:n] - med) / np.maximum(spread, 1e-12)
    return (snr[:n] >= CONFIRM_SNR) & (z >= CONFIRM_SNR) & (misfit[:n] <= MAX_MISFIT)


def display_gatherer(display: np.ndarray) -> Callable[[np.ndarray, int], tuple]:
    """A ``gather`` for :func:`confirm_markers` over a full display image (the
    fit's own window reader, :func:`reconstruction.detect._gather`)."""

    def gather(points: np.ndarray, half: int):
        ci = np.rint(points).astype(np.intp)
        return _gather(display, ci, half)[0], points - ci

    return gather
