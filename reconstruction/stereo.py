"""Matching patient beads across the two views by epipolar (crossing-line) cost.

With both views calibrated, a bead seen at x_A in view A lies in view B on the
epipolar line ``F x_A``, F being the fundamental matrix of the two projection
matrices (Hartley & Zisserman 2004, eq. 9.1: ``F = [e']_x P' P^+``). Pairs are
scored by the symmetric point-to-epipolar-line distance and gated at ``k``
standard errors of the two centres and the two calibrations (the latter
propagated from each calibrated pose's covariance, per pair). A bead with a
single candidate whose only candidate it is, is matched. Where beads line up
along the epipolar direction and several pairs share a bead, the most likely
assignment of that group is taken pair by pair only where every rival pairing
is :data:`RIVAL_MARGIN_CHI2` worse in chi-square (see :func:`_weigh`); the other beads are
reported as ambiguous and never guessed.

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
from reconstruction.lightweight import components, linear_sum_assignment
from reconstruction.triangulate import closest_points


def fundamental_matrix(p_a: np.ndarray, p_b: np.ndarray) -> np.ndarray:
    """F with ``x_B^T F x_A = 0`` for image points ``[row, col, 1]``.

    Stacks of projection matrices (..., 3, 4) give stacks of F (..., 3, 3).
    """
    _, _, vt = np.linalg.svd(p_a)
    c_a = vt[..., -1, :]
    e_b = np.einsum("...ij,...j->...i", p_b, c_a)
    ex = np.zeros((*e_b.shape[:-1], 3, 3))
    ex[..., 0, 1], ex[..., 0, 2], ex[..., 1, 2] = -e_b[..., 2], e_b[..., 1], -e_b[..., 0]
    ex[..., 1, 0], ex[..., 2, 0], ex[..., 2, 1] = e_b[..., 2], -e_b[..., 1], e_b[..., 0]
    f = ex @ p_b @ np.linalg.pinv(p_a)
    return f / np.linalg.norm(f, axis=(-2, -1), keepdims=True)


def epipolar_distances(
    f: np.ndarray, rc_a: np.ndarray, rc_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Signed distances (nA, nB) of B points to A's lines, and of A points to B's lines (px).

    A stack of F (..., 3, 3) gives stacks of distances (..., nA, nB).
    """
    xa = np.c_[rc_a, np.ones(len(rc_a))]
    xb = np.c_[rc_b, np.ones(len(rc_b))]
    la = xa @ np.swapaxes(f, -1, -2)  # lines in B, one per A point
    lb = xb @ f  # lines in A, one per B point
    num = xb @ np.swapaxes(la, -1, -2)  # (nB, nA): x_b . F x_a
    d_b = np.swapaxes(num / np.linalg.norm(la[..., :2], axis=-1)[..., None, :], -1, -2)
    d_a = np.swapaxes(num / np.linalg.norm(lb[..., :2], axis=-1)[..., :, None], -1, -2)
    return d_b, d_a


