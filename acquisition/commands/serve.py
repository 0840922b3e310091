"""``rsa-station serve`` (see CONTRACT.md)."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--simulate", action="store_true", help="wire the simulator for everything")
    p.add_argument("--controller", help="pyserial URL of the sync controller")
    p.add_argument("--detectors", default=None, help="'sim' or a folder to watch for DICOM files")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data", default="station-data", help="exam store, images and audit log")
    p.add_argument("--station", help="station file (JSON); default with --simulate: simulator's")
    p.add_argument("--cage", help="cage file (JSON); default with --simulate: simulator's")
    p.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:ROLE[:PASSWORD]",
        help="create this account if missing (repeatable); a missing password is generated",
    )
    p.add_argument(
        "--pacs",
        metavar="AE@HOST:PORT",
        help="send the used images of each accepted exam to this PACS (DICOM C-STORE)",
    )
    p.add_argument(
        "--sim-binned",
        action="store_true",
        help="simulated detectors read out binned 2 x 2 (quicker; for tests)",
    )


def run(args: argparse.Namespace) -> int:
    from acquisition.service.server import seed_accounts, serve
    from acquisition.service.wiring import build_runtime

    rt = build_runtime(
        args.data,
        simulate=args.simulate,
        controller=args.controller,
        detectors=args.detectors,
        station=args.station,
        cage=args.cage,
        full_resolution=not args.sim_binned,
        pacs=args.pacs,
    )
    for name, role, password in seed_accounts(rt, args.user):
        print(f"account created: {name} ({role}) password {password}", flush=True)
    url = f"http://{args.host}:{args.port}/"
    return serve(
        rt, args.host, args.port, on_ready=lambda: print(f"station ready on {url}", flush=True)
    )
