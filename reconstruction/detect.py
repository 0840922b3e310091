"""Sub-pixel detection of radio-opaque markers (beads and cage markers).

Coarse to fine, after DESIGN-NOTES "Detecting beads":

1. *Coarse*: the stored pixels are reduced by an integer factor ``k`` with
   area averaging (``cv2.resize`` INTER_AREA), intensity-mapped so that markers
   are bright, band-passed with a difference of Gaussians matched to the
   expected marker radii (Lindeberg 1998: a disc of radius r answers best to a
   LoG of scale r / sqrt 2), and local maxima above a robust noise threshold
   are kept; edge-like maxima are dropped with Lowe's principal-curvature ratio
   test (Lowe, IJCV 2004, sec. 4.1).
2. *Fine*: in a small window at full resolution every candidate is fitted, all
   windows at once, by Levenberg-Marquardt with a blurred-disc model on a
   tilted background plane::

       I(x) = B0 + Br dr + Bc dc + A * 0.5 erfc((|x - x0| - R) / (sqrt 2 s))

   i.e. an opaque disc of radius R blurred by a Gaussian of width s (focal spot
   penumbra plus detector blur). The least-squares fit of the right model is
   asymptotically efficient, so its centre error approaches the Cramér-Rao
   bound (Kay, *Fundamentals of Statistical Signal Processing I*, 1993, ch. 3);
   the bound itself is reported per marker from the Fisher information of the
   fitted model at the window's measured noise.

A candidate is rejected when its disc is cut by the image edge, when the fit
does not explain the window (merged beads, metal edges, collimator edges:
residual well above the noise), when it is not significant (bone texture) or
when its radius or blur is implausible for a marker of the expected size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

import cv2
import numpy as np

from reconstruction.image import RawImage, clear_high_bits, display_values, to_display
from reconstruction.lightweight import erfc, median, neighbours_within, pairs_within

_SQRT2 = np.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


@dataclass(frozen=True)
class MarkerScale:
    """Expected marker radii in full-resolution pixels, derived from geometry.

    Attributes
    ----------
    r_min, r_max : float
        Smallest and largest expected shadow radius (px).
    """

    r_min: float
    r_max: float

    @property
    def factor(self) -> int:
        """Reduction factor for the coarse pass: keeps the smallest marker >= 0.6 px radius."""
        return self.coarse_factor(0.6, 4)

    def coarse_factor(self, min_reduced_radius: float, max_factor: int) -> int:
        """Largest reduction that keeps the smallest marker ``min_reduced_radius`` px in radius."""
        return int(np.clip(np.floor(self.r_min / min_reduced_radius), 1, max_factor))

    @property
    def half_window(self) -> int:
        """Half size of the fitting window: the largest disc plus its blur and a margin."""
        return int(np.ceil(self.r_max * 1.35 + 4))


@dataclass
class Detections:
    """Markers detected in one image (arrays of length n, full-resolution pixels).

    Attributes
    ----------
    rc : ndarray (n, 2)
        Centre ``[row, col]``.
    radius_px, blur_px : ndarray (n,)
        Fitted disc radius and Gaussian blur.
    contrast : ndarray (n,)
        Fitted disc amplitude, in display units (markers bright).
    relative_contrast : ndarray (n,)
        Amplitude over the local noise (a signal-to-noise ratio).
    residual : ndarray (n,)
        RMS fit residual over the window's noise (1 = fits to the noise).
    sigma_px : ndarray (n,)
        Cramér-Rao bound of the centre, per axis (px), at the measured noise.
    noise : ndarray (n,)
        Local noise standard deviation (display units).
    rejected : list of (rc, reason)
        Candidates that were looked at and refused (where the candidate was),
        for overlays, diagnosis and the search for beads on metal bands
        (:mod:`reconstruction.rescue`).
    """

    rc: np.ndarray
    radius_px: np.ndarray
    blur_px: np.ndarray
    contrast: np.ndarray
    relative_contrast: np.ndarray
    residual: np.ndarray
    sigma_px: np.ndarray
    noise: np.ndarray
    rejected: list[tuple[np.ndarray, str]] = field(default_factory=list)
    model_shift_px: np.ndarray | None = None
    # standard error of blur_px (px): a small shadow's radius and blur trade
    # off in the fit, so its blur alone says little
    blur_sigma_px: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rc)

    def subset(self, idx: np.ndarray) -> Detections:
        return Detections(
            self.rc[idx],
            self.radius_px[idx],
            self.blur_px[idx],
            self.contrast[idx],
            self.relative_contrast[idx],
            self.residual[idx],
            self.sigma_px[idx],
            self.noise[idx],
            [],
            None if self.model_shift_px is None else self.model_shift_px[idx],
            None if self.blur_sigma_px is None else self.blur_sigma_px[idx],
        )

    def appended(self, other: Detections) -> Detections:
        """These detections followed by ``other``'s (indices into these stay valid)."""

        def cat(a, b, n_b):
            if a is None and b is None:
                return None
            a = np.full(len(self), np.nan) if a is None else a
            b = np.full(n_b, np.nan) if b is None else b
            return np.concatenate([a, b])

        n = len(other)
        return Detections(
            np.concatenate([self.rc, other.rc]),
            np.concatenate([self.radius_px, other.radius_px]),
            np.concatenate([self.blur_px, other.blur_px]),
            np.concatenate([self.contrast, other.contrast]),
            np.concatenate([self.relative_contrast, other.relative_contrast]),
            np.concatenate([self.residual, other.residual]),
            np.concatenate([self.sigma_px, other.sigma_px]),
            np.concatenate([self.noise, other.noise]),
            list(self.rejected),
            cat(self.model_shift_px, other.model_shift_px, n),
            cat(self.blur_sigma_px, other.blur_sigma_px, n),
        )

    @classmethod
    def empty(cls) -> Detections:
        z = np.zeros(0)
        return cls(np.zeros((0, 2)), z, z, z, z, z, z, z, [])


# --------------------------------------------------------------------------- intensity


