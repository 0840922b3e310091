"""From a stereo pair of images to 3D bead positions and a QC verdict.

Per view: detect markers (:mod:`reconstruction.detect`), identify the cage
markers among them (:mod:`reconstruction.cage_id`), calibrate the view
(:mod:`reconstruction.calibrate`). Then the remaining blobs, minus anything
near a cage marker's shadow, are matched across the views
(:mod:`reconstruction.stereo`) and triangulated
(:mod:`reconstruction.triangulate`); the QC checks of ``CONTRACT.md`` close it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reconstruction.cage_id import Identification, identify
from reconstruction.calibrate import Calibration, PoseModel, calibrate, casts_shadow, inside_image
from reconstruction.detect import Detections, MarkerScale, detect_markers, full_display
from reconstruction.errors import InputError
from reconstruction.geometry import VIEW_NAMES, Cage, Station, ViewGeometry
from reconstruction.image import RawImage
from reconstruction.lightweight import linear_sum_assignment, neighbours_within
from reconstruction.qc import DEFAULT_LIMITS, QCCheck, QCLimits, at_least, at_most, verdict
from reconstruction.stereo import Matching, match
from reconstruction.triangulate import midpoint

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

    @property
    def n_expected(self) -> int:
        return int(self.expected.sum())

    @property
    def n_found(self) -> int:
        return int(self.expected[self.found_marker_idx].sum())

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
    expected = casts_shadow(geometry, xyz) & inside_image(
        pred, geometry.detector, EXPECTED_MARGIN_PX
    )
    residual = det.rc[dk] - pred[mk] if len(mk) else np.zeros((0, 2))

    # patient bead candidates: not a cage marker, not touching any cage marker's shadow
    is_cage = np.zeros(len(det), bool)
    is_cage[dk] = True
    keep = ~is_cage
    shadow_ok = casts_shadow(geometry, xyz) & np.all(np.isfinite(pred), axis=1)
    if shadow_ok.any() and len(det):
        r_cage = shadow_radii_px(geometry, xyz, cage_diameters(cage))[shadow_ok]
        d = np.linalg.norm(det.rc[:, None, :] - pred[shadow_ok][None, :, :], axis=2)
        touching = d < (r_cage[None, :] + det.radius_px[:, None] + 2 * det.blur_px[:, None] + 1)
        keep &= ~touching.any(axis=1)
    # Patient beads are spheres of known range of sizes, imaged with the same
    # blur as the cage markers (the focal spot's penumbra grows with
    # magnification, hence the wide band): blobs of texture or noise rarely
    # have both the size and the sharpness of one.
    if len(dk) >= 3 and keep.any():
        s_ref = float(np.median(det.blur_px[dk]))
        mag = magnification(geometry, xyz[shadow_ok]) if shadow_ok.any() else np.ones(1)
        sp = float(np.mean(geometry.detector.pixel_spacing_mm))
        r_lo = 0.5 * BEAD_DIAMETERS_MM[0] * float(mag.min()) / sp
        r_hi = 0.5 * BEAD_DIAMETERS_MM[1] * float(mag.max()) / sp
        keep &= (det.blur_px >= 0.5 * s_ref) & (det.blur_px <= 2.0 * s_ref + 0.5)
        keep &= (det.radius_px >= 0.7 * r_lo) & (det.radius_px <= 1.3 * r_hi)
    # With hundreds of blobs of bone texture and noise in an image, a patient
    # bead must stand out more than a cage marker, whose position the
    # identification already predicts: a stricter matched-filter SNR.
    keep &= _snr(det) >= MIN_BEAD_SNR
    # a bead whose centre is this uncertain would be placed tens of µm off in
    # 3D and widens the epipolar gate enough to pair with texture: not reported
    sp = float(np.mean(geometry.detector.pixel_spacing_mm))
    keep &= det.sigma_px * sp <= MAX_BEAD_SIGMA_MM
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
    )


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
    markers: list[Marker] = []
    ambiguous: list[dict] = []
    matching = None
    va, vb = views["A"], views["B"]
    if va.calibration is not None and vb.calibration is not None:
        ia, ib = va.patient_idx, vb.patient_idx
        da, db = va.detections, vb.detections
        cal_px = float(np.hypot(va.calibration.rms_px, vb.calibration.rms_px))
        # one sphere has one diameter: its two shadows, each divided by its
        # magnification at the triangulated point, must agree
        xyz_all, _ = midpoint(
            va.geometry,
            np.repeat(da.rc[ia], len(ib), axis=0),
            vb.geometry,
            np.tile(db.rc[ib], (len(ia), 1)),
        )
        d_a = bead_diameter_mm(va.geometry, xyz_all, np.repeat(da.radius_px[ia], len(ib)))
        d_b = bead_diameter_mm(vb.geometry, xyz_all, np.tile(db.radius_px[ib], len(ia)))
        # ... and be a bead's diameter (within the fit's size error)
        lo, hi = 0.8 * BEAD_DIAMETERS_MM[0], 1.25 * BEAD_DIAMETERS_MM[1]
        sized = (d_a >= lo) & (d_a <= hi) & (d_b >= lo) & (d_b <= hi)
        same = (np.abs(d_a - d_b) <= 0.3 * np.maximum(d_a, d_b) + 0.05) & sized
        same = same.reshape(len(ia), len(ib))
        # one opaque sphere is a strong shadow in both views or in neither: a
        # crisp bead in one view does not pair with a barely significant blob
        # (its true shadow hidden by metal) in the other
        snr_a = _snr(da)[ia]
        snr_b = _snr(db)[ib]
        ratio = np.maximum(snr_a[:, None] / snr_b[None, :], snr_b[None, :] / snr_a[:, None])
        weaker = np.minimum(snr_a[:, None], snr_b[None, :])
        allowed = (ratio <= MAX_SNR_RATIO) | (weaker >= SURE_BEAD_SNR)
        matching = match(
            va.geometry,
            da.rc[ia],
            da.sigma_px[ia],
            vb.geometry,
            db.rc[ib],
            db.sigma_px[ib],
            calibration_px=cal_px,
            compatible=same,
            allowed=allowed,
        )
        if len(matching.pairs):
            pa = ia[matching.pairs[:, 0]]
            pb = ib[matching.pairs[:, 1]]
            xyz, crossing = midpoint(va.geometry, da.rc[pa], vb.geometry, db.rc[pb])
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
