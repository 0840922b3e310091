"""Real-time cage check: cost of one whole check on one core, per region and view.

Two measurements, both on one core (``cv2.setNumThreads(1)``, BLAS threads 1,
process pinned to one CPU):

- in-process: best and median of ``--n`` calls of ``cage_check`` on a decoded
  4.8 MP frame, the calls round-robin over all views (intensity handling,
  detection, identification, verdict; no overlay), in wall time and in the
  thread's CPU time (which a machine shared with other work inflates less: a
  check waiting for the core is not counted);
- the contract's way: ``rsa-station cage-check --repeat 51`` minus
  ``--repeat 1``, over 50.

Usage::

    python -m benchmarks.bench_cage_check [--n 50] [--seeds 1]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import simulate_files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--seeds", default="1")
    args = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import cv2

    cv2.setNumThreads(1)
    from reconstruction.cagecheck import cage_check
    from reconstruction.geometry import Cage, Station
    from simulator.exam import simulate_exam

    # every view first, then the runs round-robin over the views: a burst of
    # other work on the shared machine then inflates one run of each view, not
    # every run of the views measured during it (measured view by view, the
    # knee's views, measured last, read 10-11 ms in CPU time at load 1.4 while
    # interleaved they cost what spine and upper cost)
    cases = []
    for region in ("spine", "upper", "lower"):
        for seed in [int(s) for s in args.seeds.split(",")]:
            ex = simulate_exam(region, seed)
            st, cg = Station.from_dict(ex.station), Cage.from_dict(ex.cage)
            for v in "AB":
                img = ex.frames[v].to_raw_image()
                cases.append((region, seed, v, st, cg, img, cage_check(st, cg, v, img), [], []))
    for _ in range(args.n):
        for _region, _seed, v, st, cg, img, _r, ts, cpu in cases:
            t, c = time.perf_counter(), time.thread_time()
            cage_check(st, cg, v, img)
            ts.append(time.perf_counter() - t)
            cpu.append(time.thread_time() - c)
    print("region  seed  view  pixels     found/expected  best_ms  median_ms  cpu_best_ms")
    for region, seed, v, _st, _cg, img, r, ts, cpu in cases:
        print(
            f"{region:6s}  {seed:4d}  {v:4s}  {img.pixels.size / 1e6:.1f} MP  "
            f"{r.found:3d}/{r.expected:3d}         {1e3 * min(ts):7.2f}  "
            f"{1e3 * statistics.median(ts):9.2f}  {1e3 * min(cpu):11.2f}",
            flush=True,
        )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        simulate_files(out)
        exe = str(Path(sys.executable).with_name("rsa-station"))
        base = [
            exe,
            "cage-check",
            "--station",
            str(out / "station.json"),
            "--cage",
            str(out / "cage.json"),
            "--view",
            "A",
            str(out / "A.dcm"),
            "-o",
            str(out / "c.json"),
        ]
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENCV_FOR_THREADS_NUM="1")

        def wall(n):
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                subprocess.run(
                    ["taskset", "-c", "0", *base, "--repeat", str(n)],
                    check=True,
                    capture_output=True,
                    env=env,
                )
                best = min(best, time.perf_counter() - t)
            return best

        one, many = wall(1), wall(51)
        print(
            f"rsa-station cage-check --repeat 51 minus --repeat 1, over 50: "
            f"{1e3 * (many - one) / 50:.2f} ms per check (one core)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
