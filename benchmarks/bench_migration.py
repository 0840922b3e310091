"""Migration: labelling robustness, speed, and accuracy on simulated exam series.

Three parts and an error budget (docs/benchmarks.md, "Migration (issue 6)"):

``labelling``
    Random bone (8 beads) + implant (6 beads) cases: 10% of beads hidden in
    each exam, 6 (or ``--strays``) stray beads, one loose bead moved 0.4-1.8 mm,
    35° patient repositioning, 15 µm marker noise. Counts the cases in which a
    segment with at least 3 consistent markers is labelled wrongly or its
    loose bead missed; times ``migrate`` (labelling included).
``series``
    ``simulator.series.simulate_series`` patients with known implant migration.
    ``--source truth`` takes each exam's true bead positions (beads visible in
    both views) plus Gaussian noise (``--noise`` mm per coordinate);
    ``--source images`` reconstructs each exam from its rendered images with
    ``reconstruction.pipeline.reconstruct`` (slow). Prints the error against
    CN of every segment as a Markdown table: per segment of each follow-up
    and double exam, its markers, CN and ME, and the pair's error of
    translation (largest axis, µm) and rotation (largest axis, degrees)
    against the truth; the summary checks the issue's targets (<= 20 µm;
    <= 0.05° where the largest CN <= 60) and gives the double-exam precision.
``bound``
    The error budget of the reconstructed series: each bead's 3D Cramér-Rao
    bound (from the simulator's per-bead 2D bounds of both views) propagated
    through the migration (this code's fits, and the bound of any unbiased
    estimator), with the markers used and with ideal recall, against the
    actual error per exam pair; which beads the actual error comes from.

Usage::

    python -m benchmarks.bench_migration labelling [--n 500]
    python -m benchmarks.bench_migration series --source truth --seeds 0-9 [--noise 0.015]
    python -m benchmarks.bench_migration series --source images
        --regions lower,spine,upper --seeds 0-3 --cache DIR
    python -m benchmarks.bench_migration bound --regions lower,spine,upper
        --seeds 0-3 --cache DIR [--mc 300]

``--cache DIR`` keeps each exam's reconstruction result (JSON) and reuses it:
delete it when the reconstruction changes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
from scipy.spatial.transform import Rotation

from benchmarks.common import parse_seeds
from reconstruction.migration import migrate
from reconstruction.precision import precision

# ------------------------------------------------------------------ labelling


def _beads(rng, n, spread, centre, min_gap=4.0):
    pts = []
    while len(pts) < n:
        p = rng.normal(0, spread, 3) + centre
        if all(np.linalg.norm(p - q) >= min_gap for q in pts):
            pts.append(p)
    return np.array(pts)


def _result(rng, pts, noise):
    order = rng.permutation(len(pts))
    pts = pts[order] + rng.normal(0, noise, pts.shape)
    return {"markers": [{"id": f"M{j}", "xyz_mm": p.tolist()} for j, p in enumerate(pts)]}, order


def labelling(n: int, strays: int, noise: float = 0.015, move=(0.4, 1.8)) -> dict:
    failures, times = [], []
    for seed in range(n):
        rng = np.random.default_rng(10_000 + seed)
        bone = _beads(rng, 8, 15, np.array([0.0, 0.0, 40.0]))
        implant = _beads(rng, 6, 10, np.array([5.0, 10.0, 75.0]))
        allpts = np.vstack([bone, implant])
        tpl = allpts + rng.normal(size=allpts.shape) * 0.2
        rot = Rotation.from_rotvec(rng.normal(size=3) / np.sqrt(3) * np.radians(35))
        shift = rng.uniform(-50, 50, 3)
        moved = allpts.copy()
        loose = int(rng.integers(0, 14))
        v = rng.normal(size=3)
        moved[loose] += rng.uniform(*move) * v / np.linalg.norm(v)
        if move[1] == 0:
            loose = -1  # no loose bead: every exclusion is a false one
        ref_keep = [i for i in range(14) if rng.random() > 0.1]
        fu_keep = [i for i in range(14) if rng.random() > 0.1]
        extra = rng.normal(0, 25, (strays, 3)) + np.array([0.0, 0.0, 60.0])
        ref, ro = _result(rng, np.vstack([allpts[ref_keep], extra[: strays // 2]]), noise)
        fu, fo = _result(
            rng, np.vstack([rot.apply(moved[fu_keep]) + shift, extra[strays // 2 :]]), noise
        )
        segs = {
            "reference_segment": "bone",
            "moving_segment": "implant",
            "segments": {"bone": tpl[:8].tolist(), "implant": tpl[8:].tolist()},
        }
        t0 = time.perf_counter()
        d = migrate(segs, ref, fu).to_dict()
        times.append(time.perf_counter() - t0)
        ok = True
        for name, lo, k in (("bone", 0, 8), ("implant", 8, 6)):
            inv_r = {int(o): i for i, o in enumerate(ro)}
            inv_f = {int(o): i for i, o in enumerate(fo)}
            pos_r = {o: i for i, o in enumerate(ref_keep)}
            pos_f = {o: i for i, o in enumerate(fu_keep)}
            exp_r = [f"M{inv_r[pos_r[lo + j]]}" if lo + j in pos_r else None for j in range(k)]
            exp_f = [f"M{inv_f[pos_f[lo + j]]}" if lo + j in pos_f else None for j in range(k)]
            consistent = [
                exp_r[j] is not None and exp_f[j] is not None and lo + j != loose for j in range(k)
            ]
            if sum(consistent) < 3:
                continue
            s = d["segments"][name]
            excluded = {e["marker"] for e in s["excluded"]}
            for j in range(k):
                used = (
                    s["reference_ids"][j] is not None
                    and s["followup_ids"][j] is not None
                    and j not in excluded
                )
                if used != consistent[j] or (
                    used and (s["reference_ids"][j], s["followup_ids"][j]) != (exp_r[j], exp_f[j])
                ):
                    ok = False
        if not ok:
            failures.append(seed)
    return {
        "cases": n,
        "strays": strays,
        "noise_mm": noise,
        "loose_move_mm": list(move),
        "failures": failures,
        "migrate_ms_median": 1000 * statistics.median(times),
        "migrate_ms_p95": 1000 * float(np.percentile(times, 95)),
    }


# --------------------------------------------------------------------- series


def _truth_result(exam, rng, noise):
    pts = [b["xyz_mm"] for b in exam.truth["beads"] if b["visible"]["A"] and b["visible"]["B"]]
    pts = np.array(pts, dtype=float).reshape(-1, 3)
    return _result(rng, pts, noise)[0]


def _images_result(exam):
    from reconstruction.geometry import Cage, Station
    from reconstruction.pipeline import reconstruct

    images = {v: f.to_raw_image() for v, f in exam.frames.items()}
    return reconstruct(Station.from_dict(exam.station), Cage.from_dict(exam.cage), images).to_dict()


MIGRATIONS = ([0.3, -0.2, 0.5, 0.5, -0.3, 0.4], [-0.8, 0.6, 1.2, -1.0, 0.8, 1.5])


def series(regions, seeds, source, noise, full_resolution=True, cache=None) -> dict:
    from simulator.series import simulate_series

    rows, doubles = [], []
    for region in regions:
        for seed in seeds:
            t0 = time.perf_counter()
            ser = simulate_series(
                region, seed, migrations=list(MIGRATIONS), full_resolution=full_resolution
            )
            exams, segments = ser
            t_sim = time.perf_counter() - t0
            rng = np.random.default_rng(seed)
            t0 = time.perf_counter()
            if source == "truth":
                results = [_truth_result(e, rng, noise) for e in exams]
            else:
                results = _cached_results(ser, region, seed, full_resolution, cache)
            t_rec = time.perf_counter() - t0
            for i in range(1, len(exams)):
                d = migrate(segments, results[0], results[i]).to_dict()
                truth = ser.migrations[ser.labels[i]]
                segs = d["segments"]
                ref_s, mov_s = segments["reference_segment"], segments["moving_segment"]
                row = {
                    "region": region,
                    "seed": seed,
                    "exam": ser.labels[i],
                    "segments": [ref_s, mov_s],
                    "markers": [segs[ref_s]["markers_matched"], segs[mov_s]["markers_matched"]],
                    "cn": [segs[ref_s]["condition_number"], segs[mov_s]["condition_number"]],
                    "me_mm": [segs[ref_s]["mean_error_mm"], segs[mov_s]["mean_error_mm"]],
                    "verdict": d["qc"]["verdict"],
                    "sim_s": t_sim,
                    "reconstruct_s": t_rec,
                }
                if d["motion"] is not None:
                    dt = np.subtract(d["motion"]["translation_mm"], truth["translation_mm"])
                    dr = np.subtract(d["motion"]["rotation_deg"], truth["rotation_deg"])
                    row["err_t_um"] = 1000 * float(np.abs(dt).max())
                    row["err_r_deg"] = float(np.abs(dr).max())
                    row["err_mtpm_um"] = 1000 * abs(d["motion"]["mtpm_mm"] - truth["mtpm_mm"])
                rows.append(row)
                if ser.labels[i] == "double":
                    doubles.append(d)
    usable = [r for r in rows if "err_t_um" in r]
    cn_ok = [r for r in usable if all(c is not None and c <= 60 for c in r["cn"])]
    summary = {
        "rows": len(rows),
        "with_motion": len(usable),
        "max_err_t_um": max((r["err_t_um"] for r in usable), default=None),
        "max_err_r_deg_cn_le_60": max((r["err_r_deg"] for r in cn_ok), default=None),
        "n_cn_le_60": len(cn_ok),
        "t_within_20um": sum(r["err_t_um"] <= 20 for r in usable),
        "r_within_0.05deg_cn_le_60": sum(r["err_r_deg"] <= 0.05 for r in cn_ok),
    }
    bins = []
    for lo, hi in ((0, 60), (60, 100), (100, 150), (150, np.inf)):
        sel = [r for r in usable if lo < max(c if c is not None else np.inf for c in r["cn"]) <= hi]
        if sel:
            et = [r["err_t_um"] for r in sel]
            er = [r["err_r_deg"] for r in sel]
            bins.append(
                {
                    "cn_max": f"({lo}, {hi}]",
                    "n": len(sel),
                    "err_t_um_median": float(np.median(et)),
                    "err_t_um_max": float(np.max(et)),
                    "err_r_deg_median": float(np.median(er)),
                    "err_r_deg_max": float(np.max(er)),
                }
            )
    summary["by_cn"] = bins
    if len([d for d in doubles if d["motion"] is not None]) >= 2:
        p = precision(doubles, include_retake=True)
        summary["double_exam_precision"] = {
            "n": p["n"],
            "translation_mm": p["translation_mm"]["precision"],
            "rotation_deg": p["rotation_deg"]["precision"],
        }
    return {"rows": rows, "summary": summary}


# ---------------------------------------------------------------------- bound
#
# Error budget of the migration: the Cramér-Rao bound of each bead's 3D
# position from the simulator's exact per-bead 2D bounds (truth
# beads[i]["crb_px"][view]: SD of row and column, px) through the two
# projections, propagated to the contract's migration (translation of the
# segment-file centroid, x-y-z rotations) in two ways:
#
# - ``ls``: the covariance of the migration as this code computes it
#   (unweighted least-squares rigid fits, consistent markers) when every
#   marker is at its bound: J Σ Jᵀ, J the Jacobian of the migration with
#   respect to all marker coordinates of both exams, Σ block-diagonal of the
#   beads' 3D covariances. What the reconstruction at its information limit
#   would give through this migration code.
# - ``crb``: the Cramér-Rao bound of the migration for any unbiased estimator
#   from the same markers (bead positions as nuisance parameters, each
#   segment's follow-up pose, markers weighted by their own 3D covariance).
#   ``ls`` >= ``crb``; they are equal for equal isotropic marker covariances.
#
# Both are first order, at the true positions; ``--mc N`` checks ``ls`` by
# Monte Carlo (true positions plus noise drawn from each bead's covariance).

_PROJ_STEP_MM = 1e-3


def _views(exam):
    from reconstruction.geometry import Detector, ViewGeometry

    return {
        n: ViewGeometry(np.asarray(v["focus_mm"], float), Detector.from_dict(v["detector"]))
        for n, v in exam.truth["views"].items()
    }


def bead_covariances(exam) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Bead id -> (true xyz, 3D covariance in mm²) for beads bounded in both views.

    Fisher information of the two views, ``Σ_v J_vᵀ C_v⁻¹ J_v`` with ``J_v``
    the 2 x 3 Jacobian of the projection (calibrated = true geometry of the
    day) and ``C_v = diag(crb_row², crb_col²)`` (the simulator's bound is the
    diagonal of the inverse 2D Fisher matrix).
    """
    views = _views(exam)
    out = {}
    for b in exam.truth["beads"]:
        crb = b["crb_px"]
        if any(crb.get(n) is None for n in ("A", "B")):
            continue
        x = np.asarray(b["xyz_mm"], float)
        info = np.zeros((3, 3))
        for n in ("A", "B"):
            jac = np.empty((2, 3))
            for k in range(3):
                dx = np.zeros(3)
                dx[k] = _PROJ_STEP_MM
                jac[:, k] = (views[n].project(x + dx) - views[n].project(x - dx)) / (
                    2 * _PROJ_STEP_MM
                )
            if not np.all(np.isfinite(jac)):
                break
            info += jac.T @ np.diag(1.0 / np.square(crb[n])) @ jac
        else:
            out[b["id"]] = (x, np.linalg.inv(info))
    return out


