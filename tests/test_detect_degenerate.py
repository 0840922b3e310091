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


def test_a_window_of_quantised_values_is_never_quieter_than_its_quantisation():
    """Where stored values barely change (a photon-starved area of a linear image
    taken to the logarithm, a few stored bits over a flat area) most neighbour
    differences are 0 and so is their median absolute deviation. A one-level bump
    was then a marker of signal-to-noise ratio 1e11 (fifth session: three false
    markers on a 12-bit linear spine exam). The window's noise is now at least the
    quantisation's, step / sqrt(12); in unquantised noise the floor does nothing."""
    import numpy as np

    from reconstruction.detect import _window_noise

    rng = np.random.default_rng(5)
    step = 118.0  # one stored level, in display units
    win = np.full((3, 21, 21), 7000.0)
    win[0][rng.random((21, 21)) < 0.05] += step  # a few pixels one level up
    win[1][8:13, 8:13] += step  # and a one-level blob
    win[2] = rng.normal(7000.0, 40.0, (21, 21))  # noise well above any quantisation
    noise = _window_noise(win)
    assert np.all(noise[:2] >= step / np.sqrt(12) - 1e-6)
    assert abs(noise[2] - 40.0) < 6.0
