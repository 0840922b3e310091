"""Migration (CONTRACT.md "Migration result") against known motions and independent maths."""

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from reconstruction.errors import InputError
from reconstruction.migration import migrate
from reconstruction.qc import QCLimits

CONTRACT_SEGMENT_KEYS = {"markers_matched", "mean_error_mm", "condition_number"}
CONTRACT_MOTION_KEYS = {"segment", "relative_to", "translation_mm", "rotation_deg", "mtpm_mm"}
CHECK_KEYS = {"code", "view", "passed", "value", "limit", "message"}


def _beads(rng, n, spread, centre, min_gap=4.0):
    pts = []
    while len(pts) < n:
        p = rng.normal(0, spread, 3) + centre
        if all(np.linalg.norm(p - q) >= min_gap for q in pts):
            pts.append(p)
    return np.array(pts)


def _template(rng, truth):
    d = rng.normal(size=truth.shape)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return truth + d * rng.uniform(0, 0.45, (len(truth), 1))


def _kabsch(p, q):
    """Independent least-squares rigid fit (Arun et al. 1987) as a 4x4 matrix: q ≈ R p + t."""
    cp, cq = p.mean(0), q.mean(0)
    U, _, Vt = np.linalg.svd((p - cp).T @ (q - cq))
    D = np.diag([1.0, 1.0, np.linalg.det(Vt.T @ U.T)])
    R = Vt.T @ D @ U.T
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = R, cq - R @ cp
    return m


def _apply(m, p):
    return p @ m[:3, :3].T + m[:3, 3]


class Case:
    """Bone + implant, a known implant migration and a large patient repositioning."""

    def __init__(self, seed, *, noise=0.0, migration_deg=1.0, migration_mm=0.5, reposition_deg=35):
        rng = self.rng = np.random.default_rng(seed)
        self.bone = _beads(rng, 8, 15, np.array([0.0, 0.0, 40.0]))
        self.implant = _beads(rng, 6, 10, np.array([5.0, 10.0, 75.0]))
        rv = rng.normal(size=3)
        self.mig_rot = Rotation.from_rotvec(rv / np.linalg.norm(rv) * np.radians(migration_deg))
        self.mig_t = rng.normal(size=3) * migration_mm / np.sqrt(3)
        rv = rng.normal(size=3)
        self.reposition = Rotation.from_rotvec(rv / np.linalg.norm(rv) * np.radians(reposition_deg))
        self.shift = rng.uniform(-50, 50, 3)
        self.noise = noise
        self.segments = {
            "reference_segment": "bone",
            "moving_segment": "implant",
            "segments": {
                "bone": _template(rng, self.bone).tolist(),
                "implant": _template(rng, self.implant).tolist(),
            },
        }

    def implant_followup_in_ref(self):
        return self.mig_rot.apply(self.implant) + self.mig_t

    def result(self, pts):
        pts = pts + self.rng.normal(0, self.noise, pts.shape) if self.noise else pts
        order = self.rng.permutation(len(pts))
        markers = [{"id": f"M{j + 1}", "xyz_mm": pts[i].tolist()} for j, i in enumerate(order)]
        return {"markers": markers, "qc": {"verdict": "pass", "checks": []}}, order

    def exams(self, *, ref_drop=(), fu_drop=(), strays=0, loose=None):
        allpts = np.vstack([self.bone, self.implant])
        fu = np.vstack([self.bone, self.implant_followup_in_ref()])
        if loose is not None:
            fu[loose[0]] += loose[1]
        fu = self.reposition.apply(fu) + self.shift
        ref_keep = [i for i in range(14) if i not in ref_drop]
        fu_keep = [i for i in range(14) if i not in fu_drop]
        extra = self.rng.normal(0, 25, (2 * strays, 3)) + np.array([0.0, 0.0, 60.0])
        ref, _ = self.result(np.vstack([allpts[ref_keep], extra[:strays]]))
        fol, _ = self.result(np.vstack([fu[fu_keep], extra[strays:]]))
        return ref, fol

    def expected(self):
        """Contract quantities from the true motion, computed point by point."""
        c = np.array(self.segments["segments"]["implant"])
        R, t = self.mig_rot.as_matrix(), self.mig_t
        centroid = c.mean(axis=0)
        disp = [np.linalg.norm(R @ p + t - p) for p in c]
        return {
            "translation_mm": R @ centroid + t - centroid,
            "rotation_deg": self.mig_rot.as_euler("xyz", degrees=True),
            "mtpm_mm": max(disp),
        }


