"""Segments: reading the segment file and finding each segment's markers in an exam.

A reconstruction result lists the patient's markers without labels, in the cage
frame of that examination; the patient is repositioned between examinations
(tens of millimetres, tens of degrees). Each segment is a rigid body, so its
markers keep their mutual distances: they are found by that distance pattern,
independently of where the patient lies.

Pattern matching (:func:`match_pattern`) is a hypothesise-and-verify search in
the spirit of RANSAC (Fischler & Bolles 1981) and geometric hashing: a triplet
of model markers and every scene triplet with the same three distances (within
a tolerance) give a rigid motion; the motion that brings the most model markers
onto scene markers wins; the final correspondence is the optimal assignment
(Hungarian method, ``scipy.optimize.linear_sum_assignment``) of the fitted
model onto the scene, gated by a radius, refined by refitting. Missing markers
(hidden behind the implant) and extra ones (the other segment, stray beads) do
not disturb it as long as three markers of the segment are seen.

A loose bead (one that moved within its segment between examinations) is found
from the change of its distances to the other markers of the segment and from
its displacement relative to the rigid fit of the others
(:func:`consistent_core`); it is reported as loose and excluded.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from reconstruction.errors import InputError
from reconstruction.rigid import RigidMotion, fit_rigid, fit_rigid_batch

#: Accuracy of the segment file's positions (CONTRACT.md: "to within 0.5 mm").
TEMPLATE_MM = 0.5


@dataclass(frozen=True)
class MatchTolerances:
    """Tolerances of labelling and loose-bead detection (mm).

    Attributes
    ----------
    template_mm : float
        Accuracy of the segment file's positions (CONTRACT.md: 0.5 mm).
    measured_mm : float
        Largest error of a reconstructed marker position expected between two
        exams (noise of a good exam is 10-30 µm; this leaves a wide margin).
    loose_mm, loose_fit_mm : float
        A marker whose distance to another marker of its segment changed by
        more than this between the two exams is inconsistent with it. 0.25 mm
        is about six times the standard deviation of a distance change at
        20 µm per coordinate of marker noise (sqrt(4) x 20 µm), and below the
        ME limit of 0.35 mm, so a bead that moved this much is not noise.
        Noisier exams raise it: the threshold used is the larger of this and
        5 SDs of the distance changes measured in the exam pair (MAD
        estimate); likewise ``loose_fit_mm`` and 2.75 SDs (about
        σ·sqrt(30), with SD ≈ 2σ).
    loose_fit_mm : float
        A marker whose exclusion lowers the segment fit's sum of squared
        residuals by more than this squared is loose (catches beads that moved
        across the lines to their mates, which distances hardly see). For a
        good bead the square root of that decrease is about σ·sqrt(χ²₃):
        under 0.08 mm in 999 of 1000 cases at σ = 20 µm per coordinate.
    loose_search_mm : float
        How far from its expected place a marker is still looked for (and then
        reported as loose); beyond this it counts as missing.
    """

    template_mm: float = TEMPLATE_MM
    measured_mm: float = 0.15
    loose_mm: float = 0.25
    loose_fit_mm: float = 0.2
    loose_search_mm: float = 2.0


DEFAULT_TOLERANCES = MatchTolerances()


# --------------------------------------------------------------------------- input


def _xyz(value: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{what}: expected [x, y, z] numbers, got {value!r}") from None
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise InputError(f"{what}: expected [x, y, z] finite numbers, got {value!r}")
    return arr


@dataclass(frozen=True)
class SegmentDefinition:
    """The segment file (CONTRACT.md, "Segment file").

    Attributes
    ----------
    reference_segment, moving_segment : str
        Names of the two segments (e.g. ``bone``, ``implant``).
    positions : dict of str to ndarray, shape (k, 3)
        Approximate marker positions of each segment, reference exam frame.
    """

    reference_segment: str
    moving_segment: str
    positions: dict[str, np.ndarray]

    @staticmethod
    def from_dict(d: Any) -> SegmentDefinition:
        if not isinstance(d, dict):
            raise InputError(f"expected a JSON object, got {type(d).__name__}")
        for key in ("reference_segment", "moving_segment", "segments"):
            if key not in d:
                raise InputError(f"missing key {key!r}")
        ref, mov, segs = d["reference_segment"], d["moving_segment"], d["segments"]
        if not isinstance(ref, str) or not isinstance(mov, str):
            raise InputError("reference_segment and moving_segment must be segment names")
        if ref == mov:
            raise InputError(f"reference_segment and moving_segment are both {ref!r}")
        if not isinstance(segs, dict):
            raise InputError(f"segments: expected an object of name -> positions, got {segs!r}")
        for name in (ref, mov):
            if name not in segs:
                raise InputError(f"segments: no segment named {name!r}")
        positions: dict[str, np.ndarray] = {}
        for name, pts in segs.items():
            if not isinstance(pts, list):
                raise InputError(f"segments.{name}: expected a list of [x, y, z]")
            arr = [_xyz(p, f"segments.{name}[{i}]") for i, p in enumerate(pts)]
            positions[name] = np.array(arr, dtype=float).reshape(-1, 3)
        return SegmentDefinition(ref, mov, positions)

    def to_dict(self) -> dict:
        return {
            "reference_segment": self.reference_segment,
            "moving_segment": self.moving_segment,
            "segments": {k: v.tolist() for k, v in self.positions.items()},
        }


@dataclass(frozen=True)
class ExamMarkers:
    """The patient markers of one reconstruction result.

    Attributes
    ----------
    ids : list of str
    xyz : ndarray, shape (m, 3)
    verdict : str or None
        The exam's own QC verdict, when given.
    """

    ids: list[str]
    xyz: np.ndarray
    verdict: str | None = None

    @staticmethod
    def from_dict(d: Any) -> ExamMarkers:
        if not isinstance(d, dict):
            raise InputError(f"expected a JSON object, got {type(d).__name__}")
        if "markers" not in d:
            raise InputError("missing key 'markers' (not a reconstruction result)")
        markers = d["markers"]
        if not isinstance(markers, list):
            raise InputError("markers: expected a list")
        ids, xyz = [], []
        for i, m in enumerate(markers):
            if not isinstance(m, dict) or "xyz_mm" not in m:
                raise InputError(f"markers[{i}]: expected an object with 'xyz_mm'")
            xyz.append(_xyz(m["xyz_mm"], f"markers[{i}].xyz_mm"))
            ids.append(str(m.get("id", f"#{i}")))
        qc = d.get("qc")
        verdict = qc.get("verdict") if isinstance(qc, dict) else None
        return ExamMarkers(ids, np.array(xyz, dtype=float).reshape(-1, 3), verdict)


# ------------------------------------------------------------------ pattern matching


@dataclass
class PatternMatch:
    """Correspondence of model markers to scene markers.

    Attributes
    ----------
    index : ndarray of int, shape (k,)
        Scene index of each model marker, -1 when not found.
    motion : RigidMotion
        Fitted model -> scene motion (identity when fewer than 3 matched).
    distance : ndarray, shape (k,)
        Distance of each matched model marker, moved by ``motion``, to its
        scene marker (nan when not found).
    """

    index: np.ndarray
    motion: RigidMotion
    distance: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def count(self) -> int:
        return int((self.index >= 0).sum())


def _assign(
    moved: np.ndarray, scene: np.ndarray, radius: np.ndarray, taken: np.ndarray | None = None
) -> np.ndarray:
    """Optimal one-to-one assignment of moved model points to scene points within ``radius``."""
    k = len(moved)
    index = np.full(k, -1, dtype=int)
    if k == 0 or len(scene) == 0:
        return index
    cost = cdist(moved, scene)
    gate = cost > radius[:, None]
    if taken is not None:
        gate |= taken[None, :]
    # A large finite cost keeps the problem feasible (inf makes it infeasible).
    big = 1e6
    rows, cols = linear_sum_assignment(np.where(gate, big, cost))
    ok = ~gate[rows, cols]
    index[rows[ok]] = cols[ok]
    return index


def _hypotheses(
    model: np.ndarray, scene: np.ndarray, Ds: np.ndarray, tri: tuple[int, int, int], tol: float
) -> np.ndarray:
    """Scene triplets (h, 3) whose distances match the model triplet ``tri`` within ``tol``."""
    a, b, c = tri
    dab = np.linalg.norm(model[a] - model[b])
    dac = np.linalg.norm(model[a] - model[c])
    dbc = np.linalg.norm(model[b] - model[c])
    U, V = np.nonzero(np.abs(Ds - dab) <= tol)
    keep = U != V
    U, V = U[keep], V[keep]
    if len(U) == 0:
        return np.zeros((0, 3), dtype=int)
    ok = (np.abs(Ds[U] - dac) <= tol) & (np.abs(Ds[V] - dbc) <= tol)
    i, W = np.nonzero(ok)
    keep = (U[i] != W) & (V[i] != W)
    return np.stack([U[i][keep], V[i][keep], W[keep]], axis=1)


def match_pattern(
    model: np.ndarray,
    scene: np.ndarray,
    *,
    dist_tol: float,
    radius: np.ndarray | float,
    coarse_radius: np.ndarray | float | None = None,
    search_radius: np.ndarray | float | None = None,
    seed_mask: np.ndarray | None = None,
    prior: RigidMotion | None = None,
    max_triplets: int = 400,
) -> PatternMatch:
    """Find a rigid model's markers among unlabelled scene markers by their distance pattern.

    Parameters
    ----------
    model : ndarray, shape (k, 3)
        The segment's markers (any frame).
    scene : ndarray, shape (m, 3)
        The exam's markers (its cage frame): may miss some model markers and
        hold others (other segments, stray beads).
    dist_tol : float
        Largest difference of a model distance and the matching scene distance
        for a triplet to be a hypothesis (mm): twice the position error of
        model plus scene markers.
    radius : float or ndarray, shape (k,)
        Scene markers within this distance of the moved model markers are
        the ones the motion is refitted on (per marker if an array).
    coarse_radius : float or ndarray, optional
        Radius used to score a triplet hypothesis (its lever arm makes the
        first fit coarser); defaults to ``radius``.
    search_radius : float or ndarray, optional
        Final assignment radius, without refitting: lets a marker that moved
        (a loose bead) be found and reported; defaults to ``radius``.
    seed_mask : ndarray of bool, shape (k,), optional
        Only these model markers form hypothesis triplets and count in the
        score (e.g. the precisely measured ones); the others are only
        assigned at the end.
    prior : RigidMotion, optional
        Expected motion (identity for the exam the segment file was made in;
        the bone's motion for an implant that migrates little). Among
        hypotheses that match equally many markers the one nearest to it
        wins: this resolves symmetric marker patterns, which distances alone
        cannot.
    max_triplets : int
        Cap on model triplets tried when the pattern is not found complete.

    Returns
    -------
    PatternMatch
    """
    model = np.asarray(model, dtype=float).reshape(-1, 3)
    scene = np.asarray(scene, dtype=float).reshape(-1, 3)
    k, m = len(model), len(scene)
    radius = np.broadcast_to(np.asarray(radius, dtype=float), (k,)).copy()
    coarse = radius if coarse_radius is None else np.asarray(coarse_radius, dtype=float)
    coarse = np.broadcast_to(coarse, (k,)).copy()
    search = radius if search_radius is None else np.asarray(search_radius, dtype=float)
    search = np.broadcast_to(search, (k,)).copy()
    seeds = np.ones(k, bool) if seed_mask is None else np.asarray(seed_mask, bool)
    none = PatternMatch(np.full(k, -1, dtype=int), RigidMotion.identity(), np.full(k, np.nan))
    seed_idx = np.flatnonzero(seeds)
    if len(seed_idx) < 3 or m < 3:
        return none

    Ds = cdist(scene, scene)
    # Try well-spread triplets first: their fits extrapolate best.
    triplets = np.array(list(itertools.combinations(seed_idx.tolist(), 3)), dtype=int)
    a, b, c = model[triplets[:, 0]], model[triplets[:, 1]], model[triplets[:, 2]]
    area = np.linalg.norm(np.cross(b - a, c - a), axis=1)
    order = np.argsort(area)[::-1]
    best_key = (1, np.inf)  # (-count, tie-break): lower is better
    best_motion: RigidMotion | None = None
    best_inliers = np.zeros(k, bool)
    target = min(len(seed_idx), m)
    seed_model = model[seeds]

    def evaluate(R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        moved = np.einsum("hij,kj->hki", R, seed_model) + t[:, None, :]  # (h, s, 3)
        d = np.linalg.norm(moved[:, :, None, :] - scene[None, None, :, :], axis=-1).min(axis=2)
        inl = d <= coarse[seeds][None, :]
        if prior is None:
            tie = np.where(inl, d, 0.0).sum(axis=1)
        else:
            tie = np.linalg.norm(moved - prior.apply(seed_model)[None], axis=-1).mean(axis=1)
        return inl, inl.sum(axis=1), tie

    if prior is not None:
        inl, count, tie = evaluate(prior.R[None], prior.t[None])
        if count[0] >= 3:
            best_key, best_motion = (-int(count[0]), float(tie[0])), prior
            best_inliers[seed_idx[inl[0]]] = True
    tried = 0
    for ti in order:
        if best_key[0] <= -target and (prior is None or best_key[1] < float(coarse.max())):
            break
        tri = tuple(int(x) for x in triplets[ti])
        if area[ti] < 1e-6:
            continue
        # A triplet wholly inside the best consensus only re-finds it.
        if best_inliers[list(tri)].all():
            continue
        tried += 1
        if tried > max_triplets:
            break
        hyp = _hypotheses(model, scene, Ds, tri, dist_tol)
        if len(hyp) == 0:
            continue
        src = np.broadcast_to(model[list(tri)], (len(hyp), 3, 3))
        R, t = fit_rigid_batch(src, scene[hyp])
        inl, count, tie = evaluate(R, t)
        h = int(np.lexsort((tie, -count))[0])
        key = (-int(count[h]), float(tie[h]))
        if key < best_key:
            best_key = key
            best_motion = RigidMotion(R[h], t[h])
            best_inliers = np.zeros(k, bool)
            best_inliers[seed_idx[inl[h]]] = True
    best_score = (-best_key[0], best_key[1])
    if best_motion is None or best_score[0] < 3:
        return none

    # Refine: assign seeds within the coarse radius, refit, then tighten.
    motion = best_motion
    index = np.full(k, -1, dtype=int)
    for rad in (coarse, radius, radius):
        idx = np.full(k, -1, dtype=int)
        idx[seeds] = _assign(motion.apply(model[seeds]), scene, rad[seeds])
        if (idx >= 0).sum() < 3:
            break
        index = idx
        ok = index >= 0
        motion = fit_rigid(model[ok], scene[index[ok]])
    if (index >= 0).sum() < 3:
        return none
    # Final assignment without refitting: seeds first, then the others among
    # the free scene markers.
    index = np.full(k, -1, dtype=int)
    index[seeds] = _assign(motion.apply(model[seeds]), scene, search[seeds])
    rest = ~seeds
    if rest.any():
        taken = np.zeros(m, bool)
        taken[index[index >= 0]] = True
        index[rest] = _assign(motion.apply(model[rest]), scene, search[rest], taken)
    dist = np.full(k, np.nan)
    ok = index >= 0
    dist[ok] = np.linalg.norm(motion.apply(model[ok]) - scene[index[ok]], axis=1)
    return PatternMatch(index, motion, dist)


# ------------------------------------------------------------------- loose beads


def _displacement(ref: np.ndarray, fu: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Distance of every marker from where the rigid fit of the kept markers puts it.

    nan when fewer than 3 markers are kept.
    """
    if keep.sum() < 3:
        return np.full(len(ref), np.nan)
    m = fit_rigid(ref[keep], fu[keep])
    return np.linalg.norm(m.apply(ref) - fu, axis=1)


def consistent_core(
    ref: np.ndarray, fu: np.ndarray, loose_mm: float, loose_fit_mm: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Largest subset of markers that moved as one rigid body between two exams.

    Two steps:

    1. Distances: two markers are consistent when
       ``|d_ref(i, j) - d_fu(i, j)| <= loose_mm``; the kept set is a maximum
       clique of that consistency graph (exhaustive for up to 16 markers, ties
       broken by the smallest total distance change; greedy removal of the
       worst marker beyond that). This needs no fit, so one loose bead cannot
       spoil the test of the others.
    2. Fit: a distance barely changes when a bead moves at right angles to
       the lines joining it to its mates, so while 4 or more markers remain,
       the marker whose exclusion lowers the sum of squared residuals of the
       rigid fit the most is dropped if that decrease exceeds
       ``loose_fit_mm²`` (default ``loose_mm``).
       The decrease lies between the marker's squared residual in the full
       fit (which the fit partly absorbs) and its squared leave-one-out
       prediction error (which poorly conditioned remaining markers inflate),
       the same deletion statistic as in regression diagnostics (Cook 1977).

    Parameters
    ----------
    ref, fu : ndarray, shape (n, 3)
        The same n markers in the reference and the follow-up exam.
    loose_mm : float

    Returns
    -------
    keep : ndarray of bool, shape (n,)
    change : ndarray, shape (n,)
        Median change of each marker's distances to the kept markers (mm).
    displacement : ndarray, shape (n,)
        Distance of each marker from its place predicted by the fit of the
        kept markers (mm; nan with fewer than 3 of them): the residual of a
        kept marker, the displacement of an excluded one.
    """
    n = len(ref)
    if n == 0:
        return np.zeros(0, bool), np.zeros(0), np.zeros(0)
    dd = np.abs(cdist(ref, ref) - cdist(fu, fu))
    ok = dd <= loose_mm
    keep = np.ones(n, bool)
    if not ok.all():
        if n <= 16:
            best: tuple[int, float] = (0, np.inf)
            found = False
            for size in range(n, 0, -1):
                for sub in itertools.combinations(range(n), size):
                    s = list(sub)
                    if ok[np.ix_(s, s)].all():
                        total = float(dd[np.ix_(s, s)].sum())
                        if not found or total < best[1]:
                            best, found = (size, total), True
                            keep = np.zeros(n, bool)
                            keep[s] = True
                if found:
                    break
        else:
            while not ok[np.ix_(keep, keep)].all():
                sub = np.flatnonzero(keep)
                bad = (~ok[np.ix_(sub, sub)]).sum(axis=1) + dd[np.ix_(sub, sub)].mean(axis=1) * 1e-6
                keep[sub[int(np.argmax(bad))]] = False
    while keep.sum() >= 4:
        full = float((_displacement(ref, fu, keep)[keep] ** 2).sum())
        kept = np.flatnonzero(keep)
        # All leave-one-out fits of the kept markers at once.
        subsets = np.array([np.delete(kept, i) for i in range(len(kept))])
        R, t = fit_rigid_batch(ref[subsets], fu[subsets])
        moved = np.einsum("hij,hkj->hki", R, ref[subsets]) + t[:, None, :]
        ssr = ((moved - fu[subsets]) ** 2).sum(axis=(1, 2))
        gain = np.full(n, -np.inf)
        gain[kept] = full - ssr
        worst = int(np.argmax(gain))
        if gain[worst] <= (loose_mm if loose_fit_mm is None else loose_fit_mm) ** 2:
            break
        keep[worst] = False
    disp = _displacement(ref, fu, keep)
    others = keep.copy()
    change = np.zeros(n)
    for i in range(n):
        mates = others.copy()
        mates[i] = False
        change[i] = float(np.median(dd[i, mates])) if mates.any() else 0.0
    return keep, change, disp


# ----------------------------------------------------------------- labelled exams


@dataclass
class SegmentLabels:
    """Where one segment's markers are in the reference and the follow-up exam.

    Attributes
    ----------
    name : str
    template : ndarray, shape (k, 3)
        Segment-file positions (reference exam frame).
    ref_index, fu_index : ndarray of int, shape (k,)
        Index of each segment-file marker in the reference / follow-up exam's
        marker list, -1 when not found.
    loose : ndarray of bool, shape (k,)
        Markers found in both exams but excluded as loose.
    change_mm : ndarray, shape (k,)
        Median change of each marker's distances to the consistent markers
        (nan where not found in both).
    displacement_mm : ndarray, shape (k,)
        Distance of each marker from where the fit of the consistent markers
        puts it (nan where not found in both or fewer than 3 consistent).
    """

    name: str
    template: np.ndarray
    ref_index: np.ndarray
    fu_index: np.ndarray
    loose: np.ndarray
    change_mm: np.ndarray
    displacement_mm: np.ndarray
    thresholds: dict = field(default_factory=dict)

    @property
    def consistent(self) -> np.ndarray:
        """Markers found in both exams and not loose (the consistent-marker set)."""
        return (self.ref_index >= 0) & (self.fu_index >= 0) & ~self.loose


def _match_greedy(
    models: dict[str, tuple[np.ndarray, dict]],
    scene: np.ndarray,
    prior: RigidMotion | None = None,
) -> dict[str, PatternMatch]:
    """Match several segments in one exam without letting two claim one marker.

    Each round matches every unassigned segment on the free scene markers and
    commits the strongest match (most markers, then smallest mean distance);
    its markers are then unavailable to the others. A wrong hypothesis for a
    segment with few visible markers can otherwise borrow markers of a
    well-seen segment. Without a ``prior``, the first committed segment's
    motion becomes the prior of the others (segments of one patient move
    together, apart from the migration or joint motion being measured).
    """
    free = np.ones(len(scene), bool)
    out: dict[str, PatternMatch] = {}
    firm_radius = {}
    for name, (model, kw) in models.items():
        firm_radius[name] = np.broadcast_to(np.asarray(kw["radius"], dtype=float), (len(model),))
    todo = list(models)
    while todo:
        sub = np.flatnonzero(free)
        best_name, best, best_key = None, None, None
        for name in todo:
            model, kw = models[name]
            pm = match_pattern(model, scene[sub], prior=prior, **kw)
            ok = pm.index >= 0
            pm.index[ok] = sub[pm.index[ok]]
            key = (-pm.count, float(np.nanmean(pm.distance)) if pm.count else np.inf)
            if best_key is None or key < best_key:
                best_name, best, best_key = name, pm, key
        out[best_name] = best
        # Only firm matches are withheld from the others; a far candidate (a
        # possibly loose bead) may be a firm marker of another segment.
        firm = (best.index >= 0) & (best.distance <= firm_radius[best_name])
        free[best.index[firm]] = False
        todo.remove(best_name)
        if prior is None and best.count >= 3:
            prior = best.motion
    _resolve_conflicts(out)
    return out


def _resolve_conflicts(matches: dict[str, PatternMatch]) -> None:
    """A scene marker claimed by two segments stays with the one it fits best."""
    owner: dict[int, tuple[str, int, float]] = {}
    for name, pm in matches.items():
        for i, j in enumerate(pm.index):
            if j < 0:
                continue
            d = float(pm.distance[i])
            prev = owner.get(int(j))
            if prev is None:
                owner[int(j)] = (name, i, d)
            elif d < prev[2]:
                matches[prev[0]].index[prev[1]] = -1
                matches[prev[0]].distance[prev[1]] = np.nan
                owner[int(j)] = (name, i, d)
            else:
                pm.index[i] = -1
                pm.distance[i] = np.nan


def label_reference(
    definition: SegmentDefinition,
    exam: ExamMarkers,
    tol: MatchTolerances = DEFAULT_TOLERANCES,
) -> dict[str, PatternMatch]:
    """Find each segment's markers in the reference exam from the segment file.

    The segment file's positions are accurate to ``template_mm``, so distances
    agree to twice that plus the measurement error.
    """
    dist_tol = 2 * tol.template_mm + 2 * tol.measured_mm
    radius = 2 * tol.template_mm + tol.measured_mm
    kw = {"dist_tol": dist_tol, "radius": radius, "coarse_radius": 2.5 * radius}
    models = {name: (tpl, kw) for name, tpl in definition.positions.items()}
    # The segment file is in this exam's frame: the expected motion is none.
    return _match_greedy(models, exam.xyz, RigidMotion.identity())


def label_followup(
    definition: SegmentDefinition,
    reference: ExamMarkers,
    ref_matches: dict[str, PatternMatch],
    exam: ExamMarkers,
    tol: MatchTolerances = DEFAULT_TOLERANCES,
) -> dict[str, SegmentLabels]:
    """Find each segment's markers in a follow-up exam and detect loose beads.

    The model of each segment is its markers as measured in the reference exam
    (precise, these seed the pattern search); markers not found there stand in
    with their segment-file position carried by the reference fit, and are only
    assigned at the end. A measured marker is looked for up to
    ``loose_search_mm`` from its expected place so that a bead which moved can
    be reported as loose rather than silently missing.
    """
    models: dict[str, tuple[np.ndarray, dict]] = {}
    for name, tpl in definition.positions.items():
        rm = ref_matches[name]
        seen = rm.index >= 0
        approx = 2 * tol.template_mm + tol.measured_mm
        if seen.sum() >= 3:
            model = tpl.copy()
            model[~seen] = rm.motion.apply(tpl[~seen])
            model[seen] = reference.xyz[rm.index[seen]]
            kw = {
                "dist_tol": max(2 * tol.measured_mm, tol.loose_mm),
                "radius": np.where(seen, 2 * tol.measured_mm, approx),
                "search_radius": np.where(seen, tol.loose_search_mm, approx),
                "seed_mask": seen,
            }
        else:
            # Too few reference markers to seed a search: fall back on the file.
            model = tpl
            kw = {
                "dist_tol": 2 * tol.template_mm + 2 * tol.measured_mm,
                "radius": approx,
                "coarse_radius": 2.5 * approx,
            }
        models[name] = (model, kw)
    matches = _match_greedy(models, exam.xyz)

    # Noise of this pair of exams, from the change of every within-segment
    # distance (robust: a loose bead moves only its own few pairs).
    changes = []
    for name in definition.positions:
        ri, fi = ref_matches[name].index, matches[name].index
        both = (ri >= 0) & (fi >= 0)
        if both.sum() >= 2:
            p, q = reference.xyz[ri[both]], exam.xyz[fi[both]]
            iu = np.triu_indices(len(p), 1)
            changes.append((cdist(p, p) - cdist(q, q))[iu])
    pooled = np.concatenate(changes) if changes else np.zeros(0)
    # SD of a distance change: ≈ 2σ for σ per coordinate per exam (MAD estimate).
    sd = float(1.4826 * np.median(np.abs(pooled))) if len(pooled) >= 6 else 0.0
    thresholds = {
        "distance_change_sd_mm": sd if len(pooled) >= 6 else None,
        "loose_mm": max(tol.loose_mm, 5.0 * sd),
        "loose_fit_mm": max(tol.loose_fit_mm, 2.75 * sd),
    }

    labels: dict[str, SegmentLabels] = {}
    for name, tpl in definition.positions.items():
        ri, fi = ref_matches[name].index.copy(), matches[name].index.copy()
        both = (ri >= 0) & (fi >= 0)
        loose = np.zeros(len(tpl), bool)
        change = np.full(len(tpl), np.nan)
        disp = np.full(len(tpl), np.nan)
        if both.any():
            keep, ch, dp = consistent_core(
                reference.xyz[ri[both]],
                exam.xyz[fi[both]],
                thresholds["loose_mm"],
                thresholds["loose_fit_mm"],
            )
            loose[np.flatnonzero(both)[~keep]] = True
            change[both] = ch
            disp[both] = dp
        labels[name] = SegmentLabels(name, tpl, ri, fi, loose, change, disp, thresholds)
    return labels
