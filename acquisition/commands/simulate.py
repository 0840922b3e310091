"""``rsa-station simulate`` (see CONTRACT.md).

Writes ``DIR/station.json cage.json A.dcm B.dcm truth.json``; with
``--series`` a folder per examination of one patient (reference, double
examination, follow-ups with the given implant migration) and
``DIR/segments.json`` for the reference.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.3 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction 0.3..1, got {v}")
    return v


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more follow-ups, got {v}")
    return v


def _migration(text: str) -> list[float]:
    parts = text.split(",")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected tx,ty,tz[,rx,ry,rz] (mm, degrees), got {text!r}"
        ) from None
    if len(vals) not in (3, 6):
        raise argparse.ArgumentTypeError(
            f"expected 3 or 6 comma-separated numbers (tx,ty,tz[,rx,ry,rz]), got {text!r}"
        )
    return vals + [0.0] * (6 - len(vals))


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--region", required=True, choices=["spine", "upper", "lower"])
    p.add_argument(
        "--phantom",
        choices=["cervical", "lumbar", "elbow", "shoulder", "knee"],
        default=None,
        help="anatomy within the region (default: cervical for spine, elbow for upper, "
        "knee for lower; lumbar and shoulder are photon-starved under the dose cap)",
    )
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--cage",
        choices=["uniplanar", "biplanar"],
        default=None,
        help="cage (default: biplanar for spine and upper, uniplanar for lower)",
    )
    p.add_argument("--photometric", choices=["MONOCHROME2", "MONOCHROME1"], default="MONOCHROME2")
    p.add_argument(
        "--bits",
        type=int,
        choices=range(12, 17),
        default=14,
        metavar="12..16",
        help="bits stored (default 14)",
    )
    p.add_argument(
        "--collimation",
        type=_fraction,
        default=None,
        metavar="FRACTION",
        help="irradiated fraction of each detector side (default: open field)",
    )
    p.add_argument(
        "--motion",
        type=float,
        nargs=3,
        default=None,
        metavar=("DX", "DY", "DZ"),
        help="patient translation (mm) between exposure A and exposure B",
    )
    p.add_argument(
        "--for-processing",
        action="store_true",
        help="write DX For Processing instead of For Presentation",
    )
    p.add_argument(
        "--linear",
        action="store_true",
        help="stored values linear in the X-ray intensity (Pixel Intensity Relationship "
        "LIN, as a detector's raw images) instead of logarithmic",
    )
    p.add_argument(
        "--compression",
        choices=["none", "rle", "jpeg2000"],
        default="none",
        help="lossless pixel encoding of the DICOM files (default none)",
    )
    p.add_argument("--noiseless", action="store_true", help="no quantum or read noise")
    p.add_argument("--no-blur", action="store_true", help="no focal-spot or detector blur")
    p.add_argument(
        "--half-resolution", action="store_true", help="detectors read out binned 2x2 (quick tests)"
    )
    p.add_argument(
        "--series",
        type=_count,
        default=0,
        metavar="N",
        help="a series for one patient: reference, double examination and N "
        "follow-ups, each in its own folder, plus segments.json",
    )
    p.add_argument(
        "--migration",
        type=_migration,
        default=[0.1, 0.05, -0.15, 0.1, 0.0, 0.2],
        metavar="TX,TY,TZ[,RX,RY,RZ]",
        help="implant migration at the last follow-up (mm, degrees about x, y, z "
        "in the reference frame; earlier follow-ups get proportional shares)",
    )


def _study(exam, series_name: str | None = None) -> tuple[dict, dict]:
    region = exam.region
    patient = {
        "name": f"SIMULATED^{region.upper()}",
        "id": f"SIM-{region}-{exam.truth.get('patient_seed', exam.seed)}",
        "birth_date": "19550101",
        "sex": "O",
    }
    study = {
        "region": region,
        "anatomy": exam.truth.get("phantom_name"),
        "laterality": "R",
        "accession_number": f"SIM{exam.seed}"[:16],
        "study_id": str(exam.truth.get("exposure_id", 1)),
        # The anatomy within the region (e.g. "RSA spine cervical"): the procedure
        # code names only the region.
        "description": " ".join(
            x for x in ("RSA", region, exam.truth.get("phantom_name"), series_name) if x
        ),
    }
    return patient, study


def write_exam(
    exam,
    out: Path,
    *,
    for_presentation: bool = True,
    name: str | None = None,
    compression: str = "none",
) -> None:
    """Write one simulated exam as the contract's files into ``out``."""
    from acquisition.dicom_writer import write_dx_pair
    from acquisition.jsonio import write_json

    if out.exists() and not out.is_dir():
        from reconstruction.errors import InputError

        raise InputError(f"{out}: exists and is not a folder (--out names the output folder)")
    out.mkdir(parents=True, exist_ok=True)
    patient, study = _study(exam, name)
    write_json(out / "station.json", exam.station)
    write_json(out / "cage.json", exam.cage)
    datasets = write_dx_pair(
        exam.frames,
        {v: out / f"{v}.dcm" for v in exam.frames},
        patient=patient,
        study=study,
        for_presentation=for_presentation,
        uid_seed=f"{exam.region}-{exam.seed}-{name or ''}",
        compression=compression,
    )
    truth = dict(exam.truth)
    truth["dicom"] = {
        v: {
            "sop_instance_uid": str(ds.SOPInstanceUID),
            "study_instance_uid": str(ds.StudyInstanceUID),
        }
        for v, ds in datasets.items()
    }
    write_json(out / "truth.json", truth)


def run(args: argparse.Namespace) -> int:
    from simulator.exam import simulate_exam

    out = Path(args.out)
    common = dict(
        cage=args.cage,
        photometric=args.photometric,
        bits_stored=args.bits,
        collimation=args.collimation,
        full_resolution=not args.half_resolution,
        noiseless=args.noiseless,
        blur=not args.no_blur,
        phantom_name=args.phantom,
        transfer="linear" if args.linear else "log",
    )
    if args.series:
        from acquisition.jsonio import write_json
        from simulator.series import simulate_series

        series = simulate_series(
            args.region,
            args.seed,
            followups=args.series,
            migration=args.migration,
            motion_mm=args.motion,
            **common,
        )
        for label, exam in series.exams.items():
            write_exam(
                exam,
                out / label,
                for_presentation=not args.for_processing,
                name=label,
                compression=args.compression,
            )
        write_json(out / "segments.json", series.segments)
        write_json(out / "series.json", series.summary())
        print(f"wrote {len(series.exams)} examinations to {out}")
        return 0
    exam = simulate_exam(args.region, args.seed, motion_mm=args.motion, **common)
    write_exam(exam, out, for_presentation=not args.for_processing, compression=args.compression)
    print(f"wrote {out}/station.json cage.json A.dcm B.dcm truth.json")
    return 0
