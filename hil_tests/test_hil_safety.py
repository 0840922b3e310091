"""Safety rules of the board (docs/protocol.md, "Safety rules").

Each test fails if its rule is removed from the firmware; the mutation check
in tests/test_sim_controller_rules.py runs these very functions against a
simulator with the rule switched off and requires them to fail.
"""

from __future__ import annotations

import pytest

from firmware_bridge import (
    CommandRefused,
    ConnectionChanged,
    ExposureReport,
    Fault,
    InterlockChanged,
    StateChanged,
)


def _clock(board, scale: float) -> None:
    if board.is_sim:
        board.ctl.sim_config(clock_scale=scale)


def test_technique_outside_limits_refused(board):
    ctl = board.ctl
    ctl.set_technique("A", 70, 100, 20)
    cases = {
        "kv_out_of_range": (200, 100, 20),
        "ma_out_of_range": (70, 5, 20),
        "time_out_of_range": (70, 100, 6000),
        "mas_out_of_range": (70, 500, 2000),
        "power_out_of_range": (150, 1000, 10),
    }
    for code, (kv, ma, ms) in cases.items():
        with pytest.raises(CommandRefused) as exc:
            ctl.set_technique("A", kv, ma, ms)
        assert exc.value.code == code, (kv, ma, ms)
    # the accepted technique is still in force
    assert ctl.status().techniques["A"] == {"kv": 70.0, "ma": 100.0, "ms": 20.0, "mas": 2.0}


def test_arm_refused_with_reason(board):
    board.require_bench()
    ctl = board.ctl
    board.set_both()
    for name, code in (
        ("door", "door_open"),
        ("collimator", "collimator_open"),
        ("detector_a_ready", "detector_a_not_ready"),
        ("detector_b_ready", "detector_b_not_ready"),
    ):
        ctl.bench_set_interlock(name, False)
        board.wait_for(InterlockChanged, name=name, closed=False)
        with pytest.raises(CommandRefused) as exc:
            ctl.arm()
        assert exc.value.code == code
        assert code in ctl.status().arm_blockers
        ctl.bench_set_interlock(name, True)
    # an interlock opening while armed disarms
    ctl.arm()
    ctl.bench_set_interlock("door", False)
    ev = board.wait_for(StateChanged, new="idle")
    assert ev.reason == "interlock"


def test_interlock_opening_mid_exposure(board):
    board.require_bench()
    _clock(board, 2)
    ctl = board.ctl
    board.set_both(kv=60, ma=50, ms=4000)
    ctl.arm()
    ctl.bench_set_hand_switch("expose")
    board.wait_state("exposing")
    ctl.bench_set_interlock("door", False)
    rep = board.wait_for(ExposureReport)
    assert rep.aborted and rep.end_reason == "interlock"
    assert all(t.ms < 3000 for t in rep.tubes.values()), rep
    fault = board.wait_for(Fault, code="interlock_opened")
    assert fault.detail == 0  # interlock number of the door
    board.wait_state("fault")
    ctl.bench_set_hand_switch("off")
    with pytest.raises(CommandRefused) as exc:
        ctl.arm()
    assert exc.value.code == "fault_latched"
    ctl.reset_fault()
    with pytest.raises(CommandRefused) as exc:
        ctl.arm()
    assert exc.value.code == "door_open"


def test_watchdog_lost_heartbeat_aborts_and_goes_safe(board):
    board.require_bench()
    _clock(board, 1)
    ctl = board.ctl
    board.set_both(kv=60, ma=50, ms=4000)
    ctl.arm()
    ctl.bench_set_hand_switch("expose")
    board.wait_state("exposing", timeout=20)
    silent = board.info.watchdog_ms / 1000.0 + 0.6
    ctl.pause_traffic(silent)  # the host hangs: no heartbeat, nothing
    rep = board.wait_for(ExposureReport, timeout=20)
    assert rep.aborted and rep.end_reason == "watchdog"
    # ended by the watchdog, roughly watchdog_ms after the silence began
    assert all(t.ms < 4000 * 0.75 for t in rep.tubes.values()), rep
    board.wait_for(ConnectionChanged, connected=True)
    states = [e.new for e in board.log if isinstance(e, StateChanged)]
    assert "safe" in states
    assert any(isinstance(e, Fault) and e.code == "watchdog" for e in board.log)
    ctl.bench_set_hand_switch("off")
    s = ctl.status()
    assert s.state == "idle" and s.session  # the bridge opened a new session


def test_technique_change_with_xrays_on_refused(board):
    board.require_bench()
    _clock(board, 2)
    ctl = board.ctl
    board.set_both(kv=60, ma=50, ms=4000)
    ctl.arm()
    ctl.bench_set_hand_switch("expose")
    board.wait_state("exposing")
    with pytest.raises(CommandRefused) as exc:
        ctl.set_technique("A", 120, 400, 100)
    assert exc.value.code == "xray_on"
    ctl.bench_set_hand_switch("off")
    rep = board.wait_for(ExposureReport)
    assert rep.tubes["A"].kv == pytest.approx(60, rel=0.05)
    assert ctl.status().techniques["A"]["kv"] == 60.0


