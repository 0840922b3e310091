"""Typed errors of the firmware bridge. Each message says what was pending."""

from __future__ import annotations


class BridgeError(Exception):
    """Base class of every error raised by :mod:`firmware_bridge`."""


class PortError(BridgeError):
    """The serial port (URL) could not be opened, or was lost."""


class NotConnected(BridgeError):
    """A command was issued while the link is closed or reconnecting."""


class LinkTimeout(BridgeError, TimeoutError):
    """No answer in time. :attr:`pending` names the command (and seq) that was waiting."""

    def __init__(self, pending: str, message: str) -> None:
        super().__init__(f"{pending}: {message}")
        self.pending = pending


class ProtocolVersionMismatch(BridgeError):
    """The board speaks another protocol major version."""

    def __init__(self, host_version: int, board_version: int) -> None:
        super().__init__(
            f"protocol version mismatch: host speaks {host_version}, board speaks {board_version}"
        )
        self.host_version = host_version
        self.board_version = board_version


class CommandRefused(BridgeError):
    """The board answered NAK. :attr:`code` is the lowercase error-code name."""

    def __init__(self, command: str, code: str, detail: int, reason: str) -> None:
        super().__init__(f"{command} refused by the board: {code} ({reason})")
        self.command = command
        self.code = code
        self.detail = detail
        self.reason = reason


class BenchModeDisabled(CommandRefused):
    """A bench-mode command was refused: the board's service jumper is not fitted."""


class NotASimulator(CommandRefused):
    """A SIM_* command was refused: the port does not lead to the simulator."""
