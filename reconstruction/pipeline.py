"""From a stereo pair of images to 3D bead positions and a QC verdict.

Per view: detect markers (:mod:`reconstruction.detect`), identify the cage
markers among them (:mod:`reconstruction.cage_id`), calibrate the view
(:mod:`reconstruction.calibrate`). Then the remaining blobs, minus anything
near a cage marker's shadow, are matched across the views
(:mod:`reconstruction.stereo`) and triangulated
(:mod:`reconstruction.triangulate`); the QC checks of ``CONTRACT.md`` close it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from reconstruction.cage_id import Identification, identify
from reconstruction.calibrate import Calibration, PoseModel, calibrate, casts_shadow, inside_image
from reconstruction.confirm import confirm_markers, display_gatherer
from reconstruction.detect import (
    Detections,
    MarkerScale,
    detect_markers,
    full_display,
    noise_bound,
    refit_on_edges,
)
from reconstruction.errors import InputError
from reconstruction.geometry import VIEW_NAMES, Cage, Station, ViewGeometry
from reconstruction.image import RawImage
from reconstruction.lightweight import linear_sum_assignment, neighbours_within
from reconstruction.qc import DEFAULT_LIMITS, QCCheck, QCLimits, at_least, at_most, verdict
from reconstruction.rescue import as_detections, fit_partners
from reconstruction.stereo import (
    Matching,
    epipolar_distances,
    fundamental_matrix,
    match,
    rays_meet,
)
from reconstruction.triangulate import common_perpendicular, midpoint, point_between

#: Diameters of the patient's tantalum markers that detection is sized for (mm):
#: RSA beads are made 0.5, 0.8 and 1.0 mm (ISO 16087: markers usually <= 1 mm).
BEAD_DIAMETERS_MM = (0.5, 1.0)
#: A cage marker's shadow must lie this far inside the image to be expected (CONTRACT.md).
EXPECTED_MARGIN_PX = 10.0
#: Smallest matched-filter signal-to-noise ratio of a patient bead.
MIN_BEAD_SNR = 12.0
#: Largest ratio of a bead's signal-to-noise ratios in the two views, applied when
#: the weaker of the two is barely significant (below SURE_BEAD_SNR).
MAX_SNR_RATIO = 8.0
#: A bead this significant in both views pairs whatever its SNR ratio: one seen
#: through soft tissue in one view and through air in the other differs by 30x
#: and more (audit D3, lumbar spine: SNR 35-47 against 700-1600).
SURE_BEAD_SNR = 2.5 * MIN_BEAD_SNR
#: Largest centre uncertainty (Cramér-Rao bound, at the detector) of a reported bead.
MAX_BEAD_SIGMA_MM = 0.04
#: Gate of a pair's epipolar distance, in standard errors of the two centres and the
#: two calibrations. The calibrations' epipolar error is propagated from each pose's
#: covariance (~0.02 px on the simulator's exams, where the true centres' epipolar
#: distance under the calibrated geometry is 0.012 px RMS), not taken as the cage
#: markers' residual RMS (0.05-0.29 px, mostly their own centre noise); a group of
#: beads sharing candidates is resolved where one assignment beats every rival
#: pairing by stereo.RIVAL_MARGIN_CHI2 in chi-square (stereo._weigh). 4 rather than 3: the
#: centres' bounds underestimate their real error under texture by up to ~1.8x.
#: Measured against the earlier matching (3 sigma, residual RMS, shared candidates all
#: ambiguous; commit 1ae5fbc, bench_reconstruct accuracy, 36 exams): +14 beads
#: visible in both views matched, recall up on 7 exams and down on none, no new false
#: marker; spine/biplanar seed 3 3D 12.0 -> 14.1 um (beads next to another shadow).
EPIPOLAR_GATE_SIGMA = 4.0
#: The cage's manufacturing error as seen in the image (px, one sigma), added to each
#: cage marker's detection bound (the calibration's own floor, calibrate.calibrate).
CAGE_FLOOR_PX = 0.03
#: Fewest identified cage markers to calibrate a view (DLT needs 6).
MIN_CALIBRATION_MARKERS = 6


def magnification(view: ViewGeometry, xyz: np.ndarray) -> np.ndarray:
    """Geometric magnification (focus-detector over focus-object distance) of points."""
    n = view.detector.normal
    sid = abs(float((view.detector.origin_mm - view.focus_mm) @ n))
    sod = np.abs((xyz - view.focus_mm) @ n)
    return sid / np.maximum(sod, 1e-9)


def shadow_radii_px(view: ViewGeometry, xyz: np.ndarray, diameters_mm: np.ndarray) -> np.ndarray:
    """Radius of each sphere's shadow in pixels (mean of the two spacings)."""
    return (
        0.5
        * np.asarray(diameters_mm)
        * magnification(view, xyz)
        / float(np.mean(view.detector.pixel_spacing_mm))
    )


def bead_diameter_mm(view: ViewGeometry, xyz: np.ndarray, radius_px: np.ndarray) -> np.ndarray:
    """Diameter of a sphere at ``xyz`` from its fitted shadow radius in one view."""
    sp = float(np.mean(view.detector.pixel_spacing_mm))
    return 2 * np.asarray(radius_px) * sp / magnification(view, xyz)


def cage_diameters(cage: Cage) -> np.ndarray:
    return np.array([m.diameter_mm for m in cage.markers], dtype=float)