def rays_meet(view_a: ViewGeometry, rc_a, view_b: ViewGeometry, rc_b) -> np.ndarray:
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
    distance_px : ndarray (nA, nB)
        Symmetric epipolar distance of each pair (px), for diagnosis.
    edges : ndarray (nA, nB) bool
        Pairs that were candidates (within the gate and physically possible).
    unreliable : ndarray (k, 2)
        Matched pairs left out of the markers afterwards because their centres
        are too uncertain (see ``pipeline.stereo_markers``).
    """

    pairs: np.ndarray
    ambiguous: list[tuple[str, int, int]] = field(default_factory=list)
    shift_px: float = 0.0
    gate_px: np.ndarray | None = None
    distance_px: np.ndarray | None = None
    edges: np.ndarray | None = None
    unreliable: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), int))

    def pad(self, n_a: int, n_b: int) -> None:
        """Grow the (nA, nB) diagnosis arrays to more candidates (not candidates
        of one another: no edge, NaN distance and gate)."""
        for name, fill in (("gate_px", np.nan), ("distance_px", np.nan), ("edges", False)):
            arr = getattr(self, name)
            if arr is None or np.ndim(arr) != 2:
                continue
            grown = np.full((n_a, n_b), fill, dtype=arr.dtype)
            grown[: arr.shape[0], : arr.shape[1]] = arr
            setattr(self, name, grown)


#: Least chi-square by which every rival of a pair in a group of beads sharing
#: candidates must be worse for the pair to be kept (:func:`_weigh`). Two beads
#: on one epipolar plane (tests/test_recall_matching.py, 8000 noise draws) are
#: paired wrongly 0, 4 and 9 times at 16, 12 and 9; two beads 3 pair standard
#: errors apart are told apart in 52 %, 71 % and 85 % of draws. On the 36 default
#: exams and 80 series exams the wrong best assignments had margins of at most
#: 1.4; 12 instead of 16 matched 6 more beads on the default exams and 7 on the series,
#: none wrongly (benchmarks.md, "Reconstruction, fifth session").
RIVAL_MARGIN_CHI2 = 12.0

#: Largest component of the gated-pair graph whose assignments are weighed (larger
#: ones are texture or a dense cluster: all ambiguous).
MAX_COMPONENT = 12


def _best_assignment(chi2: np.ndarray, edges: np.ndarray, unmatched: float) -> float:
    """Least total cost of a partial assignment: chi2 per matched pair, ``unmatched``
    per bead left without a partner (``edges`` says which pairs may be matched)."""
    n_a, n_b = chi2.shape
    if n_a == 0 or n_b == 0:
        return unmatched * (n_a + n_b)
    c = _augmented_cost(chi2, edges, unmatched)
    r, k = linear_sum_assignment(c)
    return float(c[r, k].sum())


def _augmented_cost(chi2: np.ndarray, edges: np.ndarray, unmatched: float) -> np.ndarray:
    """Square cost matrix of a partial assignment: the pairs' chi2 (large finite
    cost where not an edge, as ``linear_sum_assignment`` needs), one dummy per
    bead at ``unmatched``, and free dummy-to-dummy entries."""
    n_a, n_b = chi2.shape
    big = 1e9
    c = np.full((n_a + n_b, n_b + n_a), big)
    c[:n_a, :n_b] = np.where(edges, chi2, big)
    c[:n_a, n_b:][np.diag_indices(n_a)] = unmatched
    c[n_a:, :n_b][np.diag_indices(n_b)] = unmatched
    c[n_a:, n_b:] = 0.0
    return c


def _weigh(
    chi2: np.ndarray, edges: np.ndarray, k_sigma: float, margin: float | None = None
) -> list[tuple[int, int]]:
    """Pairs of one component of the gated-pair graph that no other pairing rivals.

    The most likely partial assignment of the component is taken (chi-square of the
    epipolar distance per pair, ``k^2 / 2`` per bead left unpaired, so that a pair
    within the gate is always worth taking). One of its pairs (a, b) is kept only if
    every assignment that pairs a or b with another bead costs at least ``margin``
    more. A wrong assignment can beat the true one by that much only if the true
    pairs' chi-squares sum to more than ``margin`` (for two pairs, probability
    ``exp(-margin / 2)``, 0.25 % at 12, and far less where the wrong pairs are not
    both near zero), or if the true partner was not detected at all, when the
    wrong pair is at best as good as a rival true pair that is still in the graph:
    two beads near one epipolar plane and nearly equidistant from it stay
    ambiguous. The chi-squares are honest: over the 462 true pairs of the 36
    default exams the epipolar distance over its standard error has an RMS of
    0.96 (largest 3.2).
    """
    n_a, n_b = chi2.shape
    margin = RIVAL_MARGIN_CHI2 if margin is None else margin
    u = 0.5 * k_sigma**2
    c = _augmented_cost(chi2, edges, u)
    r, k = linear_sum_assignment(c)
    best = float(c[r, k].sum())
    chosen = [(int(a), int(b)) for a, b in zip(r, k, strict=True) if a < n_a and b < n_b]
    keep_a = np.ones(n_a, bool)
    keep_b = np.ones(n_b, bool)

    def forced(a: int, b: int) -> float:
        """Least cost with (a, b) paired."""
        keep_a[a] = False
        keep_b[b] = False
        rest = _best_assignment(chi2[keep_a][:, keep_b], edges[keep_a][:, keep_b], u)
        keep_a[a] = True
        keep_b[b] = True
        return float(chi2[a, b]) + rest

    kept = []
    for a, b in chosen:
        rivals = [forced(a, j) for j in np.flatnonzero(edges[a]) if j != b]
        rivals += [forced(i, b) for i in np.flatnonzero(edges[:, b]) if i != a]
        if not rivals or min(rivals) - best >= margin:
            kept.append((a, b))
    return kept


def _resolve(
    edges: np.ndarray, chi2: np.ndarray | None = None, k_sigma: float = 3.0
) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """Pairs from a boolean (nA, nB) compatibility matrix; the rest ambiguous.

    A bead whose component of the graph is one pair is matched. With ``chi2``
    (squared epipolar distance in standard errors, per pair), pairs in larger
    components are weighed (:func:`_weigh`); without it, those are all ambiguous.
    """
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
    if chi2 is not None:
        for c in np.flatnonzero((comp_size > 2) & (comp_size <= MAX_COMPONENT)):
            As = np.flatnonzero(label[:n_a] == c)
            Bs = np.flatnonzero(label[n_a:] == c)
            sub = np.ix_(As, Bs)
            pairs += [(As[a], Bs[b]) for a, b in _weigh(chi2[sub], edges[sub], k_sigma)]
    paired_a = {a for a, _ in pairs}
    paired_b = {b for _, b in pairs}
    for a in range(n_a):
        if deg_a[a] and comp_size[label[a]] > 2 and a not in paired_a:
            amb.append(("A", a, int(deg_a[a])))
    for b in range(n_b):
        if deg_b[b] and comp_size[label[n_a + b]] > 2 and b not in paired_b:
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
    calibration_px : float or ndarray (nA, nB)
        Epipolar error from the two calibrations (px, one sigma), per pair or one
        for all.
    k_sigma : float
        Gate in standard errors.
    max_shift_px : float
        Largest patient motion across the epipolar lines that is looked for.
    compatible : ndarray (nA, nB) bool, optional
        Pairs that could be one bead on other grounds (e.g. the same diameter),
        required of the pairs voting for a motion.
    allowed : ndarray (nA, nB) bool, optional
        Pairs that may be matched at all.

    Groups of beads that share candidates are resolved by the most likely
    assignment where no rival is within :data:`RIVAL_MARGIN_CHI2` of it (:func:`_weigh`); at a
    motion shift (few pairs, many chances) every bead of such a group is
    ambiguous.
    """
    n_a, n_b = len(rc_a), len(rc_b)
    if n_a == 0 or n_b == 0:
        return Matching(np.zeros((0, 2), int))
    f = fundamental_matrix(view_a.projection_matrix(), view_b.projection_matrix())
    d_b, d_a = epipolar_distances(f, rc_a, rc_b)
    sym = np.sqrt(0.5 * (d_a**2 + d_b**2))
    sig = np.sqrt(sigma_a[:, None] ** 2 + sigma_b[None, :] ** 2 + calibration_px**2)
    gate = k_sigma * sig
    phys = rays_meet(view_a, rc_a, view_b, rc_b)
    if allowed is not None:
        phys &= allowed
    # size agreement is required of the pairs that vote for a motion (many
    # chance pairs there) but not of the tight epipolar matches, where a faint
    # bead's fitted radius can be off (radius and blur trade off at low SNR)
    sized = phys if compatible is None else phys & compatible
    edges = (sym <= gate) & phys
    pairs, amb = _resolve(edges, (sym / sig) ** 2, k_sigma)

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
                return Matching(m_pairs, m_amb, shift, w, np.abs(d_b - shift), moved)
    return Matching(pairs, amb, 0.0, gate, sym, edges)
