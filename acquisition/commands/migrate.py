"""``rsa-station migrate`` (see CONTRACT.md)."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--segments", required=True, help="segment definition JSON")
    p.add_argument("reference", help="reference examination result JSON")
    p.add_argument("followup", help="follow-up examination result JSON")
    p.add_argument("-o", "--output", required=True, help="migration JSON to write")


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("rsa-station migrate is not built yet (issue 6)")