def _assert_motion(d, exp, atol_t, atol_r):
    m = d["motion"]
    np.testing.assert_allclose(m["translation_mm"], exp["translation_mm"], atol=atol_t)
    np.testing.assert_allclose(m["rotation_deg"], exp["rotation_deg"], atol=atol_r)
    assert m["mtpm_mm"] == pytest.approx(exp["mtpm_mm"], abs=atol_t)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("method", ["consistent-marker", "all-marker"])
def test_exact_recovery_after_large_repositioning(seed, method):
    case = Case(seed, migration_deg=3.0, migration_mm=2.0, reposition_deg=40)
    ref, fu = case.exams(strays=2)
    d = migrate(case.segments, ref, fu, method=method).to_dict()
    assert d["method"] == method
    _assert_motion(d, case.expected(), 1e-9, 1e-9)
    assert d["segments"]["bone"]["markers_matched"] == 8
    assert d["segments"]["implant"]["markers_matched"] == 6
    assert d["segments"]["bone"]["mean_error_mm"] < 1e-9
    assert d["qc"]["verdict"] == "pass"


@pytest.mark.parametrize("seed", range(5))
def test_exact_recovery_with_missing_extra_and_loose_beads(seed):
    case = Case(100 + seed, migration_deg=2.0, migration_mm=1.0)
    # bone 1 hidden at reference, bone 6 and implant 2 at follow-up, implant 4 loose.
    ref, fu = case.exams(ref_drop=(1,), fu_drop=(6, 10), strays=3, loose=(12, [0.0, 0.9, -0.5]))
    d = migrate(case.segments, ref, fu).to_dict()
    _assert_motion(d, case.expected(), 1e-9, 1e-9)
    bone, implant = d["segments"]["bone"], d["segments"]["implant"]
    assert bone["markers_matched"] == 6 and implant["markers_matched"] == 4
    assert [e["marker"] for e in implant["excluded"]] == [4]
    assert implant["excluded"][0]["reason"] == "loose"
    # The bead moved by |(0, 0.9, -0.5)| = 1.03 mm relative to its segment.
    assert implant["excluded"][0]["displacement_mm"] == pytest.approx(np.hypot(0.9, 0.5))
    assert bone["missing"] == {"reference": [1], "followup": [6]}
    assert implant["missing"] == {"reference": [], "followup": [2]}
    assert bone["excluded"] == []


@pytest.mark.parametrize("seed", range(4))
def test_symmetric_implant_pattern_is_labelled_by_its_expected_pose(seed):
    """A regular pentagon of beads matches itself in 10 ways by distances alone."""
    case = Case(300 + seed, migration_deg=1.0, migration_mm=0.5, reposition_deg=40)
    ang = np.radians(np.arange(5) * 72.0)
    pentagon = np.stack([10 * np.cos(ang), 10 * np.sin(ang), np.zeros(5)], axis=1)
    case.implant = np.vstack([pentagon + np.array([5.0, 10.0, 75.0]), case.implant[5:]])[:5]
    # Keep the segment file a square 0.3 mm off the truth, as a careful user would.
    case.segments["segments"]["implant"] = (case.implant + 0.3 / np.sqrt(3)).tolist()
    allpts_ref = np.vstack([case.bone, case.implant])
    fu = case.reposition.apply(np.vstack([case.bone, case.implant_followup_in_ref()]))
    ref, _ = case.result(allpts_ref)
    fol, _ = case.result(fu + case.shift)
    d = migrate(case.segments, ref, fol).to_dict()
    _assert_motion(d, case.expected(), 1e-9, 1e-9)


