"""Migration on the simulator's exam series (simulator.series) with known implant migration.

Two sources of marker positions:

- the simulator's true bead positions (hard tests): the migration and the
  simulator's recorded truth are computed independently from the contract's
  definitions, so they must agree to rounding, through large patient
  repositioning, hidden beads and the shuffled order of a reconstruction;
- the reconstruction pipeline on the rendered images: every marker the
  migration uses must be the right bead (hard), and the accuracy is guarded at
  twice the issue's goal (translation <= 20 µm; rotation <= 0.05° for CN <= 60),
  which the pipeline does not reach yet on this series (docs/benchmarks.md,
  "Migration (issue 6)").
"""

from __future__ import annotations

import numpy as np
import pytest

from reconstruction.migration import migrate

series_mod = pytest.importorskip("simulator.series")

MIGRATIONS = [[0.3, -0.2, 0.5, 0.5, -0.3, 0.4], [-0.8, 0.6, 1.2, -1.0, 0.8, 1.5]]


def _truth_result(exam, rng, *, visible_only=True):
    beads = [
        b
        for b in exam.truth["beads"]
        if not visible_only or (b["visible"]["A"] and b["visible"]["B"])
    ]
    order = rng.permutation(len(beads))
    markers = [{"id": beads[i]["id"], "xyz_mm": list(beads[i]["xyz_mm"])} for i in order]
    return {"markers": markers, "qc": {"verdict": "pass", "checks": []}}


def _bead_ids(exam0, segments):
    """Segment-file index -> bead id, per segment (the file lists beads in truth order)."""
    ids: dict[str, list[str]] = {}
    for b in exam0.truth["beads"]:
        ids.setdefault(b["segment"], []).append(b["id"])
    assert {k: len(v) for k, v in ids.items()} == {
        k: len(v) for k, v in segments["segments"].items()
    }
    return ids


@pytest.fixture(scope="module", params=[("lower", 3), ("spine", 5)])
def truth_series(request):
    region, seed = request.param
    return series_mod.simulate_series(
        region,
        seed,
        migrations=MIGRATIONS,
        reposition_deg=30.0,
        reposition_mm=40.0,
        full_resolution=False,
    )


def test_true_positions_give_the_recorded_migration(truth_series):
    exams, segments = truth_series
    rng = np.random.default_rng(0)
    # All beads: a rigid body seen whole gives the motion exactly.
    results = [_truth_result(e, rng, visible_only=False) for e in exams]
    ids = _bead_ids(exams[0], segments)
    for i in range(1, len(exams)):
        label = truth_series.labels[i]
        d = migrate(segments, results[0], results[i]).to_dict()
        truth = truth_series.migrations[label]
        m = d["motion"]
        np.testing.assert_allclose(m["translation_mm"], truth["translation_mm"], atol=1e-9)
        np.testing.assert_allclose(m["rotation_deg"], truth["rotation_deg"], atol=1e-9)
        assert m["mtpm_mm"] == pytest.approx(truth["mtpm_mm"], abs=1e-9)
        np.testing.assert_allclose(np.array(m["matrix"])[:3, :3], truth["R"], atol=1e-9)
        for seg, s in d["segments"].items():
            assert s["reference_ids"] == ids[seg] and s["followup_ids"] == ids[seg]
            assert s["excluded"] == [] and s["mean_error_mm"] < 1e-9


def test_true_visible_positions_label_every_bead(truth_series):
    """Only beads visible in both views, as a reconstruction would give."""
    exams, segments = truth_series
    rng = np.random.default_rng(1)
    results = [_truth_result(e, rng) for e in exams]
    ids = _bead_ids(exams[0], segments)
    for i in range(1, len(exams)):
        d = migrate(segments, results[0], results[i]).to_dict()
        for seg, s in d["segments"].items():
            ref_seen = {m["id"] for m in results[0]["markers"]}
            fu_seen = {m["id"] for m in results[i]["markers"]}
            want_r = [b if b in ref_seen else None for b in ids[seg]]
            want_f = [b if b in fu_seen else None for b in ids[seg]]
            # Fewer than 3 visible beads of a segment cannot be found by pattern.
            if sum(b is not None for b in want_r) >= 3:
                assert s["reference_ids"] == want_r
            both = sum(r is not None and f is not None for r, f in zip(want_r, want_f, strict=True))
            if both >= 3:
                assert s["followup_ids"] == want_f and s["markers_matched"] == both
        if d["motion"] is not None:
            truth = truth_series.migrations[truth_series.labels[i]]
            np.testing.assert_allclose(
                d["motion"]["translation_mm"], truth["translation_mm"], atol=1e-9
            )


# ------------------------------------------------------------ reconstructed images


@pytest.fixture(scope="module")
def reconstructed():
    from reconstruction.geometry import Cage, Station
    from reconstruction.pipeline import reconstruct

    ser = series_mod.simulate_series("lower", 2, migrations=MIGRATIONS[:1])
    results = []
    for e in ser.exams_list:
        images = {v: f.to_raw_image() for v, f in e.frames.items()}
        results.append(
            reconstruct(Station.from_dict(e.station), Cage.from_dict(e.cage), images).to_dict()
        )
    return ser, results


def _nearest_bead(exam, xyz):
    truth = np.array([b["xyz_mm"] for b in exam.truth["beads"]])
    d = np.linalg.norm(truth - np.asarray(xyz), axis=1)
    j = int(np.argmin(d))
    return exam.truth["beads"][j]["id"], float(d[j])


