"""``rsa-station reconstruct`` (see CONTRACT.md)."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--station", required=True, help="station geometry JSON (nominal)")
    p.add_argument("--cage", required=True, help="calibration cage JSON")
    p.add_argument("image_a", help="DICOM image of view A")
    p.add_argument("image_b", help="DICOM image of view B")
    p.add_argument("-o", "--output", required=True, help="result JSON to write")


def run(args: argparse.Namespace) -> int:
    from acquisition.jsonio import load_model
    from reconstruction.geometry import Cage, Station

    load_model(args.station, Station.from_dict, "station file")
    load_model(args.cage, Cage.from_dict, "cage file")
    raise NotImplementedError("rsa-station reconstruct is not built yet (issue 5)")
