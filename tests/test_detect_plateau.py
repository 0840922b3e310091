"""Two band-pass maxima on one marker must not split its fitting window.

Found on the simulator's upper/uniplanar seed 3, view B: bead ``ulna-5``
(exact bound 0.06 px) gave two coarse candidates 0.18 px apart (a tie on a
plateau of the band-pass); fitted side by side, each saw half of the bead
after neighbour masking and the kept centre was 0.54 px off (8.6 bounds).
"""

from __future__ import annotations

import numpy as np
import pytest

from reconstruction import detect
from reconstruction.geometry import Cage, Station
from reconstruction.lightweight import pairs_within
from reconstruction.pipeline import marker_scale

simulator = pytest.importorskip("simulator.exam")


@pytest.fixture(scope="module")
def view_b():
    ex = simulator.simulate_exam("upper", 3, cage="uniplanar")
    st, cg = Station.from_dict(ex.station), Cage.from_dict(ex.cage)
    return ex, marker_scale(st.views["B"], cg, True), ex.frames["B"].to_raw_image()


def test_no_two_coarse_candidates_on_one_marker(view_b):
    _ex, scale, image = view_b
    k = scale.factor
    rc, _ = detect.coarse_candidates(
        detect.reduced_display(image, k), k, scale, 5.0, 3.0, clutter_clip=detect.CLUTTER_CLIP
    )
    assert len(pairs_within(rc, max(1.0, scale.r_min))) == 0


def test_plateau_bead_is_centred_within_its_bound(view_b):
    ex, scale, image = view_b
    bead = next(b for b in ex.truth["beads"] if b["id"] == "ulna-5")
    truth = np.array(bead["image_px"]["B"])
    det = detect.detect_markers(image, scale)
    i = int(np.argmin(np.linalg.norm(det.rc - truth, axis=1)))
    err = np.abs(det.rc[i] - truth)
    assert np.all(err <= 4 * np.array(bead["crb_px"]["B"])), err
