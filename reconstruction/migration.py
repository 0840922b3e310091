"""Migration of an implant relative to its bone between two RSA examinations.

Definitions follow ``CONTRACT.md`` ("Migration result"), which follows ISO
16087:2013 and the RSA guideline of Kaptein et al. (Acta Orthop 2024):

1. Each segment's markers are found in both exams by their rigid distance
   pattern (:mod:`reconstruction.segments`); loose beads are excluded.
2. Each segment is fitted from the reference to the follow-up exam
   (:func:`reconstruction.rigid.fit_rigid`); its mean error (ME) and the
   condition number (CN) of its reference markers are reported.
3. The follow-up is brought onto the reference segment by the reference
   segment's fit; the moving segment's motion ``(R, t)`` is then its fit from
   the reference exam to that corrected follow-up, i.e.
   ``T = T_ref⁻¹ ∘ T_moving`` in the reference exam's frame.
4. ``rotation_deg`` = ``R`` as fixed-axis x, y, z rotations;
   ``translation_mm`` = ``R c + t - c`` for the centroid ``c`` of the moving
   segment's markers as listed in the segment file; ``mtpm_mm`` = the largest
   ``|R p + t - p|`` over those markers.

Methods
-------
``consistent-marker`` (default): each segment is fitted on the markers found in
both exams (and not loose) only.

``all-marker``: each segment's pose in each exam is fitted from a rigid-body
model of the segment on *all* its markers found in that exam, and the motion
is ``T_fu ∘ T_ref⁻¹``. The model is the marker positions measured in the
reference exam, completed, for markers not seen there, by their segment-file
positions carried by the reference fit (accurate only to the segment file's
0.5 mm). ``markers_matched`` is then the smaller of the two exams' counts, ME
that of the follow-up fit (the reference fit is exact: the model is the
reference measurement), CN that of the model markers seen in the reference
exam.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reconstruction.errors import InputError
from reconstruction.qc import DEFAULT_LIMITS, QCCheck, QCLimits, at_least, at_most, verdict
from reconstruction.rigid import (
    RigidMotion,
    condition_number,
    fit_rigid,
    helical_axis,
    residuals,
)
from reconstruction.segments import (
    DEFAULT_TOLERANCES,
    ExamMarkers,
    MatchTolerances,
    PatternMatch,
    SegmentDefinition,
    SegmentLabels,
    label_followup,
    label_reference,
)

METHODS = ("consistent-marker", "all-marker")


def _finite(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


@dataclass
class SegmentFit:
    """One segment's fit between the two exams.

    Attributes
    ----------
    name : str
    labels : SegmentLabels
    markers_matched : int
        Markers the fit used (see the module's "Methods").
    motion : RigidMotion or None
        Reference -> follow-up motion of the segment (None with < 3 markers).
    mean_error_mm : float or None
    condition_number : float
        ``inf`` when fewer than 3 or collinear markers.
    residuals_mm : ndarray
        Residual of each marker used, ``|R p_i + t - q_i|``.
    """

    name: str
    labels: SegmentLabels
    markers_matched: int
    motion: RigidMotion | None
    mean_error_mm: float | None
    condition_number: float
    residuals_mm: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def to_dict(self, reference: ExamMarkers, followup: ExamMarkers) -> dict:
        lab = self.labels
        excluded = []
        for i in np.flatnonzero(lab.loose):
            excluded.append(
                {
                    "marker": int(i),
                    "reason": "loose",
                    "reference_id": reference.ids[lab.ref_index[i]],
                    "followup_id": followup.ids[lab.fu_index[i]],
                    "distance_change_mm": _finite(lab.change_mm[i]),
                    "displacement_mm": _finite(lab.displacement_mm[i]),
                }
            )

        def ids(idx: np.ndarray, exam: ExamMarkers) -> list[str | None]:
            return [exam.ids[j] if j >= 0 else None for j in idx]

        return {
            "markers_matched": self.markers_matched,
            "mean_error_mm": _finite(self.mean_error_mm),
            "condition_number": _finite(self.condition_number),
            "markers_defined": len(lab.template),
            "reference_ids": ids(lab.ref_index, reference),
            "followup_ids": ids(lab.fu_index, followup),
            "missing": {
                "reference": np.flatnonzero(lab.ref_index < 0).tolist(),
                "followup": np.flatnonzero(lab.fu_index < 0).tolist(),
            },
            "excluded": excluded,
            "residuals_mm": [float(r) for r in self.residuals_mm],
        }


@dataclass
class Motion:
    """Motion of the moving segment relative to the reference segment (CONTRACT.md)."""

    segment: str
    relative_to: str
    motion: RigidMotion
    centroid: np.ndarray
    translation_mm: np.ndarray
    rotation_deg: np.ndarray
    mtpm_mm: float
    mtpm_marker: int

    @staticmethod
    def of(segment: str, relative_to: str, motion: RigidMotion, points: np.ndarray) -> Motion:
        """Contract quantities of ``motion`` for the segment-file ``points`` of ``segment``."""
        c = points.mean(axis=0)
        disp = np.linalg.norm(motion.apply(points) - points, axis=1)
        return Motion(
            segment,
            relative_to,
            motion,
            c,
            motion.apply(c) - c,
            motion.rotation_deg(),
            float(disp.max()),
            int(np.argmax(disp)),
        )

    def to_dict(self) -> dict:
        return {
            "segment": self.segment,
            "relative_to": self.relative_to,
            "translation_mm": self.translation_mm.tolist(),
            "rotation_deg": self.rotation_deg.tolist(),
            "mtpm_mm": self.mtpm_mm,
            "mtpm_marker": self.mtpm_marker,
            "centroid_mm": self.centroid.tolist(),
            "matrix": self.motion.matrix().tolist(),
            "helical_axis": helical_axis(self.motion, self.centroid).to_dict(),
        }


@dataclass
class MigrationResult:
    """The contract's migration result; :meth:`to_dict` gives its JSON."""

    method: str
    reference_segment: str
    moving_segment: str
    segments: dict[str, SegmentFit]
    motion: Motion | None
    checks: list[QCCheck]
    reference: ExamMarkers
    followup: ExamMarkers

    @property
    def verdict(self) -> str:
        return verdict(self.checks)["verdict"]

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "segments": {
                name: fit.to_dict(self.reference, self.followup)
                for name, fit in self.segments.items()
            },
            "motion": None if self.motion is None else self.motion.to_dict(),
            "qc": verdict(self.checks),
            "input_verdicts": {
                "reference": self.reference.verdict,
                "followup": self.followup.verdict,
            },
            "labelling": next(iter(self.segments.values())).labels.thresholds,
        }