def _motion6(listed_moving, p_ref, q_ref, p_mov, q_mov) -> np.ndarray:
    """Contract migration [tx, ty, tz (mm), rx, ry, rz (deg)] from the four marker sets."""
    from reconstruction.migration import Motion
    from reconstruction.rigid import fit_rigid

    rel = fit_rigid(p_ref, q_ref).inverse().compose(fit_rigid(p_mov, q_mov))
    m = Motion.of("m", "r", rel, listed_moving)
    return np.concatenate([m.translation_mm, m.rotation_deg])


def _ls_covariance(listed_moving, sets, covs) -> np.ndarray:
    """6 x 6 covariance of ``_motion6`` (first order) for marker covariances ``covs``.

    ``sets`` = [p_ref, q_ref, p_mov, q_mov] (true positions), ``covs`` the
    matching lists of 3 x 3 covariances.
    """
    x0 = np.concatenate([s.ravel() for s in sets])
    shapes = [s.shape for s in sets]

    def f(x):
        parts, i = [], 0
        for sh in shapes:
            n = sh[0] * 3
            parts.append(x[i : i + n].reshape(sh))
            i += n
        return _motion6(listed_moving, *parts)

    h = 1e-4
    jac = np.empty((6, x0.size))
    for k in range(x0.size):
        dx = np.zeros_like(x0)
        dx[k] = h
        jac[:, k] = (f(x0 + dx) - f(x0 - dx)) / (2 * h)
    sigma = np.zeros((x0.size, x0.size))
    i = 0
    for c in (c for cs in covs for c in cs):
        sigma[i : i + 3, i : i + 3] = c
        i += 3
    return jac @ sigma @ jac.T, jac


