"""Station latency: exposure report -> cage-check verdicts -> full QC, on the real code path.

Runs the station runtime in process on the simulator at full resolution (virtual
sync controller over ``sim://``, virtual detectors rendering 2400 x 2000 frames,
cage checks, reconstruction, QC), the same path as ``rsa-station serve
--simulate``, and times each exam from the live-status events the page gets:

- report: the exposure report arrived from the board;
- frame A/B: the detector frame arrived (the virtual detectors render it first,
  which is simulator time, not station time);
- cage A/B: that view's cage-check verdict was published (target <= 1 s after
  its frame arrived);
- QC: the exam reached ``review`` with the full QC verdict stored, overlays
  written (target <= 3 s after the frames arrived).

Usage: ``python -m benchmarks.bench_service [--n 3] [--regions spine upper lower] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading

from acquisition.service.headless import run_exam
from acquisition.service.wiring import build_runtime


def bench(regions: list[str], n: int, full_resolution: bool = True) -> dict:
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        rt = build_runtime(tmp, simulate=True, full_resolution=full_resolution)
        marks: dict[str, float] = {}
        lock = threading.Lock()

        def listen(ev) -> None:
            key = None
            if ev.kind == "progress" and ev.data.get("stage") == "exposed":
                key = "report"
            elif ev.kind == "progress" and ev.data.get("stage") == "frame":
                key = f"frame {ev.data['view']}"
            elif ev.kind == "cage_check":
                key = f"cage {ev.data['view']}"
            elif ev.kind == "exam" and ev.data.get("state") == "review":
                key = "qc"
            if key:
                with lock:
                    marks.setdefault(key, ev.time)

        rt.bus.add_listener(listen)
        rt.start()
        try:
            run_exam(rt, regions[0], patient_id="WARMUP")  # imports, caches
            for region in regions:
                rows = []
                for i in range(n):
                    marks.clear()
                    exam = run_exam(rt, region, patient_id=f"BENCH-{region}-{i}")
                    att = exam["attempts"][-1]
                    frames = max(marks["frame A"], marks["frame B"])
                    rows.append(
                        {
                            "cage_A_s": marks["cage A"] - marks["frame A"],
                            "cage_B_s": marks["cage B"] - marks["frame B"],
                            "frames_to_qc_s": marks["qc"] - frames,
                            "report_to_frames_s": frames - marks["report"],
                            "report_to_qc_s": marks["qc"] - marks["report"],
                            "verdict": att["result"]["qc"]["verdict"] if att["result"] else None,
                        }
                    )
                    exam = rt.accept("bench", exam["id"])
                out[region] = {
                    "runs": rows,
                    **{
                        k: {
                            "median": statistics.median(r[k] for r in rows),
                            "max": max(r[k] for r in rows),
                        }
                        for k in rows[0]
                        if k != "verdict"
                    },
                }
        finally:
            rt.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--regions", nargs="+", default=["spine", "upper", "lower"])
    ap.add_argument("--binned", action="store_true", help="2 x 2 binned detectors")
    ap.add_argument("--json")
    args = ap.parse_args()
    res = bench(args.regions, args.n, not args.binned)
    print(
        "| region | cage check A | cage check B | frames -> QC | report -> frames (render) "
        "| report -> QC |"
    )
    print("|---|---|---|---|---|---|")
    for region, r in res.items():
        cells = [
            f"{r[k]['median']:.2f} s (max {r[k]['max']:.2f})"
            for k in (
                "cage_A_s",
                "cage_B_s",
                "frames_to_qc_s",
                "report_to_frames_s",
                "report_to_qc_s",
            )
        ]
        print(f"| {region} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
