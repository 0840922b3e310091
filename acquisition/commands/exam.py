"""``rsa-station exam`` (see CONTRACT.md).

Writes ``DIR/A.dcm`` and ``DIR/B.dcm`` (the stereo pair as DX), ``DIR/result.json``
(the station exam result), the overlays ``DIR/result-A.png``, ``DIR/result-B.png``,
the simulation's ground truth of that exposure ``DIR/truth.json``, and keeps the
station's store and audit log in ``DIR/station/``.
"""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--simulate",
        action="store_true",
        required=True,
        help="use the simulated controller and detectors",
    )
    p.add_argument("--region", required=True, choices=["spine", "upper", "lower"])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--patient", default="SIM-0001", help="patient id (sets the simulated patient)")
    p.add_argument("--binned", action="store_true", help="detectors read out 2 x 2 (quicker)")


def run(args: argparse.Namespace) -> int:
    import shutil
    import sys
    from pathlib import Path

    from acquisition.jsonio import write_json
    from acquisition.service.headless import run_exam
    from acquisition.service.wiring import build_runtime

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rt = build_runtime(out / "station", simulate=True, full_resolution=not args.binned)
    try:
        rt.start()
        exam = run_exam(rt, args.region, patient_id=args.patient)
        att = exam["attempts"][-1]
        if att["status"] != "processed":
            print(
                f"rsa-station exam: error: exam {exam['id']} attempt {att['number']} "
                f"{att['status']}: {att.get('error') or 'no result'}",
                file=sys.stderr,
            )
            return 1
        adir = rt.attempt_dir(exam["id"], att["number"])
        for name in ("A.dcm", "B.dcm", "result-A.png", "result-B.png"):
            if (adir / name).exists():
                shutil.copyfile(adir / name, out / name)
        result = dict(att["result"])
        result["cage_checks"] = att["cage_checks"]
        result["exam"] = {
            "id": exam["id"],
            "region": exam["region"],
            "procedure_code": exam["procedure_code"],
            "attempt": att["number"],
            "requested_technique": att["requested"],
        }
        write_json(out / "result.json", result)
        pair = getattr(rt.hw.detectors, "pair", None)
        if pair is not None and att["exposure_id"] in pair.truths:
            write_json(out / "truth.json", pair.truths[att["exposure_id"]])
        print(f"{out / 'result.json'}: verdict {result['qc']['verdict']}")
        return 0
    finally:
        rt.close()