# -------------------------------------------------------------------------- fits


def _fit_consistent(
    lab: SegmentLabels, reference: ExamMarkers, followup: ExamMarkers
) -> SegmentFit:
    use = lab.consistent
    n = int(use.sum())
    p = reference.xyz[lab.ref_index[use]]
    q = followup.xyz[lab.fu_index[use]]
    cn = condition_number(p)
    if n < 3:
        return SegmentFit(lab.name, lab, n, None, None, cn)
    motion = fit_rigid(p, q)
    res = residuals(motion, p, q)
    return SegmentFit(lab.name, lab, n, motion, float(res.mean()), cn, res)


def _fit_all(
    lab: SegmentLabels, ref_match: PatternMatch, reference: ExamMarkers, followup: ExamMarkers
) -> SegmentFit:
    seen_r = lab.ref_index >= 0
    seen_f = (lab.fu_index >= 0) & ~lab.loose
    model = lab.template.copy()
    if seen_r.sum() >= 3:
        model[~seen_r] = ref_match.motion.apply(lab.template[~seen_r])
        model[seen_r] = reference.xyz[lab.ref_index[seen_r]]
    n = int(min(seen_r.sum(), seen_f.sum()))
    cn = condition_number(model[seen_r])
    if n < 3:
        return SegmentFit(lab.name, lab, n, None, None, cn)
    pose_r = fit_rigid(model[seen_r], reference.xyz[lab.ref_index[seen_r]])
    pose_f = fit_rigid(model[seen_f], followup.xyz[lab.fu_index[seen_f]])
    # The model is the reference measurement, so the reference fit is exact:
    # ME is that of the follow-up fit (averaging in the zeros would flatter it).
    res = residuals(pose_f, model[seen_f], followup.xyz[lab.fu_index[seen_f]])
    motion = pose_f.compose(pose_r.inverse())
    return SegmentFit(lab.name, lab, n, motion, float(res.mean()), cn, res)


