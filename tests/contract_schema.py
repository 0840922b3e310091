"""Strict checks of the files and results described in /work/shared/CONTRACT.md.

Written from the contract alone (not from the code under test), for
``tests/test_contract_conformance.py``. Every function asserts; extra keys are
allowed everywhere (the contract welcomes them), missing keys, wrong types and
broken QC rules are not. Geometry helpers re-derive facts (projections, the
distance between two projection lines) with plain numpy from the DICOM-style
detector description in the contract's "Units and frames".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# CONTRACT.md, "Reconstruction result": code -> (views, rule, default limit)
RECON_QC = {
    "cage_visibility": (("A", "B"), ">=", 0.8),
    "calibration_residual": (("A", "B"), "<=", 0.5),
    "marker_count": ((None,), ">=", 3),
    "crossing_error": ((None,), "<=", 0.2),
}
# "Migration result"
MIGRATION_QC = {
    "segment_markers": ((None,), ">=", 3),
    "mean_error": ((None,), "<=", 0.35),
    "condition_number": ((None,), "<=", 150),
}
# "Station exam result"
EXAM_QC = {**RECON_QC, "tube_skew": ((None,), "<=", 500)}

CHECK_KEYS = ("code", "view", "passed", "value", "limit", "message")


def is_num(x: Any) -> bool:
    """A JSON number (not a bool), finite."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def assert_vec(x: Any, n: int, what: str) -> None:
    assert isinstance(x, list) and len(x) == n and all(is_num(v) for v in x), (
        f"{what}: expected a list of {n} numbers, got {x!r}"
    )


def assert_keys(d: Any, keys, what: str) -> None:
    assert isinstance(d, dict), f"{what}: expected an object, got {type(d).__name__}"
    missing = [k for k in keys if k not in d]
    assert not missing, f"{what}: missing keys {missing} (has {sorted(d)})"


# --------------------------------------------------------------------- inputs


def check_station_file(d: Any) -> None:
    assert_keys(d, ("name", "views", "tolerance"), "station")
    assert list(d["views"]) == ["A", "B"], f"station views {list(d['views'])}, expected A, B"
    for v, view in d["views"].items():
        assert_keys(view, ("focus_mm", "detector"), f"station view {v}")
        assert_vec(view["focus_mm"], 3, f"station {v}.focus_mm")
        det = view["detector"]
        assert_keys(
            det,
            ("origin_mm", "row_cosines", "column_cosines", "pixel_spacing_mm", "rows", "columns"),
            f"station {v}.detector",
        )
        for k in ("origin_mm", "row_cosines", "column_cosines"):
            assert_vec(det[k], 3, f"station {v}.detector.{k}")
        assert_vec(det["pixel_spacing_mm"], 2, f"station {v}.pixel_spacing_mm")
        assert is_int(det["rows"]) and is_int(det["columns"])
        r, c = np.array(det["row_cosines"]), np.array(det["column_cosines"])
        assert abs(np.linalg.norm(r) - 1) < 1e-6 and abs(np.linalg.norm(c) - 1) < 1e-6
        assert abs(r @ c) < 1e-6
    assert_keys(d["tolerance"], ("focus_mm", "detector_mm", "detector_deg"), "station tolerance")
    assert all(is_num(v) for v in d["tolerance"].values())


def check_cage_file(d: Any) -> None:
    assert_keys(d, ("name", "units", "markers"), "cage")
    assert d["units"] == "mm"
    ids = []
    for m in d["markers"]:
        assert_keys(m, ("id", "xyz_mm", "role", "diameter_mm"), "cage marker")
        assert_vec(m["xyz_mm"], 3, f"cage marker {m['id']}")
        assert m["role"] in ("fiducial", "control"), m["role"]
        assert is_num(m["diameter_mm"]) and m["diameter_mm"] > 0
        ids.append(m["id"])
    assert len(set(ids)) == len(ids), "cage marker ids are not unique"


# ------------------------------------------------------------------------- QC


def passes(value: Any, rule: str, limit: float) -> bool:
    if not is_num(value):
        return False
    return value >= limit if rule == ">=" else value <= limit


