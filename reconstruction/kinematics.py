"""Kinematic series: each segment's pose in a sequence of stereo exams.

A series of exams of one joint (a knee at several flexion angles, a spine in
flexion and extension) with the cage, hence the frame, fixed: the pose of each
segment in frame i relative to frame 0 is its rigid fit from frame 0 to frame i
(:mod:`reconstruction.migration`, consistent-marker method by default), and the
relative motion of the moving segment with respect to the reference segment is
the migration between frame 0 and frame i. The segment file gives the markers'
approximate positions in frame 0.
"""

from __future__ import annotations

import numpy as np

from reconstruction.errors import InputError
from reconstruction.migration import Motion, migrate_parsed, parse_result, parse_segments
from reconstruction.qc import DEFAULT_LIMITS, QCLimits, verdict
from reconstruction.segments import label_reference


def kinematic_series(
    segments: dict,
    results: list[dict],
    *,
    method: str = "consistent-marker",
    limits: QCLimits = DEFAULT_LIMITS,
) -> dict:
    """Pose of each segment per frame relative to the first frame.

    Parameters
    ----------
    segments : dict
        The contract's segment file, positions in frame 0's coordinates.
    results : list of dict
        Reconstruction results of the frames, in order; ``results[0]`` is the
        reference frame.
    method, limits
        As for :func:`reconstruction.migration.migrate`.

    Returns
    -------
    dict
        ``{"method", "reference_segment", "moving_segment", "frames": [...]}``;
        frame i has ``"segments"``: for each segment ``markers_matched``,
        ``mean_error_mm``, ``condition_number`` and its ``pose`` (null with
        fewer than 3 markers): ``translation_mm`` of its segment-file centroid,
        ``rotation_deg`` (fixed x, y, z), ``matrix`` (4 x 4, frame 0 -> frame i,
        cage frame); ``"motion"``: the moving segment relative to the reference
        segment, as in a migration result; and ``"qc"``.
    """
    definition = parse_segments(segments)
    if not isinstance(results, list) or not results:
        raise InputError("kinematic series: expected a non-empty list of reconstruction results")
    exams = [parse_result(r, f"frame {i}") for i, r in enumerate(results)]
    ref_matches = label_reference(definition, exams[0])
    frames = []
    for i, exam in enumerate(exams):
        mig = migrate_parsed(
            definition, exams[0], exam, method=method, limits=limits, ref_matches=ref_matches
        )
        segs = {}
        for name, fit in mig.segments.items():
            pose = None
            if fit.motion is not None:
                m = Motion.of(name, "cage", fit.motion, definition.positions[name])
                pose = {
                    "translation_mm": m.translation_mm.tolist(),
                    "rotation_deg": m.rotation_deg.tolist(),
                    "matrix": fit.motion.matrix().tolist(),
                }
            segs[name] = {
                "markers_matched": fit.markers_matched,
                "mean_error_mm": fit.mean_error_mm,
                "condition_number": (
                    float(fit.condition_number) if np.isfinite(fit.condition_number) else None
                ),
                "pose": pose,
            }
        frames.append(
            {
                "frame": i,
                "segments": segs,
                "motion": None if mig.motion is None else mig.motion.to_dict(),
                "qc": verdict(mig.checks),
            }
        )
    return {
        "method": method,
        "reference_segment": definition.reference_segment,
        "moving_segment": definition.moving_segment,
        "frames": frames,
    }
