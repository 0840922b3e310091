"""``rsa-station serve`` (see CONTRACT.md)."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--simulate", action="store_true", help="wire the simulator for everything")
    p.add_argument("--controller", help="pyserial URL of the sync controller")
    p.add_argument("--detectors", default=None, help="'sim' or a folder to watch for DICOM files")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("rsa-station serve is not built yet (issue 7)")
