"""Kinematic series: segment poses per frame relative to the first frame."""

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from reconstruction.errors import InputError
from reconstruction.kinematics import kinematic_series


def _beads(rng, n, spread, centre, min_gap=4.0):
    pts = []
    while len(pts) < n:
        p = rng.normal(0, spread, 3) + centre
        if all(np.linalg.norm(p - q) >= min_gap for q in pts):
            pts.append(p)
    return np.array(pts)


def _result(rng, pts):
    order = rng.permutation(len(pts))
    return {"markers": [{"id": f"M{j}", "xyz_mm": pts[i].tolist()} for j, i in enumerate(order)]}


def test_knee_flexion_series():
    rng = np.random.default_rng(0)
    femur = _beads(rng, 7, 12, np.array([0.0, 0.0, 30.0]))
    tibia = _beads(rng, 6, 12, np.array([0.0, 0.0, -30.0]))
    knee_centre = np.array([0.0, 0.0, 0.0])
    flexion = [0.0, 30.0, 60.0, 90.0]
    # The femur also drifts a little in the cage between frames.
    femur_drift = [Rotation.from_euler("xyz", [0, 0, z], degrees=True) for z in (0, 2, -3, 5)]
    femur_shift = [np.zeros(3), np.array([1.0, 0, 0]), np.array([0, 2.0, 0]), np.array([0, 0, 3.0])]
    segments = {
        "reference_segment": "femur",
        "moving_segment": "tibia",
        "segments": {"femur": femur.tolist(), "tibia": tibia.tolist()},
    }
    results, truth = [], []
    for f, drift, shift in zip(flexion, femur_drift, femur_shift, strict=True):
        flex = Rotation.from_euler("x", f, degrees=True)
        tib = flex.apply(tibia - knee_centre) + knee_centre  # relative to femur
        pts = drift.apply(np.vstack([femur, tib])) + shift
        results.append(_result(rng, pts))
        truth.append((drift, shift, flex))
    series = kinematic_series(segments, results)
    json.dumps(series, allow_nan=False)
    assert [fr["frame"] for fr in series["frames"]] == [0, 1, 2, 3]
    for fr, (drift, shift, flex) in zip(series["frames"], truth, strict=True):
        pose = fr["segments"]["femur"]["pose"]
        np.testing.assert_allclose(np.array(pose["matrix"])[:3, :3], drift.as_matrix(), atol=1e-9)
        np.testing.assert_allclose(np.array(pose["matrix"])[:3, 3], shift, atol=1e-9)
        # Tibia pose in the cage: drift ∘ flexion.
        tib = np.array(fr["segments"]["tibia"]["pose"]["matrix"])
        np.testing.assert_allclose(tib[:3, :3], (drift * flex).as_matrix(), atol=1e-9)
        # Relative motion: the flexion itself, about x.
        np.testing.assert_allclose(
            fr["motion"]["rotation_deg"], flex.as_euler("xyz", degrees=True), atol=1e-9
        )
        assert fr["segments"]["tibia"]["markers_matched"] == 6
        assert fr["qc"]["verdict"] == "pass"


def test_series_needs_results():
    seg = {"reference_segment": "a", "moving_segment": "b", "segments": {"a": [], "b": []}}
    with pytest.raises(InputError):
        kinematic_series(seg, [])
    with pytest.raises(InputError, match="frame 1"):
        kinematic_series(seg, [{"markers": []}, {"nope": 1}])
