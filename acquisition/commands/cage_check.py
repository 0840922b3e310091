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
    from acquisition.dicom_reader import read_raw_image
    from acquisition.jsonio import load_model, write_bytes_atomic, write_json
    from reconstruction.cagecheck import cage_check
    from reconstruction.errors import InputError
    from reconstruction.geometry import Cage, Station

    if args.repeat < 1:
        raise InputError(f"--repeat: expected a positive number of runs, got {args.repeat}")
    station = load_model(args.station, Station.from_dict, "station file")
    cage = load_model(args.cage, Cage.from_dict, "cage file")
    # read and decode once; then the whole check N times on that pixel array,
    # nothing reused between runs (CONTRACT.md), and the last result written
    image = read_raw_image(args.image, station.views[args.view].detector, args.view)
    result = None
    for _ in range(args.repeat):
        result = cage_check(station, cage, args.view, image)
    write_json(args.output, result.to_dict())
    if args.overlay:
        import cv2

        from reconstruction.overlay import draw_cage_check

        rgb = draw_cage_check(image, result)
        ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError("PNG encoding failed")
        write_bytes_atomic(args.overlay, png.tobytes())
    return 0