def marker_scale(view: ViewGeometry, cage: Cage, include_beads: bool = True) -> MarkerScale:
    """Expected shadow radii from the view's geometry, the cage and the bead sizes.

    Patient beads lie inside the cage, so their magnification is taken over
    the range of the cage markers casting a shadow on this view.
    """
    xyz = cage.xyz_mm
    shadow = casts_shadow(view, xyz)
    if not shadow.any():
        shadow = np.ones(len(xyz), bool)
    r_cage = shadow_radii_px(view, xyz[shadow], cage_diameters(cage)[shadow])
    lo, hi = float(r_cage.min()), float(r_cage.max())
    if include_beads:
        mag = magnification(view, xyz[shadow])
        sp = float(np.mean(view.detector.pixel_spacing_mm))
        lo = min(lo, 0.5 * BEAD_DIAMETERS_MM[0] * mag.min() / sp)
        hi = max(hi, 0.5 * BEAD_DIAMETERS_MM[1] * mag.max() / sp)
    # a little room for the geometry on the day and the fit's blur trade-off
    return MarkerScale(max(0.8 * lo, 0.8), 1.2 * hi)


def _snr(det: Detections) -> np.ndarray:
    """Matched-filter signal-to-noise ratio of each detected disc."""
    return det.relative_contrast * np.sqrt(np.pi) * np.maximum(det.radius_px, det.blur_px)


def check_image(station: Station, view: str, image: RawImage) -> None:
    det = station.views[view].detector
    if image.pixels.shape != (det.rows, det.columns):
        raise InputError(
            f"image {view}: {image.pixels.shape[0]}x{image.pixels.shape[1]} pixels does not "
            f"match the station's detector ({det.rows}x{det.columns})"
        )


@dataclass
class ViewResult:
    """Everything found in one view (for the result, overlays and diagnosis)."""

    name: str
    nominal: ViewGeometry
    detections: Detections
    identification: Identification
    calibration: Calibration | None
    geometry: ViewGeometry  # calibrated, or nominal when calibration failed
    predicted_rc: np.ndarray  # every cage marker under ``geometry``
    expected: np.ndarray  # bool per cage marker (CONTRACT.md: 10 px inside)
    found_marker_idx: np.ndarray  # identified (inlier) cage markers
    found_det_idx: np.ndarray
    patient_idx: np.ndarray  # detections that are candidate patient beads
    marker_residual_px: np.ndarray  # (n_found, 2) measured - predicted
    pose_model: PoseModel | None = None
    # covariance (9 x 9, physical units of PoseModel's theta) of the calibrated pose
    theta_cov: np.ndarray | None = None
    # expected markers too faint for the search, seen where the calibrated
    # geometry puts them (reconstruction.confirm): found, but not measured
    confirmed_marker_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    # what the search for beads on metal bands needs (reconstruction.rescue):
    # the display image (dropped once the markers are made) and the beads'
    # expected shadow radii in this view
    display: np.ndarray | None = field(default=None, repr=False, compare=False)
    bead_scale: MarkerScale | None = None
    cage_shadow_px: np.ndarray | None = None  # per cage marker, NaN where none

    @property
    def n_expected(self) -> int:
        return int(self.expected.sum())

    @property
    def found_mask(self) -> np.ndarray:
        """Cage markers found: identified, or confirmed at their predicted place."""
        found = np.zeros(len(self.expected), bool)
        found[self.found_marker_idx] = True
        found[self.confirmed_marker_idx] = True
        return found

    @property
    def n_found(self) -> int:
        return int((self.expected & self.found_mask).sum())

    def to_dict(self) -> dict:
        cal = self.calibration
        return {
            "focus_mm": None if cal is None else cal.view.focus_mm.tolist(),
            "calibration_rms_px": None if cal is None else float(cal.rms_px),
            "cage_markers_expected": self.n_expected,
            "cage_markers_found": self.n_found,
        }


@dataclass
class Marker:
    id: str
    xyz_mm: np.ndarray
    crossing_mm: float
    image_px: dict[str, np.ndarray]
    det_idx: dict[str, int]

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "xyz_mm": [float(v) for v in self.xyz_mm],
            "crossing_mm": float(self.crossing_mm),
            "image_px": {k: [float(v[0]), float(v[1])] for k, v in self.image_px.items()},
        }


@dataclass
class ReconstructionResult:
    """The contract's reconstruction result, with what overlays need."""

    views: dict[str, ViewResult]
    markers: list[Marker]
    ambiguous: list[dict]
    checks: list[QCCheck]
    matching: Matching | None = None
    extra: dict = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return verdict(self.checks)["verdict"]

    def to_dict(self) -> dict:
        return {
            "views": {k: v.to_dict() for k, v in self.views.items()},
            "markers": [m.to_dict() for m in self.markers],
            "ambiguous": self.ambiguous,
            "qc": verdict(self.checks),
        }


def _final_assignment(pred, det: Detections, cand, gate):
    """Unique cage marker -> detection pairs within ``gate`` px of the calibrated prediction."""
    idx = np.flatnonzero(cand)
    if len(idx) == 0 or len(det) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    qi, cols, dist = neighbours_within(pred[idx], det.rc, gate)
    rows = idx[qi]
    cost = dist**2
    if len(rows) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    um, ri = np.unique(rows, return_inverse=True)
    ud, ci = np.unique(cols, return_inverse=True)
    c = np.full((len(um), len(ud)), 1e9)
    c[ri, ci] = cost
    r, k = linear_sum_assignment(c)
    ok = c[r, k] < 1e9
    return um[r[ok]], ud[k[ok]]


