"""The typed host API of the sync controller: :class:`SyncController`."""

from __future__ import annotations

import queue
import struct
from collections.abc import Callable

from firmware_bridge import codec, errors
from firmware_bridge import protocol as P
from firmware_bridge.codec import Frame
from firmware_bridge.events import (
    AnyEvent,
    BoardInfo,
    BoardStatus,
    ConnectionChanged,
    ExposureReport,
    Fault,
    HandSwitchChanged,
    InterlockChanged,
    StateChanged,
    TubeReport,
)
from firmware_bridge.link import Link, LinkOptions, LinkStats

STAGES = {"off": P.Stage.OFF, "prep": P.Stage.PREP, "expose": P.Stage.EXPOSE}
_CAP_NAMES = {
    P.Capability.SOFTWARE_HOLD: "software_hold",
    P.Capability.BENCH_MODE: "bench_mode",
    P.Capability.FAULT_INJECTION: "fault_injection",
    P.Capability.EXPOSURE_LOG: "exposure_log",
}
_SIM_FAULTS = {
    "tube_no_fire": P.SimFault.TUBE_NO_FIRE,
    "skew_over_limit": P.SimFault.SKEW_OVER_LIMIT,
    "interlock_mid_exposure": P.SimFault.INTERLOCK_MID_EXPOSURE,
    "arc": P.SimFault.ARC,
    "stuck_timer": P.SimFault.STUCK_TIMER,
    "reboot": P.SimFault.REBOOT,
    "reboot_mid_exposure": P.SimFault.REBOOT_MID_EXPOSURE,
    "clear": P.SimFault.CLEAR,
    "reset_hardware": P.SimFault.RESET_HARDWARE,
}
_SIM_PARAMS = {
    "clock_scale": P.SimParam.CLOCK_SCALE,
    "drop_rate": P.SimParam.DROP_RATE,
    "corrupt_rate": P.SimParam.CORRUPT_RATE,
    "delay_rate": P.SimParam.DELAY_RATE,
    "delay_ms": P.SimParam.DELAY_MS,
    "seed": P.SimParam.SEED,
    "line_timing": P.SimParam.LINE_TIMING,
}


def _tube_index(tube: str) -> int:
    try:
        return P.TUBES.index(tube)
    except ValueError:
        raise ValueError(f"tube must be 'A' or 'B', not {tube!r}") from None


def report_from_body(body: bytes, source: str = "event") -> ExposureReport:
    """Typed :class:`ExposureReport` from an EVT_REPORT / GET_REPORT body."""
    r = P.ReportBody.unpack(body)
    return ExposureReport(
        exposure_id=r.exposure_id,
        tubes={
            t: TubeReport(a.fired, a.kv, a.ma, a.ms, round(a.mas, 3)) for t, a in r.tubes.items()
        },
        skew_us=r.skew_us,
        skew_over_limit=r.skew_over_limit,
        aborted=r.aborted,
        end_reason=r.end_reason.name.lower(),
        source=source,
    )


def _code_name(code: int) -> str:
    try:
        return P.ErrorCode(code).name.lower()
    except ValueError:
        return f"code_0x{code:02x}"


def _code_message(code: int) -> str:
    try:
        return P.ErrorCode(code).describe()
    except ValueError:
        return "unknown error code"


def _board_info(h: P.HelloInfo) -> BoardInfo:
    return BoardInfo(
        protocol_version=(h.protocol_major, h.protocol_minor),
        firmware_version=".".join(map(str, h.firmware)),
        serial_number=h.serial_number,
        capabilities=frozenset(n for bit, n in _CAP_NAMES.items() if h.capabilities & bit),
        boot_id=h.boot_id,
        heartbeat_ms=h.heartbeat_ms,
        watchdog_ms=h.watchdog_ms,
        hold_timeout_ms=h.hold_timeout_ms,
        prep_timeout_ms=h.prep_timeout_ms,
        skew_limit_us=h.skew_limit_us,
        event_retry_ms=h.event_retry_ms,
    )


