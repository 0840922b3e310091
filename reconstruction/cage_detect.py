"""Cage-marker candidates for the real-time cage check, within its 10 ms budget.

The reconstruction's coarse pass (:func:`reconstruction.detect.coarse_candidates`
on :func:`reconstruction.detect.reduced_display`) is the model; three things
make it cheaper here without changing what it finds:

1. *Reduction by powers of two.* Area averaging by an integer factor ``k`` is a
   chain of 2 x 2 block means when ``k`` is a power of two. OpenCV's 2 x 2
   ``INTER_AREA`` path is vectorised (about 0.9 ms for a 4.8 MP uint16 frame on
   our machine), while other factors go through its generic area resampler
   (2.3 ms for k = 5, 3.8 ms for k = 6). The stored values are reduced, and the
   Modality LUT and the photometric inversion (both linear, so they commute
   with averaging) are applied to the small image only: the full-resolution
   frame is read once and never converted to float. (A linear image's
   logarithm does not commute with averaging; it is taken of the small image's
   block means, which for the visibility of cage markers is the same.)
2. *One band-pass octave at the cage markers' scale.* Cage markers are all
   of about one size (the shadow radii of one cage differ by the spread of
   magnification only), so a single difference of Gaussians whose inner scale
   is matched to the smallest cage-marker shadow (Lindeberg 1998: a disc of
   radius r answers best to a LoG of scale r / sqrt 2) finds them all, and
   answers less to patient beads, which are smaller: fewer spurious blobs reach
   the identification. The wide background blur is taken on the image halved
   once more and brought back up, as ``coarse_candidates`` does.
3. *Work on the maxima only.* The robust noise level is taken on a subsample,
   the threshold is applied to the unscaled band-pass, and the local
   contrast-to-clutter ratio (the test of ``coarse_candidates``: the
   candidate against the band-pass RMS over a few marker diameters, here as
   the mean square on the halved image), Lowe's edge test (IJCV 2004, sec.
   4.1) and the parabolic sub-pixel peak are computed at the maxima only.

On the reduced image a centre is good to about a quarter of its pixel (1 px
at k = 4): every candidate is then re-centred at full resolution by the
intensity centroid of its disc (first moment of the excess over a level
halfway between the local background and the disc's peak), on a small window
gathered straight from the stored pixels with the LUT applied to the window
only. On the simulator's frames the identified centres come out within
0.05 px (median) of the truth, against 0.75-1.1 px from the parabolic peak at
k = 5-6 before. Candidates whose window is cut by the image edge keep their
coarse centre; the check never counts a marker nearer than 10 px to the edge.
"""

from __future__ import annotations

import cv2
import numpy as np

from reconstruction.detect import MarkerScale, _robust_sigma, subpixel_peaks
from reconstruction.image import RawImage, clear_high_bits, display_values

#: Smallest marker radius kept on the reduced image (px), as the reconstruction's
#: coarse pass (MarkerScale.factor). At 0.35 px (k = 8 on the simulator's
#: 0.15 mm pixels) neighbouring cage markers of a biplanar cage merge in the
#: non-maximum suppression and 2-5 visible markers per view were lost.
MIN_REDUCED_RADIUS = 0.6
#: Largest reduction factor.
MAX_FACTOR = 8


def pow2_factor(scale: MarkerScale, min_reduced_radius: float = MIN_REDUCED_RADIUS) -> int:
    """Largest power of two (<= :data:`MAX_FACTOR`) keeping the smallest marker's radius."""
    k = 1
    while 2 * k <= MAX_FACTOR and scale.r_min / (2 * k) >= min_reduced_radius:
        k *= 2
    return k


