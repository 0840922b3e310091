"""Per-bead information of each phantom at its preset technique (truth's Cramér–Rao bound).

Usage::

    python -m benchmarks.bench_phantoms [--seeds 0-4] [--phantoms cervical,elbow,knee,...]

For the beads seen in both views, over both views: median and 90th percentile of
``crb_px`` (the larger of its row and column bounds, px) and of the ideal-observer
SNR, with the open-field fluence and scatter-to-primary of every exam (the dose
caps). Full resolution, defaults otherwise (docs/simulator.md, "Phantoms").
"""

from __future__ import annotations

import argparse

import numpy as np

from simulator.exam import simulate_exam
from simulator.phantoms import PHANTOM_REGION


def measure(name: str, seeds) -> dict:
    """The figures of one phantom over ``seeds``."""
    crb, snr, fluence, spr = [], [], [], []
    for seed in seeds:
        tr = simulate_exam(PHANTOM_REGION[name], seed, phantom_name=name).truth
        fluence += list(tr["fluence_quanta_per_px"].values())
        spr += list(tr["scatter_to_primary"].values())
        for b in tr["beads"]:
            if b["visible"]["A"] and b["visible"]["B"]:
                for v in "AB":
                    if b["crb_px"][v] is not None:
                        crb.append(max(b["crb_px"][v]))
                        snr.append(b["snr"][v])
    return {
        "phantom": name,
        "n": len(crb),
        "crb_median": float(np.median(crb)),
        "crb_p90": float(np.percentile(crb, 90)),
        "snr_median": float(np.median(snr)),
        "snr_p10": float(np.percentile(snr, 10)),
        "fluence_max": max(fluence),
        "spr_min": min(spr),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--phantoms", default=",".join(PHANTOM_REGION))
    a = ap.parse_args()
    lo, _, hi = a.seeds.partition("-")
    seeds = range(int(lo), int(hi or lo) + 1)
    print("phantom   region  n   crb_px median  p90    SNR median  p10   fluence max  SPR min")
    for name in a.phantoms.split(","):
        r = measure(name, seeds)
        print(
            f"{name:9s} {PHANTOM_REGION[name]:6s} {r['n']:3d}  {r['crb_median']:.3f}  "
            f"{r['crb_p90']:.3f}  {r['snr_median']:6.1f}  {r['snr_p10']:6.1f}  "
            f"{r['fluence_max']:7.0f}  {r['spr_min']:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
