"""Which detected blob is which cage marker.

The station file says where tube and detector are meant to be, and how far
off they may be on the day. Around that nominal geometry the projection of
every cage marker is linearised in the nine physical parameters (focal spot,
detector rotation and shift, in tolerance units), which bounds where each
shadow can fall. Identification then alternates, in the spirit of iterative
closest point (Besl & McKay, IEEE PAMI 1992) made robust by voting:

1. *vote*: every (marker, blob) pair within a marker's search radius proposes
   an image offset; the densest cluster of offsets (a Hough-style vote, as in
   Ballard 1981) is the shift shared by a group of markers (markers at a
   similar height move together when the tube or the detector is off);
2. *fit*: the parameters are re-estimated by regularised linear least squares
   from all pairs accepted so far (the prior is the stated tolerance);
3. *assign*: every marker whose predicted position is now certain enough is
   assigned to at most one blob by ``linear_sum_assignment`` (Kuhn-Munkres)
   within a gate from the parameters' posterior covariance, and the fit is
   repeated until the assignment is stable;
4. repeat from 1 for the markers still unexplained (another height group).

Blobs that are not cage markers (patient beads, noise) rarely agree with the
pattern, and a missing marker simply stays unassigned.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from reconstruction.calibrate import N_PARAMS, PoseModel, casts_shadow, inside_image
from reconstruction.lightweight import linear_sum_assignment

_BIG = 1e9
#: Smallest expected shadow radius (px) whose fitted radius says which marker a
#: blob can be. Below it the radius trades off against the blur in the fit: at
#: 0.3 mm pixels (the simulator's 2 x 2 binned read-out, cage shadows 1.7-1.9 px)
#: fitted radii were 0.25-0.96 of the expected, the size check kept 20 of 67
#: detected markers of a knee view and the calibration went 11 px wrong (fifth
#: session); without it all 67 were identified right.
MIN_SIZED_RADIUS_PX = 2.5


@dataclass
class Identification:
    """Cage markers identified in one image.

    Attributes
    ----------
    theta : ndarray (9,)
        Physical parameters of the fitted pose (see :class:`PoseModel`).
    marker_idx, det_idx : ndarray (k,)
        Pairs: cage marker index -> detection index.
    predicted_rc : ndarray (n_markers, 2)
        Predicted shadow of every cage marker under the fitted pose (NaN when
        it casts none).
    """

    theta: np.ndarray
    marker_idx: np.ndarray
    det_idx: np.ndarray
    predicted_rc: np.ndarray


def _block_norm(j: np.ndarray) -> np.ndarray:
    """Spectral norm of each 2x3 block (n, 2, 3)."""
    g = np.einsum("nij,nkj->nik", j, j)
    tr = g[:, 0, 0] + g[:, 1, 1]
    det = g[:, 0, 0] * g[:, 1, 1] - g[:, 0, 1] ** 2
    return np.sqrt(0.5 * tr + np.sqrt(np.maximum(0.25 * tr**2 - det, 0)))


class _Linear:
    """The linearised projection p(x) = p0 + J (x - x0), x in tolerance units."""

    def __init__(self, model: PoseModel, xyz: np.ndarray, x0: np.ndarray):
        self.x0 = x0
        # the point and its central differences in one batched projection
        # (the same steps and values as PoseModel.project and .jacobian)
        sc = model.scale
        theta = x0 * sc
        steps = 1e-3 * sc
        thetas = np.concatenate([theta[None], theta + np.diag(steps), theta - np.diag(steps)])
        pr = model.project_many(thetas, xyz)
        self.p0 = pr[0]
        jac = (pr[1 : 1 + N_PARAMS] - pr[1 + N_PARAMS :]) / (2 * steps)[:, None, None]
        self.jac = (jac * sc[:, None, None]).transpose(1, 2, 0)
        # (2n, 9): row then column derivative of each marker, for matrix products
        self.jac2 = np.ascontiguousarray(self.jac.reshape(-1, N_PARAMS))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.p0 + (self.jac2 @ (x - self.x0)).reshape(-1, 2)


def _fit(lin: _Linear, mk: np.ndarray, dets: np.ndarray, sigma: float):
    """Regularised linear least squares (prior: x ~ N(0, I), the tolerance).

    Returns the parameters and their posterior covariance, tolerance units.
    """
    j = lin.jac[mk].reshape(-1, N_PARAMS) / sigma
    r = (dets - lin.p0[mk]).reshape(-1) / sigma
    cov = np.linalg.inv(j.T @ j + np.eye(N_PARAMS))
    return lin.x0 + cov @ (j.T @ r - lin.x0), cov


def _confirmed(lin: _Linear, mk: np.ndarray, sigma: float, limit_px: float) -> np.ndarray:
    """Which of the pairs' markers the others predict to within ``limit_px`` (bool).

    The posterior of the pose without marker i (the information of the prior
    and the other pairs) gives i's predicted position a covariance; where its
    largest axis exceeds ``limit_px`` nothing but i's own blob says where i
    is. Such a pair is no evidence: a marker of another height group that
    joined a vote's peak pins the pose's free direction to whatever blob lay
    there (fifth session: one fiducial on a noise blob 11 px from its shadow
    held a lateral spine view's 24 fiducials out of reach; 40 of 75 markers).
    """
    j = lin.jac[mk] / sigma  # (k, 2, 9)
    info = np.einsum("kai,kaj->ij", j, j) + np.eye(N_PARAMS)
    own = np.einsum("kai,kaj->kij", j, j)
    cov = np.linalg.inv(info[None] - own)  # (k, 9, 9)
    pc = lin.jac[mk] @ cov @ lin.jac[mk].transpose(0, 2, 1)  # (k, 2, 2), px^2
    return _largest_axis(pc[:, 0, 0], pc[:, 1, 1], pc[:, 0, 1]) <= limit_px


def _largest_axis(g00: np.ndarray, g11: np.ndarray, g01: np.ndarray) -> np.ndarray:
    """Standard deviation along the largest axis of 2 x 2 covariances (its larger
    eigenvalue's square root), elementwise."""
    tr = g00 + g11
    det = g00 * g11 - g01**2
    return np.sqrt(0.5 * tr + np.sqrt(np.maximum(0.25 * tr**2 - det, 0)))


def _gate(lin: _Linear, cov: np.ndarray, k: float, floor: float) -> np.ndarray:
    """Per-marker gate radius: k sigma of the prediction's largest axis plus a floor."""
    jc = (lin.jac2 @ cov).reshape(-1, 2, N_PARAMS)
    g00 = np.einsum("nk,nk->n", jc[:, 0], lin.jac[:, 0])
    g11 = np.einsum("nk,nk->n", jc[:, 1], lin.jac[:, 1])
    g01 = np.einsum("nk,nk->n", jc[:, 0], lin.jac[:, 1])
    return k * _largest_axis(g00, g11, g01) + floor


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distances between the rows of a (n, 2) and b (m, 2), shape (n, m).

    Brute force: a few hundred points, and far fewer array operations than a
    general neighbour search (the real-time check runs this a dozen times).
    The same operations as ``(a_r - b_r)^2 + (a_c - b_c)^2`` in place, on two
    (n, m) arrays instead of five (the check is made of many small steps:
    allocation is a good part of each).
    """
    d = np.subtract.outer(a[:, 0], b[:, 0])
    np.square(d, out=d)
    e = np.subtract.outer(a[:, 1], b[:, 1])
    np.square(e, out=e)
    d += e
    return d


def _pairs(tree, det_n, pred, gate, active):
    """(marker, blob) pairs with the blob within the marker's gate.

    ``tree`` holds the blob centres (n, 2); the name stays from a k-d tree,
    which a few hundred points do not need.
    """
    act = np.flatnonzero(active & np.all(np.isfinite(pred), axis=1))
    if len(act) == 0 or det_n == 0:
        return np.zeros(0, int), np.zeros(0, int)
    # row-major flat indices of a boolean array (np.flatnonzero's fast path;
    # the pairs in the order np.nonzero gives them)
    idx = np.flatnonzero(_sq_dist(pred[act], tree) <= np.square(gate[act])[:, None])
    qi, pi = np.divmod(idx, len(tree))
    return act[qi], pi


def _assign(pred, gate, active, tree, det_rc, radius_ok):
    """Unique marker->blob pairs within each marker's gate, by linear_sum_assignment."""
    rows, cols = _pairs(tree, len(det_rc), pred, gate, active)
    if radius_ok is not None and len(rows):
        keep = radius_ok(rows, cols)
        rows, cols = rows[keep], cols[keep]
    if len(rows) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    # no marker with two blobs in its gate and no blob in two gates (the usual
    # case): the assignment is those pairs, as linear_sum_assignment would find
    if len(np.unique(rows)) == len(rows) and len(np.unique(cols)) == len(cols):
        return rows, cols
    um, ri = np.unique(rows, return_inverse=True)
    ud, ci = np.unique(cols, return_inverse=True)
    cost = np.full((len(um), len(ud)), _BIG)
    cost[ri, ci] = np.sum((pred[rows] - det_rc[cols]) ** 2, axis=1) / gate[rows] ** 2
    r, c = linear_sum_assignment(cost)
    keep = cost[r, c] < _BIG
    return um[r[keep]], ud[c[keep]]


def identify(
    model: PoseModel,
    cage_xyz: np.ndarray,
    det_rc: np.ndarray,
    *,
    sigma_px: float = 0.7,
    det_radius: np.ndarray | None = None,
    marker_radius: np.ndarray | None = None,
    relinearise: bool = True,
    hypotheses: int = 3,
) -> Identification:
    """Identify cage markers among detections, starting from the nominal geometry.

    Parameters
    ----------
    model : PoseModel
        Nominal view and tolerances.
    cage_xyz : ndarray (n, 3)
        Cage marker positions.
    det_rc : ndarray (m, 2)
        Detected blob centres (px).
    sigma_px : float
        Standard error of a blob centre plus the linearisation error (px);
        sets the final gate (about 4 sigma).
    det_radius, marker_radius : ndarray, optional
        Fitted blob radii and expected shadow radii (px); when both are given a
        blob can only be a marker of about its size (within a factor 1.6), where
        that size can be measured (:data:`MIN_SIZED_RADIUS_PX`).
    relinearise : bool
        Re-linearise once at the solution and re-assign (exact to well under a
        pixel even at the edge of the tolerance).
    hypotheses : int
        How many distinct first votes to follow (the best solution is kept).
    """
    n = len(cage_xyz)
    det = model.nominal.detector
    shadow = casts_shadow(model.nominal, cage_xyz)
    lin = _Linear(model, cage_xyz, np.zeros(N_PARAMS))
    reach = (
        _block_norm(lin.jac[:, :, 0:3])
        + _block_norm(lin.jac[:, :, 3:6])
        + _block_norm(lin.jac[:, :, 6:9])
    )
    reach = np.where(np.isfinite(reach), reach, 0) + 3 * sigma_px + 2
    cand = shadow & inside_image(lin.p0, det, -reach) & np.all(np.isfinite(lin.p0), axis=1)
    empty = Identification(np.zeros(N_PARAMS), np.zeros(0, int), np.zeros(0, int), lin.p0)
    if len(det_rc) == 0 or not cand.any():
        return empty
    tree = det_rc  # neighbour queries are brute force: a few hundred points
    radius_ok = None
    if det_radius is not None and marker_radius is not None:

        def radius_ok(a, k):
            q = det_radius[k] / marker_radius[a]
            return ((q > 0.6) & (q < 1.6)) | (marker_radius[a] < MIN_SIZED_RADIUS_PX)

    # within-group spread of offsets: half the rotation's reach, at least a few px
    rot = _block_norm(lin.jac[cand][:, :, 3:6])
    bandwidth = max(3.0, 0.5 * float(np.median(rot))) + 2 * sigma_px
    ctx = (lin, n, cand, tree, det_rc, radius_ok, sigma_px, bandwidth)
    # A regular cage can also fit shifted by one pitch: try the strongest few
    # distinct first votes and keep the solution that explains most markers.
    # Every hypothesis starts from the same first vote (nominal pose, prior
    # covariance, nothing matched): it is taken once per call and shared.
    first = _first_vote(ctx, max(1, hypotheses))
    best = None
    solutions = []

    def consider(sol) -> bool:
        """Keep the best solution so far; True when ``sol`` is no alias."""
        nonlocal best
        mk, dk, x, _ = sol
        resid = np.linalg.norm(lin.predict(x)[mk] - det_rc[dk], axis=1) if len(mk) else []
        key = (len(mk), -float(np.mean(resid)) if len(mk) else 0.0)
        if best is None or key > best[0]:
            best = (key, sol)
        # a solution that explains most markers it puts in the image is not an alias
        inside = cand & inside_image(lin.predict(x), det, 10.0)
        return len(mk) >= 0.8 * max(int(inside.sum()), 1)

    done = False
    for h in range(max(1, hypotheses)):
        sol = _solve(ctx, h, first)
        if sol is None:
            break
        solutions.append(sol)
        if consider(sol):
            done = True
            break
    # Each hypothesis may have found a different group of markers (one plane of
    # a two-plane cage) and then missed the other, whose shift relative to the
    # first is what a focal spot far off its nominal place changes: the union
    # of two partial solutions, where they agree, is a start that holds both.
    for a, b in combinations(solutions, 2):
        if done:
            break
        start = _union(a, b)
        sol = None if start is None else _solve(ctx, 0, first, start=start)
        if sol is not None:
            done = consider(sol)
    if best is None:
        return empty
    mk, dk, x, cov = best[1]
    if len(mk) >= 6 and relinearise:
        lin = _Linear(model, cage_xyz, x)
        mk, dk, x, cov = _icp(lin, x, cov, cand, tree, det_rc, radius_ok, sigma_px, bandwidth)
    theta = x * model.scale
    pred = model.project(theta, cage_xyz) if len(mk) else lin.p0
    return Identification(theta, mk, dk, pred)


def _vote(ctx, x, cov, mk, dk):
    """One vote: (marker, blob) pairs of the markers still unexplained and their offsets.

    Returns (pairs' markers, blobs, offsets, counts within the bandwidth,
    score order, needed count), or None when fewer than three pairs remain.
    """
    lin, n, cand, tree, det_rc, radius_ok, sigma_px, bandwidth = ctx
    pred = lin.predict(x)
    gate = _gate(lin, cov, 3.0, 3 * sigma_px + 2)
    matched = np.zeros(n, bool)
    matched[mk] = True
    used = np.zeros(len(det_rc), bool)
    used[dk] = True
    todo = np.flatnonzero(cand & ~matched)
    if len(todo) == 0:
        return None
    active = np.zeros(n, bool)
    active[todo] = True
    pm, pd = _pairs(tree, len(det_rc), pred, gate, active)
    keep = ~used[pd]
    if radius_ok is not None and len(pm):
        keep &= radius_ok(pm, pd)
    pm, pd = pm[keep], pd[keep]
    if len(pm) < 3:
        return None
    off = det_rc[pd] - pred[pm]
    # offsets within the bandwidth of each offset (itself included)
    counts = np.count_nonzero(_sq_dist(off, off) <= bandwidth**2, axis=1)
    # expected count from pairs scattered at random over the search discs
    area = np.pi * np.mean(gate[todo] ** 2)
    background = len(pm) * np.pi * bandwidth**2 / max(area, 1e-9)
    need = max(3.0, background + 4 * np.sqrt(background))
    score = counts - np.linalg.norm(off, axis=1) / (gate[pm] + 1e-9)
    order = np.argsort(-score)
    return pm, pd, off, counts, order, need


def _first_vote(ctx, hypotheses: int):
    """The first round's vote, shared by every hypothesis, and its distinct peaks.

    The first vote depends on nothing a hypothesis chooses, so it is taken once
    per call (for the two or three hypotheses of an aliased view the vote over
    a few hundred pairs was repeated whole). Its peaks are the offsets, in
    score order and while their count reaches the need, farther than twice the
    bandwidth from every stronger peak; the first ``hypotheses`` of them are
    found by discarding, after each peak, the offsets near it (the same
    greedy choice as testing each offset against all peaks so far, without a
    Python loop over a few hundred offsets).

    Returns (vote, peaks), vote as from :func:`_vote` (None when there is no
    vote).
    """
    vote = _vote(ctx, np.zeros(N_PARAMS), np.eye(N_PARAMS), np.zeros(0, int), np.zeros(0, int))
    if vote is None:
        return None, []
    _, _, off, counts, order, need = vote
    weak = np.flatnonzero(counts[order] < need)
    rest = order[: weak[0]] if len(weak) else order
    bandwidth = ctx[7]
    peaks: list[int] = []
    while len(rest) and len(peaks) < hypotheses:
        p = int(rest[0])
        peaks.append(p)
        rest = rest[np.linalg.norm(off[rest] - off[p], axis=1) > 2 * bandwidth]
    return vote, peaks


def _union(a, b):
    """The (marker, blob) pairs of two solutions where they do not contradict.

    A marker paired with two different blobs, or a blob with two different
    markers, is left out. Returns (markers, blobs), or None when fewer than
    three pairs remain or one solution holds the other.
    """
    mk = np.r_[a[0], b[0]]
    dk = np.r_[a[1], b[1]]
    pairs = np.unique(np.stack([mk, dk], axis=1), axis=0)
    mk, dk = pairs[:, 0], pairs[:, 1]
    m_ids, m_count = np.unique(mk, return_counts=True)
    d_ids, d_count = np.unique(dk, return_counts=True)
    ok = ~np.isin(mk, m_ids[m_count > 1]) & ~np.isin(dk, d_ids[d_count > 1])
    if ok.sum() < 3 or ok.sum() <= max(len(a[0]), len(b[0])):
        return None
    return mk[ok], dk[ok]


def _solve(ctx, first_choice: int, first=None, start=None):
    """Vote, fit and assign round after round; ``first_choice`` picks the first vote's peak.

    ``first`` is the shared first vote from :func:`_first_vote` (taken here
    when not given). ``start`` is a (markers, blobs) pairing to begin from
    instead of the first vote (see :func:`_union`). Returns (marker idx, blob
    idx, x, cov), or None when the chosen first peak does not exist.
    """
    bandwidth = ctx[7]
    x = np.zeros(N_PARAMS)
    cov = np.eye(N_PARAMS)
    mk = np.zeros(0, int)
    dk = np.zeros(0, int)
    if start is not None:
        mk, dk, x, cov = _fit_and_assign(ctx, *start)
        if len(mk) < 3:
            return None
    elif first is None:
        first = _first_vote(ctx, first_choice + 1)
    for rnd in range(0 if start is None else 1, 6):
        if rnd == 0:
            vote, peaks = first
        else:
            vote = _vote(ctx, x, cov, mk, dk)
        if vote is None:
            break
        pm, pd, off, counts, order, need = vote
        best = int(order[0])
        if rnd == 0 and first_choice > 0:
            # the first_choice-th peak distinct (by more than the bandwidth) from stronger ones
            if len(peaks) <= first_choice:
                return None
            best = peaks[first_choice]
        if counts[best] < need:
            if rnd == 0 and first_choice > 0:
                return None
            break
        near = np.linalg.norm(off - off[best], axis=1) < bandwidth
        # one blob per marker and one marker per blob: nearest to the peak offset
        um, ud = np.unique(pm[near]), np.unique(pd[near])
        cost = np.full((len(um), len(ud)), _BIG)
        cost[np.searchsorted(um, pm[near]), np.searchsorted(ud, pd[near])] = np.linalg.norm(
            off[near] - off[best], axis=1
        )
        r, c = linear_sum_assignment(cost)
        ok = cost[r, c] < _BIG
        new_m, new_d = um[r[ok]], ud[c[ok]]
        # a new pair is kept only where the round's other pairs (and those of
        # earlier rounds) predict its marker: a lone marker of another height
        # group is left to a later round
        both = np.r_[mk, new_m]
        keep = _confirmed(ctx[0], both, ctx[6], bandwidth)[len(mk) :]
        mk = np.r_[mk, new_m[keep]]
        dk = np.r_[dk, new_d[keep]]
        if len(mk) < 3:
            break
        mk, dk, x, cov = _fit_and_assign(ctx, mk, dk)
    return mk, dk, x, cov


def _fit_and_assign(ctx, mk, dk):
    """Fit the pose to the pairs (mk, dk), then assign and refit until stable (:func:`_icp`)."""
    lin, _n, cand, tree, det_rc, radius_ok, sigma_px, bandwidth = ctx
    x, cov = _fit(lin, mk, det_rc[dk], sigma_px)
    return _icp(
        lin,
        x,
        cov,
        cand,
        tree,
        det_rc,
        radius_ok,
        sigma_px,
        bandwidth,
        fitted=(tuple(mk), tuple(dk)),
    )


def _icp(lin, x, cov, cand, tree, det_rc, radius_ok, sigma_px, max_gate, fitted=None):
    """Assign confidently predicted markers and refit until the assignment is stable.

    ``fitted`` is the (markers, blobs) pairing, as tuples in order, whose fit
    gave ``x`` and ``cov`` (None when unknown). An assignment equal to the
    pairing of the last fit would refit the same pairs in the same order, which
    gives the same ``x`` and ``cov`` bit for bit: the loop stops there instead
    of fitting once more to find that out (one assignment and one fit fewer
    per call; the result is unchanged).
    """
    prev = fitted
    mk = dk = np.zeros(0, int)
    for _ in range(10):
        pred = lin.predict(x)
        gate = _gate(lin, cov, 3.0, 4 * sigma_px)
        active = cand & (gate <= max_gate)
        mk, dk = _assign(pred, gate, active, tree, det_rc, radius_ok)
        if len(mk) < 3:
            break
        key = (tuple(mk), tuple(dk))
        if key == prev:
            break
        x, cov = _fit(lin, mk, det_rc[dk], sigma_px)
        prev = key
    return mk, dk, x, cov
