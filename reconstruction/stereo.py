"""Matching patient beads across the two views by epipolar (crossing-line) cost.

With both views calibrated, a bead seen at x_A in view A lies in view B on the
epipolar line ``F x_A``, F being the fundamental matrix of the two projection
matrices (Hartley & Zisserman 2004, eq. 9.1: ``F = [e']_x P' P^+``). Pairs are
scored by the symmetric point-to-epipolar-line distance and gated at three
standard errors of the two centres and the two calibrations. A bead with a
single candidate whose only candidate it is, is matched; beads in any other
configuration (several candidates within the gate, as happens when beads line
up along the epipolar direction) are reported as ambiguous and never guessed.

A patient who moved between the two exposures shifts every bead across the
epipolar lines by about the same amount. When the beads agree on such a shift
(a one-dimensional vote over signed distances) and it explains more beads
than the zero shift, they are matched at that shift so that the result shows
the long crossing lines and the sync check sends the exam back, instead of
silently losing the markers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reconstruction.geometry import ViewGeometry
from reconstruction.lightweight import components
from reconstruction.triangulate import closest_points


def fundamental_matrix(p_a: np.ndarray, p_b: np.ndarray) -> np.ndarray:
    """F with ``x_B^T F x_A = 0`` for image points ``[row, col, 1]``."""
    _, _, vt = np.linalg.svd(p_a)
    c_a = vt[-1]
    e_b = p_b @ c_a
    ex = np.array([[0, -e_b[2], e_b[1]], [e_b[2], 0, -e_b[0]], [-e_b[1], e_b[0], 0]])
    f = ex @ p_b @ np.linalg.pinv(p_a)
    return f / np.linalg.norm(f)


def epipolar_distances(
    f: np.ndarray, rc_a: np.ndarray, rc_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Signed distances (nA, nB) of B points to A's lines, and of A points to B's lines (px)."""
    xa = np.c_[rc_a, np.ones(len(rc_a))]
    xb = np.c_[rc_b, np.ones(len(rc_b))]
    la = xa @ f.T  # lines in B, one per A point
    lb = xb @ f  # lines in A, one per B point
    num = xb @ la.T  # (nB, nA): x_b . F x_a
    d_b = (num / np.linalg.norm(la[:, :2], axis=1)[None, :]).T
    d_a = (num / np.linalg.norm(lb[:, :2], axis=1)[:, None]).T
    return d_b, d_a


def _physical(view_a: ViewGeometry, rc_a, view_b: ViewGeometry, rc_b) -> np.ndarray:
    """(nA, nB) True where the two rays meet between each focal spot and its detector."""
    fa, da = view_a.ray_through(rc_a)
    fb, db = view_b.ray_through(rc_b)
    _, _, s, t = closest_points(fa, da[:, None, :], fb, db[None, :, :])
    la = np.linalg.norm(view_a.detector.pixel_to_world(rc_a) - fa, axis=1)
    lb = np.linalg.norm(view_b.detector.pixel_to_world(rc_b) - fb, axis=1)
    return (s > 0) & (t > 0) & (s < la[:, None]) & (t < lb[None, :])


@dataclass
class Matching:
    """Result of stereo matching.

    Attributes
    ----------
    pairs : ndarray (k, 2)
        Indices (A, B) of matched beads.
    ambiguous : list of (view, index, candidates)
        Beads that had several candidates (or shared one) within the gate.
    shift_px : float
        Signed epipolar shift at which the beads were matched (0 for a still
        patient; large when the patient moved between the exposures).
    gate_px : ndarray (nA, nB)
        The gate used for each pair.
    """

    pairs: np.ndarray
    ambiguous: list[tuple[str, int, int]] = field(default_factory=list)
    shift_px: float = 0.0
    gate_px: np.ndarray | None = None


