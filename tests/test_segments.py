"""Labelling of segment markers across examinations by their rigid distance pattern."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from reconstruction.errors import InputError
from reconstruction.segments import (
    ExamMarkers,
    SegmentDefinition,
    consistent_core,
    label_followup,
    label_reference,
    match_pattern,
)

NOISE_MM = 0.015  # reconstructed marker noise per coordinate


def _beads(rng, n, spread, centre, min_gap=4.0):
    pts = []
    while len(pts) < n:
        p = rng.normal(0, spread, 3) + centre
        if all(np.linalg.norm(p - q) >= min_gap for q in pts):
            pts.append(p)
    return np.array(pts)


def _template(rng, truth):
    """Segment-file positions: within 0.5 mm of the truth (CONTRACT.md)."""
    d = rng.normal(size=truth.shape)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return truth + d * rng.uniform(0, 0.45, (len(truth), 1))


def _case(seed, *, strays=3):
    rng = np.random.default_rng(seed)
    bone = _beads(rng, 8, 15, np.array([0.0, 0.0, 40.0]))
    implant = _beads(rng, 6, 10, np.array([5.0, 10.0, 75.0]))
    reposition = Rotation.from_rotvec(rng.normal(size=3) / np.sqrt(3) * np.radians(35))
    shift = rng.uniform(-50, 50, 3)
    extra = rng.normal(0, 25, (strays, 3)) + np.array([0.0, 0.0, 60.0])
    return rng, bone, implant, reposition, shift, extra


def _exam(rng, pts):
    """A reconstruction result with the points shuffled and noisy; returns (exam, order)."""
    order = rng.permutation(len(pts))
    noisy = pts[order] + rng.normal(0, NOISE_MM, (len(pts), 3))
    return ExamMarkers([f"M{i}" for i in range(len(pts))], noisy), order


def _definition(rng, bone, implant):
    return SegmentDefinition(
        "bone", "implant", {"bone": _template(rng, bone), "implant": _template(rng, implant)}
    )


def _truth_index(order, n_before, k):
    """Exam index of original point n_before + i for i < k (-1 when absent)."""
    inv = {int(o): i for i, o in enumerate(order)}
    return np.array([inv.get(n_before + i, -1) for i in range(k)])


@pytest.mark.parametrize("seed", range(8))
def test_labels_every_marker_despite_repositioning_and_strays(seed):
    rng, bone, implant, rot, shift, extra = _case(seed)
    ref_pts = np.vstack([bone, implant, extra[:1]])
    fu_pts = np.vstack([rot.apply(np.vstack([bone, implant])) + shift, extra[1:]])
    ref, ref_order = _exam(rng, ref_pts)
    fu, fu_order = _exam(rng, fu_pts)
    definition = _definition(rng, bone, implant)
    rm = label_reference(definition, ref)
    np.testing.assert_array_equal(rm["bone"].index, _truth_index(ref_order, 0, 8))
    np.testing.assert_array_equal(rm["implant"].index, _truth_index(ref_order, 8, 6))
    labels = label_followup(definition, ref, rm, fu)
    np.testing.assert_array_equal(labels["bone"].fu_index, _truth_index(fu_order, 0, 8))
    np.testing.assert_array_equal(labels["implant"].fu_index, _truth_index(fu_order, 8, 6))
    assert not labels["bone"].loose.any() and not labels["implant"].loose.any()


@pytest.mark.parametrize("seed", range(6))
def test_missing_markers_in_either_exam(seed):
    rng, bone, implant, rot, shift, extra = _case(seed)
    ref_keep = [i for i in range(14) if i not in (2, 10)]  # bone 2, implant 2 hidden at ref
    fu_keep = [i for i in range(14) if i not in (0, 5, 12)]  # bone 0, 5, implant 4 at follow-up
    allpts = np.vstack([bone, implant])
    ref_pts = np.vstack([allpts[ref_keep], extra])
    fu_pts = np.vstack([rot.apply(allpts[fu_keep]) + shift, extra[:2] + 3.0])
    ref, ref_order = _exam(rng, ref_pts)
    fu, fu_order = _exam(rng, fu_pts)
    definition = _definition(rng, bone, implant)
    rm = label_reference(definition, ref)
    labels = label_followup(definition, ref, rm, fu)

    def expected(keep, order, lo, k):
        pos = {orig: i for i, orig in enumerate(keep)}
        inv = {int(o): i for i, o in enumerate(order)}
        return np.array([inv[pos[lo + j]] if lo + j in pos else -1 for j in range(k)])

    np.testing.assert_array_equal(labels["bone"].ref_index, expected(ref_keep, ref_order, 0, 8))
    np.testing.assert_array_equal(labels["implant"].ref_index, expected(ref_keep, ref_order, 8, 6))
    np.testing.assert_array_equal(labels["bone"].fu_index, expected(fu_keep, fu_order, 0, 8))
    np.testing.assert_array_equal(labels["implant"].fu_index, expected(fu_keep, fu_order, 8, 6))
    assert labels["bone"].consistent.sum() == 5 and labels["implant"].consistent.sum() == 4


@pytest.mark.parametrize("move_mm", [0.5, 1.0, 1.8])
def test_loose_bead_is_found_and_excluded(move_mm):
    rng, bone, implant, rot, shift, extra = _case(11)
    moved = implant.copy()
    direction = rng.normal(size=3)
    moved[3] += move_mm * direction / np.linalg.norm(direction)
    ref, _ = _exam(rng, np.vstack([bone, implant, extra]))
    fu, fu_order = _exam(rng, np.vstack([rot.apply(np.vstack([bone, moved])) + shift]))
    definition = _definition(rng, bone, implant)
    labels = label_followup(definition, ref, label_reference(definition, ref), fu)
    imp = labels["implant"]
    np.testing.assert_array_equal(imp.fu_index, _truth_index(fu_order, 8, 6))
    assert imp.loose.tolist() == [False, False, False, True, False, False]
    assert imp.consistent.sum() == 5
    # The reported change is of the order of the bead's motion.
    assert 0.25 * move_mm < imp.change_mm[3] <= move_mm + 0.1
    assert not labels["bone"].loose.any()


def test_small_distance_changes_are_noise_not_loose_beads():
    rng, bone, implant, rot, shift, _ = _case(12)
    moved = implant.copy()
    moved[1] += [0.08, 0.0, 0.0]  # below the 0.25 mm threshold
    ref, _ = _exam(rng, np.vstack([bone, implant]))
    fu, _ = _exam(rng, rot.apply(np.vstack([bone, moved])) + shift)
    definition = _definition(rng, bone, implant)
    labels = label_followup(definition, ref, label_reference(definition, ref), fu)
    assert not labels["implant"].loose.any() and labels["implant"].consistent.sum() == 6


def test_bead_that_moved_far_counts_as_missing():
    rng, bone, implant, rot, shift, _ = _case(13)
    moved = implant.copy()
    moved[0] += [6.0, 0.0, 0.0]
    ref, _ = _exam(rng, np.vstack([bone, implant]))
    fu, _ = _exam(rng, rot.apply(np.vstack([bone, moved])) + shift)
    definition = _definition(rng, bone, implant)
    labels = label_followup(definition, ref, label_reference(definition, ref), fu)
    imp = labels["implant"]
    assert imp.fu_index[0] == -1 and not imp.loose.any() and imp.consistent.sum() == 5


def test_consistent_core_with_three_markers_and_one_loose():
    ref = np.array([[0.0, 0, 0], [10, 0, 0], [0, 12, 0]])
    fu = ref.copy()
    fu[2] += [0, 1.0, 0]  # along the line to marker 0: that distance grows by 1 mm
    keep, change, _ = consistent_core(ref, fu, 0.25)
    assert keep.tolist() == [True, True, False]
    assert change[2] > 0.25 and change[0] < 0.25


def test_consistent_core_keeps_largest_agreeing_set():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 10, (7, 3))
    fu = ref.copy()
    fu[[1, 4]] += rng.normal(0, 1, (2, 3)) + 1.0
    keep, _, _ = consistent_core(ref, fu, 0.25)
    assert keep.tolist() == [True, False, True, True, False, True, True]


def test_bead_moving_across_its_mates_is_caught_by_the_fit():
    # Marker 4 moves 0.6 mm normal to the plane of the others: its distances to
    # them change by < 0.02 mm, far under the threshold, but no rigid motion
    # of the segment explains its new place.
    ref = np.array([[0.0, 0, 0], [20, 0, 0], [0, 20, 0], [20, 20, 0], [10, 10, 0]])
    fu = ref.copy()
    fu[4] += [0, 0, 0.6]
    dd = np.abs(np.linalg.norm(ref[4] - ref[:4], axis=1) - np.linalg.norm(fu[4] - fu[:4], axis=1))
    assert dd.max() < 0.02
    keep, _, disp = consistent_core(ref, fu, 0.25)
    assert keep.tolist() == [True, True, True, True, False]
    assert disp[4] == pytest.approx(0.6, abs=1e-9)


def test_too_few_markers_gives_no_match():
    pm = match_pattern(np.eye(3)[:2] * 10, np.eye(3) * 10, dist_tol=0.5, radius=0.5)
    assert pm.count == 0


def test_pattern_not_present_gives_no_match():
    rng = np.random.default_rng(2)
    model = rng.normal(0, 10, (5, 3))
    scene = rng.normal(0, 10, (8, 3)) * 1.7  # a different pattern
    pm = match_pattern(model, scene, dist_tol=0.2, radius=0.2)
    assert pm.count == 0 or pm.count < 3


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ([], "expected a JSON object"),
        ({"moving_segment": "a", "segments": {}}, "reference_segment"),
        ({"reference_segment": "a", "moving_segment": "a", "segments": {}}, "both"),
        ({"reference_segment": "a", "moving_segment": "b", "segments": {"a": []}}, "'b'"),
        (
            {"reference_segment": "a", "moving_segment": "b", "segments": {"a": [], "b": [[1, 2]]}},
            "segments.b[0]",
        ),
        (
            {"reference_segment": "a", "moving_segment": "b", "segments": {"a": [], "b": "x"}},
            "segments.b",
        ),
    ],
)
def test_segment_file_errors_name_the_problem(data, fragment):
    with pytest.raises(InputError, match=None) as exc:
        SegmentDefinition.from_dict(data)
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"views": {}}, "markers"),
        ({"markers": {}}, "markers"),
        ({"markers": [{"id": "M1"}]}, "markers[0]"),
        ({"markers": [{"id": "M1", "xyz_mm": [1, 2, "x"]}]}, "markers[0].xyz_mm"),
        ({"markers": [{"id": "M1", "xyz_mm": [1, 2, float("nan")]}]}, "finite"),
    ],
)
def test_result_errors_name_the_problem(data, fragment):
    with pytest.raises(InputError) as exc:
        ExamMarkers.from_dict(data)
    assert fragment in str(exc.value)


def test_random_cases_with_missing_stray_and_loose_beads():
    """Seeded batch: every segment with >= 3 consistent beads labelled right, loose bead out."""
    for seed in range(40):
        rng, bone, implant, rot, shift, extra = _case(7000 + seed, strays=8)
        allpts = np.vstack([bone, implant])
        moved = allpts.copy()
        loose = int(rng.integers(0, 14))
        v = rng.normal(size=3)
        moved[loose] += rng.uniform(0.7, 1.8) * v / np.linalg.norm(v)
        ref_keep = [i for i in range(14) if rng.random() > 0.1]
        fu_keep = [i for i in range(14) if rng.random() > 0.1]
        ref, ro = _exam(rng, np.vstack([allpts[ref_keep], extra[:4]]))
        fu, fo = _exam(rng, np.vstack([rot.apply(moved[fu_keep]) + shift, extra[4:]]))
        definition = _definition(rng, bone, implant)
        labels = label_followup(definition, ref, label_reference(definition, ref), fu)
        for name, lo, k in (("bone", 0, 8), ("implant", 8, 6)):
            pos_r = {o: i for i, o in enumerate(ref_keep)}
            pos_f = {o: i for i, o in enumerate(fu_keep)}
            inv_r = {int(o): i for i, o in enumerate(ro)}
            inv_f = {int(o): i for i, o in enumerate(fo)}
            want_r = np.array([inv_r[pos_r[lo + j]] if lo + j in pos_r else -1 for j in range(k)])
            want_f = np.array([inv_f[pos_f[lo + j]] if lo + j in pos_f else -1 for j in range(k)])
            want = (want_r >= 0) & (want_f >= 0)
            if lo <= loose < lo + k:
                want[loose - lo] = False
            if want.sum() < 3:
                continue
            lab = labels[name]
            assert np.array_equal(lab.consistent, want), (seed, name)
            assert np.array_equal(lab.ref_index[want], want_r[want]), (seed, name)
            assert np.array_equal(lab.fu_index[want], want_f[want]), (seed, name)
