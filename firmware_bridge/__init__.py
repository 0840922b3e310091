"""Host side of the serial link to the RSA sync controller.

Frame codec (:mod:`firmware_bridge.codec`), message layouts
(:mod:`firmware_bridge.protocol`), the reliable link that owns the port
(:mod:`firmware_bridge.link`) and the typed :class:`SyncController` API.
Depends on pyserial and ``cobs`` only. The protocol is in docs/protocol.md.
"""

from firmware_bridge.controller import SyncController
from firmware_bridge.errors import (
    BenchModeDisabled,
    BridgeError,
    CommandRefused,
    LinkTimeout,
    NotASimulator,
    NotConnected,
    PortError,
    ProtocolVersionMismatch,
)
from firmware_bridge.events import (
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

__all__ = [
    "BenchModeDisabled",
    "BoardInfo",
    "BoardStatus",
    "BridgeError",
    "CommandRefused",
    "ConnectionChanged",
    "ExposureReport",
    "Fault",
    "HandSwitchChanged",
    "InterlockChanged",
    "LinkTimeout",
    "NotASimulator",
    "NotConnected",
    "PortError",
    "ProtocolVersionMismatch",
    "StateChanged",
    "SyncController",
    "TubeReport",
]
