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
    from acquisition.dicom_reader import read_raw_image
    from acquisition.jsonio import load_model, write_json
    from reconstruction.geometry import Cage, Station
    from reconstruction.pipeline import reconstruct

    station = load_model(args.station, Station.from_dict, "station file")
    cage = load_model(args.cage, Cage.from_dict, "cage file")
    images = {
        "A": read_raw_image(args.image_a, station.views["A"].detector, "A"),
        "B": read_raw_image(args.image_b, station.views["B"].detector, "B"),
    }
    result = reconstruct(station, cage, images)
    write_json(args.output, result.to_dict())
    return 0
