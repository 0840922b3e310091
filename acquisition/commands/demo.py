"""``rsa-station demo`` (see CONTRACT.md)."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-out", help="folder for the demo's files")


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("rsa-station demo is not built yet (issue 7)")
