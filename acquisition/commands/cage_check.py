"""``rsa-station cage-check`` (see CONTRACT.md)."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--station", required=True, help="station geometry JSON (nominal)")
    p.add_argument("--cage", required=True, help="calibration cage JSON")
    p.add_argument("--view", required=True, choices=["A", "B"], help="which view the image is")
    p.add_argument("image", help="DICOM image of that view")
    p.add_argument("-o", "--output", required=True, help="check JSON to write")
    p.add_argument("--overlay", help="overlay PNG to write (detected, identified, missing)")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="benchmark aid: run the whole check N times on the decoded pixels",
    )


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("rsa-station cage-check is not built yet (issue 5)")