def _crb_covariance(listed_moving, p_ref, q_ref, p_mov, q_mov, covs) -> np.ndarray:
    """Cramér-Rao bound (6 x 6) of the migration from these markers.

    Model: reference markers ``y_i = X_i + e``, follow-up markers
    ``z_i = R_s X_i + t_s + e'`` (s = the marker's segment), Gaussian errors
    with the beads' 3D covariances; unknowns the X_i and both follow-up poses
    (rotation vectors as small corrections about the true ones). The migration
    depends on the poses only.
    """
    from reconstruction.rigid import RigidMotion, fit_rigid

    true = [fit_rigid(p_ref, q_ref), fit_rigid(p_mov, q_mov)]
    x_true = np.vstack([p_ref, p_mov])
    seg = np.r_[np.zeros(len(p_ref), int), np.ones(len(p_mov), int)]
    n = len(x_true)

    def pose(theta, s):
        w, tau = theta[3 * n + 6 * s : 3 * n + 6 * s + 3], theta[3 * n + 6 * s + 3 :][:3]
        dr = Rotation.from_rotvec(w).as_matrix()
        return RigidMotion(dr @ true[s].R, true[s].t + tau)

    def obs(theta):
        x = theta[: 3 * n].reshape(n, 3)
        z = np.vstack([pose(theta, s).apply(x[seg == s]) for s in (0, 1)])
        return np.concatenate([x.ravel(), z.ravel()])

    def mig(theta):
        rel = pose(theta, 0).inverse().compose(pose(theta, 1))
        from reconstruction.migration import Motion

        m = Motion.of("m", "r", rel, listed_moving)
        return np.concatenate([m.translation_mm, m.rotation_deg])

    theta0 = np.concatenate([x_true.ravel(), np.zeros(12)])
    h = 1e-5
    k = theta0.size
    jo = np.empty((6 * n, k))
    jm = np.empty((6, k))
    for j in range(k):
        d = np.zeros(k)
        d[j] = h
        jo[:, j] = (obs(theta0 + d) - obs(theta0 - d)) / (2 * h)
        jm[:, j] = (mig(theta0 + d) - mig(theta0 - d)) / (2 * h)
    # Observation order: reference markers (ref seg, mov seg), then follow-up.
    w = np.zeros((6 * n, 6 * n))
    for i, c in enumerate(list(covs[0]) + list(covs[2]) + list(covs[1]) + list(covs[3])):
        w[3 * i : 3 * i + 3, 3 * i : 3 * i + 3] = np.linalg.inv(c)
    fisher = jo.T @ w @ jo
    return jm @ np.linalg.solve(fisher, jm.T)


