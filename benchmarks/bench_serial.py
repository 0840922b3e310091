"""Command round trip over the serial link: median and p99.

Times ``SyncController.heartbeat()`` (HEARTBEAT, 10 bytes on the wire with
its leading 0x00, answered by a 16-byte ACK) through the whole bridge:
caller thread -> I/O thread -> port -> virtual firmware -> port -> I/O thread
-> caller. Four set-ups:

- ``sim://`` in-process, line timing off and on;
- ``rsa-station sim-controller`` as its own process on a pty, without and with
  ``--line-timing`` (a pty ignores the baud rate; the simulator then holds each
  byte for its 10 bit times at 115200 baud).

Usage: ``python -m benchmarks.bench_serial [--n 2000] [--json OUT]``.
Targets (docs/benchmarks.md): median <= 1 ms over the pty without line timing;
with it, median <= wire time + 1 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from firmware_bridge import SyncController, codec
from firmware_bridge import protocol as P

BAUD = 115200


def wire_time_ms() -> float:
    req = codec.encode_frame(codec.Frame(int(P.MsgType.HEARTBEAT), 0))
    ack = codec.encode_frame(
        codec.Frame(
            int(P.MsgType.ACK), 0, bytes([P.MsgType.HEARTBEAT]) + P.HEARTBEAT_ACK.pack(0, 1)
        )
    )
    # both sides send a leading 0x00 before each frame
    return 10.0 * (len(req) + len(ack) + 2) / BAUD * 1000.0


def measure(url: str, n: int) -> dict:
    with SyncController(url, baudrate=BAUD) as c:
        for _ in range(50):
            c.heartbeat()
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            c.heartbeat()
            samples.append((time.perf_counter() - t) * 1000.0)
    samples.sort()
    return {
        "median_ms": statistics.median(samples),
        "p99_ms": samples[int(0.99 * (len(samples) - 1))],
        "max_ms": samples[-1],
        "n": n,
    }


def pty_process(*extra: str) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen(
        [sys.executable, "-m", "acquisition.cli", "sim-controller", "--baud", str(BAUD), *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    return p, p.stdout.readline().strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="round trips per set-up")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)

    import simulator.controller as sc

    results = {}
    for name, url in (
        ("sim:// in-process, line timing off", "sim://bench-off?fresh=1"),
        ("sim:// in-process, line timing on", "sim://bench-on?fresh=1&line_timing=1"),
    ):
        results[name] = measure(url, args.n)
        sc.remove_controller(url[6:].split("?")[0])
    for name, extra in (
        ("pty process, line timing off", ()),
        ("pty process, line timing on", ("--line-timing",)),
    ):
        proc, path = pty_process(*extra)
        try:
            results[name] = measure(path, args.n)
        finally:
            proc.terminate()
            proc.wait(10)
    wire = wire_time_ms()
    print(f"HEARTBEAT round trip, {args.n} samples; wire time at {BAUD} 8N1: {wire:.3f} ms")
    print(f"{'set-up':40s} {'median ms':>10s} {'p99 ms':>10s} {'max ms':>10s}")
    for name, r in results.items():
        print(f"{name:40s} {r['median_ms']:10.3f} {r['p99_ms']:10.3f} {r['max_ms']:10.3f}")
    ok_off = results["pty process, line timing off"]["median_ms"] <= 1.0
    ok_on = results["pty process, line timing on"]["median_ms"] <= wire + 1.0
    print(f"target median <= 1 ms (pty, off): {'met' if ok_off else 'MISSED'}")
    print(
        f"target median <= wire + 1 ms = {wire + 1:.3f} ms (pty, on): "
        f"{'met' if ok_on else 'MISSED'}"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"wire_ms": wire, "results": results}, fh, indent=2)
    return 0 if ok_off and ok_on else 1


if __name__ == "__main__":
    sys.exit(main())
