"""The ``rsa-station`` command line.

Imports are lazy: only the chosen subcommand's module is imported, and heavy
libraries only inside its ``run``; ``rsa-station reconstruct`` never imports
FastAPI or uvicorn. Unusable input (:class:`reconstruction.errors.InputError`,
missing files) ends with one line on stderr and exit status 2, never a
traceback (CONTRACT.md, "Exit status").
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from acquisition import __version__

# subcommand -> (module in acquisition.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "reconstruct": ("reconstruct", "3D bead positions and QC from a stereo pair of DICOM images"),
    "cage-check": ("cage_check", "real-time cage check of one view"),
    "migrate": ("migrate", "implant migration between a reference and a follow-up result"),
    "precision": ("precision", "precision (1.96 SD) from double-examination migrations"),
    "simulate": ("simulate", "render a simulated stereo exam with ground truth"),
    "sim-controller": ("sim_controller", "virtual sync controller on a pseudo-terminal"),
    "exam": ("exam", "one whole exam, headless, through the station's code path"),
    "serve": ("serve", "the station service and its browser UI"),
    "demo": ("demo", "run the station on its simulator (what `make demo` does)"),
}


def _chosen(argv: list[str]) -> str | None:
    for tok in argv:
        if tok in COMMANDS:
            return tok
        if not tok.startswith("-"):
            return None
    return None


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsa-station",
        description="Radiostereometric analysis (RSA) X-ray station.",
    )
    parser.add_argument("--version", action="version", version=f"rsa-station {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _chosen(argv)
    for name, (module, helptext) in COMMANDS.items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        if name == chosen:
            mod = importlib.import_module(f"acquisition.commands.{module}")
            mod.configure(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from reconstruction.errors import InputError

    try:
        return int(args._run(args) or 0)
    except InputError as exc:
        print(f"rsa-station {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug, not the user's input: still one line
        if os.environ.get("RSA_DEBUG"):
            raise
        print(
            f"rsa-station {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(set RSA_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
