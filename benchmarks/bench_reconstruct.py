"""Reconstruction: accuracy on simulator ground truth, and speed.

``accuracy``
    For each region and cage, ``--seeds`` exams at the simulator's default
    clinical exposure are reconstructed; per exam: 3D bead error (RMS, µm) of
    the markers matched to a true bead, recall of the beads the truth counts
    visible in both views, false markers (further than 0.5 mm from every true
    bead), focal-spot error (mm), and the 2D centre error of the patient
    markers and of the cage markers against the Cramér–Rao bound that the
    detector reports for each (the bound of the blurred-disc model at the
    window's measured noise): ratio of RMS error to RMS bound; for beads also
    against the simulator's exact bound for the exam's own noise (truth
    ``crb_px``), the issue's reference.
``speed``
    In-process ``reconstruct`` of a decoded stereo pair (best and median of
    ``--n`` runs), and the ``rsa-station reconstruct`` command on DICOM files
    (wall time, imports and DICOM reading included).

Usage::

    python -m benchmarks.bench_reconstruct accuracy [--seeds 0-4]
    python -m benchmarks.bench_reconstruct speed [--n 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from reconstruction.geometry import Cage, Station
from reconstruction.pipeline import reconstruct


def _seeds(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(x) for x in text.split(",")]


def exam_figures(ex, res) -> dict:
    truth = ex.truth
    beads = truth["beads"]
    xyz = np.array([b["xyz_mm"] for b in beads])
    got = np.array([m.xyz_mm for m in res.markers]).reshape(-1, 3)
    d = np.linalg.norm(got[:, None] - xyz[None], axis=2) if len(got) else np.zeros((0, len(xyz)))
    j = d.argmin(1) if len(got) else np.zeros(0, int)
    dmin = d.min(1) if len(got) else np.zeros(0)
    good = dmin < 0.5  # further from every true bead: a false marker (wrong pairing)
    both = {i for i, b in enumerate(beads) if b["visible"]["A"] and b["visible"]["B"]}
    found = set(j[good].tolist()) & both
    # beads measurable to 0.05 px in both views (the simulator's exact bound): a
    # fair diagnostic of what detection and matching lose among the easy ones
    sharp = {
        i
        for i in both
        if beads[i].get("crb_px") and all(max(beads[i]["crb_px"][v]) <= 0.05 for v in "AB")
    }
    err2d, crb2d, true_crb = [], [], []
    for m, jj, ok in zip(res.markers, j, good, strict=True):
        if not ok:
            continue
        for v in "AB":
            det = res.views[v].detections
            k = m.det_idx[v]
            err2d.append(det.rc[k] - np.array(beads[jj]["image_px"][v]))
            crb2d.append(det.sigma_px[k])
            # the simulator's exact bound for this exam's noise (when it gives one)
            tc = (beads[jj].get("crb_px") or {}).get(v)
            true_crb.append(tc if tc is not None else [np.nan, np.nan])
    cage_err, cage_crb = [], []
    for v in "AB":
        vr = res.views[v]
        tpos = np.array([c["image_px"][v] or [np.nan] * 2 for c in truth["cage_markers"]], float)
        e = vr.detections.rc[vr.found_det_idx] - tpos[vr.found_marker_idx]
        cage_err.append(e)
        cage_crb.append(vr.detections.sigma_px[vr.found_det_idx])
    cage_err = np.concatenate(cage_err)
    cage_crb = np.concatenate(cage_crb)
    e2 = np.array(err2d).reshape(-1, 2)
    c2 = np.array(crb2d)
    focus = [
        float(
            np.linalg.norm(res.views[v].geometry.focus_mm - np.array(truth["views"][v]["focus_mm"]))
        )
        for v in "AB"
    ]
    return {
        "rms_um": float(1000 * np.sqrt(np.mean(dmin[good] ** 2))) if good.any() else float("nan"),
        "recall": len(found) / max(len(both), 1),
        "n_both": len(both),
        "recall_crb05": len(found & sharp) / len(sharp) if sharp else float("nan"),
        "n_crb05": len(sharp),
        "false": int((~good).sum()),
        "focus_mm": max(focus),
        "bead_2d_rms_px": float(np.sqrt(np.nanmean(e2**2))) if len(e2) else float("nan"),
        "bead_crb_ratio": float(np.sqrt(np.nanmean(e2**2)) / np.sqrt(np.mean(c2**2)))
        if len(e2)
        else float("nan"),
        "cage_crb_ratio": float(np.sqrt(np.nanmean(cage_err**2)) / np.sqrt(np.mean(cage_crb**2))),
        "bead_true_crb_ratio": float(
            np.sqrt(np.nanmean(e2**2)) / np.sqrt(np.nanmean(np.array(true_crb, float) ** 2))
        )
        if len(e2) and np.isfinite(np.array(true_crb, float)).any()
        else float("nan"),
        "verdict": res.verdict,
    }


def accuracy(args) -> None:
    from simulator.exam import simulate_exam

    print(
        "region  cage       seed  3D_um  recall  rec_crb05  false  focus_mm  bead2D_px"
        "  bead/CRB  cage/CRB  bead/simCRB  verdict"
    )
    for region in ("spine", "upper", "lower"):
        for cage in ("uniplanar", "biplanar"):
            rows = []
            for seed in _seeds(args.seeds):
                ex = simulate_exam(region, seed, cage=cage)
                st, cg = Station.from_dict(ex.station), Cage.from_dict(ex.cage)
                res = reconstruct(st, cg, {k: f.to_raw_image() for k, f in ex.frames.items()})
                f = exam_figures(ex, res)
                rows.append(f)
                print(
                    f"{region:6s}  {cage:9s}  {seed:4d}  {f['rms_um']:5.1f}  {f['recall']:6.2f}"
                    f"  {f['recall_crb05']:5.2f}/{f['n_crb05']:<3d}"
                    f"  {f['false']:5d}  {f['focus_mm']:8.3f}  {f['bead_2d_rms_px']:9.3f}"
                    f"  {f['bead_crb_ratio']:8.2f}  {f['cage_crb_ratio']:8.2f}"
                    f"  {f['bead_true_crb_ratio']:11.2f}  {f['verdict']}",
                    flush=True,
                )
            rec = statistics.mean(r["recall"] for r in rows)
            rms = statistics.mean(r["rms_um"] for r in rows if np.isfinite(r["rms_um"]))
            worst = max(r["rms_um"] for r in rows)
            rec_min = min(r["recall"] for r in rows)
            print(
                f"  -> {region} {cage}: mean 3D {rms:.1f} µm RMS (worst {worst:.1f}), "
                f"recall {rec:.2f} (worst {rec_min:.2f}), "
                f"false {sum(r['false'] for r in rows)}, worst focus "
                f"{max(r['focus_mm'] for r in rows):.3f} mm"
            )


def speed(args) -> None:
    from simulator.exam import simulate_exam

    ex = simulate_exam("lower", 1)
    st, cg = Station.from_dict(ex.station), Cage.from_dict(ex.cage)
    images = {k: f.to_raw_image() for k, f in ex.frames.items()}
    reconstruct(st, cg, images)
    times = []
    for _ in range(args.n):
        t = time.perf_counter()
        reconstruct(st, cg, images)
        times.append(time.perf_counter() - t)
    print(
        f"in-process reconstruct (lower, seed 1): best {min(times):.3f} s, "
        f"median {statistics.median(times):.3f} s over {args.n}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "acquisition.cli",
                "simulate",
                "--region",
                "lower",
                "--seed",
                "1",
                "--out",
                str(out),
            ],
            check=True,
            capture_output=True,
        )
        exe = Path(sys.executable).with_name("rsa-station")
        cmd = [
            str(exe),
            "reconstruct",
            "--station",
            str(out / "station.json"),
            "--cage",
            str(out / "cage.json"),
            str(out / "A.dcm"),
            str(out / "B.dcm"),
            "-o",
            str(out / "result.json"),
        ]
        walls = []
        for _ in range(max(3, args.n // 2)):
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            walls.append(time.perf_counter() - t)
        print(
            f"rsa-station reconstruct (wall, imports and DICOM reading included): "
            f"best {min(walls):.3f} s, median {statistics.median(walls):.3f} s"
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--seeds", default="0-2")
    s = sub.add_parser("speed")
    s.add_argument("--n", type=int, default=10)
    args = ap.parse_args(argv)
    {"accuracy": accuracy, "speed": speed}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
