"""Messages of the sync-controller protocol: types, codes and payload layouts.

Every layout here is specified byte for byte in docs/protocol.md; this module
is the executable form of that document, shared by the host bridge and the
virtual firmware (simulator.controller). Integers are little-endian. Physical
quantities travel as integers in fixed units: kV and mA in tenths, time in
microseconds, mAs in thousandths, skew in nanoseconds, heat and duty in
per-mille.

Pure: no I/O, no clock, no threads.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum


class MsgType(IntEnum):
    """Frame ``type`` byte. 0x01-0x3F host to board, 0x80-0xFF board to host."""

    HELLO = 0x01
    HEARTBEAT = 0x02
    GET_STATUS = 0x03
    SET_TECHNIQUE = 0x04
    ARM = 0x05
    DISARM = 0x06
    HOLD = 0x07
    RELEASE = 0x08
    RESET_FAULT = 0x09
    GET_REPORT = 0x0A
    QUERY_SEQ = 0x0B
    EVT_ACK = 0x0C
    BENCH_HAND_SWITCH = 0x20
    BENCH_INTERLOCK = 0x21
    SIM_CONFIG = 0x30
    SIM_INJECT = 0x31
    ACK = 0x80
    NAK = 0x81
    EVT_STATE = 0x90
    EVT_HAND_SWITCH = 0x91
    EVT_INTERLOCK = 0x92
    EVT_FAULT = 0x93
    EVT_REPORT = 0x94


#: Commands that may be re-sent after an ACK timeout: executing them twice has
#: the same effect as once (and the board answers duplicates from its cache).
IDEMPOTENT = frozenset(
    {
        MsgType.HELLO,
        MsgType.HEARTBEAT,
        MsgType.GET_STATUS,
        MsgType.SET_TECHNIQUE,
        MsgType.DISARM,
        MsgType.RELEASE,
        MsgType.GET_REPORT,
        MsgType.QUERY_SEQ,
        MsgType.BENCH_INTERLOCK,
        MsgType.SIM_CONFIG,
    }
)
#: Commands that can start X-rays or change what the next exposure does: never
#: re-sent blindly; after a timeout the host asks with QUERY_SEQ what happened.
EXPOSURE_COMMANDS = frozenset(
    {
        MsgType.ARM,
        MsgType.HOLD,
        MsgType.RESET_FAULT,
        MsgType.BENCH_HAND_SWITCH,
        MsgType.SIM_INJECT,
    }
)
EVENT_TYPES = frozenset(
    {
        MsgType.EVT_STATE,
        MsgType.EVT_HAND_SWITCH,
        MsgType.EVT_INTERLOCK,
        MsgType.EVT_FAULT,
        MsgType.EVT_REPORT,
    }
)


class State(IntEnum):
    """Board state (docs/protocol.md, "State machine")."""

    IDLE = 0
    ARMED = 1
    PREP = 2
    READY = 3
    EXPOSING = 4
    REPORTED = 5
    FAULT = 6
    SAFE = 7


class Stage(IntEnum):
    """Hand-switch / hold stage."""

    OFF = 0
    PREP = 1
    EXPOSE = 2


class Interlock(IntEnum):
    """Interlock inputs; bit ``i`` of the interlock mask is 1 when input ``i`` is closed."""

    DOOR = 0
    COLLIMATOR = 1
    DETECTOR_A_READY = 2
    DETECTOR_B_READY = 3


INTERLOCK_NAMES = {
    Interlock.DOOR: "door",
    Interlock.COLLIMATOR: "collimator",
    Interlock.DETECTOR_A_READY: "detector_a_ready",
    Interlock.DETECTOR_B_READY: "detector_b_ready",
}
INTERLOCK_BY_NAME = {v: k for k, v in INTERLOCK_NAMES.items()}

TUBES = ("A", "B")
NO_TUBE = 0xFF


class Capability(IntEnum):
    """Bits of the HELLO capability word."""

    SOFTWARE_HOLD = 1 << 0
    BENCH_MODE = 1 << 1  # service jumper fitted: BENCH_* commands accepted
    FAULT_INJECTION = 1 << 2  # simulator only: SIM_* commands accepted
    EXPOSURE_LOG = 1 << 3  # GET_REPORT answers for the last 32 exposures


class ErrorCode(IntEnum):
    """Error and fault codes (NAK ``code``, EVT_FAULT ``code``, status ``fault``)."""

    OK = 0x00
    UNKNOWN_TYPE = 0x01
    BAD_LENGTH = 0x02
    BAD_VALUE = 0x03
    VERSION_MISMATCH = 0x04
    NO_SESSION = 0x05
    WRONG_STATE = 0x06
    KV_OUT_OF_RANGE = 0x10
    MA_OUT_OF_RANGE = 0x11
    TIME_OUT_OF_RANGE = 0x12
    MAS_OUT_OF_RANGE = 0x13
    POWER_OUT_OF_RANGE = 0x14
    XRAY_ON = 0x15
    NO_TECHNIQUE = 0x16
    DOOR_OPEN = 0x20
    COLLIMATOR_OPEN = 0x21
    DETECTOR_A_NOT_READY = 0x22
    DETECTOR_B_NOT_READY = 0x23
    HEAT_LIMIT_A = 0x24
    HEAT_LIMIT_B = 0x25
    DUTY_LIMIT = 0x26
    NOT_RELEASED = 0x27
    FAULT_LATCHED = 0x28
    BENCH_DISABLED = 0x30
    NOT_SIMULATOR = 0x31
    WATCHDOG = 0x40
    HOLD_LOST = 0x41
    PREP_TIMEOUT = 0x42
    BACKUP_TIMER = 0x43
    INTERLOCK_OPENED = 0x44
    TUBE_NO_FIRE = 0x45
    ARC = 0x46
    SKEW_OVER_LIMIT = 0x47

    def describe(self) -> str:
        """One sentence for the technician."""
        return _DESCRIPTIONS.get(self, self.name.replace("_", " ").lower())


_DESCRIPTIONS = {
    ErrorCode.UNKNOWN_TYPE: "the board does not know this command",
    ErrorCode.BAD_LENGTH: "the command's payload has the wrong length",
    ErrorCode.BAD_VALUE: "a field of the command has an invalid value",
    ErrorCode.VERSION_MISMATCH: "the board speaks another protocol version",
    ErrorCode.NO_SESSION: "no session: the host must send HELLO first",
    ErrorCode.WRONG_STATE: "not allowed in the board's current state",
    ErrorCode.KV_OUT_OF_RANGE: "kV outside the tube's limits",
    ErrorCode.MA_OUT_OF_RANGE: "mA outside the tube's limits",
    ErrorCode.TIME_OUT_OF_RANGE: "exposure time outside the tube's limits",
    ErrorCode.MAS_OUT_OF_RANGE: "mAs outside the tube's limits",
    ErrorCode.POWER_OUT_OF_RANGE: "power (kV x mA) above the generator's rating",
    ErrorCode.XRAY_ON: "technique cannot change while X-rays are on",
    ErrorCode.NO_TECHNIQUE: "no technique set for a tube",
    ErrorCode.DOOR_OPEN: "the room door is open",
    ErrorCode.COLLIMATOR_OPEN: "the collimator interlock is open",
    ErrorCode.DETECTOR_A_NOT_READY: "detector A is not ready",
    ErrorCode.DETECTOR_B_NOT_READY: "detector B is not ready",
    ErrorCode.HEAT_LIMIT_A: "tube A is too hot for this technique; let it cool",
    ErrorCode.HEAT_LIMIT_B: "tube B is too hot for this technique; let it cool",
    ErrorCode.DUTY_LIMIT: "duty limit reached (exposure time per 2 minutes); wait",
    ErrorCode.NOT_RELEASED: "release the hand switch first (one exposure per press)",
    ErrorCode.FAULT_LATCHED: "a fault is latched; clear it first",
    ErrorCode.BENCH_DISABLED: "bench mode is off (service jumper not fitted)",
    ErrorCode.NOT_SIMULATOR: "only the simulator accepts this command",
    ErrorCode.WATCHDOG: "heartbeat lost: the board aborted and went safe",
    ErrorCode.HOLD_LOST: "hold-to-expose keep-alive stopped: exposure aborted",
    ErrorCode.PREP_TIMEOUT: "prep held too long without exposing",
    ErrorCode.BACKUP_TIMER: "the backup timer ended the exposure",
    ErrorCode.INTERLOCK_OPENED: "an interlock opened during the exposure",
    ErrorCode.TUBE_NO_FIRE: "a tube did not fire",
    ErrorCode.ARC: "generator arc",
    ErrorCode.SKEW_OVER_LIMIT: "start skew between the tubes over the limit",
}

#: Interlock whose opening blocks ARM, with the refusal code.
INTERLOCK_BLOCKER = {
    Interlock.DOOR: ErrorCode.DOOR_OPEN,
    Interlock.COLLIMATOR: ErrorCode.COLLIMATOR_OPEN,
    Interlock.DETECTOR_A_READY: ErrorCode.DETECTOR_A_NOT_READY,
    Interlock.DETECTOR_B_READY: ErrorCode.DETECTOR_B_NOT_READY,
}


class EndReason(IntEnum):
    """Why an exposure ended (exposure report)."""

    COMPLETED = 0
    RELEASED = 1
    HOLD_LOST = 2
    INTERLOCK = 3
    ARC = 4
    BACKUP_TIMER = 5
    WATCHDOG = 6
    POWER_LOSS = 7  # the board restarted during the exposure (logged at the trigger)


class StateReason(IntEnum):
    """Why the board changed state (EVT_STATE)."""

    COMMAND = 0
    HAND_SWITCH = 1
    READY_DELAY = 2
    EXPOSURE_END = 3
    RELEASED = 4
    PREP_TIMEOUT = 5
    INTERLOCK = 6
    FAULT = 7
    WATCHDOG = 8
    HOLD_LOST = 9
    SESSION = 10


class QueryOutcome(IntEnum):
    """QUERY_SEQ answer."""

    UNKNOWN = 0  # not received in this session: safe to send again
    ACKED = 1
    NAKED = 2


class SimParam(IntEnum):
    """SIM_CONFIG parameters (simulator only)."""

    CLOCK_SCALE = 1
    DROP_RATE = 2
    CORRUPT_RATE = 3
    DELAY_RATE = 4
    DELAY_MS = 5
    SEED = 6
    LINE_TIMING = 7  # 0 off, 1 on


class SimFault(IntEnum):
    """SIM_INJECT one-shot faults (simulator only); ``arg`` in parentheses."""

    TUBE_NO_FIRE = 1  # (tube 0/1) next exposure
    SKEW_OVER_LIMIT = 2  # next exposure
    INTERLOCK_MID_EXPOSURE = 3  # (interlock) opens halfway through the next exposure
    ARC = 4  # (tube) halfway through the next exposure
    STUCK_TIMER = 5  # next exposure's primary timer fails; backup timer must end it
    REBOOT = 6  # shortly after the ACK
    REBOOT_MID_EXPOSURE = 7
    CLEAR = 8  # forget armed one-shot faults
    RESET_HARDWARE = 9  # cool tubes, clear duty log, close interlocks, switch off, clear faults


# --- payload layouts -------------------------------------------------------

U8 = struct.Struct("<B")
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
HELLO_REQ = struct.Struct("<BBI")  # major, minor, host nonce
TECHNIQUE = struct.Struct("<HHI")  # kv x10, ma x10, time us
SET_TECHNIQUE = struct.Struct("<B")  # tube, then TECHNIQUE
NAK = struct.Struct("<BBH")  # ref type, code, detail
EVT_STATE = struct.Struct("<BBB")  # old, new, reason
EVT_HAND_SWITCH = struct.Struct("<BB")  # stage, source (0 physical, 1 software)
EVT_INTERLOCK = struct.Struct("<BB")  # interlock, closed
EVT_FAULT = struct.Struct("<BHB")  # code, detail, tube
BENCH_INTERLOCK = struct.Struct("<BB")
SIM_CONFIG = struct.Struct("<Bf")
SIM_INJECT = struct.Struct("<BB")
HEARTBEAT_ACK = struct.Struct("<BI")  # state, boot id
QUERY_ACK = struct.Struct("<BBBH")  # outcome, ref type, code, detail (+ original ACK body)


@dataclass(frozen=True, slots=True)
class Technique:
    """Exposure technique of one tube, in protocol units (0.1 kV, 0.1 mA, µs)."""

    kv: float
    ma: float
    ms: float

    @property
    def mas(self) -> float:
        return self.ma * self.ms / 1000.0

    def pack(self) -> bytes:
        return TECHNIQUE.pack(_u(self.kv * 10, 16), _u(self.ma * 10, 16), _u(self.ms * 1000, 32))

    @classmethod
    def unpack(cls, data: bytes, offset: int = 0) -> Technique:
        kv, ma, us = TECHNIQUE.unpack_from(data, offset)
        return cls(kv / 10.0, ma / 10.0, us / 1000.0)


def _u(value: float, bits: int) -> int:
    v = round(value)
    if not 0 <= v < (1 << bits):
        raise ValueError(f"{value} does not fit an unsigned {bits}-bit field")
    return v


@dataclass(frozen=True, slots=True)
class HelloInfo:
    """ACK body of HELLO: who the board is and the timing the host must keep."""

    protocol_major: int
    protocol_minor: int
    firmware: tuple[int, int, int]
    serial_number: str
    capabilities: int
    boot_id: int
    heartbeat_ms: int
    watchdog_ms: int
    hold_timeout_ms: int
    prep_timeout_ms: int
    skew_limit_us: int
    event_retry_ms: int

    LAYOUT = struct.Struct("<BBBBB16sHIHHHHHH")

    def pack(self) -> bytes:
        return self.LAYOUT.pack(
            self.protocol_major,
            self.protocol_minor,
            *self.firmware,
            self.serial_number.encode("ascii")[:16],
            self.capabilities,
            self.boot_id,
            self.heartbeat_ms,
            self.watchdog_ms,
            self.hold_timeout_ms,
            self.prep_timeout_ms,
            self.skew_limit_us,
            self.event_retry_ms,
        )

    @classmethod
    def unpack(cls, data: bytes) -> HelloInfo:
        f = cls.LAYOUT.unpack_from(data, 0)
        return cls(
            f[0],
            f[1],
            (f[2], f[3], f[4]),
            f[5].rstrip(b"\x00").decode("ascii", "replace"),
            *f[6:],
        )


@dataclass(frozen=True, slots=True)
class TubeActual:
    """What one tube actually did during an exposure."""

    fired: bool
    kv: float
    ma: float
    ms: float
    mas: float

    LAYOUT = struct.Struct("<BHHII")

    def pack(self) -> bytes:
        return self.LAYOUT.pack(
            int(self.fired),
            _u(self.kv * 10, 16),
            _u(self.ma * 10, 16),
            _u(self.ms * 1000, 32),
            _u(self.mas * 1000, 32),
        )

    @classmethod
    def unpack(cls, data: bytes, offset: int) -> TubeActual:
        fired, kv, ma, us, umas = cls.LAYOUT.unpack_from(data, offset)
        return cls(bool(fired), kv / 10.0, ma / 10.0, us / 1000.0, umas / 1000.0)

    def as_dict(self) -> dict:
        return {"kv": self.kv, "ma": self.ma, "ms": self.ms, "mas": self.mas, "fired": self.fired}


@dataclass(frozen=True, slots=True)
class ReportBody:
    """Exposure report payload (EVT_REPORT, and the ACK body of GET_REPORT)."""

    exposure_id: int
    aborted: bool
    skew_over_limit: bool
    end_reason: EndReason
    skew_us: float
    tubes: dict[str, TubeActual]

    HEAD = struct.Struct("<IBBI")  # id, flags, end reason, skew ns

    def pack(self) -> bytes:
        flags = int(self.aborted) | (int(self.skew_over_limit) << 1)
        head = self.HEAD.pack(
            self.exposure_id, flags, int(self.end_reason), _u(self.skew_us * 1000, 32)
        )
        return head + self.tubes["A"].pack() + self.tubes["B"].pack()

    @classmethod
    def unpack(cls, data: bytes) -> ReportBody:
        eid, flags, reason, skew_ns = cls.HEAD.unpack_from(data, 0)
        off = cls.HEAD.size
        a = TubeActual.unpack(data, off)
        b = TubeActual.unpack(data, off + TubeActual.LAYOUT.size)
        return cls(
            eid,
            bool(flags & 1),
            bool(flags & 2),
            EndReason(reason),
            skew_ns / 1000.0,
            {"A": a, "B": b},
        )

    @classmethod
    def size(cls) -> int:
        return cls.HEAD.size + 2 * TubeActual.LAYOUT.size


@dataclass(frozen=True, slots=True)
class StatusBody:
    """ACK body of GET_STATUS."""

    state: State
    boot_id: int
    interlocks: int  # bit mask, 1 = closed
    hand_switch: Stage  # physical switch
    soft_hold: Stage  # software hold currently in force
    fault: ErrorCode
    fault_detail: int
    heat_permille: tuple[int, int]
    duty_permille: int
    session: bool
    bench_mode: bool
    need_release: bool
    techniques: dict[str, Technique | None]
    last_exposure_id: int
    uptime_ms: int
    arm_blockers: tuple[ErrorCode, ...] = field(default=())

    HEAD = struct.Struct("<BIBBBBHHHHB")
    TAIL = struct.Struct("<IIB")

    def pack(self) -> bytes:
        flags = (
            int(self.session)
            | int(self.bench_mode) << 1
            | int(self.need_release) << 2
            | int(self.techniques.get("A") is not None) << 3
            | int(self.techniques.get("B") is not None) << 4
        )
        out = self.HEAD.pack(
            int(self.state),
            self.boot_id,
            self.interlocks,
            int(self.hand_switch),
            int(self.soft_hold),
            int(self.fault),
            self.fault_detail,
            *self.heat_permille,
            self.duty_permille,
            flags,
        )
        for t in TUBES:
            tech = self.techniques.get(t)
            out += (tech or Technique(0, 0, 0)).pack()
        out += self.TAIL.pack(self.last_exposure_id, self.uptime_ms, len(self.arm_blockers))
        return out + bytes(int(c) for c in self.arm_blockers)

    @classmethod
    def unpack(cls, data: bytes) -> StatusBody:
        h = cls.HEAD.unpack_from(data, 0)
        flags = h[10]
        off = cls.HEAD.size
        techs: dict[str, Technique | None] = {}
        for i, t in enumerate(TUBES):
            tech = Technique.unpack(data, off)
            techs[t] = tech if flags & (1 << (3 + i)) else None
            off += TECHNIQUE.size
        last, uptime, n = cls.TAIL.unpack_from(data, off)
        off += cls.TAIL.size
        if len(data) != off + n:
            raise ValueError("status body length does not match its blocker count")
        blockers = tuple(ErrorCode(b) for b in data[off : off + n])
        return cls(
            State(h[0]),
            h[1],
            h[2],
            Stage(h[3]),
            Stage(h[4]),
            ErrorCode(h[5]),
            h[6],
            (h[7], h[8]),
            h[9],
            bool(flags & 1),
            bool(flags & 2),
            bool(flags & 4),
            techs,
            last,
            uptime,
            blockers,
        )