def check_qc(qc: Any, table: dict, what: str = "qc") -> dict[tuple[str, Any], dict]:
    """Check ``qc`` against ``table``; return the checks by (code, view)."""
    assert_keys(qc, ("verdict", "checks"), what)
    assert qc["verdict"] in ("pass", "retake"), qc["verdict"]
    assert isinstance(qc["checks"], list)
    by: dict[tuple[str, Any], dict] = {}
    for c in qc["checks"]:
        assert_keys(c, CHECK_KEYS, f"{what} check")
        assert isinstance(c["code"], str)
        assert c["view"] is None or isinstance(c["view"], str), c
        assert isinstance(c["passed"], bool), c
        assert c["value"] is None or is_num(c["value"]), c
        assert is_num(c["limit"]), c
        assert isinstance(c["message"], str) and c["message"].strip(), c
        assert "\n" not in c["message"], c
        if c["code"] in table:
            views, rule, default = table[c["code"]]
            assert c["view"] in views, f"{c['code']}: view {c['view']!r}, expected one of {views}"
            # the project may make limits configurable, never looser by default
            assert c["limit"] == default, f"{c['code']}: limit {c['limit']}, default {default}"
            assert c["passed"] == passes(c["value"], rule, c["limit"]), (
                f"{c['code']}: passed={c['passed']} but value {c['value']} {rule} {c['limit']}"
            )
        key = (c["code"], c["view"])
        assert key not in by, f"check {key} reported twice"
        by[key] = c
    for code, (views, _, _) in table.items():
        for v in views:
            assert (code, v) in by, f"{what}: no check {code!r} for view {v!r}"
    all_passed = all(c["passed"] for c in qc["checks"])
    assert qc["verdict"] == ("pass" if all_passed else "retake"), (
        f"verdict {qc['verdict']} but all checks passed={all_passed}"
    )
    return by


# ---------------------------------------------------------------- geometry


def pixel_to_world(det: dict, rc) -> np.ndarray:
    """CONTRACT.md: origin + c * ps[1] * row_cosines + r * ps[0] * column_cosines."""
    rc = np.asarray(rc, float)
    o = np.asarray(det["origin_mm"], float)
    rcos, ccos = np.asarray(det["row_cosines"], float), np.asarray(det["column_cosines"], float)
    ps = det["pixel_spacing_mm"]
    return o + rc[..., 1:2] * ps[1] * rcos + rc[..., 0:1] * ps[0] * ccos


def project(view: dict, xyz) -> tuple[np.ndarray, np.ndarray]:
    """Central projection of points onto a view's detector: ([row, col] (n, 2), in_front (n,))."""
    xyz = np.atleast_2d(np.asarray(xyz, float))
    f = np.asarray(view["focus_mm"], float)
    det = view["detector"]
    o = np.asarray(det["origin_mm"], float)
    rcos, ccos = np.asarray(det["row_cosines"], float), np.asarray(det["column_cosines"], float)
    n = np.cross(rcos, ccos)
    d = xyz - f
    s = ((o - f) @ n) / (d @ n)
    rel = f + s[:, None] * d - o
    ps = det["pixel_spacing_mm"]
    return np.stack([rel @ ccos / ps[0], rel @ rcos / ps[1]], axis=-1), s > 0


def line_distance(p1, d1, p2, d2) -> float:
    """Shortest distance between the lines p1 + s d1 and p2 + t d2."""
    n = np.cross(d1, d2)
    return float(abs((np.asarray(p2) - p1) @ n) / np.linalg.norm(n))


def point_line_distance(x, p, d) -> float:
    d = np.asarray(d, float) / np.linalg.norm(d)
    w = np.asarray(x, float) - p
    return float(np.linalg.norm(w - (w @ d) * d))


def inside_count(view: dict, xyz, margin: float = 10.0) -> int:
    """Points whose projection lies at least ``margin`` px inside the image."""
    rc, front = project(view, xyz)
    det = view["detector"]
    lo = margin - 0.5  # pixel centres at 0..rows-1; the image edge at -0.5 and rows-0.5
    ok = (
        front
        & (rc[:, 0] >= lo)
        & (rc[:, 0] <= det["rows"] - 1 - lo)
        & (rc[:, 1] >= lo)
        & (rc[:, 1] <= det["columns"] - 1 - lo)
    )
    return int(ok.sum())


# ------------------------------------------------------------------ outputs