def test_reconstructed_markers_are_labelled_as_the_right_beads(reconstructed):
    ser, results = reconstructed
    exams, segments = ser
    ids = _bead_ids(exams[0], segments)
    checked = 0
    for i in range(1, len(exams)):
        d = migrate(segments, results[0], results[i]).to_dict()
        for k, exam_i in ((0, 0), (1, i)):
            markers = {m["id"]: m["xyz_mm"] for m in results[exam_i]["markers"]}
            key = ("reference_ids", "followup_ids")[k]
            for seg, s in d["segments"].items():
                for j, mid in enumerate(s[key]):
                    if mid is None:
                        continue
                    bead, dist = _nearest_bead(exams[exam_i], markers[mid])
                    assert dist < 0.3 and bead == ids[seg][j], (seg, j, mid, bead, dist)
                    checked += 1
    assert checked >= 3, "the reconstruction gave too few markers to label"


def test_accuracy_guard_on_reconstructed_series(reconstructed):
    """Regression guard at twice the issue's goal, which is NOT yet met here.

    Goal (issue 6): translation <= 20 µm; rotation <= 0.05° where CN <= 60. On
    this series the pipeline gave 14 µm / 0.038° (double exam) and 25 µm /
    0.051° (follow-up) at CN 50 (2da3b61), 8.7 µm / 0.040° and 16 µm / 0.042°
    at cf53a5f (the follow-up's implant then with 3 markers, CN 295): the
    marker noise of the reconstruction (~15–20 µm RMS per bead on the knee)
    propagates as docs/benchmarks.md, "Migration", shows. Even with every
    marker at its Cramér-Rao bound the SD on this series' worst translation
    axis would be 24 µm (0.044° in rotation at CN 50; ``bench_migration
    bound``), so the goal cannot be a hard test of this series. The guard catches a
    regression of the pipeline or of the labelling; the goal itself is tracked
    in docs/benchmarks.md, not hidden in an xfail.
    """
    goal_t_um, goal_r_deg = 20.0, 0.05
    ser, results = reconstructed
    errors = []
    for i in range(1, len(results)):
        d = migrate(ser.segments, results[0], results[i]).to_dict()
        assert d["motion"] is not None, f"{ser.labels[i]}: no motion ({d['qc']})"
        truth = ser.migrations[ser.labels[i]]
        et = np.abs(np.subtract(d["motion"]["translation_mm"], truth["translation_mm"])).max()
        er = np.abs(np.subtract(d["motion"]["rotation_deg"], truth["rotation_deg"])).max()
        cn = max(s["condition_number"] or np.inf for s in d["segments"].values())
        errors.append((ser.labels[i], 1000 * et, er, cn))
    for _label, et_um, er_deg, cn in errors:
        assert et_um <= 2 * goal_t_um, errors
        if cn <= 60:
            assert er_deg <= 2 * goal_r_deg, errors


def test_migration_adds_no_error_beyond_its_markers(reconstructed):
    """The migration's error is its markers' error, propagated, and nothing else.

    The actual error of each reconstructed marker (against its true bead),
    carried through the first-order derivative of the contract's migration
    (fits of the markers used, relative motion, centroid of the segment file),
    must give the actual migration error: a wrong reference frame or point, a
    wrong bead or a marker dropped would add error these markers do not
    explain.
    """
    from benchmarks.bench_migration import _ls_covariance

    ser, results = reconstructed
    exams, segments = ser
    ids = _bead_ids(exams[0], segments)
    ref_s, mov_s = segments["reference_segment"], segments["moving_segment"]
    listed = np.asarray(segments["segments"][mov_s], float)
    for i in range(1, len(results)):
        d = migrate(segments, results[0], results[i]).to_dict()
        truth = ser.migrations[ser.labels[i]]
        true_xyz = [{b["id"]: np.asarray(b["xyz_mm"]) for b in e.truth["beads"]} for e in exams]
        rec = [{m["id"]: np.asarray(m["xyz_mm"]) for m in r["markers"]} for r in results]
        sets, errs = [], []
        for seg in (ref_s, mov_s):
            s = d["segments"][seg]
            use = [
                j
                for j, (a, b) in enumerate(zip(s["reference_ids"], s["followup_ids"], strict=True))
                if a is not None and b is not None
            ]
            assert s["excluded"] == []
            for k, key in ((0, "reference_ids"), (i, "followup_ids")):
                t = np.array([true_xyz[k][ids[seg][j]] for j in use])
                sets.append(t)
                errs.append(np.array([rec[k][s[key][j]] for j in use]) - t)
        covs = [[np.eye(3)] * len(x) for x in sets]
        _, jac = _ls_covariance(listed, sets, covs)
        predicted = jac @ np.concatenate([e.ravel() for e in errs])
        actual = np.r_[
            np.subtract(d["motion"]["translation_mm"], truth["translation_mm"]),
            np.subtract(d["motion"]["rotation_deg"], truth["rotation_deg"]),
        ]
        # Second-order terms of 10-30 µm marker errors: under 0.5 µm / 0.001° on
        # the 36 pairs of bench_migration bound; 2 µm / 0.002° leaves a margin.
        np.testing.assert_allclose(actual[:3], predicted[:3], atol=2e-3)
        np.testing.assert_allclose(actual[3:], predicted[3:], atol=2e-3)