class _Factory:
    """Event frames -> typed events (used by the link's I/O thread)."""

    def events(self, frame: Frame, source: str) -> list:
        t, p = frame.type, frame.payload
        if t == P.MsgType.EVT_REPORT:
            return [report_from_body(p, source)]
        if t == P.MsgType.EVT_STATE:
            old, new, reason = P.EVT_STATE.unpack(p)
            return [
                StateChanged(
                    P.State(old).name.lower(),
                    P.State(new).name.lower(),
                    P.StateReason(reason).name.lower(),
                    source,
                )
            ]
        if t == P.MsgType.EVT_HAND_SWITCH:
            stage, src = P.EVT_HAND_SWITCH.unpack(p)
            return [
                HandSwitchChanged(P.Stage(stage).name.lower(), "software" if src else "physical")
            ]
        if t == P.MsgType.EVT_INTERLOCK:
            idx, closed = P.EVT_INTERLOCK.unpack(p)
            return [InterlockChanged(P.INTERLOCK_NAMES[P.Interlock(idx)], bool(closed))]
        if t == P.MsgType.EVT_FAULT:
            code, detail, tube = P.EVT_FAULT.unpack(p)
            return [
                Fault(
                    _code_name(code),
                    detail,
                    P.TUBES[tube] if tube < len(P.TUBES) else None,
                    _code_message(code),
                )
            ]
        return []

    def report(self, body: bytes, source: str) -> ExposureReport:
        return report_from_body(body, source)

    def connection(self, connected: bool, reason: str, boot_id: int | None) -> ConnectionChanged:
        return ConnectionChanged(connected, reason, boot_id)