def pose_covariance(
    model: PoseModel,
    theta: np.ndarray,
    xyz: np.ndarray,
    rc: np.ndarray,
    sigma_px: np.ndarray,
    floor_px: float = CAGE_FLOOR_PX,
) -> np.ndarray:
    """Covariance of a calibrated pose from its markers (physical units of ``theta``).

    Gauss-Newton: the inverse Fisher information ``(sum J^T J / sigma^2)^-1`` of the
    markers' reprojections, each marker's uncertainty being its detection bound and
    the cage's manufacturing floor in quadrature (as in the calibration), scaled up
    by the reduced chi-square of the residuals when they are larger than that
    (biased markers, a cage off its stated positions): what the fitted geometry is
    known to, as opposed to the residual RMS, which is mostly the markers' own noise.
    """
    sc = model.scale
    jac = model.jacobian(theta, xyz, scaled=True)  # (n, 2, 9), per tolerance unit
    sig = np.sqrt(np.asarray(sigma_px, float) ** 2 + floor_px**2)
    jw = np.nan_to_num(jac / sig[:, None, None]).reshape(-1, len(sc))
    fisher = jw.T @ jw
    resid = np.nan_to_num((rc - model.project(theta, xyz)) / sig[:, None])
    dof = max(2 * len(xyz) - len(sc), 1)
    inflate = max(1.0, float(np.sum(resid**2)) / dof)
    cov = np.linalg.pinv(fisher + 1e-9 * np.eye(len(sc))) * inflate
    return cov * np.outer(sc, sc)


def epipolar_calibration_sigma(
    va: ViewResult, vb: ViewResult, rc_a: np.ndarray, rc_b: np.ndarray
) -> np.ndarray:
    """Standard error (px, nA x nB) of each pair's epipolar distance from the two
    calibrations: the distance's change along each principal axis of each pose's
    covariance, one standard deviation each (linear propagation)."""
    var = np.zeros((len(rc_a), len(rc_b)))
    p_a, p_b = va.geometry.projection_matrix(), vb.geometry.projection_matrix()
    f0 = fundamental_matrix(p_a, p_b)
    for vr, first in ((va, True), (vb, False)):
        lam, vec = np.linalg.eigh(vr.theta_cov)
        steps = (np.sqrt(np.maximum(lam, 0.0)) * vec).T  # one step per principal axis
        k = len(steps)
        p = vr.pose_model.projection_matrices(
            vr.calibration.theta + np.concatenate([steps, -steps])
        )
        f = fundamental_matrix(p, p_b) if first else fundamental_matrix(p_a, p)
        # F is defined up to its sign: all of them with the unperturbed one's
        f *= np.where(np.einsum("kij,ij->k", f, f0) < 0, -1.0, 1.0)[:, None, None]
        d_b, d_a = epipolar_distances(f, rc_a, rc_b)
        d = np.sqrt(0.5 * (d_a**2 + d_b**2)) * np.sign(d_b)
        var += np.sum((0.5 * (d[:k] - d[k:])) ** 2, axis=0)
    return np.sqrt(var)


def cage_shadow_radii(geometry: ViewGeometry, cage: Cage, pred: np.ndarray) -> np.ndarray:
    """Each cage marker's shadow radius (px) in this view; NaN where it casts none."""
    shadow_ok = casts_shadow(geometry, cage.xyz_mm) & np.all(np.isfinite(pred), axis=1)
    r = shadow_radii_px(geometry, cage.xyz_mm, cage_diameters(cage))
    return np.where(shadow_ok, r, np.nan)


def touches_cage_shadow(
    rc: np.ndarray, radius_px: np.ndarray, blur_px: np.ndarray, pred: np.ndarray, r_cage: np.ndarray
) -> np.ndarray:
    """Whether each disc touches a cage marker's shadow (``pred`` its centres,
    ``r_cage`` its radii, NaN for none): a bead over one is biased."""
    ok = np.isfinite(r_cage)
    d = np.linalg.norm(rc[:, None, :] - pred[ok][None, :, :], axis=2)
    return (d < r_cage[ok][None, :] + radius_px[:, None] + 2 * blur_px[:, None] + 1).any(axis=1)


def bead_radius_range(geometry: ViewGeometry, xyz_shadow: np.ndarray) -> tuple[float, float]:
    """Shadow radii (px) of the smallest and largest bead inside the cage, whose
    markers casting a shadow in this view are ``xyz_shadow`` (the patient lies
    between them, so their magnifications bound the beads')."""
    sp = float(np.mean(geometry.detector.pixel_spacing_mm))
    mag = magnification(geometry, xyz_shadow) if len(xyz_shadow) else np.ones(1)
    return (
        0.5 * BEAD_DIAMETERS_MM[0] * float(mag.min()) / sp,
        0.5 * BEAD_DIAMETERS_MM[1] * float(mag.max()) / sp,
    )