def check_reconstruction(d: Any, station: dict, table: dict = RECON_QC) -> dict:
    """Strict shape of a reconstruction result and its internal QC arithmetic."""
    assert_keys(d, ("views", "markers", "ambiguous", "qc"), "result")
    assert list(d["views"]) == ["A", "B"], f"views {list(d['views'])}, expected A then B"
    for v, view in d["views"].items():
        assert_keys(
            view,
            ("focus_mm", "calibration_rms_px", "cage_markers_expected", "cage_markers_found"),
            f"views.{v}",
        )
        if view["focus_mm"] is None:
            assert view["calibration_rms_px"] is None, "focus null but calibration_rms_px set"
        else:
            assert_vec(view["focus_mm"], 3, f"views.{v}.focus_mm")
            assert is_num(view["calibration_rms_px"]) and view["calibration_rms_px"] >= 0
        assert is_int(view["cage_markers_expected"]) and view["cage_markers_expected"] >= 0
        assert is_int(view["cage_markers_found"]) and view["cage_markers_found"] >= 0
    assert isinstance(d["markers"], list)
    ids = []
    for m in d["markers"]:
        assert_keys(m, ("id", "xyz_mm", "crossing_mm", "image_px"), "marker")
        assert isinstance(m["id"], str) and m["id"]
        ids.append(m["id"])
        assert_vec(m["xyz_mm"], 3, f"marker {m['id']}.xyz_mm")
        assert is_num(m["crossing_mm"]) and m["crossing_mm"] >= 0
        assert list(m["image_px"]) == ["A", "B"], f"marker {m['id']}: image_px views"
        for v in "AB":
            assert_vec(m["image_px"][v], 2, f"marker {m['id']}.image_px.{v}")
            det = station["views"][v]["detector"]
            r, c = m["image_px"][v]
            assert -0.5 <= r <= det["rows"] - 0.5 and -0.5 <= c <= det["columns"] - 0.5
    assert len(set(ids)) == len(ids), "marker ids are not unique"
    assert isinstance(d["ambiguous"], list)
    for a in d["ambiguous"]:
        assert_keys(a, ("image_px", "candidates"), "ambiguous")
        assert isinstance(a["image_px"], dict) and a["image_px"]
        assert set(a["image_px"]) <= {"A", "B"}
        for v, rc in a["image_px"].items():
            assert_vec(rc, 2, f"ambiguous.image_px.{v}")
            det = station["views"][v]["detector"]
            assert -0.5 <= rc[0] <= det["rows"] - 0.5 and -0.5 <= rc[1] <= det["columns"] - 0.5
        assert is_int(a["candidates"]) and a["candidates"] >= 0
    by = check_qc(d["qc"], table)
    # the values are what the table says they are
    for v in "AB":
        view = d["views"][v]
        vis = by[("cage_visibility", v)]
        if view["cage_markers_expected"] > 0:
            assert vis["value"] == _approx(
                view["cage_markers_found"] / view["cage_markers_expected"]
            )
        res = by[("calibration_residual", v)]
        if view["calibration_rms_px"] is None:
            assert res["passed"] is False
        else:
            assert res["value"] == _approx(view["calibration_rms_px"], 1e-3)
    assert by[("marker_count", None)]["value"] == len(d["markers"])
    cross = by[("crossing_error", None)]
    if d["markers"]:
        assert cross["value"] == _approx(max(m["crossing_mm"] for m in d["markers"]), 1e-3)
    return by


def check_cage_check(d: Any, view: str, cage_ids: set[str]) -> None:
    assert_keys(
        d,
        (
            "view",
            "cage_markers_expected",
            "cage_markers_found",
            "passed",
            "value",
            "limit",
            "message",
            "missing",
        ),
        "cage check",
    )
    assert d["view"] == view
    assert is_int(d["cage_markers_expected"]) and is_int(d["cage_markers_found"])
    assert isinstance(d["passed"], bool)
    assert d["limit"] == 0.8
    if d["cage_markers_expected"] > 0:
        assert d["value"] == _approx(d["cage_markers_found"] / d["cage_markers_expected"])
    assert d["passed"] == passes(d["value"], ">=", d["limit"])
    assert isinstance(d["message"], str) and d["message"].strip() and "\n" not in d["message"]
    assert isinstance(d["missing"], list) and all(isinstance(i, str) for i in d["missing"])
    assert set(d["missing"]) <= cage_ids, set(d["missing"]) - cage_ids
    assert len(set(d["missing"])) == len(d["missing"])
    assert len(d["missing"]) == d["cage_markers_expected"] - d["cage_markers_found"]


