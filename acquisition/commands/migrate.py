"""``rsa-station migrate`` (see CONTRACT.md)."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--segments", required=True, help="segment definition JSON")
    p.add_argument("reference", help="reference examination result JSON")
    p.add_argument("followup", help="follow-up examination result JSON")
    p.add_argument("-o", "--output", required=True, help="migration JSON to write")
    p.add_argument(
        "--method",
        choices=("consistent-marker", "all-marker"),
        default="consistent-marker",
        help="markers used for each segment's fit (default: consistent-marker)",
    )


def _result_markers(data):
    """Patient markers of a contract reconstruction result file.

    A file must be a whole result (views, markers, qc): a cage file also has
    ``markers``, and its cage markers must never be taken for patient beads.
    """
    from reconstruction.errors import InputError
    from reconstruction.segments import ExamMarkers

    if isinstance(data, dict):
        for key in ("views", "markers", "qc"):
            if key not in data:
                raise InputError(f"missing key {key!r}")
    return ExamMarkers.from_dict(data)


def run(args: argparse.Namespace) -> int:
    from acquisition.jsonio import load_model, write_json
    from reconstruction.migration import migrate_parsed
    from reconstruction.segments import SegmentDefinition

    definition = load_model(args.segments, SegmentDefinition.from_dict, "segment file")
    reference = load_model(args.reference, _result_markers, "reconstruction result")
    followup = load_model(args.followup, _result_markers, "reconstruction result")
    result = migrate_parsed(definition, reference, followup, method=args.method)
    write_json(args.output, result.to_dict())
    return 0