def bead_blur_range(cage_blur_px: np.ndarray) -> tuple[float, float]:
    """Blur (px) a bead may have, from the identified cage markers' blurs.

    Patient beads are imaged with the same blur as the cage markers (the focal
    spot's penumbra grows with magnification, hence the wide band). The
    fiducial markers lie next to the detector: their blur is the detector's
    plus the least penumbra, and a bead, further from the detector, is never
    sharper. Below 0.8 of the sharpest cage markers' (10th percentile, fit
    noise aside) a blob is noise or texture: on 36 simulated exams every true
    bead was >= 0.91 of it, the two blobs of a chance pairing 0.59 and 0.71
    (upper/uniplanar seed 4).
    """
    s_ref = float(np.median(cage_blur_px))
    s_min = float(np.percentile(cage_blur_px, 10))
    return max(0.5 * s_ref, 0.8 * s_min), 2.0 * s_ref + 0.5


def patient_rules(
    det: Detections, geometry: ViewGeometry, cage: Cage, cage_det_idx: np.ndarray, pred: np.ndarray
) -> dict[str, np.ndarray]:
    """Each rule a detection must pass to be a candidate patient bead, by name (bool per
    detection, True = passes); a candidate passes all of them. Named so that a
    diagnosis can say which rule dropped a bead (benchmarks/bench_reconstruct.py --why).
    """
    xyz = cage.xyz_mm
    n = len(det)
    rules: dict[str, np.ndarray] = {}
    # not a cage marker, not touching any cage marker's shadow (a bead over one is biased)
    is_cage = np.zeros(n, bool)
    is_cage[cage_det_idx] = True
    rules["cage marker"] = ~is_cage
    r_cage = cage_shadow_radii(geometry, cage, pred)
    shadow_ok = np.isfinite(r_cage)
    touching = touches_cage_shadow(det.rc, det.radius_px, det.blur_px, pred, r_cage)
    rules["touches a cage marker's shadow"] = ~touching
    # Patient beads are spheres of known range of sizes, imaged with the same
    # blur as the cage markers (:func:`bead_blur_range`): blobs of texture or
    # noise rarely have both the size and the sharpness of one.
    blur_ok = np.ones(n, bool)
    size_ok = np.ones(n, bool)
    if len(cage_det_idx) >= 3 and n:
        r_lo, r_hi = bead_radius_range(geometry, xyz[shadow_ok])
        blur_lo, blur_hi = bead_blur_range(det.blur_px[cage_det_idx])
        s_min = float(np.percentile(det.blur_px[cage_det_idx], 10))
        # Within the blur's own standard error, up to a tenth of s_min: a 0.5 mm
        # bead's shadow, under 2 px in radius, trades blur for radius in the fit
        # (4 of 191 such beads on our synthetic station fell up to 0.03 px
        # below the floor). Not more: blobs of texture have uncertain blurs
        # too, and a full two-sigma allowance let three chance pairings of
        # blobs through on the 36 simulated exams (each has a view 0.08 px or
        # more below the floor with this one).
        s_err = np.zeros(n)
        if det.blur_sigma_px is not None:
            s_err = np.minimum(np.nan_to_num(det.blur_sigma_px, nan=0.0), 0.1 * s_min)
        blur_ok = (det.blur_px + s_err >= blur_lo) & (det.blur_px - s_err <= blur_hi)
        size_ok = (det.radius_px >= 0.7 * r_lo) & (det.radius_px <= 1.3 * r_hi)
    rules["blur unlike the cage markers'"] = blur_ok
    rules["not a bead's size"] = size_ok
    # With hundreds of blobs of bone texture and noise in an image, a patient
    # bead must stand out more than a cage marker, whose position the
    # identification already predicts: a stricter matched-filter SNR.
    rules["SNR < MIN_BEAD_SNR"] = _snr(det) >= MIN_BEAD_SNR
    # a bead whose centre is this uncertain would be placed tens of µm off in
    # 3D and widens the epipolar gate enough to pair with texture: not reported
    # (the noise's bound: a bead on an implant border keeps its place, with the
    # model uncertainty in its sigma widening its matching gate)
    sp = float(np.mean(geometry.detector.pixel_spacing_mm))
    rules["centre bound > MAX_BEAD_SIGMA_MM"] = noise_bound(det) * sp <= MAX_BEAD_SIGMA_MM
    return rules


