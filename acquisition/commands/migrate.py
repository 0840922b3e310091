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


def run(args: argparse.Namespace) -> int:
    from acquisition.jsonio import load_model, write_json
    from reconstruction.migration import migrate_parsed
    from reconstruction.segments import ExamMarkers, SegmentDefinition

    definition = load_model(args.segments, SegmentDefinition.from_dict, "segment file")
    reference = load_model(args.reference, ExamMarkers.from_dict, "reconstruction result")
    followup = load_model(args.followup, ExamMarkers.from_dict, "reconstruction result")
    result = migrate_parsed(definition, reference, followup, method=args.method)
    write_json(args.output, result.to_dict())
    return 0