def _checks(fits: dict[str, SegmentFit], names: tuple[str, str], limits: QCLimits) -> list[QCCheck]:
    seg = [fits[n] for n in names]
    fewest = min(seg, key=lambda f: f.markers_matched)
    checks = [
        at_least(
            "segment_markers",
            None,
            fewest.markers_matched,
            limits.segment_markers,
            f"{fewest.markers_matched} markers matched in segment {fewest.name!r} "
            f"(at least {limits.segment_markers} needed)",
        )
    ]
    if any(f.mean_error_mm is None for f in seg):
        bad = next(f for f in seg if f.mean_error_mm is None)
        checks.append(
            at_most(
                "mean_error",
                None,
                None,
                limits.mean_error,
                f"mean error of segment {bad.name!r} cannot be computed (too few markers)",
            )
        )
    else:
        worst = max(seg, key=lambda f: f.mean_error_mm)
        checks.append(
            at_most(
                "mean_error",
                None,
                worst.mean_error_mm,
                limits.mean_error,
                f"largest mean error {worst.mean_error_mm:.3f} mm in segment {worst.name!r} "
                f"(limit {limits.mean_error} mm)",
            )
        )
    worst = max(seg, key=lambda f: f.condition_number)
    cn = _finite(worst.condition_number)
    checks.append(
        at_most(
            "condition_number",
            None,
            cn,
            limits.condition_number,
            (
                f"largest condition number {cn:.1f} in segment {worst.name!r} "
                f"(limit {limits.condition_number:g})"
                if cn is not None
                else f"segment {worst.name!r} has fewer than 3 or collinear markers: "
                "condition number infinite"
            ),
        )
    )
    return checks


def migrate_parsed(
    definition: SegmentDefinition,
    reference: ExamMarkers,
    followup: ExamMarkers,
    *,
    method: str = "consistent-marker",
    limits: QCLimits = DEFAULT_LIMITS,
    tolerances: MatchTolerances = DEFAULT_TOLERANCES,
    ref_matches: dict[str, PatternMatch] | None = None,
) -> MigrationResult:
    """:func:`migrate` on parsed inputs (``ref_matches`` reuses a reference labelling)."""
    if method not in METHODS:
        raise InputError(f"unknown migration method {method!r} (expected one of {METHODS})")
    if ref_matches is None:
        ref_matches = label_reference(definition, reference, tolerances)
    labels = label_followup(definition, reference, ref_matches, followup, tolerances)
    fits: dict[str, SegmentFit] = {}
    for name, lab in labels.items():
        if method == "consistent-marker":
            fits[name] = _fit_consistent(lab, reference, followup)
        else:
            fits[name] = _fit_all(lab, ref_matches[name], reference, followup)
    ref_name, mov_name = definition.reference_segment, definition.moving_segment
    motion = None
    t_ref, t_mov = fits[ref_name].motion, fits[mov_name].motion
    # CONTRACT.md: no motion with fewer than 3 markers in a segment (a tighter
    # site limit only changes the verdict).
    if t_ref is not None and t_mov is not None:
        relative = t_ref.inverse().compose(t_mov)
        motion = Motion.of(mov_name, ref_name, relative, definition.positions[mov_name])
    checks = _checks(fits, (ref_name, mov_name), limits)
    return MigrationResult(method, ref_name, mov_name, fits, motion, checks, reference, followup)


def migrate(
    segments: dict,
    reference: dict,
    followup: dict,
    *,
    method: str = "consistent-marker",
    limits: QCLimits = DEFAULT_LIMITS,
) -> MigrationResult:
    """Migration of the moving segment relative to the reference segment.

    Parameters
    ----------
    segments : dict
        The contract's segment file.
    reference, followup : dict
        The contract's reconstruction results of the two exams.
    method : {"consistent-marker", "all-marker"}
    limits : QCLimits

    Returns
    -------
    MigrationResult
        ``.to_dict()`` is the contract's migration JSON. With fewer than
        ``limits.segment_markers`` markers in a segment, ``motion`` is None and
        the verdict ``retake``.

    Raises
    ------
    InputError
        An input is not of the expected kind (one line naming it and the problem).
    """
    return migrate_parsed(
        parse_segments(segments),
        parse_result(reference, "reference result"),
        parse_result(followup, "follow-up result"),
        method=method,
        limits=limits,
    )


def parse_segments(d: Any, what: str = "segment file") -> SegmentDefinition:
    """Validate a segment file dict (InputError naming ``what`` otherwise)."""
    try:
        return SegmentDefinition.from_dict(d)
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from None


def parse_result(d: Any, what: str = "reconstruction result") -> ExamMarkers:
    """Validate a reconstruction result dict (InputError naming ``what`` otherwise)."""
    try:
        return ExamMarkers.from_dict(d)
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from None