def reduced_display_pow2(image: RawImage, k: int) -> np.ndarray:
    """Area average by ``k`` (a power of two) in display values (markers bright), float32.

    The values of :func:`reconstruction.detect.reduced_display` up to the
    integer rounding of each 2 x 2 step (half a stored unit at most), by
    repeated 2 x 2 block means. The frame is read once, in bands of rows that
    stay in the processor's cache: each band's maximum is checked for bits above
    BitsStored (which are then cleared, as ``reduced_display`` does for the
    whole frame when any is set), then the band is halved, and halved again
    into its rows of the result.
    """
    if k & (k - 1):
        raise ValueError(f"reduction factor {k} is not a power of two")
    px = image.pixels
    rows, cols = px.shape
    rows, cols = rows - rows % k, cols - cols % k
    px = px[:rows, :cols]
    limit = None
    if np.issubdtype(px.dtype, np.unsignedinteger) and image.bits_stored < px.dtype.itemsize * 8:
        limit = np.array((1 << image.bits_stored) - 1, dtype=px.dtype)
    if px.dtype not in (np.uint8, np.uint16, np.int16, np.float32):
        # a type OpenCV does not reduce (wider integers, another byte order):
        # cleared and converted whole, as reduced_display does
        if limit is not None and px.max() > limit:
            px = px & limit
        px, limit = px.astype(np.float32), None
    # bands of about 1 MB of stored pixels, a whole number of k-row blocks
    step = k * max(1, (1 << 20) // (cols * px.dtype.itemsize * k))
    out = np.empty((rows // k, cols // k), px.dtype)
    for r0 in range(0, rows, step):
        band = px[r0 : r0 + step]
        if limit is not None and band.max() > limit:
            band = band & limit
        kk = k
        while kk > 2:
            r, c = band.shape
            band = cv2.resize(band, (c // 2, r // 2), interpolation=cv2.INTER_AREA)
            kk //= 2
        if kk == 2:
            dst = out[r0 // k : (r0 + len(px[r0 : r0 + step])) // k]
            cv2.resize(band, (dst.shape[1], dst.shape[0]), dst=dst, interpolation=cv2.INTER_AREA)
        else:
            out[r0 : r0 + len(band)] = band
    return display_values(out.astype(np.float32), image)


def _sparse_nonzero(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the non-zero pixels of a sparse uint8 mask, in row-major order.

    The mask (0 or 255, as ``cv2.compare`` gives it; C-contiguous) is changed in
    place to 0 or 1 and read as booleans, for which ``np.flatnonzero`` has a
    fast path: one pass over 300,000 pixels for a few thousand maxima, about
    0.17 ms against 0.42 ms for the former search of the 64-bit words holding
    a set pixel (and several times less than ``cv2.findNonZero`` or
    ``np.nonzero`` on uint8). The same pixels in the same order.
    """
    cols = mask.shape[1]
    np.bitwise_and(mask, 1, out=mask)
    idx = np.flatnonzero(mask.view(bool))
    return idx // cols, idx % cols


def cage_candidates(
    small: np.ndarray,
    k: int,
    scale: MarkerScale,
    threshold_sigma: float = 5.0,
    clutter_ratio: float = 3.0,
    overwrite: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Cage-marker candidates on a reduced display image (one band-pass octave).

    The rules of :func:`reconstruction.detect.coarse_candidates` (threshold in
    robust sigmas of the band-pass, non-maximum suppression over the smallest
    radius, contrast to clutter, Lowe's edge test with flat tops kept, parabolic
    peak, plateau ties merged), at the smallest radius only.

    Parameters
    ----------
    small : ndarray
        Reduced display image (markers bright), float32.
    k : int
        Its reduction factor.
    scale : MarkerScale
        Expected cage-marker radii (full-resolution px).
    threshold_sigma, clutter_ratio : float
        As in ``coarse_candidates``.
    overwrite : bool
        Band-pass ``small`` in place (it is not needed afterwards): one
        full-size image fewer to allocate.

    Returns
    -------
    rc : ndarray (n, 2)
        Candidate centres, full-resolution px.
    strength : ndarray (n,)
        Contrast-to-clutter ratio of each candidate.
    """
    r_lo, r_hi = scale.r_min / k, scale.r_max / k
    # inner scale matched to the smallest cage-marker shadow, r / sqrt 2
    # (marker_scale's r_min is 0.8 r): patient beads, smaller than the cage's
    # markers, answer less, and fewer of them reach the identification
    s1 = max(0.5, 0.9 * r_lo)
    s2 = max(2.5 * 0.6 * r_hi, 1.5 * r_hi)
    rows, cols = small.shape
    # the wide background blur on the image halved once more, brought back up
    # (coarse_candidates does the same on a quarter image): the 2 x 2 mean and
    # the linear interpolation add variances of 1/3 and 2/3 px^2
    half = cv2.resize(
        small[: rows - rows % 2, : cols - cols % 2],
        (cols // 2, rows // 2),
        interpolation=cv2.INTER_AREA,
    )
    # (one full-size scratch image serves as background, dilation and square in
    # turn, and the halved image as mean square: fewer fresh pages per check)
    blurred = cv2.GaussianBlur(half, (0, 0), np.sqrt(max(s2**2 - 1.0, 0.25)) / 2)
    work = cv2.resize(blurred, (cols, rows), interpolation=cv2.INTER_LINEAR)
    # (kernel to 3 sigma: OpenCV's default for float images reaches 4 sigma)
    ks = 2 * int(np.ceil(3 * s1)) + 1
    band = cv2.GaussianBlur(small, (ks, ks), s1, dst=small if overwrite else None)
    cv2.subtract(band, work, dst=band)
    # the image's typical level only floors the noise estimate: a mean will do
    level = float(np.mean(np.abs(half[::7, ::7])))
    sigma = _robust_sigma(band[::7, ::7].ravel(), level)
    # local maxima over the smallest marker's radius (the structuring element of
    # coarse_candidates) above the threshold, in one comparison: band >= the
    # dilation floored just above the threshold
    nms = 2 * max(1, int(np.floor(r_lo))) + 1
    cv2.dilate(band, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (nms, nms)), dst=work)
    above = float(np.nextafter(np.float32(threshold_sigma * sigma), np.float32(np.inf)))
    cv2.max(work, above, dst=work)
    m = cv2.compare(band, work, cv2.CMP_GE)
    m[:1] = m[-1:] = 0
    m[:, :1] = m[:, -1:] = 0
    r, c = _sparse_nonzero(m)
    if len(r) == 0:
        return np.zeros((0, 2)), np.zeros(0)
    inv = 1.0 / sigma
    # contrast to clutter (coarse_candidates' test): the band-pass RMS over a
    # few marker diameters, here as the mean square on the image halved (a
    # window of 2 w8 + 1 half-size pixels, about the 2 w + 1 of the original)
    w8 = max(1, round(2 * r_hi))
    cv2.multiply(band, band, dst=work)
    cv2.resize(
        work[: rows - rows % 2, : cols - cols % 2],
        (cols // 2, rows // 2),
        dst=half,
        interpolation=cv2.INTER_AREA,
    )
    local = cv2.blur(half, (2 * w8 + 1, 2 * w8 + 1), dst=blurred)
    local = local[np.minimum(r // 2, local.shape[0] - 1), np.minimum(c // 2, local.shape[1] - 1)]
    v0 = band[r, c].astype(np.float64) * inv
    ratio = v0 / np.sqrt(np.maximum(local, 0) * inv * inv + 1.0)
    keep = ratio > clutter_ratio
    r, c, ratio = r[keep], c[keep], ratio[keep]
    if len(r) == 0:
        return np.zeros((0, 2)), np.zeros(0)
    # the edge test, sub-pixel peak and one-per-marker rule of the coarse pass
    # (invariant to the band's scale, so on the unscaled band)
    return subpixel_peaks(band, r, c, ratio, k, scale.r_min)


def refine_centres(image: RawImage, rc: np.ndarray, scale: MarkerScale) -> np.ndarray:
    """Re-centre candidates at full resolution by the disc's intensity centroid.

    For each candidate a disc of radius ``r_max + 1.5`` (the largest shadow,
    its blur and the coarse centre's error) around its nearest pixel is
    gathered straight from the stored pixels, with the bits above BitsStored
    cleared and the Modality LUT and photometric inversion applied to those
    pixels only. The centre is the first moment (centroid) of the excess over
    the level halfway between the local background (mean of the ring around
    the disc) and the disc's brightest pixel. For a symmetric blob the
    centroid above any level is its centre, so the level need not be exact;
    clipping at half the contrast keeps the background noise, which would pull
    the centroid towards the window's centre, out of the moment. Candidates
    whose window is cut by the image edge keep their coarse centre.

    Parameters
    ----------
    image : RawImage
        The frame as stored.
    rc : ndarray (n, 2)
        Coarse centres (full-resolution px).
    scale : MarkerScale
        Expected cage-marker radii.

    Returns
    -------
    ndarray (n, 2)
        Refined centres.
    """
    px = image.pixels
    rows, cols = px.shape
    rad = scale.r_max + 1.5
    h = int(np.ceil(rad + 2))
    ci = np.rint(rc).astype(np.intp)
    inside = (ci[:, 0] >= h) & (ci[:, 0] < rows - h) & (ci[:, 1] >= h) & (ci[:, 1] < cols - h)
    out = np.array(rc, dtype=float, copy=True)
    idx = np.flatnonzero(inside)
    if len(idx) == 0:
        return out
    off = np.arange(-h, h + 1)
    dr, dc = (a.ravel() for a in np.meshgrid(off, off, indexing="ij"))
    d2 = dr * dr + dc * dc
    disc = d2 <= rad * rad
    ring = ~disc & (d2 <= (h + 0.5) ** 2)
    foot = np.flatnonzero(disc | ring)
    flat = np.ascontiguousarray(px).reshape(-1)
    win = flat[(ci[idx, 0] * cols + ci[idx, 1])[:, None] + (dr * cols + dc)[foot][None, :]]
    win = display_values(clear_high_bits(win, image.bits_stored).astype(np.float32), image)
    in_disc = disc[foot]
    bg = win[:, ~in_disc].mean(axis=1)
    wd = win[:, in_disc]
    level = 0.5 * (wd.max(axis=1) + bg)
    wgt = np.maximum(wd - level[:, None], 0)
    tot = wgt.sum(axis=1)
    good = tot > 0
    g = idx[good]
    tot = tot[good]
    wgt = wgt[good]
    out[g, 0] = ci[g, 0] + (wgt @ dr[disc].astype(np.float32)) / tot
    out[g, 1] = ci[g, 1] + (wgt @ dc[disc].astype(np.float32)) / tot
    return out
