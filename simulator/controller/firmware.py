"""The sync-controller firmware: protocol handling, state machine, safety rules.

:class:`Firmware` is pure and single-threaded: its runner hands it received
bytes and the wall time, calls :meth:`Firmware.tick`, and collects the bytes
to send (:attr:`Firmware.out`) and the trigger-line records
(:attr:`Firmware.triggers`). Physical things that survive a reboot (interlock
inputs, the hand switch, anode heat, the duty log, the non-volatile exposure
counter and log, elapsed time) live in :class:`Hardware`.

Every safety rule of docs/protocol.md ("Safety rules") is enforced here and
named in :data:`RULES`; ``FirmwareConfig.disabled_rules`` switches a rule off
so the test suite can prove that the test guarding it fails (mutation check).
Never disable a rule for any other purpose.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from dataclasses import dataclass, field

from firmware_bridge import codec
from firmware_bridge import protocol as P
from firmware_bridge.codec import Frame
from simulator.controller.clock import BoardTime
from simulator.controller.tubes import Anode, DutyLog, Scatter, TubeLimits

#: Safety rules, each guarded by a HIL test (hil_tests/, see docs/protocol.md).
RULES = (
    "watchdog",  # lost heartbeat -> abort, SAFE
    "hold_deadman",  # software hold keep-alive stops -> abort
    "release_abort",  # hand switch released -> exposure ends
    "prep_timeout",  # prep held too long -> back to ARMED, needs release
    "backup_timer",  # backup timer ends an exposure whose primary timer failed
    "interlock_abort",  # interlock opens during exposure -> abort, FAULT
    "arm_interlocks",  # ARM refused with an interlock open / detector not ready
    "one_exposure_per_press",  # re-arming needs a release
    "xray_on_lock",  # no technique change with X-rays on
    "tube_limits",  # technique outside the tube's rating refused
    "heat_limit",  # ARM refused when the anode cannot take the exposure
    "duty_limit",  # ARM refused when the duty window is full
    "skew_flag",  # report flags a start skew over the limit
)


@dataclass
class FirmwareConfig:
    serial_number: str = "RSA-SIM-0001"
    firmware: tuple[int, int, int] = (1, 0, 0)
    bench_mode: bool = True
    fault_injection: bool = True
    heartbeat_ms: int = 200
    watchdog_ms: int = 1000
    hold_timeout_ms: int = 250
    event_retry_ms: int = 50
    prep_timeout_ms: int = 30_000  # board time
    ready_delay_ms: float = 800.0  # board time: rotor up to speed, filament boosted
    skew_limit_us: int = 100
    backup_factor: float = 1.2  # backup timer = factor * set time + margin
    backup_margin_ms: float = 5.0
    response_cache: int = 64
    event_queue: int = 64
    report_log: int = 32
    limits: TubeLimits = field(default_factory=TubeLimits)
    scatter: Scatter = field(default_factory=Scatter)
    duty_window_s: float = 120.0
    duty_limit_s: float = 5.0
    disabled_rules: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = set(self.disabled_rules) - set(RULES)
        if unknown:
            raise ValueError(f"unknown safety rule(s): {', '.join(sorted(unknown))}")


class Hardware:
    """What a reboot does not change: inputs, anodes, duty, NV memory, time."""

    def __init__(self, config: FirmwareConfig, wall_now: float, clock_scale: float = 1.0):
        self.interlocks = dict.fromkeys(P.Interlock, True)
        self.hand_switch = P.Stage.OFF
        self.board_time = BoardTime(wall_now, clock_scale)
        self.anodes = {t: Anode(config.limits) for t in P.TUBES}
        self.duty = DutyLog(config.duty_window_s, config.duty_limit_s)
        self.exposure_counter = 0  # non-volatile
        self.report_log: OrderedDict[int, P.ReportBody] = OrderedDict()  # non-volatile

    def log_report(self, report: P.ReportBody, keep: int) -> None:
        self.report_log[report.exposure_id] = report
        self.report_log.move_to_end(report.exposure_id)
        while len(self.report_log) > keep:
            self.report_log.popitem(last=False)

    def reset(self) -> None:
        """Simulator aid: cool tubes, clear duty, close interlocks, let go of the switch."""
        for a in self.anodes.values():
            a.hu = 0.0
        self.duty.clear()
        self.interlocks = dict.fromkeys(P.Interlock, True)
        self.hand_switch = P.Stage.OFF


@dataclass
class _Exposure:
    exposure_id: int
    start: float  # board time
    techniques: dict[str, P.Technique]
    planned: dict[str, tuple[float, float, float]]  # actual kv, ma, ms the generator will give
    fires: dict[str, bool]
    ended: dict[str, float | None]  # board time each tube stopped
    backup_end: float
    skew_us: float
    stuck_timer: bool
    mid_fault: tuple[P.SimFault, int] | None
    mid_time: float
    end_reason: P.EndReason | None = None


class Firmware:
    """One boot of the board's firmware."""

    def __init__(
        self,
        config: FirmwareConfig,
        hw: Hardware,
        wall_now: float,
        rng: random.Random,
    ) -> None:
        self.cfg = config
        self.hw = hw
        self.rng = rng
        self.boot_id = rng.randrange(1, 1 << 32)
        self.boot_wall = wall_now
        self.now = wall_now
        self.bt = hw.board_time.update(wall_now)
        self.out = bytearray()
        self.triggers: list[dict] = []
        self.sim_requests: list[tuple[str, float]] = []  # (what, value) for the runner
        self.state = P.State.IDLE
        self.session: tuple[int, int] | None = None  # (nonce, hello seq)
        self.last_rx = wall_now
        self.cache: OrderedDict[int, tuple[int, bytes, bytes, tuple]] = OrderedDict()
        self.evt_next = 0
        self.evt_pending: OrderedDict[int, list] = OrderedDict()  # seq -> [type, payload, sent]
        self.techniques: dict[str, P.Technique | None] = {"A": None, "B": None}
        self.soft_stage = P.Stage.OFF
        self.soft_expires = 0.0
        self.need_release = False
        self.fault = P.ErrorCode.OK
        self.fault_detail = 0
        self.prep_start = 0.0
        self.ready_at = 0.0
        self.exposure: _Exposure | None = None
        self.injected: dict[P.SimFault, int] = {}
        self.decoder = codec.FrameDecoder()
        self.malformed_version = 0
        self._deferred: list = []

    # -- helpers ------------------------------------------------------------------

    def rule(self, name: str) -> bool:
        return name not in self.cfg.disabled_rules

    def _send(
        self, mtype: int, seq: int, payload: bytes = b"", version: int | None = None
    ) -> bytes:
        data = codec.DELIMITER + codec.encode_frame(
            Frame(int(mtype), seq, payload, codec.PROTOCOL_VERSION if version is None else version)
        )
        self.out += data
        return data

    def _emit(self, mtype: P.MsgType, payload: bytes) -> None:
        seq = self.evt_next
        self.evt_next = (self.evt_next + 1) & 0xFFFF
        self.evt_pending[seq] = [int(mtype), payload, self.now]
        while len(self.evt_pending) > self.cfg.event_queue:
            self.evt_pending.popitem(last=False)
        if self.session is not None:
            self._send(mtype, seq, payload)

    def _set_state(self, new: P.State, reason: P.StateReason) -> None:
        if new == self.state:
            return
        old = self.state
        self.state = new
        self._emit(P.MsgType.EVT_STATE, P.EVT_STATE.pack(old, new, reason))

    def _raise_fault(
        self, code: P.ErrorCode, detail: int = 0, tube: int = P.NO_TUBE, latch: bool = True
    ) -> None:
        if latch:
            self.fault, self.fault_detail = code, detail
        self._emit(P.MsgType.EVT_FAULT, P.EVT_FAULT.pack(code, detail, tube))

    def effective_stage(self) -> P.Stage:
        soft = self.soft_stage if self.now < self.soft_expires else P.Stage.OFF
        return max(self.hw.hand_switch, soft)

    # -- inputs from the runner -------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        self._advance(now)
        for frame in self.decoder.feed(data):
            self._on_frame(frame)
        self._step()

    def set_interlock(self, which: P.Interlock, closed: bool, now: float) -> None:
        self._advance(now)
        if self.hw.interlocks[which] != closed:
            self.hw.interlocks[which] = closed
            self._emit(P.MsgType.EVT_INTERLOCK, P.EVT_INTERLOCK.pack(which, int(closed)))
        self._step()

    def set_hand_switch(self, stage: P.Stage, now: float) -> None:
        self._advance(now)
        if self.hw.hand_switch != stage:
            self.hw.hand_switch = stage
            self._emit(P.MsgType.EVT_HAND_SWITCH, P.EVT_HAND_SWITCH.pack(stage, 0))
        self._step()

    def tick(self, now: float) -> None:
        self._advance(now)
        self._step()

    def _advance(self, now: float) -> None:
        self.now = max(self.now, now)
        self.bt = self.hw.board_time.update(self.now)
        for a in self.hw.anodes.values():
            a.update(self.bt)

    def next_deadline(self) -> float:
        """Wall time by which :meth:`tick` must run again."""
        bt = self.hw.board_time
        cands = [self.now + 0.25]
        if self.session is not None and self.rule("watchdog"):
            cands.append(self.last_rx + self.cfg.watchdog_ms / 1000.0)
        if self.soft_stage != P.Stage.OFF:
            cands.append(self.soft_expires)
        if self.evt_pending and self.session is not None:
            oldest = min(p[2] for p in self.evt_pending.values())
            cands.append(oldest + self.cfg.event_retry_ms / 1000.0)
        if self.state == P.State.PREP:
            cands.append(bt.wall_at(self.ready_at))
        if self.state in (P.State.PREP, P.State.READY):
            cands.append(bt.wall_at(self.prep_start + self.cfg.prep_timeout_ms / 1000.0))
        if self.exposure is not None:
            e = self.exposure
            for t in P.TUBES:
                if e.ended[t] is None:
                    cands.append(bt.wall_at(e.start + e.planned[t][2] / 1000.0))
            cands.append(bt.wall_at(e.backup_end))
            if e.mid_fault is not None:
                cands.append(bt.wall_at(e.mid_time))
        return min(cands)

    # -- the state machine -----------------------------------------------------------

    def _step(self) -> None:
        now = self.now
        if (
            self.session is not None
            and self.rule("watchdog")
            and now - self.last_rx > self.cfg.watchdog_ms / 1000.0
        ):
            self._watchdog()
        if self.soft_stage != P.Stage.OFF and now >= self.soft_expires:
            if not self.rule("hold_deadman"):
                self.soft_expires = float("inf")  # mutation: the keep-alive is not checked
            else:
                self.soft_stage = P.Stage.OFF
                self._emit(P.MsgType.EVT_HAND_SWITCH, P.EVT_HAND_SWITCH.pack(P.Stage.OFF, 1))
                if self.state in (P.State.PREP, P.State.READY, P.State.EXPOSING):
                    if self.state == P.State.EXPOSING and self.hw.hand_switch < P.Stage.EXPOSE:
                        self._end_exposure(P.EndReason.HOLD_LOST)
                    self._raise_fault(P.ErrorCode.HOLD_LOST, latch=False)
        eff = self.effective_stage()
        if eff == P.Stage.OFF:
            self.need_release = False
        if (
            self.state in (P.State.ARMED, P.State.PREP, P.State.READY)
            and self.rule("arm_interlocks")
            and not all(self.hw.interlocks.values())
        ):
            self._set_state(P.State.IDLE, P.StateReason.INTERLOCK)
        s = self.state
        if s == P.State.ARMED:
            if eff >= P.Stage.PREP and not self.need_release:
                self.prep_start = self.bt
                self.ready_at = self.bt + self.cfg.ready_delay_ms / 1000.0
                self._set_state(P.State.PREP, P.StateReason.HAND_SWITCH)
        elif s in (P.State.PREP, P.State.READY):
            if eff == P.Stage.OFF:
                self._set_state(P.State.ARMED, P.StateReason.RELEASED)
            elif (
                self.rule("prep_timeout")
                and self.bt - self.prep_start >= self.cfg.prep_timeout_ms / 1000.0
                and not (s == P.State.READY and eff == P.Stage.EXPOSE)
            ):
                self.need_release = True
                self._raise_fault(P.ErrorCode.PREP_TIMEOUT, latch=False)
                self._set_state(P.State.ARMED, P.StateReason.PREP_TIMEOUT)
            elif s == P.State.PREP and self.bt >= self.ready_at:
                self._set_state(P.State.READY, P.StateReason.READY_DELAY)
            if self.state == P.State.READY and eff == P.Stage.EXPOSE:
                self._start_exposure()
        if self.state == P.State.EXPOSING:
            self._run_exposure(eff)
        if self.state == P.State.REPORTED and (
            eff == P.Stage.OFF or not self.rule("one_exposure_per_press")
        ):
            self._set_state(P.State.IDLE, P.StateReason.RELEASED)
        if self.session is not None and self.evt_pending:
            retry = self.cfg.event_retry_ms / 1000.0
            for seq, p in self.evt_pending.items():
                if now - p[2] >= retry:
                    p[2] = now
                    self._send(p[0], seq, p[1])

    def _watchdog(self) -> None:
        self.session = None
        self.soft_stage = P.Stage.OFF
        if self.exposure is not None:
            self._end_exposure(P.EndReason.WATCHDOG)
        self._raise_fault(P.ErrorCode.WATCHDOG, latch=False)
        self._set_state(P.State.SAFE, P.StateReason.WATCHDOG)

    def arm_blockers(self) -> list[P.ErrorCode]:
        """Why ARM would be refused now (apart from the state)."""
        out: list[P.ErrorCode] = []
        if self.fault != P.ErrorCode.OK:
            out.append(P.ErrorCode.FAULT_LATCHED)
        if any(t is None for t in self.techniques.values()):
            out.append(P.ErrorCode.NO_TECHNIQUE)
        if self.rule("arm_interlocks"):
            for il, closed in self.hw.interlocks.items():
                if not closed:
                    out.append(P.INTERLOCK_BLOCKER[il])
        if self.rule("heat_limit"):
            for code, t in ((P.ErrorCode.HEAT_LIMIT_A, "A"), (P.ErrorCode.HEAT_LIMIT_B, "B")):
                tech = self.techniques[t]
                if tech is not None:
                    hu = self.cfg.limits.heat_units(tech.kv, tech.ma, tech.ms)
                    if not self.hw.anodes[t].fits(hu):
                        out.append(code)
        if self.rule("duty_limit") and all(self.techniques.values()):
            seconds = max(t.ms for t in self.techniques.values()) / 1000.0
            if not self.hw.duty.fits(self.bt, seconds):
                out.append(P.ErrorCode.DUTY_LIMIT)
        if self.rule("one_exposure_per_press") and (
            self.need_release or self.effective_stage() != P.Stage.OFF
        ):
            out.append(P.ErrorCode.NOT_RELEASED)
        return out

    def _start_exposure(self) -> None:
        techs = {t: v for t, v in self.techniques.items() if v is not None}
        if len(techs) != 2:  # cannot happen: ARM checked; never fire half a pair
            self._set_state(P.State.IDLE, P.StateReason.FAULT)
            return
        self.hw.exposure_counter += 1
        eid = self.hw.exposure_counter
        inj, self.injected = self.injected, {}
        skew = self.cfg.scatter.skew_us(self.rng)
        if P.SimFault.SKEW_OVER_LIMIT in inj:
            skew = self.cfg.skew_limit_us * self.rng.uniform(1.5, 4.0)
        planned = {t: self.cfg.scatter.actual(self.rng, techs[t]) for t in P.TUBES}
        fires = {t: True for t in P.TUBES}
        if P.SimFault.TUBE_NO_FIRE in inj:
            fires[P.TUBES[inj[P.SimFault.TUBE_NO_FIRE] & 1]] = False
        longest = max(t.ms for t in techs.values())
        backup = self.cfg.backup_factor * longest + self.cfg.backup_margin_ms
        mid = None
        for kind in (
            P.SimFault.ARC,
            P.SimFault.INTERLOCK_MID_EXPOSURE,
            P.SimFault.REBOOT_MID_EXPOSURE,
        ):
            if kind in inj:
                mid = (kind, inj[kind])
        self.exposure = _Exposure(
            exposure_id=eid,
            start=self.bt,
            techniques=techs,
            planned=planned,
            fires=fires,
            ended={t: (None if fires[t] else self.bt) for t in P.TUBES},
            backup_end=self.bt + backup / 1000.0,
            skew_us=skew,
            stuck_timer=P.SimFault.STUCK_TIMER in inj,
            mid_fault=mid,
            mid_time=self.bt + min(t.ms for t in techs.values()) / 2000.0,
        )
        # written to NV at the trigger, so a restart mid-exposure cannot hide it
        self.hw.log_report(
            self._report(P.EndReason.POWER_LOSS, provisional=True), self.cfg.report_log
        )
        self.need_release = True
        self._set_state(P.State.EXPOSING, P.StateReason.HAND_SWITCH)

    def _run_exposure(self, eff: P.Stage) -> None:
        e = self.exposure
        assert e is not None
        if eff < P.Stage.EXPOSE and self.rule("release_abort"):
            self._end_exposure(P.EndReason.RELEASED)
            return
        if self.rule("interlock_abort"):
            for il, closed in self.hw.interlocks.items():
                if not closed:
                    self._end_exposure(P.EndReason.INTERLOCK)
                    self._raise_fault(P.ErrorCode.INTERLOCK_OPENED, int(il))
                    return
        if e.mid_fault is not None and self.bt >= e.mid_time:
            kind, arg = e.mid_fault
            e.mid_fault = None
            if kind == P.SimFault.ARC:
                self._end_exposure(P.EndReason.ARC)
                self._raise_fault(P.ErrorCode.ARC, 0, arg & 1)
                return
            if kind == P.SimFault.INTERLOCK_MID_EXPOSURE:
                which = P.Interlock(arg if arg < len(P.Interlock) else 0)
                self.set_interlock(which, False, self.now)
                return
            if kind == P.SimFault.REBOOT_MID_EXPOSURE:
                self.sim_requests.append(("reboot", 0.0))
                return
        if not e.stuck_timer:
            for t in P.TUBES:
                if e.ended[t] is None and self.bt >= e.start + e.planned[t][2] / 1000.0:
                    e.ended[t] = e.start + e.planned[t][2] / 1000.0
        if all(v is not None for v in e.ended.values()):
            self._end_exposure(P.EndReason.COMPLETED)
        elif self.bt >= e.backup_end and self.rule("backup_timer"):
            self._end_exposure(P.EndReason.BACKUP_TIMER)
            self._raise_fault(P.ErrorCode.BACKUP_TIMER)

    def _report(self, reason: P.EndReason, provisional: bool = False) -> P.ReportBody:
        e = self.exposure
        assert e is not None
        tubes = {}
        for t in P.TUBES:
            kv, ma, ms = e.planned[t]
            if not e.fires[t]:
                tubes[t] = P.TubeActual(False, 0.0, 0.0, 0.0, 0.0)
                continue
            if provisional:
                ms = 0.0
            elif e.ended[t] is not None and reason == P.EndReason.COMPLETED:
                pass  # the primary timer ended it: the generator's own measured time
            else:
                end = e.ended[t] if e.ended[t] is not None else self.bt
                ms = max(0.0, (end - e.start) * 1000.0)
            ms = round(ms, 3)
            tubes[t] = P.TubeActual(True, round(kv, 1), round(ma, 1), ms, round(ma * ms / 1000, 3))
        over = e.skew_us > self.cfg.skew_limit_us and self.rule("skew_flag")
        return P.ReportBody(
            e.exposure_id,
            reason != P.EndReason.COMPLETED,
            over,
            reason,
            round(e.skew_us, 3),
            tubes,
        )

    def _end_exposure(self, reason: P.EndReason) -> None:
        e = self.exposure
        assert e is not None
        for t in P.TUBES:
            if e.ended[t] is None:
                e.ended[t] = self.bt
        report = self._report(reason)
        self.exposure = None
        for t, a in report.tubes.items():
            if a.fired:
                self.hw.anodes[t].add(self.cfg.limits.heat_units(a.kv, a.ma, a.ms))
        self.hw.duty.add(self.bt, max(a.ms for a in report.tubes.values()) / 1000.0)
        self.hw.log_report(report, self.cfg.report_log)
        if report.skew_over_limit:
            self._raise_fault(
                P.ErrorCode.SKEW_OVER_LIMIT, round(min(report.skew_us, 65535)), latch=False
            )
        for t, a in report.tubes.items():
            if not a.fired:
                self._raise_fault(P.ErrorCode.TUBE_NO_FIRE, 0, P.TUBES.index(t))
        self._emit(P.MsgType.EVT_REPORT, report.pack())
        self.triggers.append(
            {
                "exposure_id": report.exposure_id,
                "tubes": {t: a.as_dict() for t, a in report.tubes.items()},
                "skew_us": report.skew_us,
                "skew_over_limit": report.skew_over_limit,
                "aborted": report.aborted,
                "end_reason": reason.name.lower(),
            }
        )
        if reason == P.EndReason.WATCHDOG:
            return  # the caller moves to SAFE
        if self.fault != P.ErrorCode.OK or reason in (
            P.EndReason.INTERLOCK,
            P.EndReason.ARC,
            P.EndReason.BACKUP_TIMER,
        ):
            self._set_state(P.State.FAULT, P.StateReason.FAULT)
        else:
            self._set_state(P.State.REPORTED, P.StateReason.EXPOSURE_END)

    # -- protocol ----------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        if frame.version != codec.PROTOCOL_VERSION:
            self.malformed_version += 1
            if frame.type == P.MsgType.HELLO:
                self._send(
                    P.MsgType.NAK,
                    frame.seq,
                    P.NAK.pack(frame.type, P.ErrorCode.VERSION_MISMATCH, codec.PROTOCOL_VERSION),
                )
            return
        if self.session is not None:
            self.last_rx = self.now  # any valid frame feeds the watchdog
        if frame.type == P.MsgType.EVT_ACK:
            if self.evt_pending.pop(frame.seq, None) is not None:
                # fast retransmit: a later event arrived, so earlier unacknowledged
                # ones were lost; re-send them now rather than at the retry timer
                for seq, p in self.evt_pending.items():
                    if ((frame.seq - seq) & 0xFFFF) < 0x8000 and self.now > p[2]:
                        p[2] = self.now
                        self._send(p[0], seq, p[1])
            return
        if frame.type >= 0x80:
            return  # board-to-host type from the host: ignore
        cached = self.cache.get(frame.seq)
        if cached is not None and cached[0] == frame.type and cached[1] == frame.payload:
            self.out += cached[2]
            return
        try:
            mtype = P.MsgType(frame.type)
        except ValueError:
            mtype = None
        outcome = self._execute(mtype, frame)
        if outcome[0] == "ack":
            data = self._send(P.MsgType.ACK, frame.seq, bytes([frame.type]) + outcome[1])
        else:
            data = self._send(
                P.MsgType.NAK, frame.seq, P.NAK.pack(frame.type, outcome[1], outcome[2])
            )
        if mtype is not P.MsgType.HELLO or outcome[0] == "ack":
            self.cache[frame.seq] = (frame.type, frame.payload, data, outcome)
            self.cache.move_to_end(frame.seq)
            while len(self.cache) > self.cfg.response_cache:
                self.cache.popitem(last=False)
        deferred, self._deferred = self._deferred, []
        for seq, p in deferred:
            self._send(p[0], seq, p[1])

    def _execute(self, mtype: P.MsgType | None, frame: Frame) -> tuple:
        handler = _HANDLERS.get(mtype) if mtype is not None else None
        if handler is None:
            return ("nak", P.ErrorCode.UNKNOWN_TYPE, 0)
        needs_session, fmt_len, fn = handler
        if fmt_len is not None and len(frame.payload) != fmt_len:
            return ("nak", P.ErrorCode.BAD_LENGTH, len(frame.payload))
        if needs_session and self.session is None:
            return ("nak", P.ErrorCode.NO_SESSION, 0)
        return fn(self, frame)

    def _hello(self, frame: Frame) -> tuple:
        major, _minor, nonce = P.HELLO_REQ.unpack(frame.payload)
        if major != codec.PROTOCOL_VERSION:
            return ("nak", P.ErrorCode.VERSION_MISMATCH, codec.PROTOCOL_VERSION)
        # A new session: forget old answers, renumber undelivered events from 0
        # and hold them (and the SAFE -> IDLE change) back until the ACK is out.
        self.session = None
        self.last_rx = self.now
        self.cache.clear()
        if self.state == P.State.SAFE:
            latched = self.fault not in (P.ErrorCode.OK, P.ErrorCode.WATCHDOG)
            self._set_state(P.State.FAULT if latched else P.State.IDLE, P.StateReason.SESSION)
        pending = list(self.evt_pending.values())
        self.evt_pending = OrderedDict()
        for i, p in enumerate(pending):
            p[2] = self.now
            self.evt_pending[i] = p
        self.evt_next = len(pending)
        self.session = (nonce, frame.seq)
        self._deferred = list(self.evt_pending.items())
        return ("ack", self._hello_info().pack())

    def _hello_info(self) -> P.HelloInfo:
        caps = P.Capability.SOFTWARE_HOLD | P.Capability.EXPOSURE_LOG
        if self.cfg.bench_mode:
            caps |= P.Capability.BENCH_MODE
        if self.cfg.fault_injection:
            caps |= P.Capability.FAULT_INJECTION
        return P.HelloInfo(
            codec.PROTOCOL_VERSION,
            codec.PROTOCOL_MINOR,
            self.cfg.firmware,
            self.cfg.serial_number,
            int(caps),
            self.boot_id,
            self.cfg.heartbeat_ms,
            self.cfg.watchdog_ms,
            self.cfg.hold_timeout_ms,
            min(65535, self.cfg.prep_timeout_ms),
            self.cfg.skew_limit_us,
            self.cfg.event_retry_ms,
        )

    def _heartbeat(self, frame: Frame) -> tuple:
        return ("ack", P.HEARTBEAT_ACK.pack(self.state, self.boot_id))

    def status_body(self) -> P.StatusBody:
        mask = 0
        for il, closed in self.hw.interlocks.items():
            if closed:
                mask |= 1 << int(il)
        soft = self.soft_stage if self.now < self.soft_expires else P.Stage.OFF
        return P.StatusBody(
            state=self.state,
            boot_id=self.boot_id,
            interlocks=mask,
            hand_switch=self.hw.hand_switch,
            soft_hold=soft,
            fault=self.fault,
            fault_detail=self.fault_detail,
            heat_permille=(self.hw.anodes["A"].permille, self.hw.anodes["B"].permille),
            duty_permille=self.hw.duty.permille(self.bt),
            session=self.session is not None,
            bench_mode=self.cfg.bench_mode,
            need_release=self.need_release,
            techniques=dict(self.techniques),
            last_exposure_id=self.hw.exposure_counter,
            uptime_ms=min(0xFFFFFFFF, round((self.now - self.boot_wall) * 1000)),
            arm_blockers=tuple(self.arm_blockers()),
        )

    def _get_status(self, frame: Frame) -> tuple:
        return ("ack", self.status_body().pack())

    def _set_technique(self, frame: Frame) -> tuple:
        tube_idx = frame.payload[0]
        if tube_idx > 1:
            return ("nak", P.ErrorCode.BAD_VALUE, tube_idx)
        if self.state == P.State.EXPOSING and self.rule("xray_on_lock"):
            return ("nak", P.ErrorCode.XRAY_ON, 0)
        if self.state in (P.State.ARMED, P.State.PREP, P.State.READY):
            return ("nak", P.ErrorCode.WRONG_STATE, int(self.state))
        tech = P.Technique.unpack(frame.payload, 1)
        code = self.cfg.limits.check(tech)
        if code != P.ErrorCode.OK and self.rule("tube_limits"):
            return ("nak", code, 0)
        self.techniques[P.TUBES[tube_idx]] = tech
        return ("ack", b"")

    def _arm(self, frame: Frame) -> tuple:
        if self.state == P.State.ARMED:
            return ("ack", P.U32.pack(self.hw.exposure_counter + 1))
        if self.state == P.State.FAULT:
            return ("nak", P.ErrorCode.FAULT_LATCHED, int(self.fault))
        if self.state != P.State.IDLE:
            return ("nak", P.ErrorCode.WRONG_STATE, int(self.state))
        blockers = self.arm_blockers()
        if blockers:
            return ("nak", blockers[0], 0)
        self._set_state(P.State.ARMED, P.StateReason.COMMAND)
        return ("ack", P.U32.pack(self.hw.exposure_counter + 1))

    def _disarm(self, frame: Frame) -> tuple:
        if self.state == P.State.EXPOSING:
            self._end_exposure(P.EndReason.RELEASED)
        elif self.state in (P.State.ARMED, P.State.PREP, P.State.READY):
            self._set_state(P.State.IDLE, P.StateReason.COMMAND)
        return ("ack", b"")

    def _hold(self, frame: Frame) -> tuple:
        stage = frame.payload[0]
        if stage not in (1, 2):
            return ("nak", P.ErrorCode.BAD_VALUE, stage)
        if self.soft_stage != stage:
            self._emit(P.MsgType.EVT_HAND_SWITCH, P.EVT_HAND_SWITCH.pack(stage, 1))
        self.soft_stage = P.Stage(stage)
        self.soft_expires = self.now + self.cfg.hold_timeout_ms / 1000.0
        self._step()
        return ("ack", P.U8.pack(self.state))

    def _release(self, frame: Frame) -> tuple:
        if self.soft_stage != P.Stage.OFF:
            self.soft_stage = P.Stage.OFF
            self._emit(P.MsgType.EVT_HAND_SWITCH, P.EVT_HAND_SWITCH.pack(0, 1))
        self._step()
        return ("ack", b"")

    def _reset_fault(self, frame: Frame) -> tuple:
        self.fault, self.fault_detail = P.ErrorCode.OK, 0
        if self.state == P.State.FAULT:
            self._set_state(P.State.IDLE, P.StateReason.COMMAND)
        return ("ack", b"")

    def _get_report(self, frame: Frame) -> tuple:
        (eid,) = P.U32.unpack(frame.payload)
        rep = self.hw.report_log.get(eid)
        if rep is None:
            return ("nak", P.ErrorCode.BAD_VALUE, 0)
        return ("ack", rep.pack())

    def _query_seq(self, frame: Frame) -> tuple:
        (seq,) = P.U16.unpack(frame.payload)
        cached = self.cache.get(seq)
        if cached is None:
            return ("ack", P.QUERY_ACK.pack(P.QueryOutcome.UNKNOWN, 0, 0, 0))
        ref_type, _payload, _data, outcome = cached
        if outcome[0] == "ack":
            return ("ack", P.QUERY_ACK.pack(P.QueryOutcome.ACKED, ref_type, 0, 0) + outcome[1])
        return ("ack", P.QUERY_ACK.pack(P.QueryOutcome.NAKED, ref_type, outcome[1], outcome[2]))

    def _bench_hand_switch(self, frame: Frame) -> tuple:
        if not self.cfg.bench_mode:
            return ("nak", P.ErrorCode.BENCH_DISABLED, 0)
        stage = frame.payload[0]
        if stage > 2:
            return ("nak", P.ErrorCode.BAD_VALUE, stage)
        self.set_hand_switch(P.Stage(stage), self.now)
        return ("ack", b"")

    def _bench_interlock(self, frame: Frame) -> tuple:
        if not self.cfg.bench_mode:
            return ("nak", P.ErrorCode.BENCH_DISABLED, 0)
        idx, closed = P.BENCH_INTERLOCK.unpack(frame.payload)
        if idx >= len(P.Interlock) or closed > 1:
            return ("nak", P.ErrorCode.BAD_VALUE, idx)
        self.set_interlock(P.Interlock(idx), bool(closed), self.now)
        return ("ack", b"")

    def _sim_config(self, frame: Frame) -> tuple:
        if not self.cfg.fault_injection:
            return ("nak", P.ErrorCode.UNKNOWN_TYPE, 0)
        pid, value = P.SIM_CONFIG.unpack(frame.payload)
        if not math.isfinite(value):
            return ("nak", P.ErrorCode.BAD_VALUE, pid)
        try:
            param = P.SimParam(pid)
        except ValueError:
            return ("nak", P.ErrorCode.BAD_VALUE, pid)
        if param == P.SimParam.CLOCK_SCALE:
            if not value > 0:
                return ("nak", P.ErrorCode.BAD_VALUE, pid)
            self.hw.board_time.set_scale(self.now, value)
        else:
            if value < 0 or (param.name.endswith("RATE") and value > 1):
                return ("nak", P.ErrorCode.BAD_VALUE, pid)
            self.sim_requests.append((param.name.lower(), float(value)))
        return ("ack", b"")

    def _sim_inject(self, frame: Frame) -> tuple:
        if not self.cfg.fault_injection:
            return ("nak", P.ErrorCode.UNKNOWN_TYPE, 0)
        kind, arg = P.SIM_INJECT.unpack(frame.payload)
        try:
            fault = P.SimFault(kind)
        except ValueError:
            return ("nak", P.ErrorCode.BAD_VALUE, kind)
        if fault == P.SimFault.CLEAR:
            self.injected.clear()
        elif fault == P.SimFault.RESET_HARDWARE:
            self.injected.clear()
            for il in P.Interlock:
                self.set_interlock(il, True, self.now)
            self.set_hand_switch(P.Stage.OFF, self.now)
            self.hw.reset()
        elif fault == P.SimFault.REBOOT:
            self.sim_requests.append(("reboot", 0.02))
        else:
            self.injected[fault] = arg
        return ("ack", b"")


