"""Typed host-side values: board info, status and the events of the event stream."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TubeReport:
    """What one tube actually did: kV, mA, ms, mAs as measured by the board."""

    fired: bool
    kv: float
    ma: float
    ms: float
    mas: float

    def as_dict(self) -> dict:
        return {"kv": self.kv, "ma": self.ma, "ms": self.ms, "mas": self.mas, "fired": self.fired}


@dataclass(frozen=True)
class ExposureReport:
    """The board's report of one exposure (both tubes fire from one trigger).

    ``skew_us`` is the measured start skew between the tubes (magnitude, µs);
    ``skew_over_limit`` is the board's own verdict against its limit
    (``BoardInfo.skew_limit_us``). ``end_reason`` is 'completed', 'released',
    'hold_lost', 'interlock', 'arc', 'backup_timer' or 'watchdog'.
    ``source`` is 'event' or 'resync' (fetched after a reconnection).
    """

    exposure_id: int
    tubes: dict[str, TubeReport]
    skew_us: float
    skew_over_limit: bool
    aborted: bool
    end_reason: str
    source: str = "event"

    def as_dict(self) -> dict:
        """The trigger-line dict shape (see VirtualSyncController.add_trigger_listener)."""
        return {
            "exposure_id": self.exposure_id,
            "tubes": {k: v.as_dict() for k, v in self.tubes.items()},
            "skew_us": self.skew_us,
            "skew_over_limit": self.skew_over_limit,
            "aborted": self.aborted,
            "end_reason": self.end_reason,
        }


@dataclass(frozen=True)
class Fault:
    """A fault the board raised: ``code`` is the lowercase error-code name."""

    code: str
    detail: int
    tube: str | None
    message: str


@dataclass(frozen=True)
class HandSwitchChanged:
    """Hand switch (``source='physical'``) or software hold (``'software'``) changed stage."""

    stage: str  # 'off' | 'prep' | 'expose'
    source: str


@dataclass(frozen=True)
class InterlockChanged:
    name: str  # 'door' | 'collimator' | 'detector_a_ready' | 'detector_b_ready'
    closed: bool


@dataclass(frozen=True)
class StateChanged:
    old: str
    new: str
    reason: str
    source: str = "event"  # 'resync' when inferred after a reconnection


@dataclass(frozen=True)
class ConnectionChanged:
    """Link status: lost, or restored (with why a resync was needed)."""

    connected: bool
    reason: str
    boot_id: int | None = None


Event = ExposureReport | Fault | HandSwitchChanged | InterlockChanged | StateChanged
AnyEvent = Event | ConnectionChanged


@dataclass(frozen=True)
class BoardInfo:
    """Answer to HELLO."""

    protocol_version: tuple[int, int]
    firmware_version: str
    serial_number: str
    capabilities: frozenset[str]
    boot_id: int
    heartbeat_ms: int
    watchdog_ms: int
    hold_timeout_ms: int
    prep_timeout_ms: int
    skew_limit_us: int
    event_retry_ms: int

    @property
    def bench_mode(self) -> bool:
        return "bench_mode" in self.capabilities

    @property
    def fault_injection(self) -> bool:
        return "fault_injection" in self.capabilities


@dataclass(frozen=True)
class BoardStatus:
    """Answer to GET_STATUS, in host units and names.

    ``arm_blockers`` lists the error-code names that ARM would be refused with
    now (empty when arming is possible in the current state), and
    ``arm_blocker_messages`` one sentence for each, for the UI.
    """

    state: str
    interlocks: dict[str, bool]
    hand_switch: str
    software_hold: str
    heat_pct: dict[str, float]
    duty_pct: float
    fault: str | None
    fault_message: str | None
    arm_blockers: list[str]
    arm_blocker_messages: list[str]
    techniques: dict[str, dict | None]
    last_exposure_id: int
    bench_mode: bool
    need_release: bool
    session: bool
    boot_id: int
    uptime_s: float
    extra: dict = field(default_factory=dict)

    @property
    def can_arm(self) -> bool:
        return self.state == "idle" and not self.arm_blockers