def _resolve(edges: np.ndarray) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """Unique pairs from a boolean (nA, nB) compatibility matrix; the rest ambiguous."""
    n_a, n_b = edges.shape
    ia, ib = np.nonzero(edges)
    if len(ia) == 0:
        return np.zeros((0, 2), int), []
    label = components(n_a + n_b, ia, n_a + ib)
    deg_a = edges.sum(1)
    deg_b = edges.sum(0)
    pairs, amb = [], []
    comp_size = np.bincount(label)
    for a, b in zip(ia, ib, strict=True):
        if comp_size[label[a]] == 2:
            pairs.append((a, b))
    for a in range(n_a):
        if deg_a[a] and comp_size[label[a]] > 2:
            amb.append(("A", a, int(deg_a[a])))
    for b in range(n_b):
        if deg_b[b] and comp_size[label[n_a + b]] > 2:
            amb.append(("B", b, int(deg_b[b])))
    return np.array(pairs, int).reshape(-1, 2), amb


def match(
    view_a: ViewGeometry,
    rc_a: np.ndarray,
    sigma_a: np.ndarray,
    view_b: ViewGeometry,
    rc_b: np.ndarray,
    sigma_b: np.ndarray,
    calibration_px: float = 0.0,
    k_sigma: float = 3.0,
    max_shift_px: float = 30.0,
    compatible: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
) -> Matching:
    """Match beads between views.

    Parameters
    ----------
    view_a, view_b : ViewGeometry
        Calibrated views.
    rc_a, rc_b : ndarray (n, 2)
        Patient bead candidates (cage markers already removed).
    sigma_a, sigma_b : ndarray (n,)
        Centre standard errors per axis (px).
    calibration_px : float
        Epipolar error from the two calibrations (px, one sigma).
    k_sigma : float
        Gate in standard errors.
    max_shift_px : float
        Largest patient motion across the epipolar lines that is looked for.
    compatible : ndarray (nA, nB) bool, optional
        Pairs that could be one bead on other grounds (e.g. the same diameter),
        required of the pairs voting for a motion.
    allowed : ndarray (nA, nB) bool, optional
        Pairs that may be matched at all.
    """
    n_a, n_b = len(rc_a), len(rc_b)
    if n_a == 0 or n_b == 0:
        return Matching(np.zeros((0, 2), int))
    f = fundamental_matrix(view_a.projection_matrix(), view_b.projection_matrix())
    d_b, d_a = epipolar_distances(f, rc_a, rc_b)
    sym = np.sqrt(0.5 * (d_a**2 + d_b**2))
    sig = np.sqrt(sigma_a[:, None] ** 2 + sigma_b[None, :] ** 2 + calibration_px**2)
    gate = k_sigma * sig
    phys = _physical(view_a, rc_a, view_b, rc_b)
    if allowed is not None:
        phys &= allowed
    # size agreement is required of the pairs that vote for a motion (many
    # chance pairs there) but not of the tight epipolar matches, where a faint
    # bead's fitted radius can be off (radius and blur trade off at low SNR)
    sized = phys if compatible is None else phys & compatible
    edges = (sym <= gate) & phys
    pairs, amb = _resolve(edges)

    # motion between the exposures: a common signed shift across the epipolar lines
    near = sized & (np.abs(d_b) <= max_shift_px)
    vals = np.sort(d_b[near])
    if len(vals) >= 3:
        g = float(np.median(gate))
        # the shift varies a little over the field (magnification): a few per cent
        width = 1.5 * g + 0.04 * np.abs(vals)
        lo = np.searchsorted(vals, vals - width, "left")
        hi = np.searchsorted(vals, vals + width, "right")
        counts = hi - lo
        score = counts - np.abs(vals) / (2 * max_shift_px)
        best = int(np.argmax(score))
        shift = float(vals[best])
        # pairs scattered at random over the band would put this many in the window
        chance = len(vals) * 2 * width[best] / (2 * max_shift_px)
        significant = counts[best] >= chance + 3 * np.sqrt(chance) + 2
        if significant and counts[best] >= 1.5 * len(pairs) + 1 and abs(shift) > 2 * g:
            w = 1.5 * gate + 0.04 * abs(shift)
            moved = (np.abs(d_b - shift) <= w) & sized
            m_pairs, m_amb = _resolve(moved)
            if len(m_pairs) > len(pairs):
                return Matching(m_pairs, m_amb, shift, w)
    return Matching(pairs, amb, 0.0, gate)