def check_migration(d: Any, definition: dict) -> dict:
    assert_keys(d, ("method", "segments", "motion", "qc"), "migration")
    assert isinstance(d["method"], str) and d["method"]
    names = list(definition["segments"])
    assert set(d["segments"]) >= set(names), (sorted(d["segments"]), names)
    for name in names:
        s = d["segments"][name]
        assert_keys(s, ("markers_matched", "mean_error_mm", "condition_number"), f"seg {name}")
        assert is_int(s["markers_matched"]) and s["markers_matched"] >= 0
        for k in ("mean_error_mm", "condition_number"):
            # null where it cannot be computed (fewer than 3 markers, collinear)
            assert s[k] is None or (is_num(s[k]) and s[k] >= 0), (name, k, s[k])
    by = check_qc(d["qc"], MIGRATION_QC)
    segs = [d["segments"][n] for n in names]
    fewest = min(s["markers_matched"] for s in segs)
    assert by[("segment_markers", None)]["value"] == fewest
    if fewest >= 3:
        me = max(s["mean_error_mm"] for s in segs)
        cn = max(s["condition_number"] for s in segs)
        assert by[("mean_error", None)]["value"] == _approx(me, 1e-3)
        assert by[("condition_number", None)]["value"] == _approx(cn, 1e-2)
        m = d["motion"]
        assert_keys(
            m, ("segment", "relative_to", "translation_mm", "rotation_deg", "mtpm_mm"), "motion"
        )
        assert m["segment"] == definition["moving_segment"]
        assert m["relative_to"] == definition["reference_segment"]
        assert_vec(m["translation_mm"], 3, "motion.translation_mm")
        assert_vec(m["rotation_deg"], 3, "motion.rotation_deg")
        assert is_num(m["mtpm_mm"]) and m["mtpm_mm"] >= 0
    else:
        assert d["motion"] is None, "fewer than 3 matched markers: motion must be null"
        assert d["qc"]["verdict"] == "retake"
    return by


class _approx:
    """Equality within a relative/absolute tolerance (values may be rounded for display)."""

    def __init__(self, expected: float, tol: float = 1e-6) -> None:
        self.expected, self.tol = expected, tol

    def __eq__(self, other: object) -> bool:
        return is_num(other) and abs(other - self.expected) <= self.tol * max(
            1.0, abs(self.expected)
        )

    def __repr__(self) -> str:
        return f"{self.expected} ± {self.tol}"


# ------------------------------------------------------------- migration math
# CONTRACT.md "Migration result", re-derived with plain numpy (and scipy's as_euler,
# which the contract names), never from the code under test.


def rigid_fit(p, q) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares rigid motion ``(R, t)`` with ``q_i ≈ R p_i + t`` (SVD, Kabsch;
    Söderkvist & Wedin 1993), a proper rotation (det R = +1)."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    pc, qc = p.mean(axis=0), q.mean(axis=0)
    u, _, vt = np.linalg.svd((p - pc).T @ (q - qc))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return r, qc - r @ pc


def mean_error(r: np.ndarray, t: np.ndarray, p, q) -> float:
    """ME: ``mean_i |R p_i + t - q_i|``."""
    return float(np.linalg.norm(np.asarray(p) @ r.T + t - np.asarray(q), axis=1).mean())


def condition_number(p) -> float:
    """CN: ``1000 / sqrt(σ2² + σ3²)`` of the n x 3 matrix of ``p`` centred on its mean."""
    p = np.asarray(p, float)
    sv = np.linalg.svd(p - p.mean(axis=0), compute_uv=False)
    return float(1000.0 / np.hypot(sv[1], sv[2]))


def euler_xyz_deg(r: np.ndarray) -> np.ndarray:
    """R as rotations about the fixed x, then y, then z axes (the contract's convention)."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(r).as_euler("xyz", degrees=True)


def contract_motion(ref_p, ref_q, mov_p, mov_q, template) -> dict[str, Any]:
    """The contract's motion from matched marker positions.

    ``ref_p``/``ref_q``: the reference segment's markers in the reference and the
    follow-up exam (row i of one is row i of the other); ``mov_p``/``mov_q`` the
    moving segment's; ``template``: the moving segment's markers as listed in the
    segment file. The follow-up is brought onto the reference segment by its rigid
    fit, then ``(R, t)`` is the moving segment's rigid fit from the reference exam to
    that corrected follow-up. Returns R, t, translation_mm (``R c + t - c``, c the
    template's centroid), rotation_deg, displacement_mm (``R p + t - p`` of each
    template marker) and mtpm_mm (the largest of their lengths).
    """
    r_ref, t_ref = rigid_fit(ref_p, ref_q)
    mov_q_on_ref = (np.asarray(mov_q, float) - t_ref) @ r_ref  # R_ref^T (q - t_ref)
    r, t = rigid_fit(mov_p, mov_q_on_ref)
    template = np.asarray(template, float)
    c = template.mean(axis=0)
    disp = template @ r.T + t - template
    return {
        "R": r,
        "t": t,
        "translation_mm": r @ c + t - c,
        "rotation_deg": euler_xyz_deg(r),
        "displacement_mm": disp,
        "mtpm_mm": float(np.linalg.norm(disp, axis=1).max()),
    }
