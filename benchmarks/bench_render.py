"""Time to simulate a full-resolution stereo pair (two 2400 x 2000 frames) on one core.

Times the whole ``simulate_exam`` (geometry on the day, bead layout, both
renders with every physical effect, truth with per-marker Cramér–Rao bounds),
and separately the DX writer for the pair. Threads are pinned to one (OpenCV,
BLAS) before anything loads, so the process's CPU time is its one-core time
even when other work shares the machine (wall time is also reported).

Usage: ``python -m benchmarks.bench_render [--n 5] [--json OUT]``.
Target (docs/benchmarks.md): <= 3 s per pair on one core.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402

from simulator.exam import simulate_exam  # noqa: E402


def bench_region(region: str, n: int) -> dict:
    simulate_exam(region, 0)  # warm-up: imports, caches
    times, cpu, pixels = [], [], 0
    for seed in range(1, n + 1):
        t, c = time.perf_counter(), time.process_time()
        ex = simulate_exam(region, seed)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        pixels = sum(f.pixels.size for f in ex.frames.values())
    from acquisition.commands.simulate import write_exam

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_exam(ex, Path(tmp))
        write_s = time.perf_counter() - t
    return {
        "median_s": statistics.median(times),
        "median_cpu_s": statistics.median(cpu),
        "min_s": min(times),
        "max_s": max(times),
        "n": n,
        "megapixels_per_pair": pixels / 1e6,
        "write_pair_s": write_s,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5, help="pairs per region")
    ap.add_argument("--json", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    out = {}
    for region in ("lower", "spine", "upper"):
        r = bench_region(region, args.n)
        out[region] = r
        print(
            f"{region:6s} pair ({r['megapixels_per_pair']:.1f} MP): median {r['median_s']:.2f} s "
            f"(min {r['min_s']:.2f}, max {r['max_s']:.2f}, n={r['n']}); "
            f"CPU {r['median_cpu_s']:.2f} s; "
            f"DX write {r['write_pair_s']:.2f} s"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
