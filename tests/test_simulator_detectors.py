"""Virtual detectors on the real virtual sync controller: one exposure, two frames."""

from __future__ import annotations

import time

import pytest

import simulator.controller as sc
from firmware_bridge import SyncController
from simulator.detectors import VirtualDetectorPair


def test_an_exposure_through_the_bridge_delivers_both_frames_with_the_actual_technique():
    name = "detectors-it"
    sc.remove_controller(name)
    ctl = sc.get_controller(name, clock_scale=50)
    pair = VirtualDetectorPair("lower", 3, full_resolution=False)
    detach = pair.attach(ctl)
    try:
        assert not ctl.interlocks["detector_a_ready"] and not ctl.interlocks["detector_b_ready"]
        with SyncController(f"sim://{name}") as c:
            c.set_technique("A", 66, 200, 50)
            c.set_technique("B", 64, 180, 40)
            pair.arm()
            assert ctl.interlocks["detector_a_ready"] and ctl.interlocks["detector_b_ready"]
            eid = c.arm()
            ctl.press_hand_switch("prep")
            end = time.monotonic() + 30
            while ctl.state != "ready" and time.monotonic() < end:
                time.sleep(0.01)
            assert ctl.state == "ready"
            ctl.press_hand_switch("expose")
            fa = pair.detectors["A"].wait_for_frame(60)
            fb = pair.detectors["B"].wait_for_frame(60)
            ctl.press_hand_switch("off")
        assert fa.meta.exposure_id == fb.meta.exposure_id == eid
        assert fa.meta.acquisition_datetime == fb.meta.acquisition_datetime
        rec = pair.truths[eid]["trigger"]
        for f, (kv, ma, ms) in ((fa, (66, 200, 50)), (fb, (64, 180, 40))):
            t = f.meta.technique
            assert t == {k: rec["tubes"][f.meta.view][k] for k in ("kv", "ma", "ms", "mas")}
            assert t["kv"] == pytest.approx(kv, rel=0.05) and t["ms"] == pytest.approx(ms, rel=0.02)
            assert t["ma"] == pytest.approx(ma, rel=0.1)
        assert pair.truths[eid]["technique"]["A"]["mas"] == fa.meta.technique["mas"]
        # The panels were used up by the exposure: the board sees them not ready.
        assert not ctl.interlocks["detector_a_ready"]
    finally:
        detach()
        ctl.stop()
        sc.remove_controller(name)


def test_pair_refuses_options_it_sets_itself():
    with pytest.raises(TypeError, match="technique"):
        VirtualDetectorPair("lower", 1, technique={})
