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

    def prepare(self, exam: dict) -> None:
        """Get ready for ``exam`` (e.g. point the simulated detectors at its patient)."""

    def default_segments(self, exam: dict) -> dict | None:
        """A segment definition the hardware knows for this patient (the simulator's)."""
        return None

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

    simulated = False

    def simulator_control(self, interlock: str | None, closed: bool, hand_switch: str | None):
        """Operate the simulated board's inputs (door, collimator, physical hand switch)."""
        raise LookupError("The station is not running on the simulator.")


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


# Board arm blockers the station resolves itself before ARM (it sets the
# technique and arms its detectors as part of arming).
_SELF_RESOLVED = frozenset({"no_technique", "detector_a_not_ready", "detector_b_not_ready"})


class StationHardware(Hardware):
    """The sync controller over a pyserial URL plus a source of detector frames.

    Parameters
    ----------
    url : str
        pyserial URL of the controller (``/dev/ttyUSB0``, ``socket://``, ``sim://NAME``).
    detectors : DetectorSource
        Gives the two detectors (virtual pair, folder watcher).
    poll_s : float
        Status poll period; events update the cache in between.
    """

    def __init__(self, url: str, detectors, poll_s: float = 0.5, **controller_opts) -> None:
        super().__init__()
        self.url = url
        self.detectors = detectors
        self.poll_s = poll_s
        self.controller_opts = controller_opts
        self.cache = StatusCache()
        self.cache.update(controller={"url": url})
        self.serial = SerialOwner()
        self.ctl = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._last_emitted: dict | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        from firmware_bridge import SyncController

        self.detectors.start(self)
        self.ctl = SyncController(self.url, **self.controller_opts)
        try:
            self.serial.call(self.ctl.open, timeout=15)
        except Exception as exc:
            log.warning("controller %s not reachable: %s", self.url, exc)
            self.cache.update(controller={"connected": False, "fault": None, "error": str(exc)})
        self.ctl.subscribe(self._on_event)
        self._poller = threading.Thread(target=self._poll, name="rsa-status", daemon=True)
        self._poller.start()

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        try:
            if self.ctl is not None:
                try:
                    self.serial.call(self.ctl.disarm, timeout=3)
                except Exception:
                    pass
                self.serial.call(self.ctl.close, timeout=5)
        finally:
            self.serial.close()
            self.detectors.close()

    # ------------------------------------------------------------------ status
    def refresh(self) -> dict:
        """Ask the board for its status (through the serial owner) and update the cache."""
        try:
            s = self.serial.call(self.ctl.status, timeout=5)
        except Exception as exc:
            return self.cache.update(
                controller={"connected": False, "state": "unknown", "error": str(exc)}
            )
        self._board = s
        return self.cache.update(
            controller={
                "connected": True,
                "state": s.state,
                "fault": s.fault_message,
                "fault_code": s.fault,
                "error": None,
                "last_exposure_id": s.last_exposure_id,
                "need_release": s.need_release,
            },
            interlocks=dict(s.interlocks),
            hand_switch=s.hand_switch,
            software_hold=s.software_hold,
            tube_heat=dict(s.heat_pct),
            duty_pct=s.duty_pct,
            arm_blockers=list(s.arm_blocker_messages),
            arm_blocker_codes=list(s.arm_blockers),
            detectors=self.detectors.status(),
        )

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            st = self.refresh()
            self._emit_status(st)

    def _emit_status(self, st: dict) -> None:
        key = {k: v for k, v in st.items() if k != "last_exposure"}
        if key != self._last_emitted:
            self._last_emitted = key
            self.emit("status", **st)

    def status(self) -> dict:
        st = self.cache.get()
        st["detectors"] = self.detectors.status()
        return st

    def arm_refusals(self, technique: dict) -> list[str]:
        st = self.refresh()
        if not st["controller"]["connected"]:
            return ["the sync controller is not connected"]
        b = self._board
        reasons = [
            m
            for c, m in zip(b.arm_blockers, b.arm_blocker_messages, strict=True)
            if c not in _SELF_RESOLVED
        ]
        for tube, heat in st["tube_heat"].items():
            if (
                heat is not None
                and heat >= self.heat_limit_pct
                and not any("heat" in r for r in reasons)
            ):
                reasons.append(
                    f"tube {tube} is over its heat limit ({heat:.0f}% of capacity); let it cool"
                )
        return reasons

    # ------------------------------------------------------------------ commands
    def prepare(self, exam: dict) -> None:
        """Point the detectors at this exam (the simulator renders its patient)."""
        self.detectors.prepare(exam)

    def default_segments(self, exam: dict) -> dict | None:
        fn = getattr(self.detectors, "segments", None)
        return fn(exam) if fn is not None else None

    def arm(self, technique: dict) -> None:
        self.detectors.arm()
        not_ready = [v for v, d in self.detectors.status().items() if not d["ready"]]
        if not_ready:
            raise RuntimeError(" and ".join(f"detector {v}" for v in not_ready) + " not ready")

        def do() -> None:
            for tube in VIEWS:
                t = technique[tube]
                self.ctl.set_technique(tube, t["kv"], t["ma"], t["ms"])
            self.ctl.arm()

        try:
            self.serial.call(do)
        except Exception as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            raise RuntimeError(reason) from None
        finally:
            self._emit_status(self.refresh())

    def disarm(self) -> None:
        self.serial.call(self.ctl.disarm)
        self._emit_status(self.refresh())

    def hold(self) -> None:
        # Fire and forget through the owner: the keep-alive must not queue up
        # behind a slow HTTP answer, and the board decides what it means.
        self.serial.post(self.ctl.hold, "expose")

    def release(self) -> None:
        self.serial.post(self.ctl.release)

    def wait_frame(self, view: str, exposure_id, timeout: float):
        return self.detectors.wait_frame(view, exposure_id, timeout)

    @property
    def simulated(self) -> bool:  # type: ignore[override]
        return self.url.startswith("sim://")

    def simulator_control(self, interlock: str | None, closed: bool, hand_switch: str | None):
        if not self.simulated:
            return super().simulator_control(interlock, closed, hand_switch)
        from simulator.controller import get_controller

        ctl = get_controller(self.url[len("sim://") :].split("?")[0])
        if interlock is not None:
            ctl.set_interlock(interlock, closed)
        if hand_switch is not None:
            ctl.press_hand_switch(hand_switch)
        self._emit_status(self.refresh())

    # ------------------------------------------------------------------ events
    def _on_event(self, ev) -> None:
        from firmware_bridge import (
            ConnectionChanged,
            ExposureReport,
            Fault,
            HandSwitchChanged,
            InterlockChanged,
            StateChanged,
        )

        if isinstance(ev, ExposureReport):
            rep = ev.as_dict()
            self.cache.update(last_exposure=rep)
            if rep["aborted"]:
                self.emit("aborted", reason=rep["end_reason"], report=rep)
            else:
                self.emit("exposure_report", **rep)
        elif isinstance(ev, StateChanged):
            st = self.cache.update(controller={"state": ev.new})
            if ev.new == "exposing":
                self.emit("exposure_started", reason=ev.reason)
            self._emit_status(st)
        elif isinstance(ev, Fault):
            st = self.cache.update(controller={"fault": ev.message, "fault_code": ev.code})
            self.emit("fault", code=ev.code, tube=ev.tube, message=ev.message)
            self._emit_status(st)
        elif isinstance(ev, InterlockChanged):
            st = self.cache.update(interlocks={ev.name: ev.closed})
            self.emit("interlock", name=ev.name, closed=ev.closed)
            self._emit_status(st)
        elif isinstance(ev, HandSwitchChanged):
            st = self.cache.update(hand_switch=ev.stage)
            self.emit("hand_switch", stage=ev.stage, source=ev.source)
            self._emit_status(st)
        elif isinstance(ev, ConnectionChanged):
            st = self.cache.update(controller={"connected": ev.connected, "error": ev.reason})
            self._emit_status(st)
            if not ev.connected:  # the board disarms when our heartbeat stops
                self.emit(
                    "link_lost", reason=f"the link to the sync controller was lost ({ev.reason})"
                )
