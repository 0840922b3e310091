"""``rsa-station simulate`` (see CONTRACT.md)."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--region", required=True, choices=["spine", "upper", "lower"])
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="output folder")


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("rsa-station simulate is not built yet (issue 4)")
