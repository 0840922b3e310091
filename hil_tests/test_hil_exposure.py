"""The exposure cycle: prep -> expose -> report, release paths, software hold."""

from __future__ import annotations

import threading
import time

import pytest

from firmware_bridge import CommandRefused, ExposureReport, Fault, StateChanged


def _clock(board, scale: float) -> None:
    if board.is_sim:
        board.ctl.sim_config(clock_scale=scale)


def test_full_cycle_reports_both_tubes(board):
    board.require_bench()
    board.ctl.set_technique("A", 70, 100, 20)
    board.ctl.set_technique("B", 80, 125, 16)
    eid = board.ctl.arm()
    board.ctl.bench_set_hand_switch("prep")
    board.wait_state("ready")
    board.ctl.bench_set_hand_switch("expose")
    board.wait_state("exposing")
    rep = board.wait_for(ExposureReport)
    board.wait_state("reported")
    board.ctl.bench_set_hand_switch("off")
    board.wait_state("idle")
    assert rep.exposure_id == eid
    assert not rep.aborted and rep.end_reason == "completed"
    for tube, (kv, ma, ms) in {"A": (70, 100, 20), "B": (80, 125, 16)}.items():
        t = rep.tubes[tube]
        assert t.fired
        assert t.kv == pytest.approx(kv, rel=0.05)
        assert t.ma == pytest.approx(ma, rel=0.10)
        assert t.ms == pytest.approx(ms, rel=0.02)
        assert t.mas == pytest.approx(t.ma * t.ms / 1000, rel=1e-3, abs=2e-3)
    assert 0 <= rep.skew_us < board.info.skew_limit_us and not rep.skew_over_limit
    # the board's log holds the same report
    logged = board.ctl.get_report(eid)
    assert logged.tubes == rep.tubes and logged.skew_us == rep.skew_us
    assert board.ctl.status().last_exposure_id == eid


def test_release_in_prep_fires_nothing(board):
    board.require_bench()
    board.set_both()
    last = board.ctl.status().last_exposure_id
    board.ctl.arm()
    board.ctl.bench_set_hand_switch("prep")
    board.wait_state("prep")
    board.ctl.bench_set_hand_switch("off")
    board.wait_for(StateChanged, new="armed", reason="released")
    assert not [e for e in board.collect(0.3) if isinstance(e, ExposureReport)]
    assert board.ctl.status().last_exposure_id == last


def test_release_during_exposure_aborts(board):
    board.require_bench()
    _clock(board, 2)
    board.set_both(kv=60, ma=50, ms=4000)
    board.ctl.arm()
    board.ctl.bench_set_hand_switch("expose")
    board.wait_state("exposing")
    board.ctl.bench_set_hand_switch("off")
    rep = board.wait_for(ExposureReport)
    assert rep.aborted and rep.end_reason == "released"
    assert all(t.fired and t.ms < 2000 for t in rep.tubes.values()), rep
    board.wait_state("idle")


def test_one_exposure_per_press(board):
    board.require_bench()
    rep = None
    board.set_both()
    board.ctl.arm()
    board.ctl.bench_set_hand_switch("expose")
    rep = board.wait_for(ExposureReport)
    board.wait_state("reported")
    # still pressed: no second exposure, and no re-arming
    with pytest.raises(CommandRefused) as exc:
        board.ctl.arm()
    assert exc.value.code in ("not_released", "wrong_state")
    assert not [e for e in board.collect(0.3) if isinstance(e, ExposureReport)]
    assert board.ctl.status().state == "reported"
    board.ctl.bench_set_hand_switch("off")
    board.wait_state("idle")
    board.ctl.arm()
    board.ctl.bench_set_hand_switch("expose")
    second = board.wait_for(ExposureReport)
    assert second.exposure_id == rep.exposure_id + 1
    board.ctl.bench_set_hand_switch("off")


def test_software_hold_to_expose(board):
    """The station's on-screen hold button: HOLD repeated while pressed."""
    board.set_both()
    board.ctl.arm()
    period = board.info.hold_timeout_ms / 4000.0
    end = time.monotonic() + 10
    rep = None
    while time.monotonic() < end and rep is None:
        board.ctl.hold("expose")
        for ev in board.collect(period):
            if isinstance(ev, ExposureReport):
                rep = ev
    board.ctl.release()
    assert rep is not None and rep.end_reason == "completed"
    board.wait_state("idle")


def test_software_hold_keepalive_stopping_aborts(board):
    _clock(board, 2)
    board.set_both(kv=60, ma=50, ms=4000)
    board.ctl.arm()
    period = board.info.hold_timeout_ms / 4000.0
    exposing = threading.Event()
    stop = threading.Event()

    def keep_alive():  # the UI button held through prep and ready...
        while not stop.is_set() and not exposing.is_set():
            board.ctl.hold("expose")
            time.sleep(period)

    t = threading.Thread(target=keep_alive, daemon=True)
    t.start()
    try:
        board.wait_state("exposing")
        exposing.set()  # ...then the station hangs: no more HOLD, no RELEASE
        rep = board.wait_for(ExposureReport)
    finally:
        stop.set()
        t.join(5)
    assert rep.aborted and rep.end_reason == "hold_lost"
    # aborted after the dead-man time (250 ms wall = 500 ms board), long before 4000 ms
    assert all(t.ms < 3000 for t in rep.tubes.values()), rep
    board.wait_for(Fault, code="hold_lost")
