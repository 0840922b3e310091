"""``rsa-station exam`` (see CONTRACT.md)."""

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


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("rsa-station exam is not built yet (issue 7)")
