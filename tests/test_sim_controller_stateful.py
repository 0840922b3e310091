"""Random walks through the firmware, checking its safety invariants after every step.

Hypothesis drives the virtual board with any mix of commands (valid or not),
hand-switch and interlock changes, injected faults and time passing (with and
without heartbeat), on a manual clock. After every step:

- every state change the board announced is an edge of the documented state
  machine (docs/protocol.md);
- X-rays are on exactly in EXPOSING, and never with an interlock open;
- no state that can lead to X-rays (ARMED, PREP, READY, EXPOSING) persists with
  an interlock open;
- every exposure that started is reported exactly once, with a new id;
- two exposures are always separated by a release of the switch;
- the technique of an exposure is the one set before it was armed, and does
  not change while X-rays are on;
- X-rays stop once the switch is released, and by the backup timer at the latest;
- a session never outlives the watchdog.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from test_sim_controller import Raw

from firmware_bridge import codec
from firmware_bridge import protocol as P
from firmware_bridge.codec import Frame

S = P.State
M = P.MsgType
EDGES = {
    (S.IDLE, S.ARMED),
    (S.ARMED, S.IDLE),
    (S.ARMED, S.PREP),
    (S.PREP, S.READY),
    (S.PREP, S.ARMED),
    (S.PREP, S.IDLE),
    (S.READY, S.EXPOSING),
    (S.READY, S.ARMED),
    (S.READY, S.IDLE),
    (S.EXPOSING, S.REPORTED),
    (S.EXPOSING, S.FAULT),
    (S.REPORTED, S.IDLE),
    (S.FAULT, S.IDLE),
    (S.SAFE, S.IDLE),
    (S.SAFE, S.FAULT),
} | {(s, S.SAFE) for s in S if s != S.SAFE}
LIVE = (S.ARMED, S.PREP, S.READY, S.EXPOSING)


class BoardWalk(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.r = Raw(clock_scale=10)  # ready delay 80 ms, prep timeout 3 s of wall time
        self.fw_seen_events = 0
        self.nonce = 1
        self.reports: list[int] = []
        self.started = 0
        self.released_since_exposure = True
        self.techniques_at_arm: dict | None = None
        self.send(M.HELLO, P.HELLO_REQ.pack(1, 0, self.nonce))

    # -- helpers --

    def send(self, mtype: int, payload: bytes = b"") -> None:
        r = self.r
        r.seq += 1
        r.ep.write(b"\x00" + codec.encode_frame(Frame(int(mtype), r.seq, payload)))
        answers = r._pump()
        if mtype < 0x80 and mtype != M.EVT_ACK:
            assert len(answers) == 1 and answers[0].seq == r.seq
        self._observe()

    def _observe(self) -> None:
        fw = self.r.ctl.fw
        if fw is None:
            return
        if fw.effective_stage() == P.Stage.OFF:
            self.released_since_exposure = True
        if fw.state == S.ARMED and self.techniques_at_arm is None:
            self.techniques_at_arm = dict(fw.techniques)
        if fw.state == S.IDLE:
            self.techniques_at_arm = None

    # -- rules --

    @rule()
    def hello(self):
        self.nonce += 1
        self.send(M.HELLO, P.HELLO_REQ.pack(1, 0, self.nonce))

    @rule(
        tube=st.integers(0, 1),
        kv=st.sampled_from([30, 60, 80, 125, 160]),
        ma=st.sampled_from([5, 10, 100, 640, 1200]),
        ms=st.sampled_from([0.5, 5, 50, 400, 3000, 6000]),
    )
    def set_technique(self, tube, kv, ma, ms):
        self.send(M.SET_TECHNIQUE, bytes([tube]) + P.Technique(kv, ma, ms).pack())

    @rule(ms=st.sampled_from([5, 50, 400, 2000]))
    def valid_setup_and_arm(self, ms):
        for tube in (0, 1):
            self.send(M.SET_TECHNIQUE, bytes([tube]) + P.Technique(70, 100, ms).pack())
        self.send(M.ARM)

    @rule(
        ms=st.sampled_from([5, 50, 400, 2000]),
        via_hold=st.booleans(),
        release=st.booleans(),
    )
    def exposure_attempt(self, ms, via_hold, release):
        self.valid_setup_and_arm(ms)
        if not via_hold:
            self.hand_switch("expose")
        for _ in range(6):  # 0.3 s of wall time, 3 s of board time
            self.r.clock.advance(0.05)
            if via_hold:
                self.send(M.HOLD, b"\x02")
            else:
                self.send(M.HEARTBEAT)
        if release and via_hold:
            self.send(M.RELEASE)
        elif release:
            self.hand_switch("off")

    @rule(cmd=st.sampled_from([M.ARM, M.DISARM, M.RELEASE, M.RESET_FAULT, M.GET_STATUS]))
    def command(self, cmd):
        self.send(cmd)

    @rule(stage=st.integers(1, 2))
    def hold(self, stage):
        self.send(M.HOLD, bytes([stage]))

    @rule(stage=st.sampled_from(["off", "prep", "expose"]))
    def hand_switch(self, stage):
        self.r.ctl.press_hand_switch(stage)
        self.r._pump()
        self._observe()

    @rule(name=st.sampled_from(sorted(P.INTERLOCK_BY_NAME)), closed=st.booleans())
    def interlock(self, name, closed):
        self.r.ctl.set_interlock(name, closed)
        self.r._pump()
        self._observe()

    @rule(
        fault=st.sampled_from(
            [
                P.SimFault.TUBE_NO_FIRE,
                P.SimFault.SKEW_OVER_LIMIT,
                P.SimFault.INTERLOCK_MID_EXPOSURE,
                P.SimFault.ARC,
                P.SimFault.STUCK_TIMER,
            ]
        ),
        arg=st.integers(0, 3),
    )
    def inject(self, fault, arg):
        self.send(M.SIM_INJECT, P.SIM_INJECT.pack(fault, arg))

    @rule(seconds=st.sampled_from([0.02, 0.1, 0.4, 1.0, 2.5]), heartbeat=st.booleans())
    def wait(self, seconds, heartbeat):
        end = self.r.clock.now() + seconds
        while self.r.clock.now() < end - 1e-9:
            self.r.clock.advance(min(0.05, end - self.r.clock.now()))
            if heartbeat:
                self.send(M.HEARTBEAT)
            else:
                self.r._pump()
                self._observe()

    # -- invariants --

    @invariant()
    def transitions_are_documented_edges(self):
        for old, new, _ in self.r.state_events():
            assert (old, new) in EDGES, f"undocumented transition {old.name} -> {new.name}"

    @invariant()
    def xrays_only_when_exposing_and_safe(self):
        fw = self.r.ctl.fw
        assert (fw.exposure is not None) == (fw.state == S.EXPOSING)
        if fw.state in LIVE:
            assert all(fw.hw.interlocks.values()), f"{fw.state.name} with an interlock open"

    @invariant()
    def timers_and_locks_hold(self):
        fw = self.r.ctl.fw
        if fw.session is not None:  # the watchdog never lets a silent session live on
            assert fw.now - fw.last_rx <= fw.cfg.watchdog_ms / 1000.0 + 1e-9
        e = fw.exposure
        if e is not None:
            assert fw.effective_stage() == P.Stage.EXPOSE, "X-rays on after a release"
            assert fw.bt < e.backup_end, "exposure outlived its backup timer"
            assert {t: fw.techniques[t] for t in e.techniques} == e.techniques, (
                "technique changed with X-rays on"
            )

    @invariant()
    def each_exposure_reported_once_and_pressed_once(self):
        fw = self.r.ctl.fw
        ids = [r.exposure_id for r in self.r.reports()]
        assert len(ids) == len(set(ids))
        started = fw.hw.exposure_counter
        if started > self.started:
            assert started == self.started + 1, "two exposures in one step"
            assert self.released_since_exposure, "second exposure without a release"
            self.released_since_exposure = False
            self.started = started
            if self.techniques_at_arm is not None:
                assert fw.exposure is None or fw.exposure.techniques == self.techniques_at_arm
        in_flight = 1 if fw.exposure is not None else 0
        assert sorted(ids) == list(range(1, started + 1 - in_flight))


BoardWalk.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
test_board_walk = BoardWalk.TestCase