def _share(jac, covs, n_first) -> float:
    """Fraction of the translation variance (trace) due to the first ``n_first`` markers."""
    parts = []
    for k, c in enumerate(c for cs in covs for c in cs):
        jt = jac[:3, 3 * k : 3 * k + 3]
        parts.append(float(np.trace(jt @ c @ jt.T)))
    return float(sum(parts[:n_first]) / sum(parts))


def _goal_probability(cov, cn_max, rng, draws=20000) -> float:
    """P(max |translation error| <= 20 µm and, if CN <= 60, max |rotation error| <= 0.05°)."""
    e = rng.multivariate_normal(np.zeros(6), cov, size=draws)
    ok = np.abs(e[:, :3]).max(axis=1) <= 0.020
    if cn_max <= 60:
        ok &= np.abs(e[:, 3:]).max(axis=1) <= 0.05
    return float(ok.mean())


def _cached_results(ser, region, seed, full_resolution, cache):
    """Reconstruction results of a series' exams, cached as JSON under ``cache``."""
    import os

    results = []
    for label, exam in zip(ser.labels, ser.exams_list, strict=True):
        path = None
        if cache:
            os.makedirs(cache, exist_ok=True)
            res = "full" if full_resolution else "binned"
            path = os.path.join(cache, f"{region}-{seed}-{label}-{res}.json")
            if os.path.exists(path):
                with open(path) as fh:
                    results.append(json.load(fh))
                continue
        r = _images_result(exam)
        if path:
            with open(path, "w") as fh:
                json.dump(r, fh)
        results.append(r)
    return results


def _visible(exam) -> dict[str, bool]:
    """Bead id -> visible in both views (the simulator's truth)."""
    return {b["id"]: b["visible"]["A"] and b["visible"]["B"] for b in exam.truth["beads"]}


def _rid(d, seg, ids, bead):
    return d["segments"][seg]["reference_ids"][ids[seg].index(bead)]


def _fid(d, seg, ids, bead):
    return d["segments"][seg]["followup_ids"][ids[seg].index(bead)]


