"""``rsa-station sim-controller`` (see CONTRACT.md)."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baud", type=int, default=115200, help="baud rate to emulate")


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("rsa-station sim-controller is not built yet (issue 3)")
