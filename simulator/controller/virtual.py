"""The virtual sync controller: the firmware, its hardware, its cable, its thread.

:class:`VirtualSyncController` runs one :class:`~simulator.controller.firmware.Firmware`
in its own thread and connects it to one host at a time: an in-process
:class:`Endpoint` (the ``sim://`` pyserial handler) or a pseudo-terminal
(:mod:`simulator.controller.pty_server`). It also stands in for the things
wired to the board: interlock inputs (:meth:`set_interlock`), the physical hand
switch (:meth:`press_hand_switch`) and the trigger line to the detectors
(:meth:`add_trigger_listener`).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

from firmware_bridge import protocol as P
from simulator.controller.clock import RealClock
from simulator.controller.firmware import Firmware, FirmwareConfig, Hardware
from simulator.controller.wire import LinkFaults, Wire

log = logging.getLogger(__name__)

TriggerListener = Callable[[dict], None]
BOOT_TIME_S = 0.1  # wall time a reboot keeps the board deaf


class Endpoint:
    """Host end of the in-process cable (what a ``sim://`` port reads and writes)."""

    def __init__(self, ctl: VirtualSyncController) -> None:
        self._ctl = ctl
        self._buf = bytearray()
        self._cv = threading.Condition()
        self._cancel = False
        self.closed = False

    def deliver(self, data: bytes) -> None:
        with self._cv:
            self._buf += data
            self._cv.notify_all()

    def write(self, data: bytes) -> int:
        if self.closed:
            raise OSError("sim:// endpoint is closed")
        self._ctl.feed(bytes(data))
        return len(data)

    def read(self, size: int, timeout: float | None) -> bytes:
        with self._cv:
            if not self._buf and not self._cancel and not self.closed:
                if timeout is None:
                    while not self._buf and not self._cancel and not self.closed:
                        self._cv.wait()
                elif timeout > 0:
                    self._cv.wait_for(lambda: self._buf or self._cancel or self.closed, timeout)
            self._cancel = False
            out = bytes(self._buf[:size])
            del self._buf[:size]
            return out

    def cancel_read(self) -> None:
        with self._cv:
            self._cancel = True
            self._cv.notify_all()

    @property
    def in_waiting(self) -> int:
        return len(self._buf)

    def reset_input(self) -> None:
        with self._cv:
            self._buf.clear()

    def close(self) -> None:
        with self._cv:
            self.closed = True
            self._cv.notify_all()
        self._ctl.disconnect(self)


class VirtualSyncController:
    """The simulated board. Thread-safe; all firmware work happens in its thread.

    Parameters
    ----------
    name : str
        Registry name (``sim://NAME``).
    clock_scale : float
        Board time runs this many times faster than wall time (process times
        only; link timers stay on wall time, see :mod:`.clock`).
    seed : int
        Seeds the generator scatter, the boot ids and the byte faults.
    bench_mode, fault_injection : bool
        Service jumper fitted; simulator commands (SIM_*) accepted.
    line_timing : bool
        Emulate the wire time of ``baudrate`` 8N1 in both directions.
    drop_rate, corrupt_rate, delay_rate, delay_ms :
        Byte faults applied in both directions.
    config : FirmwareConfig
        Everything else (timing, limits, disabled rules for mutation tests).
    """

    def __init__(
        self,
        name: str = "sim",
        *,
        clock_scale: float = 1.0,
        seed: int = 0,
        bench_mode: bool = True,
        fault_injection: bool = True,
        line_timing: bool = False,
        baudrate: int = 115200,
        drop_rate: float = 0.0,
        corrupt_rate: float = 0.0,
        delay_rate: float = 0.0,
        delay_ms: float = 20.0,
        config: FirmwareConfig | None = None,
        clock=None,
        start: bool = True,
    ) -> None:
        self.name = name
        self.cfg = config or FirmwareConfig()
        self.cfg.bench_mode = bench_mode
        self.cfg.fault_injection = fault_injection
        self.clock = clock or RealClock()
        self.rng = random.Random(seed)
        now = self.clock.now()
        self.hw = Hardware(self.cfg, now, clock_scale)
        self.fw: Firmware | None = Firmware(self.cfg, self.hw, now, self.rng)
        self.faults = LinkFaults(drop_rate, corrupt_rate, delay_rate, delay_ms)
        self.rx = Wire(self.faults, random.Random(seed + 1), baudrate, line_timing)
        self.tx = Wire(self.faults, random.Random(seed + 2), baudrate, line_timing)
        self._cv = threading.Condition(threading.RLock())
        self._sink: Callable[[bytes], None] | None = None
        self._endpoint: Endpoint | None = None
        self._listeners: list[TriggerListener] = []
        self._reboot_at: float | None = None
        self._boot_done = 0.0
        self.reboots = 0
        self.firmware_errors = 0
        self.exposures_fired = 0
        self._running = False
        self._dirty = False
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    # -- lifecycle --

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._thread = threading.Thread(
            target=self._run, name=f"sim-board-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._running = False
            self._dirty = True
            self._cv.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self._thread = None

    # -- the cable --

    def connect(self) -> Endpoint:
        """Plug a new in-process host in (unplugging any previous one)."""
        ep = Endpoint(self)
        with self._cv:
            old = self._endpoint
            self._endpoint = ep
            self._sink = ep.deliver
            self.tx.clear()
            self.rx.clear()
        if old is not None:
            with old._cv:
                old.closed = True
                old._cv.notify_all()
        return ep

    def attach_sink(self, sink: Callable[[bytes], None] | None) -> None:
        """Route the board's output to ``sink`` (the pty server)."""
        with self._cv:
            self._endpoint = None
            self._sink = sink

    def unplug(self) -> None:
        """Pull the in-process cable: the connected host's port fails until it reopens."""
        with self._cv:
            ep = self._endpoint
            self._endpoint = None
            self._sink = None
        if ep is not None:
            with ep._cv:
                ep.closed = True
                ep._cv.notify_all()

    def disconnect(self, ep: Endpoint) -> None:
        with self._cv:
            if self._endpoint is ep:
                self._endpoint = None
                self._sink = None

    def feed(self, data: bytes) -> None:
        """Bytes from the host onto the wire towards the board."""
        with self._cv:
            self.rx.put(data, self.clock.now())
            self._dirty = True
            self._cv.notify_all()

    def set_link(self, **params: float) -> None:
        """Change byte faults / line timing: drop_rate, corrupt_rate, delay_rate,
        delay_ms, line_timing, baudrate, seed."""
        with self._cv:
            self._apply_link(params)

    def _apply_link(self, params: dict) -> None:
        for key, value in params.items():
            if key in ("drop_rate", "corrupt_rate", "delay_rate", "delay_ms"):
                setattr(self.faults, key, float(value))
            elif key == "line_timing":
                self.rx.line_timing = self.tx.line_timing = bool(value)
            elif key == "baudrate":
                self.rx.baudrate = self.tx.baudrate = int(value)
            elif key == "seed":
                self.rx.rng.seed(int(value) + 1)
                self.tx.rng.seed(int(value) + 2)
            else:
                raise ValueError(f"unknown link parameter {key!r}")

    # -- the things wired to the board --

    def add_trigger_listener(self, callback: TriggerListener) -> Callable[[], None]:
        """Call ``callback(record)`` once per exposure, in the controller's thread.

        ``record`` is ``{"exposure_id": int, "tubes": {"A": {"kv", "ma", "ms",
        "mas", "fired"}, "B": {...}}, "skew_us": float, "skew_over_limit": bool,
        "aborted": bool, "end_reason": str}`` with the actual technique, sent
        when the exposure ends. Returns a function that removes the listener.
        """
        with self._cv:
            self._listeners.append(callback)

        def remove() -> None:
            with self._cv:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return remove

    def set_interlock(self, name: str, closed: bool) -> None:
        """Open or close an interlock input: 'door', 'collimator',
        'detector_a_ready', 'detector_b_ready'."""
        try:
            which = P.INTERLOCK_BY_NAME[name]
        except KeyError:
            raise ValueError(
                f"interlock must be one of {sorted(P.INTERLOCK_BY_NAME)}, not {name!r}"
            ) from None
        with self._cv:
            if self.fw is None:
                self.hw.interlocks[which] = bool(closed)
            else:
                self.fw.set_interlock(which, bool(closed), self.clock.now())
            self._dirty = True
            self._cv.notify_all()

    def press_hand_switch(self, stage: str) -> None:
        """Put the physical two-stage hand switch at 'off', 'prep' or 'expose'."""
        try:
            st = {"off": P.Stage.OFF, "prep": P.Stage.PREP, "expose": P.Stage.EXPOSE}[stage]
        except KeyError:
            raise ValueError(
                f"hand switch stage must be off, prep or expose, not {stage!r}"
            ) from None
        with self._cv:
            if self.fw is None:
                self.hw.hand_switch = st
            else:
                self.fw.set_hand_switch(st, self.clock.now())
            self._dirty = True
            self._cv.notify_all()

    def reboot(self, delay: float = 0.0) -> None:
        """Restart the firmware (power glitch): RAM state lost, NV kept."""
        with self._cv:
            self._reboot_at = self.clock.now() + delay
            self._dirty = True
            self._cv.notify_all()

    def set_clock_scale(self, scale: float) -> None:
        with self._cv:
            self.hw.board_time.set_scale(self.clock.now(), scale)
            self._dirty = True
            self._cv.notify_all()

    # -- inspection (tests, UI simulation) --

    @property
    def state(self) -> str:
        with self._cv:
            return "booting" if self.fw is None else self.fw.state.name.lower()

    def status(self) -> P.StatusBody | None:
        with self._cv:
            return None if self.fw is None else self.fw.status_body()

    @property
    def interlocks(self) -> dict[str, bool]:
        with self._cv:
            return {P.INTERLOCK_NAMES[k]: v for k, v in self.hw.interlocks.items()}

    # -- the board's thread --

    def step(self) -> float:
        """Run the board once at the clock's now; return the next wall deadline."""
        triggers: list[dict] = []
        with self._cv:
            self._dirty = False
            now = self.clock.now()
            if self._reboot_at is not None and now >= self._reboot_at:
                self._reboot_at = None
                self.fw = None
                self.reboots += 1
                self._boot_done = now + BOOT_TIME_S
            if self.fw is None and now >= self._boot_done:
                self.fw = Firmware(self.cfg, self.hw, now, self.rng)
            data = self.rx.take(now)
            fw = self.fw
            if fw is not None:
                try:
                    if data:
                        fw.receive(data, now)
                    fw.tick(now)
                except Exception:  # a firmware bug: keep the board alive, make it visible
                    self.firmware_errors += 1
                    log.exception("virtual firmware error")
                for what, value in fw.sim_requests:
                    if what == "reboot":
                        self._reboot_at = now + value
                    elif what == "line_timing":
                        self._apply_link({"line_timing": value})
                    else:
                        self._apply_link({what: value})
                fw.sim_requests.clear()
                if fw.out:
                    self.tx.put(bytes(fw.out), now)
                    fw.out.clear()
                triggers, fw.triggers = fw.triggers, []
            out = self.tx.take(now)
            if out and self._sink is not None:
                try:
                    self._sink(out)
                except OSError as exc:
                    log.debug("board output dropped: %s", exc)
            deadlines = [now + 0.25]
            if fw is not None:
                deadlines.append(fw.next_deadline())
            else:
                deadlines.append(self._boot_done)
            for t in (self.rx.next_time(), self.tx.next_time(), self._reboot_at):
                if t is not None:
                    deadlines.append(t)
            listeners = list(self._listeners)
        for rec in triggers:
            self.exposures_fired += 1
            for cb in listeners:
                try:
                    cb(rec)
                except Exception:
                    log.exception("trigger listener %r failed", cb)
        return min(deadlines)

    def _run(self) -> None:
        while True:
            with self._cv:
                if not self._running:
                    return
            deadline = self.step()
            with self._cv:
                if not self._running:
                    return
                wait = deadline - self.clock.now()
                if wait > 0 and not self._dirty and not self._pending_input():
                    self._cv.wait(min(wait, 0.25))

    def _pending_input(self) -> bool:
        t = self.rx.next_time()
        return t is not None and t <= self.clock.now()