def test_relative_motion_is_the_contract_composition():
    """Bring the follow-up onto the reference segment, then fit the moving segment."""
    case = Case(7, noise=0.02)
    ref, fu = case.exams()
    res = migrate(case.segments, ref, fu)
    d = res.to_dict()
    ids_r = {m["id"]: np.array(m["xyz_mm"]) for m in ref["markers"]}
    ids_f = {m["id"]: np.array(m["xyz_mm"]) for m in fu["markers"]}

    def pts(seg, which, ids):
        return np.array([ids[i] for i in d["segments"][seg][which]])

    bone_fit = _kabsch(pts("bone", "reference_ids", ids_r), pts("bone", "followup_ids", ids_f))
    back = np.linalg.inv(bone_fit)
    implant_fu = _apply(back, pts("implant", "followup_ids", ids_f))
    m = _kabsch(pts("implant", "reference_ids", ids_r), implant_fu)
    np.testing.assert_allclose(d["motion"]["matrix"], m, atol=1e-9)
    c = np.array(case.segments["segments"]["implant"])
    centroid = c.mean(0)
    np.testing.assert_allclose(
        d["motion"]["translation_mm"], _apply(m, centroid[None])[0] - centroid, atol=1e-9
    )
    assert d["motion"]["mtpm_mm"] == pytest.approx(
        np.linalg.norm(_apply(m, c) - c, axis=1).max(), abs=1e-12
    )


def test_mean_error_and_condition_number_computed_another_way():
    case = Case(8, noise=0.03)
    ref, fu = case.exams()
    d = migrate(case.segments, ref, fu).to_dict()
    ids_r = {m["id"]: np.array(m["xyz_mm"]) for m in ref["markers"]}
    ids_f = {m["id"]: np.array(m["xyz_mm"]) for m in fu["markers"]}
    for seg in ("bone", "implant"):
        s = d["segments"][seg]
        p = np.array([ids_r[i] for i in s["reference_ids"]])
        q = np.array([ids_f[i] for i in s["followup_ids"]])
        m = _kabsch(p, q)
        total = 0.0
        for pi, qi in zip(p, q, strict=True):
            total += float(np.sqrt(((m[:3, :3] @ pi + m[:3, 3] - qi) ** 2).sum()))
        assert s["mean_error_mm"] == pytest.approx(total / len(p), rel=1e-9)
        assert 0.005 < s["mean_error_mm"] < 0.1
        c = p - p.mean(0)
        lam = np.sort(np.linalg.eigvalsh(c.T @ c))
        assert s["condition_number"] == pytest.approx(1000 / np.sqrt(lam[0] + lam[1]), rel=1e-9)
    worst_me = max(d["segments"][s]["mean_error_mm"] for s in ("bone", "implant"))
    worst_cn = max(d["segments"][s]["condition_number"] for s in ("bone", "implant"))
    checks = {c["code"]: c for c in d["qc"]["checks"]}
    assert checks["mean_error"]["value"] == pytest.approx(worst_me)
    assert checks["condition_number"]["value"] == pytest.approx(worst_cn)
    assert checks["segment_markers"]["value"] == 6


@pytest.mark.parametrize("seed", range(6))
def test_noisy_markers_give_the_least_squares_answer(seed):
    """With 15 µm marker noise, labelling is unaffected and the motion is close to the truth."""
    case = Case(200 + seed, noise=0.015)
    ref, fu = case.exams(strays=2)
    d = migrate(case.segments, ref, fu).to_dict()
    exp = case.expected()
    # First-order error at 15 µm for these configurations is ~25 µm / 0.08° (RMS of the
    # worst axis over 100 seeds); these bounds are about 4x that.
    _assert_motion(d, exp, 0.1, 0.3)
    assert d["qc"]["verdict"] == "pass"


def test_fewer_than_three_markers_gives_no_motion_and_retake():
    case = Case(9)
    ref, fu = case.exams(fu_drop=(9, 10, 11, 12))  # implant: 2 of 6 left
    d = migrate(case.segments, ref, fu).to_dict()
    assert d["motion"] is None
    assert d["qc"]["verdict"] == "retake"
    checks = {c["code"]: c for c in d["qc"]["checks"]}
    # Two markers cannot be told apart from a pair of any other beads: the pattern
    # search needs three, so none is reported matched.
    assert checks["segment_markers"]["value"] < 3 and not checks["segment_markers"]["passed"]
    assert d["segments"]["implant"]["markers_matched"] < 3
    assert d["segments"]["bone"]["markers_matched"] == 8
    assert d["segments"]["implant"]["mean_error_mm"] is None
    json.dumps(d, allow_nan=False)