def analyse_view(
    name: str, station: Station, cage: Cage, image: RawImage, *, include_beads: bool = True
) -> ViewResult:
    """Detect, identify and calibrate one view."""
    check_image(station, name, image)
    nominal = station.views[name]
    model = PoseModel(nominal, station.tolerance)
    scale = marker_scale(nominal, cage, include_beads)
    display = full_display(image)
    det = detect_markers(image, scale, display=display)
    xyz = cage.xyz_mm
    r_exp = shadow_radii_px(nominal, xyz, cage_diameters(cage))
    ident = identify(
        model,
        xyz,
        det.rc,
        sigma_px=0.7,
        det_radius=det.radius_px,
        marker_radius=r_exp,
    )
    cal = None
    mk, dk = ident.marker_idx, ident.det_idx
    theta0 = ident.theta
    if len(mk) >= MIN_CALIBRATION_MARKERS:
        # calibrate, re-assign every marker under the calibrated geometry, recalibrate
        for it in range(3):
            cal = calibrate(model, xyz[mk], det.rc[dk], det.sigma_px[dk], theta0=theta0)
            if it == 2:
                break
            pred = model.project(cal.theta, xyz)
            cand = casts_shadow(cal.view, xyz) & inside_image(pred, cal.view.detector, -2)
            gate = max(1.0, 6.0 * cal.rms_px)
            mk2, dk2 = _final_assignment(pred, det, cand, gate)
            theta0 = cal.theta
            if len(mk2) < MIN_CALIBRATION_MARKERS or (
                np.array_equal(np.sort(mk2), np.sort(mk[cal.inliers]))
            ):
                break
            mk, dk = mk2, dk2
        mk, dk = mk[cal.inliers], dk[cal.inliers]
        geometry = cal.view
    else:
        geometry = nominal
    pred = geometry.project(xyz)
    r_cage = cage_shadow_radii(geometry, cage, pred)
    expected = casts_shadow(geometry, xyz) & inside_image(
        pred, geometry.detector, EXPECTED_MARGIN_PX
    )
    residual = det.rc[dk] - pred[mk] if len(mk) else np.zeros((0, 2))
    confirmed = np.zeros(0, int)
    if cal is not None:
        # markers the search missed, looked for where the calibration puts them
        unseen = np.ones(len(xyz), bool)
        unseen[mk] = False
        faint = np.flatnonzero(expected & unseen)
        if len(faint):
            r_geo = shadow_radii_px(geometry, xyz[faint], cage_diameters(cage)[faint])
            seen = confirm_markers(display_gatherer(display), pred[faint], r_geo)
            confirmed = faint[seen]

    rules = patient_rules(det, geometry, cage, dk, pred)
    if include_beads and len(det):
        # beads lie on implant borders and cortices: the patient's candidates (not
        # the cage's markers) are refitted with a step edge where a plane leaves
        # structure around them, and judged again on the new fit
        # (candidates by every rule but the bound, which the refit changes)
        maybe = np.logical_and.reduce(
            [r for k, r in rules.items() if k != "centre bound > MAX_BEAD_SIGMA_MM"]
        )
        det = refit_on_edges(display, det, np.flatnonzero(maybe), scale)
        rules = patient_rules(det, geometry, cage, dk, pred)
    keep = np.logical_and.reduce(list(rules.values())) if len(det) else np.zeros(0, bool)
    return ViewResult(
        name=name,
        nominal=nominal,
        detections=det,
        identification=ident,
        calibration=cal,
        geometry=geometry,
        predicted_rc=pred,
        expected=expected,
        found_marker_idx=mk,
        found_det_idx=dk,
        patient_idx=np.flatnonzero(keep),
        marker_residual_px=residual,
        pose_model=model,
        confirmed_marker_idx=confirmed,
        display=display if include_beads else None,
        bead_scale=_bead_scale(geometry, xyz[np.isfinite(r_cage)]) if include_beads else None,
        cage_shadow_px=r_cage,
        theta_cov=None
        if cal is None
        else pose_covariance(model, cal.theta, xyz[mk], det.rc[dk], det.sigma_px[dk]),
    )


def _bead_scale(geometry: ViewGeometry, xyz_shadow: np.ndarray) -> MarkerScale:
    """The beads' own shadow radii in this view (``xyz_shadow``: the cage markers
    casting a shadow in it), with the room :func:`patient_rules` allows."""
    r_lo, r_hi = bead_radius_range(geometry, xyz_shadow)
    return MarkerScale(0.7 * r_lo, 1.3 * r_hi)


def _analyse_views(
    station: Station, cage: Cage, images: dict[str, RawImage]
) -> dict[str, ViewResult]:
    """Both views at once: they are independent, and OpenCV and numpy's array loops
    release the GIL, so two threads use two cores (same results as one after the
    other: nothing is shared but read-only inputs)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(VIEW_NAMES)) as pool:
        futures = {v: pool.submit(analyse_view, v, station, cage, images[v]) for v in VIEW_NAMES}
        return {v: f.result() for v, f in futures.items()}


def lateral_sigma_mm(view: ViewGeometry, sigma_px: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Standard error (mm) of a projection line's place at ``xyz``, sideways, from its
    image centre's sigma (px) scaled to the object by the magnification there.

    A pair's crossing distance takes the part of both lines' errors across
    the epipolar plane: its standard error is about ``hypot`` of the two.
    """
    sp = float(np.mean(view.detector.pixel_spacing_mm))
    return sigma_px * sp / magnification(view, xyz)


def same_bead_size(
    geom_a: ViewGeometry,
    rc_a: np.ndarray,
    radius_a_px: np.ndarray,
    geom_b: ViewGeometry,
    rc_b: np.ndarray,
    radius_b_px: np.ndarray,
) -> np.ndarray:
    """Whether paired shadows (n each) can be one bead: one sphere has one
    diameter, so its two shadows, each divided by its magnification at the
    triangulated point, must agree, and be a bead's diameter (within the fit's
    size error)."""
    xyz, _ = midpoint(geom_a, rc_a, geom_b, rc_b)
    d_a = bead_diameter_mm(geom_a, xyz, radius_a_px)
    d_b = bead_diameter_mm(geom_b, xyz, radius_b_px)
    lo, hi = 0.8 * BEAD_DIAMETERS_MM[0], 1.25 * BEAD_DIAMETERS_MM[1]
    sized = (d_a >= lo) & (d_a <= hi) & (d_b >= lo) & (d_b <= hi)
    return (np.abs(d_a - d_b) <= 0.3 * np.maximum(d_a, d_b) + 0.05) & sized


