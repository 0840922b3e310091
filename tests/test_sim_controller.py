"""Virtual sync controller: the firmware driven frame by frame on a manual clock.

These tests speak raw protocol frames to the firmware (no bridge), with time
advanced by hand, so every timer is checked at its exact edge.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import serial

from firmware_bridge import codec
from firmware_bridge import protocol as P
from firmware_bridge.codec import Frame, FrameDecoder
from simulator.controller import (
    FirmwareConfig,
    ManualClock,
    VirtualSyncController,
    get_controller,
    remove_controller,
)
from simulator.controller.clock import BoardTime, parse_clock
from simulator.controller.tubes import Anode, DutyLog, TubeLimits
from simulator.controller.wire import LinkFaults, Wire

M = P.MsgType


class Raw:
    """A host that speaks frames to a controller stepped by hand."""

    def __init__(self, clock_scale: float = 1.0, **kw) -> None:
        self.clock = ManualClock()
        self.ctl = VirtualSyncController(
            "raw", clock=self.clock, start=False, clock_scale=clock_scale, **kw
        )
        self.ep = self.ctl.connect()
        self.dec = FrameDecoder()
        self.seq = 100
        self.events: list[Frame] = []
        self.triggers: list[dict] = []
        self.ctl.add_trigger_listener(self.triggers.append)

    def _pump(self) -> list[Frame]:
        self.ctl.step()
        frames = self.dec.feed(self.ep.read(1 << 16, 0))
        answers = []
        for f in frames:
            if f.type in P.EVENT_TYPES:
                self.ep.write(codec.encode_frame(Frame(int(M.EVT_ACK), f.seq)))
                self.events.append(f)
            else:
                answers.append(f)
        self.ctl.step()
        return answers

    def send(self, mtype: M, payload: bytes = b"", seq: int | None = None) -> Frame:
        if seq is None:
            self.seq += 1
            seq = self.seq
        self.ep.write(b"\x00" + codec.encode_frame(Frame(int(mtype), seq, payload)))
        answers = self._pump()
        assert len(answers) == 1, answers
        assert answers[0].seq == seq
        return answers[0]

    def ok(self, mtype: M, payload: bytes = b"", seq: int | None = None) -> bytes:
        f = self.send(mtype, payload, seq)
        assert f.type == M.ACK, P.NAK.unpack(f.payload)
        assert f.payload[0] == mtype
        return f.payload[1:]

    def nak(self, mtype: M, payload: bytes = b"") -> P.ErrorCode:
        f = self.send(mtype, payload)
        assert f.type == M.NAK
        return P.ErrorCode(P.NAK.unpack(f.payload)[1])

    def advance(self, seconds: float, heartbeat: bool = True) -> None:
        """Let time pass in 50 ms steps, feeding the watchdog unless told not to."""
        end = self.clock.now() + seconds
        while self.clock.now() < end - 1e-9:
            self.clock.advance(min(0.05, end - self.clock.now()))
            if heartbeat:
                self.ok(M.HEARTBEAT)
            else:
                self._pump()

    def hello(self) -> P.HelloInfo:
        return P.HelloInfo.unpack(self.ok(M.HELLO, P.HELLO_REQ.pack(1, 0, 77)))

    def status(self) -> P.StatusBody:
        return P.StatusBody.unpack(self.ok(M.GET_STATUS))

    def technique(self, kv=70.0, ma=100.0, ms=20.0) -> None:
        for tube in (0, 1):
            self.ok(M.SET_TECHNIQUE, bytes([tube]) + P.Technique(kv, ma, ms).pack())

    def switch(self, stage: P.Stage) -> None:
        self.ok(M.BENCH_HAND_SWITCH, bytes([stage]))

    def state_events(self) -> list[tuple[P.State, P.State, P.StateReason]]:
        return [
            (P.State(a), P.State(b), P.StateReason(r))
            for f in self.events
            if f.type == M.EVT_STATE
            for a, b, r in [P.EVT_STATE.unpack(f.payload)]
        ]

    def reports(self) -> list[P.ReportBody]:
        return [P.ReportBody.unpack(f.payload) for f in self.events if f.type == M.EVT_REPORT]


@pytest.fixture
def raw():
    r = Raw()
    r.hello()
    return r


def test_commands_need_a_session():
    r = Raw()
    assert r.nak(M.ARM) == P.ErrorCode.NO_SESSION
    assert r.nak(M.HEARTBEAT) == P.ErrorCode.NO_SESSION
    assert P.StatusBody.unpack(r.ok(M.GET_STATUS)).session is False


def test_hello_version_mismatch_answers_with_the_board_version():
    r = Raw()
    r.ep.write(codec.encode_frame(Frame(int(M.HELLO), 5, P.HELLO_REQ.pack(2, 0, 1), version=2)))
    (f,) = r._pump()
    assert f.type == M.NAK and f.version == 1
    assert P.NAK.unpack(f.payload) == (M.HELLO, P.ErrorCode.VERSION_MISMATCH, 1)
    assert r.nak(M.HELLO, P.HELLO_REQ.pack(3, 0, 1)) == P.ErrorCode.VERSION_MISMATCH


def test_ready_delay_and_exposure_timing_on_board_time(raw):
    raw.technique(ms=100)
    assert P.U32.unpack(raw.ok(M.ARM))[0] == 1
    raw.switch(P.Stage.EXPOSE)
    assert raw.status().state == P.State.PREP
    raw.advance(0.75)
    assert raw.status().state == P.State.PREP  # ready delay is 800 ms
    raw.advance(0.1)
    assert raw.status().state == P.State.EXPOSING
    raw.advance(0.05)
    assert raw.status().state == P.State.EXPOSING
    raw.advance(0.1)
    assert raw.status().state == P.State.REPORTED
    (rep,) = raw.reports()
    assert rep.end_reason == P.EndReason.COMPLETED and not rep.aborted
    assert rep.tubes["A"].ms == pytest.approx(100, rel=0.02)
    assert raw.triggers == [
        {
            "exposure_id": 1,
            "tubes": {t: a.as_dict() for t, a in rep.tubes.items()},
            "skew_us": rep.skew_us,
            "skew_over_limit": False,
            "aborted": False,
            "end_reason": "completed",
        }
    ]
    raw.switch(P.Stage.OFF)
    assert raw.status().state == P.State.IDLE
    assert [s[1] for s in raw.state_events()] == [
        P.State.ARMED,
        P.State.PREP,
        P.State.READY,
        P.State.EXPOSING,
        P.State.REPORTED,
        P.State.IDLE,
    ]


def test_clock_scale_compresses_process_times_not_link_timers():
    r = Raw(clock_scale=10)
    r.hello()
    r.technique(ms=1000)
    r.ok(M.ARM)
    r.switch(P.Stage.EXPOSE)
    r.advance(0.07)  # 0.7 s of board time: still in prep (ready delay 0.8 s)
    assert r.status().state == P.State.PREP
    r.advance(0.02)
    assert r.status().state == P.State.EXPOSING
    r.advance(0.11)
    assert r.status().state == P.State.REPORTED
    # the watchdog stays at 1 s of wall time
    r.switch(P.Stage.OFF)
    r.advance(0.95, heartbeat=False)
    assert r.ctl.state == "idle"
    r.advance(0.1, heartbeat=False)
    assert r.ctl.state == "safe"


def test_watchdog_fires_at_its_edge_and_aborts(raw):
    raw.technique(kv=60, ma=50, ms=3000)
    raw.ok(M.ARM)
    raw.switch(P.Stage.EXPOSE)
    raw.advance(1.0)
    assert raw.status().state == P.State.EXPOSING
    raw.advance(0.95, heartbeat=False)
    assert raw.ctl.state == "exposing"
    raw.advance(0.1, heartbeat=False)
    assert raw.ctl.state == "safe"
    # session gone; the report and the fault wait for the next session
    assert raw.nak(M.HEARTBEAT) == P.ErrorCode.NO_SESSION
    before = len(raw.events)
    raw.ok(M.HELLO, P.HELLO_REQ.pack(1, 0, 78))
    raw.advance(0.01)
    new = raw.events[before:]
    types = [f.type for f in new]
    assert M.EVT_REPORT in types and M.EVT_FAULT in types
    rep = P.ReportBody.unpack(next(f.payload for f in new if f.type == M.EVT_REPORT))
    # X-rays from 0.8 s (ready delay) until the watchdog at 1.0 s + 1.0 s
    assert rep.end_reason == P.EndReason.WATCHDOG
    assert 1150 < rep.tubes["A"].ms < 1300
    assert raw.status().state == P.State.IDLE


def test_hold_deadman_edge(raw):
    raw.technique(kv=60, ma=50, ms=2000)
    raw.ok(M.ARM)
    for _ in range(20):  # 1 s of HOLD every 50 ms: through prep into the exposure
        raw.ok(M.HOLD, bytes([2]))
        raw.advance(0.05)
    assert raw.status().state == P.State.EXPOSING
    raw.advance(0.2)
    assert raw.status().state == P.State.EXPOSING
    raw.advance(0.1)
    (rep,) = raw.reports()
    assert rep.end_reason == P.EndReason.HOLD_LOST


def test_prep_timeout_edge_and_need_release(raw):
    raw.technique()
    raw.ok(M.ARM)
    raw.switch(P.Stage.PREP)
    raw.advance(29.9)
    assert raw.status().state == P.State.READY
    raw.advance(0.2)
    s = raw.status()
    assert s.state == P.State.ARMED and s.need_release
    raw.switch(P.Stage.EXPOSE)
    raw.advance(1.0)
    assert raw.status().state == P.State.ARMED and raw.reports() == []
    raw.switch(P.Stage.OFF)
    raw.switch(P.Stage.EXPOSE)
    raw.advance(1.0)
    assert len(raw.reports()) == 1


def test_duplicate_command_is_answered_from_the_cache_not_executed(raw):
    raw.technique()
    first = raw.send(M.ARM, seq=500)
    again = raw.send(M.ARM, seq=500)
    assert first == again
    # the same seq with other content is a new command
    assert P.StatusBody.unpack(raw.ok(M.GET_STATUS, seq=500)).state == P.State.ARMED
    q = raw.ok(M.QUERY_SEQ, P.U16.pack(501))
    assert P.QUERY_ACK.unpack(q)[0] == P.QueryOutcome.UNKNOWN


def test_query_seq_reports_what_happened(raw):
    raw.technique()
    raw.ok(M.ARM, seq=600)
    q = raw.ok(M.QUERY_SEQ, P.U16.pack(600))
    outcome, ref, code, _ = P.QUERY_ACK.unpack_from(q, 0)
    assert (outcome, ref, code) == (P.QueryOutcome.ACKED, M.ARM, 0)
    assert P.U32.unpack(q[P.QUERY_ACK.size :])[0] == 1
    raw.send(M.SET_TECHNIQUE, bytes([0]) + P.Technique(500, 100, 10).pack(), seq=601)
    outcome, ref, code, _ = P.QUERY_ACK.unpack_from(raw.ok(M.QUERY_SEQ, P.U16.pack(601)), 0)
    assert (outcome, code) == (P.QueryOutcome.NAKED, P.ErrorCode.WRONG_STATE)


def test_events_are_resent_until_acknowledged():
    r = Raw()
    r.hello()
    r.ctl.set_interlock("door", False)
    r.ctl.step()
    first = r.dec.feed(r.ep.read(4096, 0))
    assert [f.type for f in first] == [M.EVT_INTERLOCK]
    r.clock.advance(0.06)  # not acknowledged: re-sent after event_retry_ms
    r.ctl.step()
    again = r.dec.feed(r.ep.read(4096, 0))
    assert again == first
    r.ep.write(codec.encode_frame(Frame(int(M.EVT_ACK), first[0].seq)))
    r.ctl.step()
    r.clock.advance(0.2)
    r.ctl.step()
    assert r.dec.feed(r.ep.read(4096, 0)) == []


def test_reboot_keeps_nv_counter_and_inputs_and_forgets_the_rest(raw):
    raw.technique(kv=125, ma=640, ms=100)  # 11.2 kHU per tube
    raw.ok(M.ARM)
    raw.switch(P.Stage.EXPOSE)
    raw.advance(1.0)
    raw.switch(P.Stage.OFF)
    boot = raw.status().boot_id
    raw.ctl.set_interlock("collimator", False)
    raw.ctl.reboot()
    raw.clock.advance(0.01)
    raw.ctl.step()
    assert raw.ctl.state == "booting"
    raw.clock.advance(0.2)
    raw.ctl.step()
    assert raw.nak(M.ARM) == P.ErrorCode.NO_SESSION
    s = raw.status()
    assert s.boot_id != boot and s.last_exposure_id == 1 and s.state == P.State.IDLE
    assert s.techniques == {"A": None, "B": None}
    assert not s.interlocks & (1 << P.Interlock.COLLIMATOR)
    assert raw.ctl.hw.anodes["A"].hu > 9000  # the anode did not cool by rebooting


def test_bench_and_sim_commands_need_their_capabilities():
    r = Raw(bench_mode=False, fault_injection=False)
    info = r.hello()
    assert not info.capabilities & (P.Capability.BENCH_MODE | P.Capability.FAULT_INJECTION)
    assert r.nak(M.BENCH_HAND_SWITCH, b"\x02") == P.ErrorCode.BENCH_DISABLED
    assert r.nak(M.BENCH_INTERLOCK, b"\x00\x00") == P.ErrorCode.BENCH_DISABLED
    assert r.nak(M.SIM_INJECT, b"\x01\x00") == P.ErrorCode.UNKNOWN_TYPE


def test_bad_payloads_are_refused_not_crashing(raw):
    assert raw.nak(M.ARM, b"\x01") == P.ErrorCode.BAD_LENGTH
    assert raw.nak(M.HOLD, b"\x07") == P.ErrorCode.BAD_VALUE
    assert raw.nak(M.SET_TECHNIQUE, b"\x05" + bytes(8)) == P.ErrorCode.BAD_VALUE
    assert raw.nak(0x3F) == P.ErrorCode.UNKNOWN_TYPE
    assert raw.nak(M.GET_REPORT, P.U32.pack(999)) == P.ErrorCode.BAD_VALUE
    raw.ep.write(b"\x13\x37garbage\x00\x00\x05\x01\x00")
    assert raw._pump() == []
    assert raw.ctl.fw.decoder.stats.dropped >= 2
    assert raw.status().state == P.State.IDLE


def test_inputs_are_validated():
    ctl = VirtualSyncController("v", start=False)
    with pytest.raises(ValueError, match="interlock must be one of"):
        ctl.set_interlock("window", False)
    with pytest.raises(ValueError, match="off, prep or expose"):
        ctl.press_hand_switch("fire")
    with pytest.raises(ValueError, match="unknown safety rule"):
        FirmwareConfig(disabled_rules=frozenset({"seatbelt"}))
    assert parse_clock("fast") == 50 and parse_clock("real") == 1 and parse_clock("2.5") == 2.5
    with pytest.raises(ValueError):
        parse_clock("-1")


# -- physics and wire models --------------------------------------------------------


def test_heat_units_cooling_and_duty_window():
    lim = TubeLimits()
    assert lim.heat_units(125, 640, 1000) == pytest.approx(1.4 * 125 * 640)
    a = Anode(lim)
    a.add(100_000)
    a.update(10.0)
    assert a.hu == pytest.approx(90_000)
    assert a.permille == 300
    assert a.fits(210_000) and not a.fits(210_001)
    d = DutyLog(window_s=120, limit_s=5)
    d.add(0.0, 2.0)
    d.add(10.0, 2.0)
    assert d.fits(20.0, 1.0) and not d.fits(20.0, 1.1)
    assert d.fits(121.0, 3.0)  # the first exposure left the window
    assert lim.check(P.Technique(70, 100, 20)) == P.ErrorCode.OK
    assert lim.check(P.Technique(150, 1000, 10)) == P.ErrorCode.POWER_OUT_OF_RANGE


def test_board_time_scaling():
    bt = BoardTime(100.0, 4.0)
    assert bt.update(101.0) == pytest.approx(4.0)
    bt.set_scale(102.0, 1.0)
    assert bt.t == pytest.approx(8.0)
    assert bt.wall_at(10.0) == pytest.approx(104.0)


def test_line_timing_at_the_baud_rate():
    import random

    w = Wire(LinkFaults(), random.Random(0), baudrate=9600, line_timing=True)
    w.put(b"x" * 96, now=0.0)  # 96 bytes x 10 bits at 9600 baud = 100 ms
    assert w.take(0.099) == b""
    assert w.take(0.1001) == b"x" * 96
    w.put(b"a" * 10, now=0.2)
    w.put(b"b" * 10, now=0.2)  # queued behind the first chunk on the line
    assert w.take(0.2105) == b"a" * 10
    assert w.take(0.2209) == b"b" * 10


def test_byte_faults_hit_at_their_rate():
    import random

    w = Wire(LinkFaults(corrupt_rate=0.01, drop_rate=0.01), random.Random(5))
    data = bytes(range(256)) * 200
    w.put(data, 0.0)
    out = w.take(0.0)
    n = len(data)
    assert 0.007 * n < w.stats.dropped < 0.013 * n
    assert 0.007 * n < w.stats.corrupted < 0.013 * n
    assert len(out) == n - w.stats.dropped


# -- the URL handler and the pty command -----------------------------------------------


def test_sim_url_reaches_the_named_controller():
    remove_controller("urltest")
    port = serial.serial_for_url("sim://urltest?clock=fast&seed=4&bench=0", timeout=0.5)
    try:
        ctl = get_controller("urltest")
        assert ctl.hw.board_time.scale == 50 and not ctl.cfg.bench_mode
        port.write(codec.encode_frame(Frame(int(M.GET_STATUS), 1)))
        (f,) = _read_frames(port)
        assert f.type == M.ACK
    finally:
        port.close()
        remove_controller("urltest")
    with pytest.raises(serial.SerialException, match="unknown parameter"):
        serial.serial_for_url("sim://x?colour=blue")


def _read_frames(port) -> list[Frame]:
    dec, frames = FrameDecoder(), []
    for _ in range(50):
        frames += dec.feed(port.read_until(b"\x00"))
        if frames:
            return frames
    return frames


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "acquisition.cli", "sim-controller", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sim_controller_command_prints_pty_then_serves_until_signal(sig):
    p = _cli("--baud", "115200", "--line-timing")
    try:
        path = p.stdout.readline().strip()
        assert path.startswith("/dev/pts/") and os.path.exists(path)
        port = serial.Serial(path, 115200, timeout=5)
        try:
            port.write(codec.encode_frame(Frame(int(M.HELLO), 9, P.HELLO_REQ.pack(1, 0, 5))))
            (f,) = _read_frames(port)
            assert f.type == M.ACK and f.seq == 9
        finally:
            port.close()
        p.send_signal(sig)
        _out, err = p.communicate(timeout=20)
        assert p.returncode == 0
        assert "Traceback" not in err
    finally:
        if p.poll() is None:
            p.kill()


def test_sim_controller_command_rejects_bad_options():
    p = _cli("--clock-scale", "sideways")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2 and out == ""
    assert err.count("\n") == 1 and "--clock-scale" in err


# -- fuzzing the firmware -------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=150)
@given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=48)), max_size=12))
def test_firmware_survives_any_well_framed_command(cmds):
    r = Raw()
    r.hello()
    for mtype, payload in cmds:
        if mtype in (M.SIM_INJECT, M.SIM_CONFIG):
            continue  # reboots and clock changes are covered elsewhere
        r.seq += 1
        r.ep.write(codec.encode_frame(Frame(mtype, r.seq, payload)))
        answers = r._pump()
        if mtype < 0x80 and mtype != M.EVT_ACK:
            assert len(answers) == 1 and answers[0].type in (M.ACK, M.NAK)
        else:
            assert answers == []
    assert r.ctl.firmware_errors == 0
    assert P.StatusBody.unpack(r.ok(M.GET_STATUS)).session


@settings(max_examples=100)
@given(st.binary(max_size=400))
def test_firmware_survives_any_bytes(data):
    r = Raw()
    r.ep.write(data)
    r._pump()
    assert r.ctl.firmware_errors == 0
    assert r.ok(M.GET_STATUS)


def test_latched_fault_survives_a_lost_session_until_reset(raw):
    raw.technique(ms=1000)
    raw.ok(M.ARM)
    raw.switch(P.Stage.EXPOSE)
    raw.advance(1.0)
    raw.ctl.set_interlock("door", False)
    raw.advance(0.05)
    assert raw.status().state == P.State.FAULT
    raw.switch(P.Stage.OFF)
    raw.ctl.set_interlock("door", True)
    raw.advance(1.1, heartbeat=False)
    assert raw.ctl.state == "safe"
    raw.ok(M.HELLO, P.HELLO_REQ.pack(1, 0, 79))
    s = raw.status()
    assert s.state == P.State.FAULT and s.fault == P.ErrorCode.INTERLOCK_OPENED
    assert raw.nak(M.ARM) == P.ErrorCode.FAULT_LATCHED
    raw.ok(M.RESET_FAULT)
    assert raw.status().state == P.State.IDLE
    raw.ok(M.ARM)