def bound(regions, seeds, full_resolution=True, cache=None, mc=0) -> dict:
    """Actual migration error of the reconstructed series against its bound, per exam pair."""
    from simulator.series import simulate_series

    rng = np.random.default_rng(0)
    rows = []
    for region in regions:
        for seed in seeds:
            ser = simulate_series(
                region, seed, migrations=list(MIGRATIONS), full_resolution=full_resolution
            )
            exams, segments = ser
            results = _cached_results(ser, region, seed, full_resolution, cache)
            ids: dict[str, list[str]] = {}
            for b in exams[0].truth["beads"]:
                ids.setdefault(b["segment"], []).append(b["id"])
            ref_s, mov_s = segments["reference_segment"], segments["moving_segment"]
            listed = np.asarray(segments["segments"][mov_s], float)
            cov0 = bead_covariances(exams[0])
            vis0 = _visible(exams[0])
            rec0 = {m["id"]: np.asarray(m["xyz_mm"]) for m in results[0]["markers"]}
            for i in range(1, len(exams)):
                covi = bead_covariances(exams[i])
                visi = _visible(exams[i])
                reci = {m["id"]: np.asarray(m["xyz_mm"]) for m in results[i]["markers"]}
                d = migrate(segments, results[0], results[i]).to_dict()
                truth = ser.migrations[ser.labels[i]]
                row = {"region": region, "seed": seed, "exam": ser.labels[i]}
                row["verdict"] = d["qc"]["verdict"]
                segrows = {}
                used = {}
                for name in (ref_s, mov_s):
                    s = d["segments"][name]
                    excl = {e["marker"] for e in s["excluded"]}
                    use = [
                        j
                        for j, (a, b) in enumerate(
                            zip(s["reference_ids"], s["followup_ids"], strict=True)
                        )
                        if a is not None and b is not None and j not in excl
                    ]
                    used[name] = use
                    # 3D error of each used marker against its true bead, and its bound.
                    e3 = []
                    for j in use:
                        bead = ids[name][j]
                        for cov, rec, key in (
                            (cov0, rec0, "reference_ids"),
                            (covi, reci, "followup_ids"),
                        ):
                            if bead in cov:
                                err = rec[s[key][j]] - cov[bead][0]
                                e3.append((float(err @ err), float(np.trace(cov[bead][1]))))
                    # Ideal recall: the beads used, and every bead visible (the
                    # issue's rule) in both views of both exams.
                    every = [
                        j
                        for j, b in enumerate(ids[name])
                        if b in cov0 and b in covi and (j in use or (vis0[b] and visi[b]))
                    ]
                    segrows[name] = {
                        "n": len(use),
                        "n_ideal": len(every),
                        "cn": s["condition_number"],
                        "me_mm": s["mean_error_mm"],
                        "excluded": sorted(excl),
                        "rms_3d_um": 1000 * float(np.sqrt(np.mean([a for a, _ in e3])))
                        if e3
                        else None,
                        "crb_3d_um": 1000 * float(np.sqrt(np.mean([b for _, b in e3])))
                        if e3
                        else None,
                    }
                    used[name + "/every"] = every
                row["segments"] = {ref_s: segrows[ref_s], mov_s: segrows[mov_s]}
                if d["motion"] is not None:
                    row["err_t_um"] = (
                        1000 * np.subtract(d["motion"]["translation_mm"], truth["translation_mm"])
                    ).tolist()
                    row["err_r_deg"] = np.subtract(
                        d["motion"]["rotation_deg"], truth["rotation_deg"]
                    ).tolist()
                cn_max = max(
                    (c if c is not None else np.inf)
                    for c in (segrows[ref_s]["cn"], segrows[mov_s]["cn"])
                )
                row["cn_max"] = None if not np.isfinite(cn_max) else cn_max
                for key, sel in (("used", ""), ("every", "/every")):
                    jr, jm = used[ref_s + sel], used[mov_s + sel]
                    beads_r = [
                        ids[ref_s][j] for j in jr if ids[ref_s][j] in cov0 and ids[ref_s][j] in covi
                    ]
                    beads_m = [
                        ids[mov_s][j] for j in jm if ids[mov_s][j] in cov0 and ids[mov_s][j] in covi
                    ]
                    if len(beads_r) < 3 or len(beads_m) < 3:
                        continue
                    sets = [
                        np.array([cov0[b][0] for b in beads_r]),
                        np.array([covi[b][0] for b in beads_r]),
                        np.array([cov0[b][0] for b in beads_m]),
                        np.array([covi[b][0] for b in beads_m]),
                    ]
                    covs = [
                        [cov0[b][1] for b in beads_r],
                        [covi[b][1] for b in beads_r],
                        [cov0[b][1] for b in beads_m],
                        [covi[b][1] for b in beads_m],
                    ]
                    ls, jac = _ls_covariance(listed, sets, covs)
                    crb = _crb_covariance(listed, *sets, covs)
                    from reconstruction.rigid import condition_number

                    cnb = max(condition_number(sets[0]), condition_number(sets[2]))
                    entry = {
                        "n": [len(beads_r), len(beads_m)],
                        "cn": [condition_number(sets[0]), condition_number(sets[2])],
                        "ls_sd_t_um": (1000 * np.sqrt(np.diag(ls)[:3])).tolist(),
                        "ls_sd_r_deg": np.sqrt(np.diag(ls)[3:]).tolist(),
                        "crb_sd_t_um": (1000 * np.sqrt(np.diag(crb)[:3])).tolist(),
                        "crb_sd_r_deg": np.sqrt(np.diag(crb)[3:]).tolist(),
                        "ls_t_share_ref": _share(jac, covs, 2 * len(beads_r)),
                        "p_goal_ls": _goal_probability(ls, cnb, rng),
                        "p_goal_crb": _goal_probability(crb, cnb, rng),
                    }
                    if mc:
                        draws = []
                        for _ in range(mc):
                            noisy = [
                                s_ + np.array([rng.multivariate_normal(np.zeros(3), c) for c in cs])
                                for s_, cs in zip(sets, covs, strict=True)
                            ]
                            draws.append(_motion6(listed, *noisy))
                        draws = np.array(draws) - _motion6(listed, *sets)
                        entry["mc_sd_t_um"] = (1000 * draws[:, :3].std(axis=0)).tolist()
                        entry["mc_sd_r_deg"] = draws[:, 3:].std(axis=0).tolist()
                    if key == "used":
                        # Actual marker errors, linearised through the migration:
                        # which beads the actual error comes from.
                        errs = [
                            np.array([rec0[_rid(d, ref_s, ids, b)] - cov0[b][0] for b in beads_r]),
                            np.array([reci[_fid(d, ref_s, ids, b)] - covi[b][0] for b in beads_r]),
                            np.array([rec0[_rid(d, mov_s, ids, b)] - cov0[b][0] for b in beads_m]),
                            np.array([reci[_fid(d, mov_s, ids, b)] - covi[b][0] for b in beads_m]),
                        ]
                        e = np.concatenate([x.ravel() for x in errs])
                        entry["linearised_err_t_um"] = (1000 * (jac @ e)[:3]).tolist()
                        entry["linearised_err_r_deg"] = (jac @ e)[3:].tolist()
                        names = (
                            [f"{ref_s}:{b}@ref" for b in beads_r]
                            + [f"{ref_s}:{b}@fu" for b in beads_r]
                            + [f"{mov_s}:{b}@ref" for b in beads_m]
                            + [f"{mov_s}:{b}@fu" for b in beads_m]
                        )
                        contrib = [
                            (
                                nm,
                                1000
                                * float(
                                    np.linalg.norm(
                                        jac[:3, 3 * k : 3 * k + 3] @ e[3 * k : 3 * k + 3]
                                    )
                                ),
                            )
                            for k, nm in enumerate(names)
                        ]
                        contrib.sort(key=lambda c: -c[1])
                        entry["top_contributions_t_um"] = contrib[:4]
                        # Marker errors relative to their bound (Mahalanobis, 3 dof),
                        # after removing each exam's rigid offset (a shift or turn
                        # of a whole exam's frame does not change the migration).
                        from reconstruction.rigid import fit_rigid

                        aligned = [None] * 4
                        for a, c in ((0, 2), (1, 3)):
                            true = np.vstack([sets[a], sets[c]])
                            off = fit_rigid(true, true + np.vstack([errs[a], errs[c]]))
                            aligned[a] = sets[a] + errs[a] - off.apply(sets[a])
                            aligned[c] = sets[c] + errs[c] - off.apply(sets[c])
                        e = np.concatenate([x.ravel() for x in aligned])
                        allc = [c for cs in covs for c in cs]
                        z = [
                            float(
                                np.sqrt(
                                    e[3 * k : 3 * k + 3] @ np.linalg.solve(c, e[3 * k : 3 * k + 3])
                                )
                            )
                            for k, c in enumerate(allc)
                        ]
                        entry["marker_chi_rms"] = float(np.sqrt(np.mean(np.square(z)) / 3))
                        entry["marker_chi_max"] = [names[int(np.argmax(z))], max(z)]
                    row["bound_" + key] = entry
                rows.append(row)
    summary = {}
    for region in regions:
        sel = [r for r in rows if r["region"] == region and "bound_used" in r]
        if not sel:
            continue
        worst = [max(r["bound_used"]["ls_sd_t_um"]) for r in sel]
        ideal = [max(r["bound_every"]["ls_sd_t_um"]) for r in sel if "bound_every" in r]
        summary[region] = {
            "pairs": len(sel),
            "actual_max_err_t_um": max(max(abs(x) for x in r["err_t_um"]) for r in sel),
            "ls_worst_axis_sd_t_um": [min(worst), float(np.median(worst)), max(worst)],
            "ideal_worst_axis_sd_t_um": [min(ideal), float(np.median(ideal)), max(ideal)]
            if ideal
            else None,
            "p_goal_ls_median": float(np.median([r["bound_used"]["p_goal_ls"] for r in sel])),
            "p_goal_ideal_median": float(
                np.median([r["bound_every"]["p_goal_ls"] for r in sel if "bound_every" in r])
            )
            if ideal
            else None,
            "ls_t_share_ref_median": float(
                np.median([r["bound_used"]["ls_t_share_ref"] for r in sel])
            ),
            "max_actual_minus_linearised_t_um": max(
                abs(a - x) for a, x in _per_axis(sel, "err_t_um", "linearised_err_t_um")
            ),
            "max_actual_minus_linearised_r_deg": max(
                abs(a - x) for a, x in _per_axis(sel, "err_r_deg", "linearised_err_r_deg")
            ),
            "crb_over_ls_worst_axis_t": [
                float(
                    np.min(
                        q := [
                            max(r["bound_used"]["crb_sd_t_um"]) / w
                            for r, w in zip(sel, worst, strict=True)
                        ]
                    )
                ),
                float(np.max(q)),
            ],
            "marker_err_over_bound_rms_median": float(
                np.median([r["bound_used"]["marker_chi_rms"] for r in sel])
            ),
            "actual_over_ls_t_rms": _rms_ratio(sel, "err_t_um", "ls_sd_t_um"),
            "actual_over_ls_r_rms": _rms_ratio(sel, "err_r_deg", "ls_sd_r_deg"),
        }
    return {"rows": rows, "summary": summary}


