"""Where the 3D bead error comes from: an error budget on simulator ground truth.

For each region, cage and seed (the simulator's default clinical exposure),
the markers the reconstruction reports (matched to a true bead within 0.5 mm)
are triangulated four ways (as the product does: the point of the lines'
common perpendicular weighted by the two centres' reported sigmas):

``full``
    calibrated geometry, measured centres: the product's 3D error.
``true geometry``
    the geometry on the day from the truth, measured centres: the share of the
    bead centres.
``calibration``
    calibrated geometry, the true image positions: the share of the
    calibration.
``bound``
    the Cramér-Rao bound of the 3D position of the same beads: each bead's
    Fisher information from both views, ``J^T diag(1/crb^2) J`` with ``J`` the
    projection's Jacobian at the true position and ``crb`` the simulator's
    exact per-bead 2D bound (truth ``crb_px``), then the RMS of
    ``sqrt(trace(F^-1))`` (Kay, *Fundamentals of Statistical Signal
    Processing I*, 1993, eq. 3.31, for independent measurements of the two
    views). No unbiased estimator does better on these beads.

Also the 2D centre error over the exact bound (RMS over RMS) and the beads
whose error exceeds 3.5 bounds in a view, with the centre's model shift (see
:func:`reconstruction.detect.with_model_uncertainty`). A pooled line closes
each run.

Usage::

    python -m benchmarks.bench_budget [--seeds 1-3] [--regions spine,upper,lower] [--outliers]
    python -m benchmarks.bench_budget --no-texture   # how much of the excess is bone texture
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks.common import parse_seeds
from reconstruction.geometry import Cage, Detector, Station, ViewGeometry
from reconstruction.pipeline import reconstruct, triangulate_pairs


def _jacobian(view: ViewGeometry, xyz: np.ndarray, h: float = 1e-4) -> np.ndarray:
    """d(row, col)/d(x, y, z) of the projection at ``xyz`` (central differences)."""
    cols = []
    for k in range(3):
        d = np.zeros(3)
        d[k] = h
        cols.append((view.project((xyz + d)[None])[0] - view.project((xyz - d)[None])[0]) / (2 * h))
    return np.stack(cols, axis=1)


def bound_3d(views: dict[str, ViewGeometry], xyz: np.ndarray, crb: dict[str, np.ndarray]) -> float:
    """Cramér-Rao bound (mm, RMS of the 3D error) of one bead from both views."""
    fisher = np.zeros((3, 3))
    for v in "AB":
        j = _jacobian(views[v], xyz)
        fisher += j.T @ np.diag(1.0 / np.asarray(crb[v], float) ** 2) @ j
    return float(np.sqrt(np.trace(np.linalg.inv(fisher))))


def exam_budget(ex) -> dict:
    st, cg = Station.from_dict(ex.station), Cage.from_dict(ex.cage)
    res = reconstruct(st, cg, {k: f.to_raw_image() for k, f in ex.frames.items()})
    truth = ex.truth
    true_views = {}
    for v in "AB":
        day = truth["views"][v]
        true_views[v] = ViewGeometry(np.array(day["focus_mm"]), Detector.from_dict(day["detector"]))
    cal_views = {v: res.views[v].geometry for v in "AB"}
    beads = truth["beads"]
    xyz = np.array([b["xyz_mm"] for b in beads])
    rows = []
    for m in res.markers:
        d = np.linalg.norm(xyz - m.xyz_mm, axis=1)
        j = int(d.argmin())
        crb = {v: beads[j]["crb_px"][v] for v in "AB"}
        if d[j] > 0.5 or crb["A"] is None or crb["B"] is None:
            continue
        meas = {v: res.views[v].detections.rc[m.det_idx[v]] for v in "AB"}
        shift = {}
        for v in "AB":
            ms = res.views[v].detections.model_shift_px
            shift[v] = float(ms[m.det_idx[v]]) if ms is not None else 0.0
        sig = {v: float(res.views[v].detections.sigma_px[m.det_idx[v]]) for v in "AB"}
        rows.append(
            (j, meas, {v: np.array(beads[j]["image_px"][v]) for v in "AB"}, crb, shift, sig)
        )
    if not rows:
        return {"n": 0}
    true_xyz = xyz[[r[0] for r in rows]]

    def tri(views, k):
        pa = np.array([r[k]["A"] for r in rows])
        pb = np.array([r[k]["B"] for r in rows])
        sig = {v: np.array([r[5][v] for r in rows]) for v in "AB"}
        return triangulate_pairs(views["A"], pa, sig["A"], views["B"], pb, sig["B"])[0]

    def sq(p):
        return np.sum((p - true_xyz) ** 2, axis=1)

    err2d = np.array([[r[1][v] - r[2][v] for v in "AB"] for r in rows]).reshape(-1, 2)
    crb2d = np.array([[r[3][v] for v in "AB"] for r in rows], float).reshape(-1, 2)
    outliers = []
    for r in rows:
        for v in "AB":
            z = np.abs(r[1][v] - r[2][v]) / np.asarray(r[3][v], float)
            if z.max() > 3.5:
                outliers.append((beads[r[0]]["id"], v, float(z.max()), r[4][v]))
    return {
        "n": len(rows),
        "full": sq(tri(cal_views, 1)),
        "true_geometry": sq(tri(true_views, 1)),
        "calibration": sq(tri(cal_views, 2)),
        "bound": np.array([bound_3d(true_views, xyz[r[0]], r[3]) ** 2 for r in rows]),
        "ratio_2d": float(np.sqrt(np.mean(err2d**2)) / np.sqrt(np.mean(crb2d**2))),
        "outliers": outliers,
    }


def _um(sq: np.ndarray) -> float:
    return 1000.0 * float(np.sqrt(np.mean(sq)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1-3")
    ap.add_argument("--regions", default="spine,upper,lower")
    ap.add_argument("--cages", default="uniplanar,biplanar")
    ap.add_argument("--outliers", action="store_true", help="list beads over 3.5 bounds")
    ap.add_argument(
        "--no-texture",
        action="store_true",
        help="diagnostic: render without bone texture (not the default exposure)",
    )
    args = ap.parse_args(argv)
    from simulator.exam import simulate_exam
    from simulator.render import RenderOptions

    kw = {"render_options": RenderOptions(texture=False)} if args.no_texture else {}

    print(
        "| region | cage | seed | markers | 3D µm | true geometry | calibration | 3D bound µm "
        "| 3D / bound | 2D / bound |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    pool: dict[str, list] = {k: [] for k in ("full", "true_geometry", "calibration", "bound")}
    for region in args.regions.split(","):
        for cage in args.cages.split(","):
            for seed in parse_seeds(args.seeds):
                b = exam_budget(simulate_exam(region, seed, cage=cage, **kw))
                if not b["n"]:
                    print(f"| {region} | {cage} | {seed} | 0 | | | | | | |")
                    continue
                for k in pool:
                    pool[k].append(b[k])
                print(
                    f"| {region} | {cage} | {seed} | {b['n']} | {_um(b['full']):.1f} "
                    f"| {_um(b['true_geometry']):.1f} | {_um(b['calibration']):.1f} "
                    f"| {_um(b['bound']):.1f} | {_um(b['full']) / _um(b['bound']):.2f} "
                    f"| {b['ratio_2d']:.2f} |",
                    flush=True,
                )
                if args.outliers:
                    for bead, v, z, shift in b["outliers"]:
                        print(f"  {bead} view {v}: {z:.1f} bounds, model shift {shift:.2f} px")
    allv = {k: np.concatenate(v) for k, v in pool.items()}
    print(
        f"\npooled: {len(allv['full'])} markers, 3D {_um(allv['full']):.1f} µm RMS, "
        f"true geometry {_um(allv['true_geometry']):.1f}, calibration "
        f"{_um(allv['calibration']):.1f}, bound {_um(allv['bound']):.1f} "
        f"({_um(allv['full']) / _um(allv['bound']):.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
