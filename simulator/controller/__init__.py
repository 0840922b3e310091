"""The virtual sync controller: the board's firmware behaviour, in software.

Importing this package registers the ``sim://`` pyserial URL scheme, so
``firmware_bridge.SyncController("sim://bench?clock=fast")`` talks to an
in-process :class:`VirtualSyncController`; :func:`get_controller` returns that
same instance so the station's ``--simulate`` wiring and tests can press its
hand switch, open its interlocks and listen to its trigger line. The same
firmware runs on a pseudo-terminal as ``rsa-station sim-controller``
(:mod:`simulator.controller.pty_server`).
"""

from __future__ import annotations

import threading

import serial

from simulator.controller.clock import FAST_SCALE, ManualClock, RealClock
from simulator.controller.firmware import RULES, FirmwareConfig
from simulator.controller.virtual import Endpoint, VirtualSyncController

_registry: dict[str, VirtualSyncController] = {}
_lock = threading.Lock()


def register_url_handler() -> None:
    """Make ``serial.serial_for_url`` understand ``sim://`` (idempotent)."""
    if "simulator.controller" not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append("simulator.controller")


def get_controller(name: str = "sim", **options) -> VirtualSyncController:
    """The in-process controller called ``name``, created with ``options`` if new.

    ``options`` are :class:`VirtualSyncController` keywords; ``serial_number``
    and ``disabled_rules`` go to its :class:`FirmwareConfig`. They are ignored
    when the controller already exists.
    """
    with _lock:
        ctl = _registry.get(name)
        if ctl is None:
            cfg = FirmwareConfig()
            if "serial_number" in options:
                cfg.serial_number = options.pop("serial_number")
            if "disabled_rules" in options:
                cfg.disabled_rules = frozenset(options.pop("disabled_rules"))
                cfg.__post_init__()
            ctl = VirtualSyncController(name, config=cfg, **options)
            _registry[name] = ctl
        return ctl


def remove_controller(name: str) -> None:
    """Stop and forget the controller called ``name`` (if any)."""
    with _lock:
        ctl = _registry.pop(name, None)
    if ctl is not None:
        ctl.stop()


register_url_handler()

__all__ = [
    "FAST_SCALE",
    "RULES",
    "Endpoint",
    "FirmwareConfig",
    "ManualClock",
    "RealClock",
    "VirtualSyncController",
    "get_controller",
    "register_url_handler",
    "remove_controller",
]