_HELLO_LEN = P.HELLO_REQ.size
_HANDLERS = {
    # type: (needs session, payload length or None, handler)
    P.MsgType.HELLO: (False, _HELLO_LEN, Firmware._hello),
    P.MsgType.HEARTBEAT: (True, 0, Firmware._heartbeat),
    P.MsgType.GET_STATUS: (False, 0, Firmware._get_status),
    P.MsgType.SET_TECHNIQUE: (True, 1 + P.TECHNIQUE.size, Firmware._set_technique),
    P.MsgType.ARM: (True, 0, Firmware._arm),
    P.MsgType.DISARM: (True, 0, Firmware._disarm),
    P.MsgType.HOLD: (True, 1, Firmware._hold),
    P.MsgType.RELEASE: (True, 0, Firmware._release),
    P.MsgType.RESET_FAULT: (True, 0, Firmware._reset_fault),
    P.MsgType.GET_REPORT: (False, 4, Firmware._get_report),
    P.MsgType.QUERY_SEQ: (False, 2, Firmware._query_seq),
    P.MsgType.BENCH_HAND_SWITCH: (True, 1, Firmware._bench_hand_switch),
    P.MsgType.BENCH_INTERLOCK: (True, 2, Firmware._bench_interlock),
    P.MsgType.SIM_CONFIG: (False, P.SIM_CONFIG.size, Firmware._sim_config),
    P.MsgType.SIM_INJECT: (False, P.SIM_INJECT.size, Firmware._sim_inject),
}
