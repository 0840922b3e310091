"""``rsa-station precision`` (see CONTRACT.md)."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("migrations", nargs="+", help="migration JSON of each double examination")
    p.add_argument("-o", "--output", required=True, help="precision JSON to write")


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("rsa-station precision is not built yet (issue 6)")
