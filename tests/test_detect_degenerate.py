"""Images that show nothing must give a retake quickly, in bounded memory, never a crash.

A flat frame (a detector that fired with nothing on it, a test pattern) has a
band-pass made of float rounding only; without a noise floor every pixel of
it became a candidate and the fit asked for gigabytes (audit D7).
"""

import subprocess
import sys
import textwrap

import pytest

CODE = textwrap.dedent(
    """
    import resource, sys, time
    import numpy as np
    from reconstruction.detect import MAX_CANDIDATES
    from reconstruction.geometry import Cage, Station
    from reconstruction.image import RawImage
    from reconstruction.pipeline import reconstruct
    from simulator.exam import simulate_exam

    ex = simulate_exam("lower", 3, full_resolution=True)
    station, cage = Station.from_dict(ex.station), Cage.from_dict(ex.cage)
    good = {v: f.to_raw_image() for v, f in ex.frames.items()}
    a = good["A"]
    # the memory cap starts after the render: it bounds the reconstruction only
    cap = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 + 3 * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (cap + 2 * 2**30, cap + 2 * 2**30))
    for name, px in (("flat", np.full_like(a.pixels, 5000)),
                     ("zero", np.zeros_like(a.pixels)),
                     ("steps", (np.arange(a.pixels.size) // 7919 % 3 * 1000 + 4000)
                               .astype(a.pixels.dtype).reshape(a.pixels.shape))):
        img = RawImage(px, a.photometric, a.bits_stored, a.rescale_slope, a.rescale_intercept)
        t = time.process_time()
        res = reconstruct(station, cage, {"A": img, "B": good["B"]}).to_dict()
        dt = time.process_time() - t
        va = res["views"]["A"]
        print(name, res["qc"]["verdict"], va["focus_mm"], va["cage_markers_found"], round(dt, 2))
    """
)


@pytest.mark.slow
def test_images_showing_nothing_are_retakes_in_bounded_memory():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    print(out.stdout)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        _name, verdict, focus, found, cpu = line.split(" ", 4)[:5]
        assert verdict == "retake", line
        assert focus == "None" and found == "0", line
        assert float(cpu) < 20, line  # generous: seconds of CPU, not minutes