class SyncController:
    """Host side of the sync-controller board, over any pyserial URL.

    ``url`` is anything :func:`serial.serial_for_url` opens: ``/dev/ttyUSB0``,
    ``/dev/pts/N``, ``socket://host:port``, ``rfc2217://host:port``,
    ``spy:///dev/ttyUSB0``, and ``sim://NAME`` once ``simulator.controller`` is
    imported. Options (keyword): ``baudrate`` (115200), ``ack_timeout`` (0.1 s
    per try), ``retries`` (3), ``command_timeout`` (2.0 s per call),
    ``reconnect_interval`` (0.5 s), ``heartbeat_ms`` (None: the board's),
    ``protocol_version`` (for tests), ``auto_resync`` (True), ``hello``
    (True: :meth:`open` performs the handshake).

    One I/O thread owns the port. Every method blocks until the board
    answered, and raises :class:`~firmware_bridge.errors.LinkTimeout` (naming
    the pending command), :class:`~firmware_bridge.errors.CommandRefused`
    (with the board's error code) or another
    :class:`~firmware_bridge.errors.BridgeError`.
    """

    def __init__(self, url: str, **opts) -> None:
        self._do_hello = bool(opts.pop("hello", True))
        known = LinkOptions.__dataclass_fields__
        bad = sorted(set(opts) - set(known))
        if bad:
            raise TypeError(f"unknown SyncController option(s): {', '.join(bad)}")
        self.url = url
        self._link = Link(url, LinkOptions(**opts))
        self._link.factory = _Factory()

    # -- lifecycle --

    def open(self, require_board: bool = True) -> SyncController:
        """Open the port, start the I/O thread and (by default) shake hands.

        With ``require_board=False`` a port that cannot be opened, or a board
        that does not answer, is not an error: the link keeps trying every
        ``reconnect_interval`` and announces ``ConnectionChanged(connected=True)``
        when the session is up (a protocol version mismatch still raises).
        """
        self._link.open(require_port=require_board)
        if not self._do_hello or self._link._port is None:
            return self
        try:
            self.hello()
            self._link.set_baseline(self.status().last_exposure_id)
        except errors.ProtocolVersionMismatch:
            self.close()
            raise
        except errors.BridgeError:
            if require_board:
                self.close()
                raise
            self._link.schedule_resync("board answered late")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        self._link.close()

    def __enter__(self) -> SyncController:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> LinkStats:
        """Link counters (retransmits, queries, resyncs, duplicates dropped...)."""
        return self._link.stats

    @property
    def decoder_stats(self) -> codec.DecoderStats:
        """Counters of malformed frames received and dropped."""
        return self._link._decoder.stats

    @property
    def connected(self) -> bool:
        return self._link.session_open

    # -- events --

    def subscribe(self, callback: Callable[[AnyEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event, from the dispatcher thread.

        Returns a function that unsubscribes.
        """
        return self._link.subscribe(callback)

    def events(self, maxsize: int = 0) -> queue.Queue:
        """A new queue receiving every event from now on."""
        q: queue.Queue = queue.Queue(maxsize)
        self._link.subscribe(q.put)
        return q

    # -- commands --

    def _req(
        self, mtype: P.MsgType, payload: bytes, description: str, timeout: float | None
    ) -> bytes:
        return self._link.request(mtype, payload, description=description, timeout=timeout)

    def hello(self, timeout: float | None = None) -> BoardInfo:
        """Handshake: open a session; raises ProtocolVersionMismatch on a version mismatch."""
        link = self._link
        body = self._link.request(
            P.MsgType.HELLO,
            link.hello_payload(),
            description="HELLO",
            timeout=timeout,
            callback=link.on_hello_answer,
        )
        h = P.HelloInfo.unpack(body)
        if h.protocol_major != link.opts.protocol_version:
            raise errors.ProtocolVersionMismatch(link.opts.protocol_version, h.protocol_major)
        return _board_info(h)

    @property
    def info(self) -> BoardInfo | None:
        """What the board said in the last HELLO (renewed by every resync)."""
        h = self._link.info
        return None if h is None else _board_info(h)

    def heartbeat(self, timeout: float | None = None) -> str:
        """One explicit heartbeat (the link sends them by itself); returns the state name."""
        body = self._req(P.MsgType.HEARTBEAT, b"", "HEARTBEAT", timeout)
        state, _ = P.HEARTBEAT_ACK.unpack_from(body, 0)
        return P.State(state).name.lower()

    def status(self, timeout: float | None = None) -> BoardStatus:
        """The board's state, interlocks, hand switch, heat, fault and arm blockers."""
        s = P.StatusBody.unpack(self._req(P.MsgType.GET_STATUS, b"", "GET_STATUS", timeout))
        self._link.last_state = s.state
        techs = {
            t: (None if v is None else {"kv": v.kv, "ma": v.ma, "ms": v.ms, "mas": v.mas})
            for t, v in s.techniques.items()
        }
        return BoardStatus(
            state=s.state.name.lower(),
            interlocks={
                name: bool(s.interlocks & (1 << int(i))) for i, name in P.INTERLOCK_NAMES.items()
            },
            hand_switch=s.hand_switch.name.lower(),
            software_hold=s.soft_hold.name.lower(),
            heat_pct={"A": s.heat_permille[0] / 10.0, "B": s.heat_permille[1] / 10.0},
            duty_pct=s.duty_permille / 10.0,
            fault=None if s.fault == P.ErrorCode.OK else _code_name(s.fault),
            fault_message=None if s.fault == P.ErrorCode.OK else _code_message(s.fault),
            arm_blockers=[_code_name(c) for c in s.arm_blockers],
            arm_blocker_messages=[_code_message(c) for c in s.arm_blockers],
            techniques=techs,
            last_exposure_id=s.last_exposure_id,
            bench_mode=s.bench_mode,
            need_release=s.need_release,
            session=s.session,
            boot_id=s.boot_id,
            uptime_s=s.uptime_ms / 1000.0,
        )

    def set_technique(
        self, tube: str, kv: float, ma: float, ms: float, timeout: float | None = None
    ) -> None:
        """Set one tube's technique (kV, mA, exposure time in ms).

        Refused (CommandRefused) outside the tube's limits (``kv_out_of_range``,
        ``ma_out_of_range``, ``time_out_of_range``, ``mas_out_of_range``,
        ``power_out_of_range``) and with X-rays on (``xray_on``).
        """
        idx = _tube_index(tube)
        try:
            payload = P.SET_TECHNIQUE.pack(idx) + P.Technique(kv, ma, ms).pack()
        except (ValueError, struct.error) as exc:
            raise ValueError(f"technique {kv} kV {ma} mA {ms} ms: {exc}") from None
        self._req(
            P.MsgType.SET_TECHNIQUE,
            payload,
            f"SET_TECHNIQUE {tube} {kv} kV {ma} mA {ms} ms",
            timeout,
        )

    def arm(self, timeout: float | None = None) -> int:
        """Arm for one exposure; returns the id the next exposure will get.

        Refused with a reason code when an interlock is open, a detector is not
        ready, a tube is over its heat limit, the duty limit is reached, the
        hand switch was not released, or a fault is latched.
        """
        body = self._req(P.MsgType.ARM, b"", "ARM", timeout)
        return P.U32.unpack_from(body, 0)[0]

    def disarm(self, timeout: float | None = None) -> None:
        self._req(P.MsgType.DISARM, b"", "DISARM", timeout)

    def hold(self, stage: str = "expose", timeout: float | None = None) -> str:
        """One software hold-to-expose keep-alive; returns the board state.

        The caller repeats it (every ``info.hold_timeout_ms / 3`` or faster)
        while the operator holds the button; the board aborts when it stops.
        """
        body = self._req(P.MsgType.HOLD, P.U8.pack(STAGES[stage]), f"HOLD {stage}", timeout)
        return P.State(body[0]).name.lower()

    def release(self, timeout: float | None = None) -> None:
        """End the software hold at once (the button was let go)."""
        self._req(P.MsgType.RELEASE, b"", "RELEASE", timeout)

    def reset_fault(self, timeout: float | None = None) -> None:
        self._req(P.MsgType.RESET_FAULT, b"", "RESET_FAULT", timeout)

    def get_report(self, exposure_id: int, timeout: float | None = None) -> ExposureReport:
        """Ask the board's exposure log for one report (the last 32 are kept)."""
        body = self._req(
            P.MsgType.GET_REPORT, P.U32.pack(exposure_id), f"GET_REPORT {exposure_id}", timeout
        )
        return report_from_body(body, "query")

    # -- bench mode (service jumper) --

    def bench_set_hand_switch(self, stage: str, timeout: float | None = None) -> None:
        """Operate the physical hand switch over the link ('off'|'prep'|'expose')."""
        self._req(
            P.MsgType.BENCH_HAND_SWITCH,
            P.U8.pack(STAGES[stage]),
            f"BENCH_HAND_SWITCH {stage}",
            timeout,
        )

    def bench_set_interlock(self, name: str, closed: bool, timeout: float | None = None) -> None:
        """Open or close an interlock input over the link."""
        try:
            idx = P.INTERLOCK_BY_NAME[name]
        except KeyError:
            raise ValueError(
                f"interlock must be one of {sorted(P.INTERLOCK_BY_NAME)}, not {name!r}"
            ) from None
        self._req(
            P.MsgType.BENCH_INTERLOCK,
            P.BENCH_INTERLOCK.pack(idx, int(closed)),
            f"BENCH_INTERLOCK {name} {'closed' if closed else 'open'}",
            timeout,
        )

    # -- simulator only (capability fault_injection) --

    def sim_config(self, timeout: float | None = None, **params: float) -> None:
        """Set simulator parameters: clock_scale, drop_rate, corrupt_rate, delay_rate,
        delay_ms, seed, line_timing. Refused (NotASimulator) by a real board."""
        for name, value in params.items():
            try:
                pid = _SIM_PARAMS[name]
            except KeyError:
                raise ValueError(f"unknown simulator parameter {name!r}") from None
            self._req(
                P.MsgType.SIM_CONFIG,
                P.SIM_CONFIG.pack(pid, float(value)),
                f"SIM_CONFIG {name}={value}",
                timeout,
            )

    def sim_inject(self, fault: str, arg: int | str = 0, timeout: float | None = None) -> None:
        """Arm a one-shot simulator fault (see docs/protocol.md, SIM_INJECT)."""
        try:
            kind = _SIM_FAULTS[fault]
        except KeyError:
            raise ValueError(f"unknown simulator fault {fault!r}") from None
        if isinstance(arg, str):
            arg = P.TUBES.index(arg) if arg in P.TUBES else int(P.INTERLOCK_BY_NAME[arg])
        self._req(
            P.MsgType.SIM_INJECT, P.SIM_INJECT.pack(kind, arg), f"SIM_INJECT {fault}", timeout
        )

    # -- test aid --

    def pause_traffic(self, seconds: float) -> None:
        """Send nothing at all (no heartbeat, no EVT_ACK) for ``seconds``.

        Stands in for a cable pulled or a host that hangs: the board's
        watchdog must fire. Receiving continues.
        """
        self._link.mute(seconds)