def reduced_display(image: RawImage, k: int) -> np.ndarray:
    """Area-averaged image reduced by ``k``, in display values (markers bright), float32.

    Area averaging, the Modality LUT (linear) and the photometric inversion
    commute, so reducing first and mapping the 1/k^2 smaller image costs one
    read of the stored pixels, which keeps the real-time cage check fast. (The
    logarithm of a linear image does not commute with it: the log of a k x k
    mean, which for the coarse pass's blobs differs from the mean of the logs
    by a fraction of their contrast squared.)
    """
    px = clear_high_bits(image.pixels, image.bits_stored)
    if px.dtype not in (np.uint8, np.uint16, np.int16, np.float32):
        px = px.astype(np.float32)
    rows, cols = px.shape
    if k > 1:
        small = cv2.resize(
            px[: rows - rows % k, : cols - cols % k],
            ((cols // k), (rows // k)),
            interpolation=cv2.INTER_AREA,
        )
    else:
        small = px
    return display_values(small.astype(np.float32, copy=True), image)


#: Full-resolution display values (markers bright), float32.
full_display = to_display


# --------------------------------------------------------------------------- coarse


def _robust_sigma(values: np.ndarray, scale: float = 1.0) -> float:
    """Normalised median absolute deviation, floored at float32 rounding of ``scale``.

    A flat or noiseless region has a MAD of rounding error only; dividing by it
    would turn that rounding into millions of "significant" maxima.
    """
    med = median(values)
    return max(float(1.4826 * median(np.abs(values - med))), 1e-5 * abs(scale), 1e-12)


# A real exam shows a few hundred markers (cage and beads); the simulator's exams
# leave at most ~1,600 candidates after the clutter test. More than this is texture
# or a degenerate image, and only the most contrasty are fitted (keeps memory and
# time bounded whatever the input).
MAX_CANDIDATES = 5000


# Strong candidates (at least this many detection thresholds) failing the clutter test
# are judged again against the band-pass clipped at that level: without it, beads in a
# tight cluster on an implant or beside the biplanar cage's markers were lost at
# SNR > 100 (recall 0.40 on lower/biplanar seed 2). Clipping every candidate at 2
# misled one identification (spine/biplanar seed 3); this rule at 3 gains the recall
# with no false marker and no wrong calibration on 18 exams (docs/benchmarks.md) for
# ~10 % more CPU.
CLUTTER_CLIP = 3.0
#: Peaks this many clip levels above the threshold skip the clutter test.
VERY_STRONG = 3.0


def _tiles(a: np.ndarray, nb_r: int, nb_c: int, block: int) -> np.ndarray:
    """Every other row and column of ``block`` x ``block`` tiles, (nb_r, nb_c, pixels)."""
    half = block // 2
    t = a[: nb_r * block : 2, : nb_c * block : 2]
    return t.reshape(nb_r, half, nb_c, half).transpose(0, 2, 1, 3).reshape(nb_r, nb_c, -1)


def _local_noise_factor(
    small: np.ndarray, dog: np.ndarray, r: np.ndarray, c: np.ndarray, block: int
) -> np.ndarray:
    """Photon noise of the band-pass near (r, c), in the band-pass's units; >= 1.

    The band-pass is in units of its robust scale over the whole image, which
    holds texture as well as noise. Per ``block`` x ``block`` tile (``block``
    even; every other pixel), the median absolute first difference of the
    reduced image measures its noise (differences cancel smooth anatomy, the
    median ignores edges and markers); the band-pass's own robust scale over
    the same tile, divided by it, is the filter's noise gain where the tile
    holds nothing but noise: the lowest decile of that ratio over the tiles
    (texture only raises it). Their product is the tile's noise in band-pass
    units.
    """
    rows, cols = dog.shape
    nb_r, nb_c = rows // block, (cols - 1) // block
    if nb_r < 2 or nb_c < 2:
        return np.ones(len(r))
    diff = median(np.abs(_tiles(np.diff(small, axis=1), nb_r, nb_c, block)), axis=2)
    band = _tiles(dog, nb_r, nb_c, block)
    med = median(band, axis=2)
    scale = 1.4826 * median(np.abs(band - med[..., None]), axis=2)
    ok = diff > 0
    if not ok.any():
        return np.ones(len(r))
    gain = float(np.percentile(scale[ok] / diff[ok], 10))
    factor = gain * diff
    br = np.minimum(r // block, nb_r - 1)
    bc = np.minimum(c // block, nb_c - 1)
    return np.maximum(factor[br, bc], 1.0)


def coarse_candidates(
    small: np.ndarray,
    k: int,
    scale: MarkerScale,
    threshold_sigma: float = 5.0,
    clutter_ratio: float = 3.0,
    clutter_clip: float | None = None,
    local_noise: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate centres from a band-passed reduced image.

    Parameters
    ----------
    small : ndarray
        Reduced display image (markers bright).
    k : int
        Reduction factor of ``small``.
    scale : MarkerScale
        Expected marker radii (full-resolution px).
    threshold_sigma : float
        Detection threshold in robust standard deviations of the band-passed image.
    clutter_ratio : float
        A candidate must also stand this far above the local RMS of the
        band-passed image (over a few marker diameters): bone texture and
        other structure at marker scale raise the local RMS, an isolated
        marker barely does (a local contrast-to-clutter test).
    clutter_clip : float, optional
        When given, the band-pass is clipped at this many ``threshold_sigma``
        before the local RMS is taken, so that a neighbouring brighter marker
        does not count as clutter (see :data:`CLUTTER_CLIP`). None: not clipped
        (the real-time cage check, which needs only the cage's markers).
    local_noise : bool
        Raise the threshold where the image is noisier than typical (see
        :func:`_local_noise_factor`); the reconstruction's pass, which fits
        every candidate.

    Returns
    -------
    rc : ndarray (n, 2)
        Candidate centres in full-resolution pixels (sub-pixel, parabolic peak).
    strength : ndarray (n,)
        Band-pass response over its robust noise.
    """
    r_lo, r_hi = scale.r_min / k, scale.r_max / k
    # One band-pass per octave of radii, each in units of its own robust noise,
    # so that small faint beads and large flat-topped ones both stand out.
    n_oct = max(1, int(np.ceil(np.log2(r_hi / r_lo) - 0.3)))
    radii = r_lo * (r_hi / r_lo) ** (np.arange(n_oct) / max(n_oct - 1, 1)) if n_oct > 1 else [r_lo]
    dog = None
    s2 = max(2.5 * 0.6 * r_hi, 1.5 * r_hi)
    if s2 > 4:
        # the wide background blur on a 1/4 image, brought back up: same result, 16x cheaper
        quarter = cv2.pyrDown(cv2.pyrDown(small))
        background = cv2.resize(
            cv2.GaussianBlur(quarter, (0, 0), np.sqrt(max(s2**2 - 4.0, 1.0)) / 4),
            (small.shape[1], small.shape[0]),
            interpolation=cv2.INTER_LINEAR,
        )
    else:
        background = cv2.GaussianBlur(small, (0, 0), s2)
    for r in radii:
        s1 = max(0.5, 0.6 * r)
        band = cv2.subtract(cv2.GaussianBlur(small, (0, 0), s1), background)
        level = float(median(np.abs(small[::7, ::7])))
        band *= np.float32(1.0 / _robust_sigma(band[::7, ::7].ravel(), level))
        dog = band if dog is None else np.maximum(dog, band)
    # non-maximum suppression over the smallest marker's radius: two markers'
    # centres are never closer than that, and a flat top gives one candidate.
    nms = 2 * max(1, int(np.floor(r_lo))) + 1
    dil = cv2.dilate(dog, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (nms, nms)))
    m = cv2.bitwise_and(
        cv2.compare(dog, dil, cv2.CMP_GE), cv2.compare(dog, float(threshold_sigma), cv2.CMP_GT)
    )
    m[:1] = m[-1:] = 0
    m[:, :1] = m[:, -1:] = 0
    nz = cv2.findNonZero(m)  # far faster than np.nonzero on a mostly empty mask
    if nz is None:
        return np.zeros((0, 2)), np.zeros(0)
    nz = nz.reshape(-1, 2)
    c, r = nz[:, 0].astype(np.intp), nz[:, 1].astype(np.intp)
    if local_noise:
        # The threshold is in units of the whole image's noise; where the
        # image is several times noisier (behind the shoulders in a lateral
        # cervical view, 5-7x), its own noise peaks would pass by the thousand
        # and cost a second of fitting for nothing. There the threshold is
        # raised in proportion to the local noise (robust, per block).
        factor = _local_noise_factor(small, dog, r, c, 2 * max(8, round(4 * r_hi)))
        up = dog[r, c] > threshold_sigma * factor
        r, c = r[up], c[up]
        if len(r) == 0:
            return np.zeros((0, 2)), np.zeros(0)
    # local RMS of the band-pass over a few marker diameters, at the maxima only
    # (summed-area table: Crow 1984)
    w = round(4 * r_hi)
    rows, cols = dog.shape
    r0, r1 = np.clip(r - w, 0, rows), np.clip(r + w + 1, 0, rows)
    c0, c1 = np.clip(c - w, 0, cols), np.clip(c + w + 1, 0, cols)
    area = (r1 - r0) * (c1 - c0)

    def local_ratio(band: np.ndarray) -> np.ndarray:
        sq = cv2.integral(cv2.multiply(band, band))
        local = (sq[r1, c1] - sq[r0, c1] - sq[r1, c0] + sq[r0, c0]) / area
        return dog[r, c] / np.sqrt(np.maximum(local, 0) + 1.0)

    ratio = local_ratio(dog)
    keep = ratio > clutter_ratio
    if clutter_clip is not None:
        # Clutter is texture, not the neighbouring markers: a strong candidate
        # (above the clip level itself) beside a brighter bead or a cage marker (a
        # tight bead cluster on an implant, the biplanar cage's second plane) is
        # judged against the band-pass clipped at that level, so the neighbours'
        # peaks do not count as clutter. Weak candidates keep the plain test, which
        # is what holds dense texture back (and the fit's time down).
        clip = np.float32(clutter_clip * threshold_sigma)
        strong = ~keep & (dog[r, c] >= clip)
        if strong.any():
            rescued = local_ratio(np.minimum(dog, clip)) > clutter_ratio
            keep |= strong & rescued
        # Still failing strong candidates are judged once more against a robust
        # local scale (median and MAD over the same window; Hampel 1974): a metal
        # border or a brighter marker covers a minority of the window and leaves
        # it alone, whereas texture, everywhere in the window, sets it as the RMS
        # does (for Gaussian texture 1.4826 MAD is its standard deviation).
        strong &= ~keep
        if strong.any():
            s_idx = np.flatnonzero(strong)
            off = np.arange(-w, w + 1)
            rr = np.clip(r[s_idx, None, None] + off[None, :, None], 0, rows - 1)
            cc = np.clip(c[s_idx, None, None] + off[None, None, :], 0, cols - 1)
            win = dog[rr, cc].reshape(len(s_idx), -1)
            med = median(win, axis=1)
            mad = median(np.abs(win - med[:, None]), axis=1)
            robust = dog[r[s_idx], c[s_idx]] / np.sqrt(med**2 + (1.4826 * mad) ** 2 + 1.0)
            keep[s_idx[robust > clutter_ratio]] = True
        # Far above any texture (VERY_STRONG clip levels), a peak is a marker
        # or metal, whatever surrounds it: the fit tells which.
        keep |= dog[r, c] >= VERY_STRONG * clip
    r, c, ratio = r[keep], c[keep], ratio[keep]
    if len(r) == 0:
        return np.zeros((0, 2)), np.zeros(0)
    if len(r) > MAX_CANDIDATES:
        top = np.argpartition(-ratio, MAX_CANDIDATES)[:MAX_CANDIDATES]
        r, c, ratio = r[top], c[top], ratio[top]
    return subpixel_peaks(dog, r, c, ratio, k, scale.r_min)


def subpixel_peaks(
    band: np.ndarray, r: np.ndarray, c: np.ndarray, ratio: np.ndarray, k: int, r_min: float
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate centres from local maxima ``(r, c)`` of a band-passed reduced image.

    Lowe's edge test (IJCV 2004, sec. 4.1: both principal curvatures negative
    and of similar size; a flat-topped disc, near-zero curvature, is kept), a
    parabolic sub-pixel peak per axis, full-resolution coordinates for the
    reduction ``k``, and one candidate per marker. All of it is invariant to a
    positive scaling of ``band``.

    Returns centres (n, 2) and their ``ratio`` (the caller's strength).
    """
    v0 = band[r, c]
    vu, vd = band[r - 1, c], band[r + 1, c]
    vl, vr = band[r, c - 1], band[r, c + 1]
    dyy = vu + vd - 2 * v0
    dxx = vl + vr - 2 * v0
    dxy = 0.25 * (band[r + 1, c + 1] - band[r + 1, c - 1] - band[r - 1, c + 1] + band[r - 1, c - 1])
    tr = dxx + dyy
    det = dxx * dyy - dxy**2
    edge_r = 6.0
    ok = (det > 0) & (tr < 0) & (tr**2 * edge_r < (edge_r + 1) ** 2 * det)
    ok |= (np.abs(tr) < 0.05 * v0) & (det >= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        dr = np.where(dyy < 0, 0.5 * (vu - vd) / dyy, 0.0)
        dc = np.where(dxx < 0, 0.5 * (vl - vr) / dxx, 0.0)
    dr = np.clip(np.nan_to_num(dr), -0.5, 0.5)
    dc = np.clip(np.nan_to_num(dc), -0.5, 0.5)
    rc = np.stack([(r + dr + 0.5) * k - 0.5, (c + dc + 0.5) * k - 0.5], axis=1)
    rc, ratio = rc[ok], ratio[ok]
    # Ties on a plateau of the band-pass leave two maxima on one marker. Fitted
    # side by side, each would get only its half of the window (neighbour
    # masking in fit_markers) and both centres would be pulled apart by up to
    # half a pixel: keep the stronger of any two closer than the smallest radius.
    pairs = pairs_within(rc, max(1.0, r_min))
    if len(pairs):
        weaker = np.where(ratio[pairs[:, 0]] >= ratio[pairs[:, 1]], pairs[:, 1], pairs[:, 0])
        keep = np.ones(len(rc), bool)
        keep[weaker] = False
        rc, ratio = rc[keep], ratio[keep]
    return rc, ratio


# --------------------------------------------------------------------------- fine


def _model(dr, dc, p, jac=True):
    """Opaque blurred disc on a plane and its Jacobian, batched (n windows x m pixels).

    ``p`` columns: r0, c0, R, s, A, B0, Br, Bc (offsets relative to the window centre)::

        I(x) = B0 + H(x) (1 - o(x)) + A o(x),   H(x) = Br dr + Bc dc,
        o(x) = 0.5 erfc((|x - x0| - R) / (sqrt 2 s))

    A tantalum bead is opaque: in its shadow the image shows the bead's own
    level (scatter), not the background, so the background is occluded
    (multiplied by ``1 - o``) rather than added to. Where the background
    slopes or steps across the marker, an additive disc would carry the
    slope into the shadow and the fit would shift the centre to make up for
    it. ``A`` is the shadow's level relative to ``B0``.

    The Jacobian is (n, parameters, m): each parameter's row is contiguous,
    which makes filling it and the normal equations' products cheap. With
    ``jac=False`` only the model is computed (None in its place).
    """
    return _occluding_disc(dr, dc, p, None, with_jac=jac)


def _additive_disc(dr, dc, p, jac=True):
    """Blurred disc added to a plane (``B0 + Br dr + Bc dc + A o(x)``) and its Jacobian.

    Cheaper than :func:`_model` and as good away from background slopes: used
    for the first fit of every candidate, most of which are texture.
    """
    return _occluding_disc(dr, dc, p, None, occlude=False, with_jac=jac)


def _occluding_disc(dr, dc, p, extra, occlude=True, with_jac=True):
    """Core of :func:`_model`; ``extra`` = (H_e, J_e) adds background terms and their Jacobian.

    ``occlude=False`` adds the disc to the background instead (:func:`_additive_disc`).
    ``J_e`` is (n, extra parameters, m), as the Jacobian returned.
    """
    f = dr.dtype.type
    p8 = p[:, :8].astype(dr.dtype, copy=False)
    r0, c0, rad, s, a = (p8[:, i : i + 1] for i in range(5))
    b0, br, bc = p8[:, 5:6], p8[:, 6:7], p8[:, 7:8]
    yr = dr - r0
    yc = dc - c0
    rho = np.sqrt(yr * yr + yc * yc + 1e-6)
    u = (rho - rad) / s
    gauss = np.exp(f(-0.5) * u * u)  # erfc's exp(-x^2) at x = u / sqrt 2, and the density's
    disc = 0.5 * erfc(u * f(1 / _SQRT2), gauss)
    hb = br * dr + bc * dc
    if extra is not None:
        hb = hb + extra[0]
    if occlude:
        clear = 1 - disc
        model = b0 + hb * clear + a * disc
    else:
        clear = None
        model = b0 + hb + a * disc
    if not with_jac:
        return model, None
    phi = gauss * (f(_INV_SQRT_2PI) / s)
    ap = ((a - hb) if occlude else a) * phi
    k = 8 if extra is None else 8 + extra[1].shape[1]
    jac = np.empty((dr.shape[0], k, dr.shape[1]), dtype=dr.dtype)
    jac[:, 0] = ap * yr / rho
    jac[:, 1] = ap * yc / rho
    jac[:, 2] = ap
    jac[:, 3] = ap * u
    jac[:, 4] = disc
    jac[:, 5] = 1.0
    jac[:, 6] = dr if clear is None else dr * clear
    jac[:, 7] = dc if clear is None else dc * clear
    if extra is not None:
        jac[:, 8:] = extra[1] if clear is None else extra[1] * clear[:, None]
    return model, jac


def _model_edge(dr, dc, p, jac=True):
    """Opaque blurred disc on a plane and a blurred, possibly curved step, and its Jacobian.

    ``p`` columns: the eight of :func:`_model`, then E (step height), theta
    (direction of the edge normal), d (edge offset from the window centre
    along the normal), s_e (edge blur) and, for a curved edge only, kappa
    (curvature, 1/px; a straight edge has 12 columns and no kappa to fit); the
    step joins the background ``H(x)`` of :func:`_model`::

        H(x) = Br dr + Bc dc + E * Phi(t / s_e),
        t = cos(theta) dr + sin(theta) dc - d + kappa u^2 / 2,
        u = cos(theta) dc - sin(theta) dr   (along the edge)

    A bead on the border of a metal implant or a cortex sits on such a step,
    which a plane cannot follow: the plane's misfit, largest on the disc's
    side of the step, pulls the centre across it. Implant outlines (stems,
    condyles, the corners of a tray seen obliquely) bend within a window;
    the parabola is the osculating circle's second-order approximation.
    """
    f = dr.dtype.type
    e, th, d, se = (p[:, i : i + 1].astype(dr.dtype, copy=False) for i in range(8, 12))
    kappa = p[:, 12:13].astype(dr.dtype, copy=False) if p.shape[1] > 12 else None
    across, along, t = _edge_coordinates(dr, dc, th, d, kappa)
    v = t / se
    gauss = np.exp(f(-0.5) * v * v)
    cdf = 0.5 * erfc(-v * f(1 / _SQRT2), gauss)
    if not jac:
        return _occluding_disc(dr, dc, p, (e * cdf, None), with_jac=False)
    ep = e * gauss * (f(_INV_SQRT_2PI) / se)
    if kappa is None:
        je = np.stack([cdf, ep * along, -ep, -ep * v], axis=1)
    else:
        je = np.stack(
            [cdf, ep * along * (1 - kappa * across), -ep, -ep * v, ep * f(0.5) * along * along],
            axis=1,
        )
    return _occluding_disc(dr, dc, p, (e * cdf, je))


def _edge_coordinates(dr, dc, th, d, kappa=None):
    """Coordinates across and along an edge of normal angle ``th`` and the signed
    distance ``t`` to it, ``across - d + kappa along^2 / 2`` (a parabola; a
    straight line without ``kappa``), for :func:`_model_edge` and the step's
    height at a fitted centre."""
    ct, st = np.cos(th), np.sin(th)
    across = ct * dr + st * dc
    along = ct * dc - st * dr
    t = across - d
    if kappa is not None:
        t = t + 0.5 * kappa * along * along
    return across, along, t


# Mean chi-square per pixel outside the disc above which a step edge is tried
# (a plane that fits leaves about 1; bone texture raises it to 1.5-3). Measured
# on 36 simulated exams (docs/benchmarks.md): at 1.5 the knee's texture sent
# nearly every bead to the refit (+0.3 s per exam) for a worse 3D error
# (16.5 / 18.8 µm on seeds 1-3 / 4-6) than at 3 (15.9 / 18.3 µm).
EDGE_MIN_RING_CHI2 = 3.0
# Edge directions tried to start the edge fit (the normal's angle).
_EDGE_ANGLES = np.linspace(0.0, 2 * np.pi, 24, endpoint=False)
# Smallest drop of chi-square (weighted cost) for which the four edge parameters
# are accepted: about the 0.1 % point of chi-square with 4 degrees of freedom
# (18.5), so a window without an edge keeps the plain model and its bound.
EDGE_MIN_DCHI2 = 20.0
# Largest curvature (1/px) of the edge: a radius of curvature of 4 px or more
# (about a bead's shadow radius; a tighter bend is no implant outline).
MAX_EDGE_CURVATURE = 0.25
# Smallest further drop of chi-square for which a curved edge replaces the
# straight one it starts from: the 0.1 % point of chi-square with one degree of
# freedom (nested models), so that curvature is only fitted where the data ask
# for it. Measured on the 36 default exams (docs/benchmarks.md, fifth session):
# pooled 3D error 17.2 -> 16.5 µm (seeds 4-6), 15.6 -> 15.5 µm (seeds 1-3).
EDGE_MIN_DCHI2_CURVED = 10.8


def _edge_refit(win, dr, dc, sw, p, h, radius_range, cost_plain):
    """Refit with a step edge in the background; accept it where chi-square drops.

    The edge is started by a search over ~500 lines (24 directions, every
    pixel offset): for each, a plane and a step are fitted to the window
    outside the disc by weighted least squares (linear for a given line),
    and the line that explains most is kept; then edge and disc are refined
    together by Levenberg-Marquardt (40 iterations at most, so that the same
    data stored differently converge to the same centre). An accepted straight
    edge is then allowed to bend (:data:`MAX_EDGE_CURVATURE`), kept where that
    lowers chi-square by :data:`EDGE_MIN_DCHI2_CURVED` more.

    Returns the (n, 13) parameters and a boolean (n,) of accepted edges.
    """
    rho = np.sqrt((dr - p[:, 0:1]) ** 2 + (dc - p[:, 1:2]) ** 2)
    outside = (rho > p[:, 2:3] + 2 * p[:, 3:4]) & (sw > 0)
    # Weighted least squares of the window outside the disc on a plane and a
    # step [1, dr, dc, step] for every trial line at once. The windows share
    # one footprint, so the steps are one (pixels x lines) matrix and every sum
    # is a matrix product; the step's gain over the plane alone is its Schur
    # complement (no 4x4 solve per line).
    w = np.where(outside, sw * sw, 0).astype(np.float64)
    y = win.astype(np.float64)
    d0, c0 = dr[0].astype(np.float64), dc[0].astype(np.float64)
    lines_th = np.repeat(_EDGE_ANGLES, 2 * h - 1)
    lines_d = np.tile(np.arange(-h + 1, h, 1.0), len(_EDGE_ANGLES))
    steps = (np.cos(lines_th)[:, None] * d0[None] + np.sin(lines_th)[:, None] * c0[None]) > (
        lines_d[:, None]
    )
    steps = steps.astype(np.float64).T  # (m, lines)
    basis = np.stack([np.ones_like(d0), d0, c0])  # (3, m)
    wb = w[:, None, :] * basis[None]  # (n, 3, m)
    pmat = wb @ basis.T  # (n, 3, 3)
    pvec = wb @ y[..., None]  # (n, 3, 1)
    q = wb @ steps  # (n, 3, lines)
    s_ss = w @ steps  # (n, lines)
    s_sy = (w * y) @ steps  # (n, lines)
    pinv = np.linalg.pinv(pmat)
    coef_plane = pinv @ pvec  # (n, 3, 1)
    piq = pinv @ q  # (n, 3, lines)
    var = s_ss - np.einsum("nkl,nkl->nl", q, piq)
    cov = s_sy - np.einsum("nkl,nk->nl", q, coef_plane[..., 0])
    with np.errstate(invalid="ignore", divide="ignore"):
        gain = np.where(var > 1e-6 * np.maximum(s_ss, 1e-300), cov * cov / var, 0.0)
    k = np.argmax(gain, axis=1)
    rows = np.arange(len(p))
    height = np.where(var[rows, k] > 0, cov[rows, k] / np.maximum(var[rows, k], 1e-300), 0.0)
    plane = coef_plane[..., 0] - piq[rows, :, k] * height[:, None]
    pe = np.concatenate([p, np.stack([height, lines_th[k], lines_d[k], np.ones(len(p))], 1)], 1)
    # the shadow's level stays where it was; the background is the new one
    pe[:, 4] += p[:, 5] - plane[:, 0]
    pe[:, 5:8] = plane
    r_lo, r_hi = radius_range
    pe, cost_edge = _levenberg_marquardt(
        win, dr, dc, sw, pe, 40, (r_lo, r_hi, h), model_fn=_model_edge
    )
    accepted = np.isfinite(cost_edge) & (cost_edge < cost_plain - EDGE_MIN_DCHI2)
    pe = np.concatenate([pe, np.zeros((len(pe), 1))], axis=1)  # kappa 0: straight
    if MAX_EDGE_CURVATURE > 0 and accepted.any():
        a = np.flatnonzero(accepted)
        pc, cost_c = _levenberg_marquardt(
            win[a], dr[a], dc[a], sw[a], pe[a], 40, (r_lo, r_hi, h), model_fn=_model_edge
        )
        bent = np.isfinite(cost_c) & (cost_c < cost_edge[a] - EDGE_MIN_DCHI2_CURVED)
        pe[a[bent]] = pc[bent]
    return pe, accepted


def _gather(display: np.ndarray, centres: np.ndarray, h: int):
    """Windows of half size h around integer centres; out-of-image pixels flagged."""
    rows, cols = display.shape
    off = np.arange(-h, h + 1)
    rr = centres[:, 0:1, None] + off[None, :, None]
    cc = centres[:, 1:2, None] + off[None, None, :]
    rr, cc = np.broadcast_arrays(rr, cc)
    inside = (rr >= 0) & (rr < rows) & (cc >= 0) & (cc < cols)
    win = display[np.clip(rr, 0, rows - 1), np.clip(cc, 0, cols - 1)]
    return win.astype(np.float64), inside, rr - centres[:, 0:1, None], cc - centres[:, 1:2, None]


def _window_noise(win: np.ndarray) -> np.ndarray:
    """Per-window noise from first differences (robust; smooth structure cancels).

    Never below the quantisation's own noise, ``q / sqrt(12)`` for the smallest
    step ``q`` between neighbouring values: where the stored values barely
    change (a photon-starved region of a linear image taken to the logarithm,
    8 stored bits over a flat area) most differences are 0, the median absolute
    deviation is 0, and a one-level bump would otherwise count as a marker of
    unbounded signal-to-noise ratio (fifth session: three false markers on a
    12-bit linear spine exam). In data that are not quantised the smallest step
    is tiny and the floor does nothing.
    """
    d1 = np.diff(win, axis=2).reshape(len(win), -1)
    d2 = np.diff(win, axis=1).reshape(len(win), -1)
    d = np.concatenate([d1, d2], axis=1)
    mad = median(np.abs(d - median(d, axis=1, keepdims=True)), axis=1)
    step = np.abs(d)
    step = np.where(step > 0, step, np.inf).min(axis=1)
    step = np.where(np.isfinite(step), step, 0.0)
    return np.maximum(1.4826 * mad / _SQRT2, step / np.sqrt(12.0)) + 1e-9


def _levenberg_marquardt(win, dr, dc, sw, p, iterations, bounds, model_fn=None):
    """Batched Levenberg-Marquardt on the blurred-disc model with sqrt-weights ``sw``.

    Only windows that have not converged are iterated (an active set), so a
    few slow fits do not cost the many fast ones. ``model_fn`` (default
    :func:`_model`) may add parameters after the disc's eight. ``bounds`` is
    (smallest radius, largest radius, half window). Returns the parameters and
    each window's final weighted cost.
    """
    model_fn = _model if model_fn is None else model_fn
    r_lo, r_hi, h = bounds
    p = p.copy()
    n = len(p)
    lam = np.full(n, 1e-2)
    model, jac = model_fn(dr, dc, p)
    res = (win - model) * sw
    cost = (res**2).sum(1)
    eye = np.eye(p.shape[1])
    act = np.arange(n)
    for _ in range(iterations):
        if len(act) == 0:
            break
        swa = sw[act]
        jw = jac[act] * swa[:, None, :]
        jtj = jw @ jw.transpose(0, 2, 1)
        jtr = (jw @ res[act][..., None])[..., 0]
        diag = np.einsum("nii->ni", jtj)
        a_mat = jtj + (lam[act][:, None] * (diag + 1e-9))[:, :, None] * eye
        try:
            step = np.linalg.solve(a_mat, jtr[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = np.stack(
                [np.linalg.lstsq(m, v, rcond=None)[0] for m, v in zip(a_mat, jtr, strict=True)]
            )
        trial = p[act] + step
        trial[:, 2] = np.clip(trial[:, 2], r_lo, r_hi)
        trial[:, 3] = np.clip(trial[:, 3], 0.25, r_hi)
        trial[:, 0:2] = np.clip(trial[:, 0:2], -h, h)
        if trial.shape[1] > 8:
            trial[:, 10] = np.clip(trial[:, 10], -3 * h, 3 * h)
            trial[:, 11] = np.clip(trial[:, 11], 0.3, 4.0)
        if trial.shape[1] > 12:
            trial[:, 12] = np.clip(trial[:, 12], -MAX_EDGE_CURVATURE, MAX_EDGE_CURVATURE)
        m_t, j_t = model_fn(dr[act], dc[act], trial)
        res_t = (win[act] - m_t) * swa
        cost_t = (res_t**2).sum(1)
        better = cost_t < cost[act]
        idx = act[better]
        rel = (cost[idx] - cost_t[better]) / np.maximum(cost[idx], 1e-300)
        p[idx] = trial[better]
        jac[idx], res[idx] = j_t[better], res_t[better]
        cost[idx] = cost_t[better]
        lam[act] = np.where(better, lam[act] * 0.3, lam[act] * 10.0)
        done = np.zeros(len(act), bool)
        # a cost change of 1e-4 relative is far below one unit of chi-square
        done[better] = (np.abs(step[better, :2]).max(1) < 1e-3) | (rel < 1e-4)
        done |= lam[act] > 1e3  # repeated rejections: at a minimum to within the damping
        act = act[~done]
    return p, cost


class MarkerFit(NamedTuple):
    """What :func:`fit_markers` returns, one row per candidate (NaN where skipped).

    Attributes
    ----------
    params : ndarray (n, 8)
        r0, c0 (absolute px), R, s, A, B0, Br, Bc.
    cov_diag : ndarray (n, 8)
        Diagonal of the parameter covariance at the measured noise.
    chi : ndarray (n,)
        RMS residual over the disc and its edge, over the larger of the
        background ring's RMS residual and the pixel noise (about 1 for one
        disc on any background).
    noise : ndarray (n,)
        Window noise (first differences, robust).
    rms_in : ndarray (n,)
        RMS residual over the disc and its edge (display units).
    has_edge : ndarray (n,) bool
        The fit kept a step edge in the background.
    shift : ndarray (n,)
        Distance (px) between the centres of the additive first fit and the
        final model.
    edge : ndarray (n, 5)
        The step's E, theta, d, s_e, kappa where ``has_edge`` (height 0 elsewhere).
    """

    params: np.ndarray
    cov_diag: np.ndarray
    chi: np.ndarray
    noise: np.ndarray
    rms_in: np.ndarray
    has_edge: np.ndarray
    shift: np.ndarray
    edge: np.ndarray


def _mask_nearer(weight, dr, dc, ci, own, a, other, b) -> None:
    """Zero the pixels of windows ``a`` nearer to ``other[b]`` than to ``own[a]``.

    ``dr``, ``dc`` are the window pixels' offsets from the integer centres ``ci``;
    a pair may repeat (``np.multiply.at``).
    """
    ra = dr[a] + ci[a, 0:1]
    ca = dc[a] + ci[a, 1:2]
    d_own = (ra - own[a, 0:1]) ** 2 + (ca - own[a, 1:2]) ** 2
    d_oth = (ra - other[b, 0:1]) ** 2 + (ca - other[b, 1:2]) ** 2
    np.multiply.at(weight, a, (d_oth >= d_own).astype(np.float64))


# Iterations of the first (additive) fit of every candidate (fit_markers'
# default, so also the start of refit_on_edges' edge fit). It screens the
# candidates and starts the weighted fit, which refines the plausible ones;
# real markers converge in a few iterations, while noise and texture blobs
# wander until the limit and make most of the cost. Measured on the 36
# default simulated exams (docs/benchmarks.md, fourth session): at 8 instead
# of 12 every exam gives the same markers, verdicts and cage counts (markers
# within 0.11 µm, focal spots within 0.017 mm); at 6 one cage marker of 2,700
# is lost, at 4 fifteen exams move by up to 2.5 µm.
SCREEN_ITERATIONS = 8


def fit_markers(
    display: np.ndarray,
    candidates: np.ndarray,
    scale: MarkerScale,
    radius_guess: np.ndarray | None = None,
    iterations: int = SCREEN_ITERATIONS,
    screen_snr: float | None = None,
    edge_idx: np.ndarray | None = None,
    neighbours: np.ndarray | None = None,
) -> MarkerFit:
    """Least-squares blurred-disc fit in small windows, all windows at once.

    Levenberg-Marquardt (Marquardt, J. SIAM 1963) batched over windows; pixels
    nearer another candidate than their own are masked out so that a close
    neighbour does not pull the fit.

    ``screen_snr`` skips (NaN results) candidates whose window core stands
    less than that above its ring in matched-filter units.

    The first fit of every candidate adds the disc to a plane; the weighted
    refinement of the plausible ones uses the opaque (occluding) disc of
    :func:`_model`. Candidates listed in ``edge_idx`` whose background
    outside the disc is not a plane are refitted with a step edge
    (:func:`_model_edge`), kept where chi-square drops by
    :data:`EDGE_MIN_DCHI2`; their bound then counts the edge's parameters.
    ``neighbours`` are further centres (not fitted) whose pixels are masked
    out of the windows like the candidates' own. Pixels past the image's
    edge carry no weight.
    """
    n = len(candidates)
    h = scale.half_window
    if n == 0:
        z = np.zeros(0)
        return MarkerFit(
            np.zeros((0, 8)), np.zeros((0, 8)), z, z, z, z.astype(bool), z, np.zeros((0, 5))
        )
    ci = np.rint(candidates).astype(np.int64)
    win, inside, dr, dc = _gather(display, ci, h)
    m = win.shape[1] * win.shape[2]
    win = win.reshape(n, m)
    dr = dr.reshape(n, m).astype(np.float64)
    dc = dc.reshape(n, m).astype(np.float64)
    weight = inside.reshape(n, m).astype(np.float64)

    noise = _window_noise(win.reshape(n, 2 * h + 1, 2 * h + 1))
    rad0 = np.full(n, 0.5 * (scale.r_min + scale.r_max)) if radius_guess is None else radius_guess
    # circular footprint: the largest disc, its blur and a background ring
    rwin = min(scale.r_max + 3.0, float(h))
    fp = (dr[0] ** 2 + dc[0] ** 2) <= rwin**2
    win, dr, dc, weight = win[:, fp], dr[:, fp], dc[:, fp], weight[:, fp]
    if n > 1:
        pairs = pairs_within(candidates, 2 * rwin + 1)
        if len(pairs):
            for a, b in ((pairs[:, 0], pairs[:, 1]), (pairs[:, 1], pairs[:, 0])):
                _mask_nearer(weight, dr, dc, ci, candidates, a, candidates, b)
    if neighbours is not None and len(neighbours):
        a, b, dist = neighbours_within(candidates, np.asarray(neighbours, float), 2 * rwin + 1)
        a, b = a[dist > 1e-6], b[dist > 1e-6]  # a candidate is not its own neighbour
        if len(a):
            _mask_nearer(weight, dr, dc, ci, candidates, a, np.asarray(neighbours, float), b)

    # initial parameters
    ring = weight * ((dr**2 + dc**2) > (rad0[:, None] + 2) ** 2)
    wsum = np.maximum(ring.sum(1), 1)
    b0 = (win * ring).sum(1) / wsum
    core = weight * ((dr**2 + dc**2) <= np.maximum(rad0[:, None] * 0.5, 1) ** 2)
    a0 = (win * core).sum(1) / np.maximum(core.sum(1), 1) - b0
    n_all, alive = n, np.ones(n, bool)
    if screen_snr is not None:
        # a first look (window core minus ring, matched-filter units) drops
        # candidates that no fit could make significant, before paying for one
        alive = a0 / noise * np.sqrt(np.pi) * np.maximum(rad0, 1.0) >= screen_snr
        win, dr, dc, weight = win[alive], dr[alive], dc[alive], weight[alive]
        noise, a0, b0, rad0 = noise[alive], a0[alive], b0[alive], rad0[alive]
        ci, candidates = ci[alive], candidates[alive]
        n = int(alive.sum())
    p = np.zeros((n, 8))
    p[:, 0] = candidates[:, 0] - ci[:, 0]
    p[:, 1] = candidates[:, 1] - ci[:, 1]
    p[:, 2] = rad0
    p[:, 3] = 0.8
    p[:, 4] = np.maximum(a0, noise)
    p[:, 5] = b0
    r_lo, r_hi = 0.3 * scale.r_min, 1.8 * scale.r_max + 1
    # single precision halves the memory traffic of the batched fit; windows
    # are centred on their background first so that it loses nothing
    offset = b0.copy()
    win = (win - offset[:, None]).astype(np.float32)
    dr, dc = dr.astype(np.float32), dc.astype(np.float32)
    weight = weight.astype(np.float32)
    p[:, 5] = 0.0
    mask = weight
    p, cost = _levenberg_marquardt(
        win, dr, dc, mask, p, iterations, (r_lo, r_hi, h), model_fn=_additive_disc
    )
    centre_additive = p[:, :2].copy()
    nw = mask.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        chi = np.sqrt(cost / np.maximum(nw - 8, 1)) / noise
    # Second pass, weighted by a two-zone noise model: with counts the bead's
    # shadow is less noisy than the background; weighting each pixel by its
    # variance (measured in the disc core and from the background's pixel
    # differences) makes the estimator efficient (Gauss-Markov) without
    # assuming how stored values relate to counts.
    # (only for fits that can still be markers: significant and of a plausible size)
    snr1 = p[:, 4] / noise * np.sqrt(np.pi) * np.maximum(p[:, 2], p[:, 3])
    go = (
        (snr1 >= (screen_snr or 0.0))
        & (p[:, 2] >= 0.5 * scale.r_min)
        & (p[:, 2] <= 1.5 * scale.r_max)
    )
    model, _ = _model(dr, dc, p, jac=False)
    rho = np.sqrt((dr - p[:, 0:1]) ** 2 + (dc - p[:, 1:2]) ** 2)
    core = mask * (rho < (p[:, 2:3] - 1.5 * p[:, 3:4]))
    n_core = core.sum(1)
    var_bg = noise**2
    var_core = np.where(
        n_core >= 8,
        ((win - model) ** 2 * core).sum(1) / np.maximum(n_core - 1, 1),
        var_bg,
    )
    var_core = np.clip(var_core, 0.05 * var_bg, 2.0 * var_bg)
    disc = 0.5 * erfc((rho - p[:, 2:3]) / (_SQRT2 * p[:, 3:4]))
    var = var_bg[:, None] + (var_core - var_bg)[:, None] * disc
    sw = (mask / np.sqrt(var)).astype(np.float32)
    g = np.flatnonzero(go)
    edge = np.zeros((n, 5))
    edge[:, 3] = 1.0  # step height 0: no edge
    has_edge = np.zeros(n, bool)
    if len(g):
        p[g], cost_g = _levenberg_marquardt(win[g], dr[g], dc[g], sw[g], p[g], 5, (r_lo, r_hi, h))
        if edge_idx is not None and len(edge_idx):
            # only where the background outside the disc is not a plane
            m_g, _ = _model(dr[g], dc[g], p[g], jac=False)
            rho_g = np.sqrt((dr[g] - p[g, 0:1]) ** 2 + (dc[g] - p[g, 1:2]) ** 2)
            out_g = (rho_g > p[g, 2:3] + 2 * p[g, 3:4]) & (sw[g] > 0)
            chi2_out = (((win[g] - m_g) * sw[g]) ** 2 * out_g).sum(1) / np.maximum(out_g.sum(1), 1)
            # (and only for fits significant enough to be reported as markers)
            allowed = np.zeros(n_all, bool)
            allowed[edge_idx] = True
            try_edge = (chi2_out > EDGE_MIN_RING_CHI2) & allowed[alive][g]
            e = g[try_edge]
            if len(e):
                ce = cost_g[try_edge]
                pe, acc = _edge_refit(win[e], dr[e], dc[e], sw[e], p[e], h, (r_lo, r_hi), ce)
                p[e[acc]] = pe[acc, :8]
                edge[e[acc]] = pe[acc, 8:]
                has_edge[e[acc]] = True
    full = np.concatenate([p, edge], axis=1)
    cov_diag = np.zeros((n, 8))
    model = np.empty_like(win)
    curved = edge[:, 4] != 0
    for sel, k in ((~has_edge, 8), (has_edge & ~curved, 12), (has_edge & curved, 13)):
        if not sel.any():
            continue
        fn = _model if k == 8 else _model_edge
        model[sel], jac = fn(dr[sel], dc[sel], full[sel, :k])
        jw = jac * sw[sel][:, None, :]
        jtj = jw @ jw.transpose(0, 2, 1)
        try:
            inv = np.linalg.inv(jtj + 1e-12 * np.eye(k))
        except np.linalg.LinAlgError:
            inv = np.linalg.pinv(jtj)
        cov_diag[sel] = np.einsum("nii->ni", inv)[:, :8]
    # Misfit local to the disc: residual RMS over the disc and its edge against
    # the RMS over the background ring. Texture or noise raise both alike; a
    # second bead, an edge or a cut through the marker raise the first.
    res2 = (win - model) ** 2 * mask
    rho = np.sqrt((dr - p[:, 0:1]) ** 2 + (dc - p[:, 1:2]) ** 2)
    inner = mask * (rho <= p[:, 2:3] + 2 * p[:, 3:4])
    outer = mask * (rho >= p[:, 2:3] + 3 * p[:, 3:4])
    with np.errstate(invalid="ignore", divide="ignore"):
        rms_in = np.sqrt((res2 * inner).sum(1) / np.maximum(inner.sum(1), 1))
        rms_out = np.sqrt((res2 * outer).sum(1) / np.maximum(outer.sum(1), 1))
        chi = np.where(outer.sum(1) >= 8, rms_in / np.maximum(rms_out, noise), chi)
    # how far the centre moved between the additive disc on a plane and the
    # final model: a measure of how much the background's shape matters
    shift = np.hypot(p[:, 0] - centre_additive[:, 0], p[:, 1] - centre_additive[:, 1])
    params = p.astype(np.float64)
    params[:, 0] += ci[:, 0]
    params[:, 1] += ci[:, 1]
    params[:, 5] += offset
    fit = MarkerFit(params, cov_diag, chi, noise, rms_in, has_edge, shift, edge)
    if n < n_all:
        # back to one row per candidate: NaN (no edge, height 0) where skipped
        rows = []
        for arr in fit:
            fill = False if arr.dtype == bool else (0.0 if arr is edge else np.nan)
            full = np.full((n_all, *arr.shape[1:]), fill, dtype=arr.dtype)
            full[alive] = arr
            rows.append(full)
        fit = MarkerFit(*rows)
    return fit


def noise_correlation(display: np.ndarray, step: int = 32) -> float:
    """Width b (px) of the noise's Gaussian autocorrelation ``exp(-d^2 / (4 b^2))``.

    Detector blur after the quantum noise (scintillator light spread) correlates
    neighbouring pixels; the variance of differences at lags 1 and 2 tells by how
    much (their ratio is 1 for white noise, up to 4 for strongly correlated
    noise). Robust (median absolute deviation) over a subsample of rows and
    columns, so image structure hardly counts. Returns 0 for white noise.

    Along rows and along columns separately, and the more correlated of the
    two: a pattern in one direction (the stripes of an anti-scatter grid, a
    period near two pixels, alternating from pixel to pixel) raises that
    direction's lag-1 difference variance far more than its lag-2 one, so
    their ratio falls and the noise reads as white; pooled, that made every
    centre bound several times too small (the simulated knee's DICOM images
    with stripes of one noise sigma, measured along the rows: 53 of 55
    imprecise blobs passed ``MAX_BEAD_SIGMA_MM`` and one paired into a false
    marker). The larger correlation never makes a bound optimistic.
    """
    d = display[::step].astype(np.float32)
    e = display[:, ::step].astype(np.float32)
    v1 = np.r_[_robust_sigma(np.diff(d, axis=1).ravel()), _robust_sigma(np.diff(e, axis=0).ravel())]
    v2 = np.r_[
        _robust_sigma((d[:, 2:] - d[:, :-2]).ravel()), _robust_sigma((e[2:] - e[:-2]).ravel())
    ]
    return correlation_width_from_ratio(float(np.max((v2 / v1) ** 2)))


def correlation_width_from_ratio(q: float) -> float:
    """Width b of ``exp(-d^2 / (4 b^2))`` whose lag-2 to lag-1 difference variance
    ratio is ``q`` (``(1 - rho(2)) / (1 - rho(1))``); 0 (white) at or below 1.02."""
    if q <= 1.02:
        return 0.0
    bs = np.linspace(0.05, 5.0, 400)
    qs = (1 - np.exp(-1 / bs**2)) / (1 - np.exp(-1 / (4 * bs**2)))
    return float(np.interp(min(q, qs[-1]), qs, bs))


@lru_cache(maxsize=8)
def _correlation_inverse(b: float, half: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Footprint offsets and the inverse of its noise correlation matrix (a constant)."""
    off = np.arange(-half, half + 1, dtype=float)
    dr, dc = np.meshgrid(off, off, indexing="ij")
    fp = (dr**2 + dc**2) <= half**2
    dr, dc = dr[fp], dc[fp]
    dist2 = (dr[:, None] - dr[None, :]) ** 2 + (dc[:, None] - dc[None, :]) ** 2
    corr = np.exp(-dist2 / (4 * b * b)) + 1e-3 * np.eye(len(dr))
    return dr, dc, np.linalg.inv(corr)


def correlated_sigma(det: Detections, b: float, half: int) -> np.ndarray:
    """Cramér-Rao bound (px, per axis) of each centre under correlated noise.

    The noise of a window is modelled as Gaussian with covariance
    ``sigma^2 exp(-d^2 / (4 b^2))`` between pixels d apart (sigma from the
    window's first differences, corrected for the correlation); the bound is
    from the Fisher information ``J^T C^-1 J`` of the blurred-disc model (Kay
    1993, eq. 3.31, general Gaussian case) on a disc-sized footprint.
    """
    if b <= 0 or len(det) == 0:
        return det.sigma_px
    b = round(float(b), 3)
    dr, dc, cinv = _correlation_inverse(b, half)
    rho1 = np.exp(-1 / (4 * b * b))
    p = np.zeros((len(det), 8))
    p[:, 2], p[:, 3], p[:, 4] = det.radius_px, det.blur_px, det.contrast
    _, jac = _model(np.tile(dr, (len(det), 1)), np.tile(dc, (len(det), 1)), p)
    fisher = jac @ cinv @ jac.transpose(0, 2, 1)
    var = (det.noise**2) / (1 - rho1)
    cov = np.linalg.inv(fisher + 1e-12 * np.eye(8)) * var[:, None, None]
    return np.sqrt(0.5 * (cov[:, 0, 0] + cov[:, 1, 1]))


def refit_on_edges(
    display: np.ndarray, det: Detections, idx: np.ndarray, scale: MarkerScale
) -> Detections:
    """Refit detections ``idx`` with a step edge in the background where the data ask for one.

    For the patient's bead candidates only (beads sit on implant borders and
    cortices; cage markers on the cage's uniform carbon do not need it, and
    the real-time check cannot pay for it). Every detection takes part as a
    neighbour (masking); only edge fits that were accepted replace a
    detection's centre, size, contrast, residual and bound.
    """
    idx = np.asarray(idx, dtype=np.intp)
    if len(idx) == 0 or len(det) == 0:
        return det
    fit = fit_markers(display, det.rc[idx], scale, edge_idx=np.arange(len(idx)), neighbours=det.rc)
    ok = fit.has_edge & np.all(np.isfinite(fit.params), axis=1)
    take = idx[ok]
    if len(take) == 0:
        return det
    p, edge = fit.params[ok], fit.edge[ok]
    # the shadow's level against the background at the bead's centre (the
    # plane and the step there), as the plain fit's contrast is
    rel = p[:, :2] - np.rint(det.rc[take])
    e, th, d, se, kappa = edge.T
    _, _, t = _edge_coordinates(rel[:, 0], rel[:, 1], th, d, kappa)
    step = e * 0.5 * erfc(-(t / se) / _SQRT2)
    contrast = p[:, 4] - (p[:, 6] * rel[:, 0] + p[:, 7] * rel[:, 1] + step)
    out = det.subset(np.arange(len(det)))
    out.rejected = det.rejected
    out.rc[take] = p[:, :2]
    out.radius_px[take] = p[:, 2]
    out.blur_px[take] = p[:, 3]
    out.contrast[take] = contrast
    out.relative_contrast[take] = contrast / det.noise[take]
    out.residual[take] = fit.chi[ok]
    # The noise's share of the bound stays the plain model's (what the photons
    # allow; the edge's own parameters would count the background's shape
    # twice), the model term is this refit's shift from the additive fit.
    noise = noise_bound(det)[take]
    if out.model_shift_px is not None:
        out.model_shift_px[take] = np.maximum(fit.shift[ok], out.model_shift_px[take])
        out.sigma_px[take] = with_model_uncertainty(noise, out.model_shift_px[take])
    return out


def detect_markers(
    image: RawImage,
    scale: MarkerScale,
    *,
    display: np.ndarray | None = None,
    threshold_sigma: float = 5.0,
    min_snr: float = 8.0,
    max_chi: float = 1.6,
    clutter_ratio: float = 3.0,
) -> Detections:
    """Detect markers in one image, coarse to fine.

    Parameters
    ----------
    image : RawImage
        Stored pixels and their interpretation.
    scale : MarkerScale
        Expected marker radii (from the station geometry and marker diameters).
    display : ndarray, optional
        Full-resolution display image if already computed.
    threshold_sigma : float
        Coarse detection threshold (robust sigmas of the band-pass).
    min_snr : float
        Smallest fitted amplitude over its standard error that counts as a marker.
    clutter_ratio : float
        Coarse contrast-to-clutter threshold (see :func:`coarse_candidates`).
    max_chi : float
        Largest RMS residual over the disc, relative to the background ring's,
        for a fit to count as one whole disc (unless that residual is under
        12 % of the amplitude: model shape error on very clean images).
    """
    k = scale.factor
    small = reduced_display(image, k)
    cand, _strength = coarse_candidates(
        small, k, scale, threshold_sigma, clutter_ratio, clutter_clip=CLUTTER_CLIP, local_noise=True
    )
    if display is None:
        display = full_display(image)
    fit = fit_markers(display, cand, scale, screen_snr=0.5 * min_snr)
    det = _select(fit, display.shape, scale, min_snr, max_chi, starts=cand)
    b = noise_correlation(display)
    if b > 0.45:  # neighbours correlated by more than ~0.3: white noise no longer describes it
        det.sigma_px = correlated_sigma(det, b, int(np.ceil(scale.r_max + 2)))
    det.sigma_px = with_model_uncertainty(det.sigma_px, det.model_shift_px)
    return det


# Part of the centre's shift between the additive and the final background
# model that is counted as model uncertainty. Measured on the simulator's 18
# default exams (docs/reconstruction.md): beads whose two fits differ by
# 0.16-0.70 px were 0.1-0.3 px off the truth, i.e. about half the shift.
MODEL_SHIFT_FRACTION = 0.5


def with_model_uncertainty(sigma_px: np.ndarray, shift_px: np.ndarray | None) -> np.ndarray:
    """Centre bound widened by the background model's uncertainty.

    The Cramér-Rao bound assumes the model is right. Where the background
    under a marker is not what any of the models says (a curved implant
    border, a corner, dense texture), the centre carries a bias the bound
    does not show; the distance between the centres of two background
    models (:data:`MODEL_SHIFT_FRACTION` of it) stands for that bias, added
    in quadrature, so that matching gates and the reported uncertainty stay
    honest (:data:`reconstruction.pipeline.MAX_BEAD_SIGMA_MM` judges the
    noise's part alone, :func:`noise_bound`).
    """
    if shift_px is None:
        return sigma_px
    extra = MODEL_SHIFT_FRACTION * np.nan_to_num(np.asarray(shift_px, float))
    return np.hypot(sigma_px, extra)


def noise_bound(det: Detections) -> np.ndarray:
    """The Cramér-Rao part of ``det.sigma_px`` (without the model uncertainty)."""
    if det.model_shift_px is None:
        return det.sigma_px
    extra = MODEL_SHIFT_FRACTION * np.nan_to_num(det.model_shift_px)
    return np.sqrt(np.maximum(det.sigma_px**2 - extra**2, 0.0))


def _select(fit: MarkerFit, shape, scale, min_snr, max_chi, starts=None) -> Detections:
    """The fits that are markers; the others listed as rejected with their reason,
    at their candidate's position (``starts``, where given: a fit that ran onto
    a structure ends far from what it was started on) or else the fitted one."""
    params, cov, chi, noise, rms_in, shift = (
        fit.params,
        fit.cov_diag,
        fit.chi,
        fit.noise,
        fit.rms_in,
        fit.shift,
    )
    rows, cols = shape
    r0, c0, rad, s, a = params[:, 0], params[:, 1], params[:, 2], params[:, 3], params[:, 4]
    with np.errstate(invalid="ignore", divide="ignore"):
        # matched-filter signal-to-noise ratio of the disc (amplitude over
        # noise times the square root of its area); the amplitude's own
        # standard error is useless here, being correlated with R and s.
        snr = a / noise * np.sqrt(np.pi) * np.maximum(rad, s)
        sig = np.sqrt(0.5 * (cov[:, 0] + cov[:, 1]))
        resid_rel = rms_in / np.maximum(a, 1e-12)
    extent = rad + 2 * s
    reason = np.full(len(params), "", dtype=object)
    finite = np.all(np.isfinite(params), axis=1) & np.isfinite(snr) & np.isfinite(chi)
    reason[~finite] = "fit failed"
    cut = (
        (r0 - extent < -0.5)
        | (c0 - extent < -0.5)
        | (r0 + extent > rows - 0.5)
        | (c0 + extent > cols - 0.5)
    )
    # (a window reaching past the edge is fine: those pixels carry no weight;
    # a marker 10 px inside counts as expected, and a 2 mm cage marker's
    # window is 17 px wide)
    reason[(reason == "") & cut] = "cut by the image edge"
    reason[(reason == "") & ((a <= 0) | (snr < min_snr))] = "not significant"
    bad_size = (
        (rad < 0.5 * scale.r_min) | (rad > 1.5 * scale.r_max) | (s > max(2.5, 0.9 * scale.r_max))
    )
    reason[(reason == "") & bad_size] = "implausible size or blur"
    # a shape that is not exactly our model (a sphere's rim, a log transfer)
    # leaves a residual of a few per cent of the amplitude; a second bead or an
    # edge leaves far more
    misfit = (chi > max_chi) & (resid_rel > 0.12)
    reason[(reason == "") & misfit] = "not a single disc (merged, edge or texture)"
    ok = reason == ""
    # duplicates: two candidates converged on one marker (two discs whose centres are
    # closer than the smallest radius would be one merged blob); keep the better fit
    idx = np.flatnonzero(ok)
    if len(idx) > 1:
        pts = params[idx, :2]
        pairs = pairs_within(pts, max(1.0, scale.r_min))
        drop = set()
        for i, j in pairs:
            ii, jj = idx[i], idx[j]
            drop.add(jj if chi[ii] <= chi[jj] else ii)
        for d in drop:
            ok[d] = False
            reason[d] = "duplicate"
    det = Detections(
        rc=params[ok, :2].copy(),
        radius_px=rad[ok].copy(),
        blur_px=s[ok].copy(),
        contrast=a[ok].copy(),
        relative_contrast=(a / noise)[ok],
        residual=chi[ok].copy(),
        sigma_px=sig[ok].copy(),
        noise=noise[ok].copy(),
        model_shift_px=shift[ok].copy(),
        blur_sigma_px=np.sqrt(np.maximum(cov[ok, 3], 0.0)),
    )
    where = params[:, :2] if starts is None else np.asarray(starts, float)
    det.rejected = [
        (where[i].copy(), str(reason[i]))
        for i in np.flatnonzero(~ok)
        if reason[i] not in ("duplicate", "fit failed", "not significant")
    ]
    return det


def cramer_rao_centre(
    radius: float,
    blur: float,
    amplitude: float,
    noise: float | None = None,
    *,
    poisson_background: float | None = None,
    half: int = 10,
) -> float:
    """Cramér-Rao bound (px, per axis) of the centre of a blurred disc.

    The Fisher information of the eight-parameter model above for independent
    Gaussian noise of variance v(x) is ``sum J^T J / v`` (Kay 1993, eq. 3.31);
    the bound is the square root of the centre element of its inverse. Give
    either a constant ``noise`` standard deviation or, for counts, the
    ``poisson_background`` level: the variance is then the expected count, which
    is lower in the bead's shadow by the amplitude.
    """
    off = np.arange(-half, half + 1, dtype=float)
    dr, dc = np.meshgrid(off, off, indexing="ij")
    dr = dr.reshape(1, -1)
    dc = dc.reshape(1, -1)
    p = np.array([[0.0, 0.0, radius, blur, amplitude, 0.0, 0.0, 0.0]])
    model, jac = _model(dr, dc, p)
    if poisson_background is not None:
        var = np.maximum(poisson_background - model[0], 1e-9)
    elif noise is not None:
        var = np.full(jac.shape[2], float(noise) ** 2)
    else:
        raise ValueError("give noise or poisson_background")
    info = (jac[0] / var[None, :]) @ jac[0].T
    return float(np.sqrt(np.linalg.inv(info)[0, 0]))
