"""The station's hardware as the workflow sees it: one controller, two detectors.

:class:`Hardware` is the interface; :class:`StationHardware` implements it over
``firmware_bridge.SyncController`` (any pyserial URL) and a pair of detectors
(virtual, or the folder watcher). It is the **single owner** of the serial
port: every command goes through one worker thread, in order, so a hold
keep-alive can never interleave with a technique change, and the web server's
event loop never blocks on the wire.

Events from the board (state, interlocks, hand switch, exposure reports,
faults) are translated into plain dicts and handed to the listener the runtime
sets (:meth:`Hardware.set_listener`).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger("rsa.hardware")

VIEWS = ("A", "B")
INTERLOCK_NAMES = {
    "door": "the room door is open",
    "collimator": "the collimator is not in place",
    "detector_a_ready": "detector A is not ready",
    "detector_b_ready": "detector B is not ready",
}


class Hardware:
    """Interface the runtime drives. Subclasses implement the hardware calls."""

    heat_limit_pct: float = 80.0

    def __init__(self) -> None:
        self._listener = None

    def set_listener(self, fn) -> None:
        self._listener = fn

    def emit(self, kind: str, **data: Any) -> None:
        if self._listener is not None:
            self._listener(kind, data)

    def start(self) -> None: ...

    def close(self) -> None: ...

    def status(self) -> dict:
        raise NotImplementedError

    def arm_refusals(self, technique: dict) -> list[str]:
        """Why arming must be refused now (empty when it may go ahead)."""
        st = self.status()
        reasons = []
        if not st["controller"]["connected"]:
            reasons.append("the sync controller is not connected")
        if st["controller"].get("fault"):
            reasons.append(f"the controller reports a fault ({st['controller']['fault']})")
        for name, closed in st["interlocks"].items():
            if not closed:
                reasons.append(INTERLOCK_NAMES.get(name, f"interlock {name} is open"))
        for v in VIEWS:
            if not st["detectors"][v]["ready"]:
                msg = f"detector {v} is not ready"
                if msg not in reasons:
                    reasons.append(msg)
        for tube, heat in st["tube_heat"].items():
            if heat is not None and heat >= st["heat_limit"]:
                reasons.append(
                    f"tube {tube} is over its heat limit ({heat:.0f}% of capacity, "
                    f"limit {st['heat_limit']:.0f}%); let it cool"
                )
        return reasons

    def arm(self, technique: dict) -> None:
        raise NotImplementedError

    def disarm(self) -> None:
        raise NotImplementedError

    def hold(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def wait_frame(self, view: str, exposure_id: int | None, timeout: float):
        raise NotImplementedError


class SerialOwner:
    """One thread that makes every call on the serial link, in order."""

    def __init__(self) -> None:
        self._ex = ThreadPoolExecutor(1, thread_name_prefix="rsa-serial")

    def call(self, fn, *args, timeout: float = 10.0):
        return self._ex.submit(fn, *args).result(timeout)

    def post(self, fn, *args) -> None:
        fut = self._ex.submit(fn, *args)
        fut.add_done_callback(_log_failure)

    def close(self) -> None:
        self._ex.shutdown(wait=True, cancel_futures=True)


def _log_failure(fut) -> None:
    exc = fut.exception()
    if exc is not None:
        log.warning("serial command failed: %s", exc)


class StatusCache:
    """The latest status pieces, assembled from events and polls (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.d: dict[str, Any] = {
            "controller": {"connected": False, "state": "unknown", "fault": None, "url": None},
            "interlocks": {},
            "hand_switch": "off",
            "tube_heat": {"A": None, "B": None},
            "heat_limit": Hardware.heat_limit_pct,
            "detectors": {v: {"ready": False, "source": None} for v in VIEWS},
            "last_exposure": None,
        }

    def update(self, **parts: Any) -> dict:
        with self._lock:
            for k, v in parts.items():
                if isinstance(v, dict) and isinstance(self.d.get(k), dict):
                    self.d[k] = {**self.d[k], **v}
                else:
                    self.d[k] = v
            return _copy(self.d)

    def get(self) -> dict:
        with self._lock:
            return _copy(self.d)


def _copy(d: dict) -> dict:
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()} | {
        "detectors": {v: dict(x) for v, x in d["detectors"].items()}
    }