def test_collinear_segment_fails_condition_number():
    case = Case(10)
    line = np.outer(np.linspace(-10, 10, 4), [0.6, 0.8, 0.0]) + np.array([5.0, 10.0, 75.0])
    case.implant = np.vstack([line, case.implant[4:]])  # 4 collinear + 2 others
    case.segments["segments"]["implant"] = case.implant.tolist()
    ref, fu = case.exams(fu_drop=(12, 13))  # only the collinear ones remain
    d = migrate(case.segments, ref, fu).to_dict()
    assert d["segments"]["implant"]["condition_number"] is None
    checks = {c["code"]: c for c in d["qc"]["checks"]}
    assert checks["condition_number"]["value"] is None
    assert not checks["condition_number"]["passed"] and d["qc"]["verdict"] == "retake"
    json.dumps(d, allow_nan=False)


def test_limits_are_applied():
    case = Case(11, noise=0.02)
    ref, fu = case.exams()
    d = migrate(case.segments, ref, fu, limits=QCLimits(mean_error=0.001)).to_dict()
    checks = {c["code"]: c for c in d["qc"]["checks"]}
    assert not checks["mean_error"]["passed"] and checks["mean_error"]["limit"] == 0.001
    assert d["qc"]["verdict"] == "retake" and d["motion"] is not None


def test_result_has_the_contract_shape():
    case = Case(12, noise=0.01)
    ref, fu = case.exams()
    d = migrate(case.segments, ref, fu).to_dict()
    json.dumps(d, allow_nan=False)
    assert d["method"] == "consistent-marker"
    assert set(d["segments"]) == {"bone", "implant"}
    for s in d["segments"].values():
        assert set(s) >= CONTRACT_SEGMENT_KEYS
        assert isinstance(s["markers_matched"], int)
    assert set(d["motion"]) >= CONTRACT_MOTION_KEYS
    assert d["motion"]["segment"] == "implant" and d["motion"]["relative_to"] == "bone"
    assert len(d["motion"]["translation_mm"]) == 3 and len(d["motion"]["rotation_deg"]) == 3
    assert d["qc"]["verdict"] in ("pass", "retake")
    codes = [c["code"] for c in d["qc"]["checks"]]
    assert codes == ["segment_markers", "mean_error", "condition_number"]
    for c in d["qc"]["checks"]:
        assert set(c) == CHECK_KEYS and c["view"] is None
    limits = {c["code"]: c["limit"] for c in d["qc"]["checks"]}
    assert limits == {"segment_markers": 3, "mean_error": 0.35, "condition_number": 150.0}


def test_helical_axis_matches_the_migration():
    case = Case(13, migration_deg=5.0)
    ref, fu = case.exams()
    ax = migrate(case.segments, ref, fu).to_dict()["motion"]["helical_axis"]
    assert ax["angle_deg"] == pytest.approx(5.0, abs=1e-9)
    rv = case.mig_rot.as_rotvec()
    np.testing.assert_allclose(ax["direction"], rv / np.linalg.norm(rv), atol=1e-9)
    assert ax["translation_mm"] == pytest.approx(float(ax["direction"] @ case.mig_t), abs=1e-9)


def test_unknown_method_is_an_input_error():
    case = Case(14)
    ref, fu = case.exams()
    with pytest.raises(InputError, match="method"):
        migrate(case.segments, ref, fu, method="best-guess")


@pytest.mark.parametrize(
    ("which", "value", "fragment"),
    [
        ("segments", {"segments": {}}, "segment file: missing key 'reference_segment'"),
        ("reference", {"views": {}}, "reference result: missing key 'markers'"),
        ("followup", [1, 2], "follow-up result: expected a JSON object"),
        ("followup", {"markers": [{"xyz_mm": [0, 0]}]}, "follow-up result: markers[0].xyz_mm"),
    ],
)
def test_bad_inputs_raise_one_line_input_errors(which, value, fragment):
    case = Case(15)
    ref, fu = case.exams()
    args = {"segments": case.segments, "reference": ref, "followup": fu}
    args[which] = value
    with pytest.raises(InputError) as exc:
        migrate(args["segments"], args["reference"], args["followup"])
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