def _per_axis(sel: list[dict], actual: str, bound: str):
    """(actual, bound) per axis over the rows ``sel``: ``r[actual]`` with
    ``r["bound_used"][bound]``."""
    for r in sel:
        yield from zip(r[actual], r["bound_used"][bound], strict=True)


def _rms_ratio(sel: list[dict], actual: str, bound: str) -> float:
    """RMS of actual over bound, pooled over the rows' axes."""
    return float(np.sqrt(np.mean([(e / b) ** 2 for e, b in _per_axis(sel, actual, bound)])))


def _axes(v, fmt):
    return "/".join(format(x, fmt) for x in v)


def print_bound(out: dict) -> None:
    _print_bound_rows(out)
    print()
    print_bound_table(out)
    print(json.dumps(out["summary"], indent=1))


def print_bound_table(out: dict) -> None:
    """The budget as a Markdown table: actual error against the bounds, per exam pair.

    Translation: largest axis of the actual error, and the SD of the worst
    axis at the bound; rotation likewise. "ideal" is the LS bound with the
    beads used plus every bead visible (issue's rule) in both views of both
    exams. P: probability of meeting the issue's goal at the LS bound.
    """
    print(
        "| series | exam | markers ref/mov (ideal) | CN ref/mov | t error max (µm) |"
        " t SD LS / CRB / ideal (µm) | r error max (°) | r SD LS / CRB / ideal (°) |"
        " P goal LS / ideal | marker error / bound (RMS) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in out["rows"]:
        segs = list(r["segments"].values())
        u, e = r.get("bound_used"), r.get("bound_every")
        cn = "/".join("inf" if s["cn"] is None else f"{s['cn']:.0f}" for s in segs)
        n = f"{segs[0]['n']}/{segs[1]['n']} ({segs[0]['n_ideal']}/{segs[1]['n_ideal']})"
        if "err_t_um" not in r or u is None:
            print(
                f"| {r['region']} {r['seed']} | {r['exam']} | {n} | {cn} | - | - | - | - | - | - |"
            )
            continue
        et = max(abs(x) for x in r["err_t_um"])
        er = max(abs(x) for x in r["err_r_deg"])
        ideal_t = f"{max(e['ls_sd_t_um']):.1f}" if e else "-"
        ideal_r = f"{max(e['ls_sd_r_deg']):.3f}" if e else "-"
        p_ideal = f"{e['p_goal_ls']:.2f}" if e else "-"
        print(
            f"| {r['region']} {r['seed']} | {r['exam']} | {n} | {cn} | {et:.1f} |"
            f" {max(u['ls_sd_t_um']):.1f} / {max(u['crb_sd_t_um']):.1f} / {ideal_t} |"
            f" {er:.3f} | {max(u['ls_sd_r_deg']):.3f} / {max(u['crb_sd_r_deg']):.3f} /"
            f" {ideal_r} | {u['p_goal_ls']:.2f} / {p_ideal} | {u['marker_chi_rms']:.1f} |"
        )


def _print_bound_rows(out: dict) -> None:
    """Per exam pair: CN, markers, actual error per axis, the bounds' SD per axis."""
    print(
        "per pair: n and CN (reference/moving segment, markers used); actual error x/y/z;"
        " LS = SD of this code's fit, each marker at its 3D bound; CRB = bound of any"
        " unbiased estimator from the same markers; 'every' = LS with the beads used and all"
        " beads visible (issue's rule) in both views of both exams; P = probability of"
        " meeting the goal at the LS bound"
    )
    for r in out["rows"]:
        segs = list(r["segments"].values())
        head = (
            f"{r['region']:6}{r['seed']:2d} {r['exam']:11}"
            f" n {segs[0]['n']}/{segs[1]['n']} (of {segs[0]['n_ideal']}/"
            f"{segs[1]['n_ideal']})"
            f" CN {segs[0]['cn'] or float('inf'):.0f}/{segs[1]['cn'] or float('inf'):.0f}"
            f" 3D rms/crb µm {segs[0]['rms_3d_um'] or float('nan'):.0f}/"
            f"{segs[0]['crb_3d_um'] or float('nan'):.0f},"
            f"{segs[1]['rms_3d_um'] or float('nan'):.0f}/{segs[1]['crb_3d_um'] or float('nan'):.0f}"
            f" {r['verdict']}"
        )
        print(head)
        if "err_t_um" in r:
            print(
                f"   err  t µm {_axes(r['err_t_um'], '6.1f')}   r ° {_axes(r['err_r_deg'], '7.4f')}"
            )
        for key in ("used", "every"):
            e = r.get("bound_" + key)
            if e is None:
                continue
            line = (
                f"   {key:5}LS t {_axes(e['ls_sd_t_um'], '6.1f')}"
                f"   r {_axes(e['ls_sd_r_deg'], '7.4f')}"
                f"  CRB t {_axes(e['crb_sd_t_um'], '5.1f')} r {_axes(e['crb_sd_r_deg'], '6.4f')}"
                f"  P {e['p_goal_ls']:.2f}"
            )
            if "mc_sd_t_um" in e:
                line += f"  MC t {_axes(e['mc_sd_t_um'], '5.1f')}"
            print(line)
            if "linearised_err_t_um" in e:
                top = ", ".join(f"{n} {v:.1f}" for n, v in e["top_contributions_t_um"][:3])
                print(
                    f"   lin. err t {_axes(e['linearised_err_t_um'], '6.1f')};"
                    f" marker err/bound rms {e['marker_chi_rms']:.2f},"
                    f" max {e['marker_chi_max'][1]:.1f} ({e['marker_chi_max'][0]}); top: {top}"
                )


def print_series_table(out: dict) -> None:
    """The error against CN of every segment (issue 6), as a Markdown table.

    One line per segment of each exam pair; the translation and rotation
    errors are those of the pair's migration (largest axis), so they appear on
    both of its segments' lines.
    """
    print(
        "| series | exam | segment | markers | CN | ME (µm) | translation error (µm) |"
        " rotation error (°) | verdict |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in out["rows"]:
        et = f"{r['err_t_um']:.1f}" if "err_t_um" in r else "-"
        er = f"{r['err_r_deg']:.4f}" if "err_r_deg" in r else "-"
        for k, (role, name) in enumerate(zip(("ref", "moving"), r["segments"], strict=True)):
            cn = "inf" if r["cn"][k] is None else f"{r['cn'][k]:.1f}"
            me = "-" if r["me_mm"][k] is None else f"{1000 * r['me_mm'][k]:.1f}"
            print(
                f"| {r['region']} {r['seed']} | {r['exam']} | {name} ({role}) |"
                f" {r['markers'][k]} | {cn} | {me} | {et} | {er} | {r['verdict']} |"
            )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", help="write the full result here")
    sub = ap.add_subparsers(dest="part", required=True)
    lab = sub.add_parser("labelling", parents=[common])
    lab.add_argument("--n", type=int, default=500)
    lab.add_argument("--strays", type=int, default=6)
    lab.add_argument("--noise", type=float, default=0.015, help="mm per coordinate")
    lab.add_argument(
        "--move", default="0.4,1.8", help="loose bead displacement range, mm ('0,0': none)"
    )
    se = sub.add_parser("series", parents=[common])
    se.add_argument("--source", choices=("truth", "images"), default="truth")
    se.add_argument("--regions", default="spine,upper,lower")
    se.add_argument("--seeds", default="0-4")
    se.add_argument("--noise", type=float, default=0.015, help="mm per coordinate (truth)")
    se.add_argument("--binned", action="store_true", help="detectors read out 2 x 2 binned")
    se.add_argument("--cache", help="folder for the reconstruction results (reused if there)")
    bo = sub.add_parser("bound", parents=[common])
    bo.add_argument("--regions", default="lower,spine,upper")
    bo.add_argument("--seeds", default="0-3")
    bo.add_argument("--binned", action="store_true", help="detectors read out 2 x 2 binned")
    bo.add_argument("--cache", help="folder for the reconstruction results (reused if there)")
    bo.add_argument("--mc", type=int, default=0, help="Monte Carlo check of the LS bound")
    args = ap.parse_args(argv)
    if args.part == "bound":
        out = bound(
            args.regions.split(","),
            parse_seeds(args.seeds),
            full_resolution=not args.binned,
            cache=args.cache,
            mc=args.mc,
        )
        print_bound(out)
    elif args.part == "labelling":
        move = tuple(float(x) for x in args.move.split(","))
        out = labelling(args.n, args.strays, args.noise, move)
        print(json.dumps(out, indent=1))
    else:
        out = series(
            args.regions.split(","),
            parse_seeds(args.seeds),
            args.source,
            args.noise,
            full_resolution=not args.binned,
            cache=args.cache,
        )
        print_series_table(out)
        print(json.dumps(out["summary"], indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
