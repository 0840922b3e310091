"""``rsa-station sim-controller`` (see CONTRACT.md): the virtual sync controller on a pty.

Prints the pty path as the first line of standard output, flushed at once,
then serves until SIGINT or SIGTERM (exit 0). The firmware lives in
:mod:`simulator.controller`; this module only parses options and waits.
"""

from __future__ import annotations

import argparse


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"rate must be between 0 and 1, not {text}")
    return value


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baud", type=int, default=115200, help="baud rate to emulate (8N1)")
    p.add_argument(
        "--line-timing",
        action="store_true",
        help="emulate the wire time of --baud in both directions (a pty alone does not)",
    )
    p.add_argument(
        "--clock-scale",
        default="real",
        help="'real', 'fast' (x50) or a factor: generator process times run this much faster",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of scatter, boot ids and faults")
    p.add_argument(
        "--fault-rate",
        type=_rate,
        default=0.0,
        help="fraction of bytes corrupted in each direction",
    )
    p.add_argument("--drop-rate", type=_rate, default=0.0, help="fraction of bytes dropped")
    p.add_argument(
        "--bench-mode",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="service jumper fitted: hand switch and interlocks over the link",
    )
    p.add_argument(
        "--fault-injection",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="accept the simulator-only SIM_* commands",
    )
    p.add_argument("--serial-number", default="RSA-SIM-0001")


def run(args: argparse.Namespace) -> int:
    import signal
    import sys
    import threading

    from reconstruction.errors import InputError
    from simulator.controller import FirmwareConfig, VirtualSyncController
    from simulator.controller.clock import parse_clock
    from simulator.controller.pty_server import PtyServer

    try:
        scale = parse_clock(args.clock_scale)
    except ValueError as exc:
        raise InputError(f"--clock-scale: {exc}") from None
    if args.baud <= 0:
        raise InputError(f"--baud: must be positive, not {args.baud}")
    cfg = FirmwareConfig(serial_number=args.serial_number)
    ctl = VirtualSyncController(
        "pty",
        clock_scale=scale,
        seed=args.seed,
        bench_mode=args.bench_mode,
        fault_injection=args.fault_injection,
        line_timing=args.line_timing,
        baudrate=args.baud,
        corrupt_rate=args.fault_rate,
        drop_rate=args.drop_rate,
        config=cfg,
    )
    server = PtyServer(ctl)
    stop = threading.Event()

    def _on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    server.start()
    sys.stdout.write(server.path + "\n")
    sys.stdout.flush()
    while not stop.wait(0.5):
        pass
    server.stop()
    ctl.stop()
    return 0
