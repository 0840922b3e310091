"""``rsa-station precision`` (see CONTRACT.md)."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("migrations", nargs="+", help="migration JSON of each double examination")
    p.add_argument("-o", "--output", required=True, help="precision JSON to write")
    p.add_argument(
        "--include-retake",
        action="store_true",
        help="also use migrations whose QC verdict is retake (motion present)",
    )


def run(args: argparse.Namespace) -> int:
    from acquisition.jsonio import load_model, write_json
    from reconstruction.errors import InputError
    from reconstruction.precision import check_migration, precision

    migrations = [load_model(p, check_migration, "migration result") for p in args.migrations]
    try:
        result = precision(migrations, include_retake=args.include_retake)
    except InputError as exc:
        # name the files: "migration N" is the N-th file given
        msg = str(exc)
        for i, path in reversed(list(enumerate(args.migrations))):
            msg = msg.replace(f"migration {i + 1}:", f"{path}:")
        raise InputError(f"{' '.join(map(str, args.migrations))}: {msg}") from None
    result["inputs"] = [str(p) for p in args.migrations]
    for e in result["excluded"]:
        e["file"] = str(args.migrations[e["index"]])
    write_json(args.output, result)
    return 0