# ----------------------------------------------------------------- the command


def _cli(*args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "acquisition.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _write(tmp_path, name, obj):
    p = tmp_path / name
    if isinstance(obj, dict) and "markers" in obj and "segments" not in obj:
        # a result file is a whole contract reconstruction result
        obj = {"views": {}, "qc": {"verdict": "pass", "checks": []}, **obj}
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(p)


def test_migrate_command_writes_the_contract_json(tmp_path):
    case = Case(20, noise=0.01)
    ref, fu = case.exams(strays=1)
    out = tmp_path / "m.json"
    run = _cli(
        "migrate",
        "--segments",
        _write(tmp_path, "seg.json", case.segments),
        _write(tmp_path, "ref.json", ref),
        _write(tmp_path, "fu.json", fu),
        "-o",
        str(out),
    )
    assert run.returncode == 0, run.stderr
    d = json.loads(out.read_text())
    assert d["method"] == "consistent-marker" and set(d["motion"]) >= CONTRACT_MOTION_KEYS
    assert all(set(s) >= CONTRACT_SEGMENT_KEYS for s in d["segments"].values())
    np.testing.assert_allclose(
        d["motion"]["translation_mm"], case.expected()["translation_mm"], atol=0.1
    )
    run = _cli(
        "migrate",
        "--method",
        "all-marker",
        "--segments",
        str(tmp_path / "seg.json"),
        str(tmp_path / "ref.json"),
        str(tmp_path / "fu.json"),
        "-o",
        str(out),
    )
    assert run.returncode == 0 and json.loads(out.read_text())["method"] == "all-marker"


def test_migrate_command_too_few_markers_still_exits_0(tmp_path):
    case = Case(21)
    ref, fu = case.exams(fu_drop=(8, 9, 10, 11))
    out = tmp_path / "m.json"
    run = _cli(
        "migrate",
        "--segments",
        _write(tmp_path, "seg.json", case.segments),
        _write(tmp_path, "ref.json", ref),
        _write(tmp_path, "fu.json", fu),
        "-o",
        str(out),
    )
    assert run.returncode == 0, run.stderr
    d = json.loads(out.read_text())
    assert d["motion"] is None and d["qc"]["verdict"] == "retake"


@pytest.mark.parametrize(
    ("bad_file", "content", "fragment"),
    [
        ("seg.json", "{oops", "not valid JSON"),
        ("ref.json", "[1, 2, 3]", "not a valid reconstruction result: expected a JSON object"),
        ("fu.json", '{"views": {}}', "not a valid reconstruction result: missing key 'markers'"),
        ("seg.json", '{"markers": []}', "not a valid segment file: missing key"),
        ("nothere.json", None, "not found"),
    ],
)
def test_migrate_command_bad_input_is_one_line_exit_2(tmp_path, bad_file, content, fragment):
    case = Case(22)
    ref, fu = case.exams()
    files = {"seg.json": case.segments, "ref.json": ref, "fu.json": fu}
    paths = {k: _write(tmp_path, k, v) for k, v in files.items()}
    if content is not None:
        _write(tmp_path, bad_file, content)
    else:
        paths["seg.json"] = str(tmp_path / bad_file)
    out = tmp_path / "m.json"
    run = _cli(
        "migrate",
        "--segments",
        paths["seg.json"],
        paths["ref.json"],
        paths["fu.json"],
        "-o",
        str(out),
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert bad_file in lines[0] and fragment in lines[0] and "Traceback" not in run.stderr
    assert not out.exists()


def test_followup_without_markers_is_a_retake_not_an_error():
    case = Case(23)
    ref, _ = case.exams()
    d = migrate(case.segments, ref, {"markers": []}).to_dict()
    assert d["motion"] is None and d["qc"]["verdict"] == "retake"
    assert d["segments"]["bone"]["markers_matched"] == 0
    json.dumps(d, allow_nan=False)


def test_extra_segments_are_labelled_and_reported():
    case = Case(24)
    rng = np.random.default_rng(24)
    cement = _beads(rng, 4, 6, np.array([40.0, -30.0, 60.0]))
    case.segments["segments"]["cement"] = _template(rng, cement).tolist()
    allpts = np.vstack([case.bone, case.implant, cement])
    fu = np.vstack([case.bone, case.implant_followup_in_ref(), cement])
    ref, _ = case.result(allpts)
    fol, _ = case.result(case.reposition.apply(fu) + case.shift)
    d = migrate(case.segments, ref, fol).to_dict()
    assert d["segments"]["cement"]["markers_matched"] == 4
    _assert_motion(d, case.expected(), 1e-9, 1e-9)


def test_all_marker_method_uses_markers_seen_in_one_exam():
    """Bone bead 3 hidden at the reference: all-marker fits it from the segment file."""
    case = Case(25, migration_deg=1.0, migration_mm=0.5)
    ref, fu = case.exams(ref_drop=(3,))
    cons = migrate(case.segments, ref, fu).to_dict()
    allm = migrate(case.segments, ref, fu, method="all-marker").to_dict()
    _assert_motion(cons, case.expected(), 1e-9, 1e-9)
    assert cons["segments"]["bone"]["markers_matched"] == 7
    assert allm["segments"]["bone"]["markers_matched"] == 7  # min(7 at reference, 8)
    # Independent computation of the all-marker definition (docs/migration.md).
    ids_r = {m["id"]: np.array(m["xyz_mm"]) for m in ref["markers"]}
    ids_f = {m["id"]: np.array(m["xyz_mm"]) for m in fu["markers"]}
    tpl = np.array(case.segments["segments"]["bone"])
    seen = [i for i in range(8) if i != 3]
    ref_b = np.array([ids_r[allm["segments"]["bone"]["reference_ids"][i]] for i in seen])
    model = tpl.copy()
    model[3] = _apply(_kabsch(tpl[seen], ref_b), tpl[3:4])[0]
    model[seen] = ref_b
    fu_b = np.array([ids_f[i] for i in allm["segments"]["bone"]["followup_ids"]])
    bone = _kabsch(model, fu_b)
    imp_r = np.array([ids_r[i] for i in allm["segments"]["implant"]["reference_ids"]])
    imp_f = np.array([ids_f[i] for i in allm["segments"]["implant"]["followup_ids"]])
    rel = np.linalg.inv(bone) @ _kabsch(imp_r, imp_f)
    np.testing.assert_allclose(allm["motion"]["matrix"], rel, atol=1e-9)
    res = np.linalg.norm(_apply(bone, model) - fu_b, axis=1)
    assert allm["segments"]["bone"]["mean_error_mm"] == pytest.approx(res.mean(), rel=1e-9)
    # The segment file's 0.45 mm error shows in the fit but stays small.
    assert 1e-4 < allm["segments"]["bone"]["mean_error_mm"] < 0.2
    np.testing.assert_allclose(
        allm["motion"]["translation_mm"], case.expected()["translation_mm"], atol=0.1
    )


def test_migrate_command_refuses_a_cage_file_as_a_result(tmp_path):
    case = Case(23)
    _ref, fu = case.exams()
    cage = {
        "name": "c",
        "units": "mm",
        "markers": [
            {
                "id": f"F{i}",
                "xyz_mm": [10.0 * i, 3.0 * i * i, 0.0],
                "role": "fiducial",
                "diameter_mm": 1.0,
            }
            for i in range(12)
        ],
    }
    cage_path = tmp_path / "cage.json"
    cage_path.write_text(json.dumps(cage))
    run = _cli(
        "migrate",
        "--segments",
        _write(tmp_path, "seg.json", case.segments),
        str(cage_path),
        _write(tmp_path, "fu.json", fu),
        "-o",
        str(tmp_path / "m.json"),
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "cage.json" in lines[0] and "not a valid reconstruction" in lines[0]
    assert not (tmp_path / "m.json").exists()