def test_prep_timeout(board):
    board.require_bench()
    board.require_sim("fast clock (the prep timeout is 30 s)")
    ctl = board.ctl
    board.set_both()
    ctl.arm()
    ctl.bench_set_hand_switch("prep")
    board.wait_state("ready")
    board.wait_for(StateChanged, new="armed", reason="prep_timeout")
    board.wait_for(Fault, code="prep_timeout")
    # pressing on without letting go does not expose
    ctl.bench_set_hand_switch("expose")
    assert not [e for e in board.collect(0.3) if isinstance(e, ExposureReport)]
    assert ctl.status().need_release
    ctl.bench_set_hand_switch("off")
    ctl.bench_set_hand_switch("expose")
    rep = board.wait_for(ExposureReport)
    assert rep.end_reason == "completed"
    ctl.bench_set_hand_switch("off")


def test_heat_limit(board):
    board.require_bench()
    board.require_sim("fast clock and anode reset (real anodes take minutes to cool)")
    ctl = board.ctl
    ctl.set_technique("A", 125, 640, 1000)  # 112 kHU per exposure on a 300 kHU anode
    ctl.set_technique("B", 60, 20, 1000)
    board.expose()
    board.expose()
    s = ctl.status()
    assert s.heat_pct["A"] > 60 and s.heat_pct["B"] < 10
    assert "heat_limit_a" in s.arm_blockers
    with pytest.raises(CommandRefused) as exc:
        ctl.arm()
    assert exc.value.code == "heat_limit_a"


def test_duty_limit(board):
    board.require_bench()
    board.require_sim("fast clock (the duty window is 2 minutes)")
    _clock(board, 10)
    ctl = board.ctl
    board.set_both(kv=60, ma=20, ms=2000)  # 2 s per exposure, 5 s per 120 s allowed
    board.expose()
    board.expose()
    s = ctl.status()
    assert s.duty_pct >= 79 and "duty_limit" in s.arm_blockers
    with pytest.raises(CommandRefused) as exc:
        ctl.arm()
    assert exc.value.code == "duty_limit"


def test_backup_timer_ends_stuck_exposure(board):
    board.require_bench()
    board.require_sim("fault injection (a stuck primary timer)")
    _clock(board, 5)
    board.set_both(kv=70, ma=100, ms=100)
    board.ctl.sim_inject("stuck_timer")
    board.ctl.arm()
    board.ctl.bench_set_hand_switch("expose")
    rep = board.wait_for(ExposureReport)
    board.ctl.bench_set_hand_switch("off")
    assert rep.aborted and rep.end_reason == "backup_timer"
    # backup timer: 1.2 x 100 ms + 5 ms
    assert all(120 <= t.ms <= 160 for t in rep.tubes.values()), rep
    board.wait_for(Fault, code="backup_timer")
    board.wait_state("fault")


def test_skew_over_limit_flagged(board):
    board.require_bench()
    board.require_sim("fault injection (skew over limit)")
    board.set_both()
    board.ctl.sim_inject("skew_over_limit")
    rep = board.expose()
    assert rep.skew_us > board.info.skew_limit_us
    assert rep.skew_over_limit
    assert any(isinstance(e, Fault) and e.code == "skew_over_limit" for e in board.log)
    normal = board.expose()
    assert not normal.skew_over_limit and normal.skew_us < board.info.skew_limit_us


def test_tube_that_does_not_fire_is_reported(board):
    board.require_bench()
    board.require_sim("fault injection (tube does not fire)")
    board.set_both()
    board.ctl.sim_inject("tube_no_fire", "B")
    board.ctl.arm()
    board.ctl.bench_set_hand_switch("expose")
    rep = board.wait_for(ExposureReport)
    board.ctl.bench_set_hand_switch("off")
    assert rep.tubes["A"].fired and not rep.tubes["B"].fired
    assert rep.tubes["B"].mas == 0
    fault = board.wait_for(Fault, code="tube_no_fire")
    assert fault.tube == "B"
    board.wait_state("fault")


def test_generator_arc_aborts(board):
    board.require_bench()
    board.require_sim("fault injection (generator arc)")
    _clock(board, 5)
    board.set_both(kv=70, ma=100, ms=200)
    board.ctl.sim_inject("arc", "A")
    board.ctl.arm()
    board.ctl.bench_set_hand_switch("expose")
    rep = board.wait_for(ExposureReport)
    board.ctl.bench_set_hand_switch("off")
    assert rep.aborted and rep.end_reason == "arc"
    assert all(t.ms < 200 for t in rep.tubes.values())
    assert board.wait_for(Fault, code="arc").tube == "A"


def test_interlock_injected_mid_exposure(board):
    board.require_sim("fault injection (interlock opening by itself)")
    board.require_bench()
    _clock(board, 5)
    board.set_both(kv=70, ma=100, ms=200)
    board.ctl.sim_inject("interlock_mid_exposure", "collimator")
    board.ctl.arm()
    board.ctl.bench_set_hand_switch("expose")
    rep = board.wait_for(ExposureReport)
    board.ctl.bench_set_hand_switch("off")
    assert rep.end_reason == "interlock"
    assert board.wait_for(InterlockChanged, name="collimator").closed is False