def snr_allowed(snr_a: np.ndarray, snr_b: np.ndarray) -> np.ndarray:
    """One opaque sphere is a strong shadow in both views or in neither: a crisp
    bead in one view does not pair with a barely significant blob (its true
    shadow hidden by metal) in the other (arrays broadcast)."""
    ratio = np.maximum(snr_a / snr_b, snr_b / snr_a)
    return (ratio <= MAX_SNR_RATIO) | (np.minimum(snr_a, snr_b) >= SURE_BEAD_SNR)


def triangulate_pairs(
    geom_a: ViewGeometry,
    rc_a: np.ndarray,
    sigma_a_px: np.ndarray,
    geom_b: ViewGeometry,
    rc_b: np.ndarray,
    sigma_b_px: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matched image points to 3D points (n, 3), their crossing distances (n,) and
    those distances' standard errors (n,), in mm.

    Each point lies on the common perpendicular of the two projection lines,
    nearer the more precise one (:func:`reconstruction.triangulate.point_between`
    with the centres' sigmas scaled to the object at the midpoint; the midpoint
    for equal ones): 17.2 -> 16.5 µm pooled on the 36 default exams, up to 14 %
    on the knee, whose tibia beads are 2-3 times more precise in one view.
    """
    pa, pb = common_perpendicular(geom_a, rc_a, geom_b, rc_b)
    mid = point_between(pa, pb)
    sig_a = lateral_sigma_mm(geom_a, sigma_a_px, mid)
    sig_b = lateral_sigma_mm(geom_b, sigma_b_px, mid)
    return (
        point_between(pa, pb, sig_a, sig_b),
        np.linalg.norm(pa - pb, axis=-1),
        np.hypot(sig_a, sig_b),
    )


# refusals under which a bead may lie on a metal band (reconstruction.rescue)
_BAND_REFUSALS = ("implausible size or blur", "not a single disc (merged, edge or texture)")


def _pair_rules(vx: ViewResult, vy: ViewResult, x: str, k: int, p, snr_k: float) -> bool:
    """The rules of a pair for clear bead ``k`` of view ``x`` and band fit
    ``p`` in view ``vy``: rays meeting in front of both detectors, one
    diameter, the SNR-ratio rule."""
    rc_x, rc_y = vx.detections.rc[vx.patient_idx[k]], p.fit.rc
    rad_x = vx.detections.radius_px[vx.patient_idx[k]]
    sides = [(vx.geometry, rc_x, rad_x), (vy.geometry, rc_y, p.fit.radius)]
    (geo_a, rc_a, rad_a), (geo_b, rc_b, rad_b) = sides if x == "A" else sides[::-1]
    return bool(
        rays_meet(geo_a, rc_a[None], geo_b, rc_b[None])[0, 0]
        and same_bead_size(
            geo_a, rc_a[None], np.array([rad_a]), geo_b, rc_b[None], np.array([rad_b])
        )[0]
        and snr_allowed(snr_k, p.fit.snr)
    )


def _partners_on_bands(views: dict[str, ViewResult], matching: Matching) -> None:
    """Look for the other shadow of each clear, unpartnered bead on a metal band
    (:mod:`reconstruction.rescue`) and add those found to the views'
    detections and patient candidates and to ``matching.pairs``.

    A fit may be a clear bead's partner if it meets the noise bound of a
    patient candidate, touches no cage marker's shadow, lies within the
    matching gate of the bead (its sigma carrying the band model's share) and
    with it has rays that meet, one diameter and the SNR-ratio rule. It is
    paired if it is the bead's only such fit, may be no other bead's and lies
    within the gate of no other candidate of the bead's view; a bead with such
    fits that is not paired goes to ``matching.ambiguous``.
    """
    f_ab = fundamental_matrix(
        views["A"].geometry.projection_matrix(), views["B"].geometry.projection_matrix()
    )
    for x, y in (("A", "B"), ("B", "A")):
        vx, vy = views[x], views[y]
        if vy.display is None or vy.bead_scale is None or len(vy.found_det_idx) < 3:
            continue
        cx = 0 if x == "A" else 1
        ix, dx, dy = vx.patient_idx, vx.detections, vy.detections
        taken = np.zeros(len(ix), bool)
        taken[matching.pairs[:, cx]] = True
        for v, k, _ in matching.ambiguous:
            if v == x:
                taken[k] = True
        snr_x = _snr(dx)[ix]
        clear = np.flatnonzero(~taken & (snr_x >= SURE_BEAD_SNR))
        starts = np.array([rc for rc, why in dy.rejected if why in _BAND_REFUSALS])
        if len(clear) == 0 or len(starts) == 0:
            continue
        f_xy = f_ab if x == "A" else f_ab.T  # x_y^T f_xy x_x = 0
        lines = np.c_[dx.rc[ix[clear]], np.ones(len(clear))] @ f_xy.T
        lines /= np.linalg.norm(lines[:, :2], axis=1, keepdims=True)
        blur = bead_blur_range(dy.blur_px[vy.found_det_idx])
        found = fit_partners(vy.display, vy.bead_scale, starts, lines, dy.rc, blur, MIN_BEAD_SNR)
        # one bead per place: fits of several starts within a pixel are one
        # (the best kept, the first of equals)
        fits = []
        for p in sorted(found, key=lambda q: q.fit.chi):
            if all(np.hypot(*(q.fit.rc - p.fit.rc)) >= 1.0 for q in fits):
                fits.append(p)
        if not fits:
            continue
        fit_rc = np.array([p.fit.rc for p in fits])
        # the rules a detection meets as a patient candidate: its noise's bound
        # (the model's share aside, as for edge fits), off the cage markers'
        # shadows
        sp = float(np.mean(vy.geometry.detector.pixel_spacing_mm))
        usable = np.array([p.fit.sigma * sp <= MAX_BEAD_SIGMA_MM for p in fits])
        if vy.cage_shadow_px is not None:
            usable &= ~touches_cage_shadow(
                fit_rc,
                np.array([p.fit.radius for p in fits]),
                np.array([p.fit.blur for p in fits]),
                vy.predicted_rc,
                vy.cage_shadow_px,
            )
        # which of view x's candidates each fit lies within the gate of
        # (n_x, n_fits), all at once
        if x == "A":
            d_y, d_x = epipolar_distances(f_ab, dx.rc[ix], fit_rc)
            cal = epipolar_calibration_sigma(views["A"], views["B"], dx.rc[ix], fit_rc)
        else:
            d_x, d_y = (d.T for d in epipolar_distances(f_ab, fit_rc, dx.rc[ix]))
            cal = epipolar_calibration_sigma(views["A"], views["B"], fit_rc, dx.rc[ix]).T
        sigma_fit = np.array([p.sigma_px for p in fits])
        gate = EPIPOLAR_GATE_SIGMA * np.sqrt(
            dx.sigma_px[ix][:, None] ** 2 + sigma_fit[None, :] ** 2 + cal**2
        )
        within = (np.sqrt(0.5 * (d_x**2 + d_y**2)) <= gate) & usable[None, :]
        # valid[i, j]: fit i could be clear bead j's other shadow
        valid = np.zeros((len(fits), len(clear)), bool)
        for i, j in zip(*np.nonzero(within[clear].T), strict=True):
            valid[i, j] = _pair_rules(vx, vy, x, clear[j], fits[i], snr_x[clear[j]])
        # (a bead already matched, or unsure, within its gate too)
        shared = within.sum(axis=0) > 1
        new = []
        for j, k in enumerate(clear):
            cands = np.flatnonzero(valid[:, j])
            if len(cands) == 0:
                continue
            i = cands[0]
            if len(cands) == 1 and valid[i].sum() == 1 and not shared[i]:
                new.append((k, fits[i]))
            else:
                # not guessed: reported, as the contract says of beads that
                # cannot be matched without ambiguity
                # (one fit that another candidate may claim too counts as two)
                matching.ambiguous.append((x, int(k), int(max(len(cands), 2))))
        if not new:
            continue
        rows = as_detections([p for _, p in new])
        first = len(dy)
        iy = np.concatenate([vy.patient_idx, first + np.arange(len(new))])
        views[y] = replace(vy, detections=dy.appended(rows), patient_idx=iy)
        k_y = len(vy.patient_idx) + np.arange(len(new))
        k_x = np.array([k for k, _ in new])
        add = np.c_[k_x, k_y] if x == "A" else np.c_[k_y, k_x]
        matching.pairs = np.concatenate([matching.pairs.reshape(-1, 2), add]).astype(int)
        matching.pad(len(views["A"].patient_idx), len(views["B"].patient_idx))


def stereo_markers(
    views: dict[str, ViewResult], crossing_limit_mm: float = DEFAULT_LIMITS.crossing_error
) -> tuple[list[Marker], list[dict], Matching | None]:
    """Match the two views' patient candidates and triangulate them: the markers,
    the contract's ``ambiguous`` entries and the matching (None when a view is
    not calibrated).

    Partners found over metal bands (:func:`_partners_on_bands`) are added to
    the views: the dict ``views`` passed in is updated to ViewResults with
    those detections appended (the ViewResults themselves are not changed).

    A matched pair whose centres are so uncertain that its crossing distance
    could reach ``crossing_limit_mm`` within the matching gate
    (:data:`EPIPOLAR_GATE_SIGMA` standard errors) is left out: the crossing
    check is the sync check, and one bead half hidden by metal would send a
    still patient back (simulator, elbow series seed 5, follow-up 1: a bead
    3 px off in view A, sigma 0.9 px, crossing 0.37 mm). On 36 default exams
    the largest such standard error of a reported bead was 46 µm, under the
    50 µm this leaves at the contract's 0.2 mm.
    """
    markers: list[Marker] = []
    ambiguous: list[dict] = []
    matching = None
    va, vb = views["A"], views["B"]
    if va.calibration is not None and vb.calibration is not None:
        ia, ib = va.patient_idx, vb.patient_idx
        da, db = va.detections, vb.detections
        # the epipolar error of the two calibrated geometries, per pair
        cal_px = epipolar_calibration_sigma(va, vb, da.rc[ia], db.rc[ib])
        same = same_bead_size(
            va.geometry,
            np.repeat(da.rc[ia], len(ib), axis=0),
            np.repeat(da.radius_px[ia], len(ib)),
            vb.geometry,
            np.tile(db.rc[ib], (len(ia), 1)),
            np.tile(db.radius_px[ib], len(ia)),
        ).reshape(len(ia), len(ib))
        allowed = snr_allowed(_snr(da)[ia][:, None], _snr(db)[ib][None, :])
        matching = match(
            va.geometry,
            da.rc[ia],
            da.sigma_px[ia],
            vb.geometry,
            db.rc[ib],
            db.sigma_px[ib],
            calibration_px=cal_px,
            k_sigma=EPIPOLAR_GATE_SIGMA,
            compatible=same,
            allowed=allowed,
        )
        if matching.shift_px == 0.0:
            # (not for a patient who moved: the lines are not where the beads are)
            _partners_on_bands(views, matching)
            va, vb = views["A"], views["B"]
            da, db = va.detections, vb.detections
            ia, ib = va.patient_idx, vb.patient_idx
        if len(matching.pairs):
            pa = ia[matching.pairs[:, 0]]
            pb = ib[matching.pairs[:, 1]]
            xyz, crossing, sigma = triangulate_pairs(
                va.geometry, da.rc[pa], da.sigma_px[pa], vb.geometry, db.rc[pb], db.sigma_px[pb]
            )
            sure = EPIPOLAR_GATE_SIGMA * sigma <= crossing_limit_mm
            matching.unreliable = matching.pairs[~sure]
            matching.pairs = matching.pairs[sure]
            pa, pb, xyz, crossing = pa[sure], pb[sure], xyz[sure], crossing[sure]
            order = np.lexsort((da.rc[pa, 1], da.rc[pa, 0]))
            for n, i in enumerate(order, start=1):
                markers.append(
                    Marker(
                        f"M{n}",
                        xyz[i],
                        float(crossing[i]),
                        {"A": da.rc[pa[i]], "B": db.rc[pb[i]]},
                        {"A": int(pa[i]), "B": int(pb[i])},
                    )
                )
        for view, k, ncand in matching.ambiguous:
            src = va if view == "A" else vb
            rc = src.detections.rc[src.patient_idx[k]]
            ambiguous.append(
                {"image_px": {view: [float(rc[0]), float(rc[1])]}, "candidates": int(ncand)}
            )
    return markers, ambiguous, matching


def reconstruct(
    station: Station,
    cage: Cage,
    images: dict[str, RawImage],
    limits: QCLimits = DEFAULT_LIMITS,
) -> ReconstructionResult:
    """Reconstruct the patient's markers from a stereo pair.

    Parameters
    ----------
    station : Station
        Nominal geometry and tolerances.
    cage : Cage
        Calibration cage.
    images : dict
        ``{"A": RawImage, "B": RawImage}``.
    limits : QCLimits
        QC limits (CONTRACT.md defaults).

    Returns
    -------
    ReconstructionResult
        ``to_dict()`` gives the contract's JSON.
    """
    missing = [v for v in VIEW_NAMES if v not in images]
    if missing:
        raise InputError(f"images: missing view(s) {', '.join(missing)}")
    views = _analyse_views(station, cage, images)
    markers, ambiguous, matching = stereo_markers(views, limits.crossing_error)
    # the display images are not part of the result (20 MB each)
    views = {k: replace(v, display=None) for k, v in views.items()}
    checks = qc_checks(views, markers, limits)
    return ReconstructionResult(views, markers, ambiguous, checks, matching)


def qc_checks(
    views: dict[str, ViewResult], markers: list[Marker], limits: QCLimits
) -> list[QCCheck]:
    """The contract's QC checks, in its order."""
    checks = []
    for name in VIEW_NAMES:
        v = views[name]
        exp, found = v.n_expected, v.n_found
        value = found / exp if exp else None
        msg = (
            f"{found} of {exp} cage markers found"
            if exp
            else "no cage marker is expected in this image: check the view and the cage"
        )
        checks.append(at_least("cage_visibility", name, value, limits.cage_visibility, msg))
    for name in VIEW_NAMES:
        cal = views[name].calibration
        if cal is None:
            checks.append(
                at_most(
                    "calibration_residual",
                    name,
                    None,
                    limits.calibration_residual,
                    f"view {name} could not be calibrated: too few cage markers identified",
                )
            )
        else:
            checks.append(
                at_most(
                    "calibration_residual",
                    name,
                    round(float(cal.rms_px), 4),
                    limits.calibration_residual,
                    f"cage markers reproject to {cal.rms_px:.3f} px RMS",
                )
            )
    n = len(markers)
    checks.append(
        at_least(
            "marker_count",
            None,
            n,
            limits.marker_count,
            f"{n} patient marker{'s' if n != 1 else ''} seen in both views",
        )
    )
    if markers:
        worst = max(markers, key=lambda m: m.crossing_mm)
        checks.append(
            at_most(
                "crossing_error",
                None,
                round(worst.crossing_mm, 4),
                limits.crossing_error,
                f"largest crossing-line distance {worst.crossing_mm:.3f} mm (marker {worst.id})"
                + (
                    ""
                    if worst.crossing_mm <= limits.crossing_error
                    else ": the patient moved between the exposures or the tubes were not in sync"
                ),
            )
        )
    else:
        checks.append(
            at_most(
                "crossing_error",
                None,
                None,
                limits.crossing_error,
                "no marker seen in both views, so the exposures' sync cannot be checked",
            )
        )
    return checks
