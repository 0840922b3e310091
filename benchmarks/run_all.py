"""Run every benchmark in turn, as ``make bench`` does.

Each benchmark prints its own table; the figures and the exact command of
each are kept in docs/benchmarks.md. Run on a quiet machine: other load on
the two cores shows up in every wall-clock figure.
"""

from __future__ import annotations

import subprocess
import sys

RUNS = [
    ["benchmarks.bench_serial", "--n", "2000"],
    ["benchmarks.bench_render", "--n", "3"],
    ["benchmarks.bench_cage_check"],
    ["benchmarks.bench_reconstruct", "speed"],
    ["benchmarks.bench_reconstruct", "accuracy", "--seeds", "1-3"],
    ["benchmarks.bench_budget", "--seeds", "1-3"],
    ["benchmarks.bench_migration", "labelling"],
    ["benchmarks.bench_migration", "series", "--source", "images", "--seeds", "0-2"],
    ["benchmarks.bench_migration", "bound", "--seeds", "0-2"],
    ["benchmarks.bench_service", "--n", "3"],
]


def main() -> int:
    failed = []
    for args in RUNS:
        print(f"\n$ python -m {' '.join(args)}", flush=True)
        if subprocess.call([sys.executable, "-m", *args]) != 0:
            failed.append(args[0])
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
