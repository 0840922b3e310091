"""Detectors behind one small interface, and the virtual pair wired to the trigger line.

:class:`Detector` is what the station needs from any flat panel: arm it, wait
for the frame of the next exposure, know whether it is ready. A real detector
integration (vendor SDK, or a folder watcher for DICOM files a console drops)
implements the same four members.

:class:`VirtualDetectorPair` stands in for the two panels of a stereo station.
Attached to the virtual sync controller, it listens to the controller's
trigger line; for each exposure it renders the two frames of the same patient
with the technique the tubes actually delivered (from the exposure record).

Decisions:

- A detector that is not armed when the trigger comes misses the exposure
  (no frame), as a real panel would.
- A tube that did not fire while its detector was armed gives a dark frame
  (read noise only, technique recorded with ``fired: false``): a
  sync-triggered panel reads out anyway, and the station's cage check must
  then fail for that view, which is what should happen.
- A panel is busy (not ready) from the trigger until its frame is delivered,
  and must be re-armed for the next exposure unless ``auto_arm`` is set; its
  ready state drives the controller's ``detector_a_ready`` /
  ``detector_b_ready`` interlocks.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Protocol, runtime_checkable

from simulator.frames import Frame

log = logging.getLogger(__name__)


class DetectorTimeout(TimeoutError):
    """No frame arrived in time."""


@runtime_checkable
class Detector(Protocol):
    """A flat-panel detector as the station drives it."""

    view: str

    @property
    def ready(self) -> bool:
        """Armed and idle: an exposure now would be captured."""
        ...

    def arm(self) -> None:
        """Prepare to capture the next exposure."""
        ...

    def wait_for_frame(self, timeout: float) -> Frame:
        """The next captured frame; raise :class:`DetectorTimeout` after ``timeout`` s."""
        ...


class VirtualDetector:
    """One virtual panel: an arm/ready state and a queue of delivered frames."""

    def __init__(self, view: str, on_ready_change: Callable[[str, bool], None] | None = None):
        self.view = view
        self._armed = False
        self._busy = False
        self._frames: queue.Queue[Frame] = queue.Queue()
        self._lock = threading.Lock()
        self._on_ready_change = on_ready_change

    @property
    def ready(self) -> bool:
        with self._lock:
            return self._armed and not self._busy

    @property
    def armed(self) -> bool:
        with self._lock:
            return self._armed

    def arm(self) -> None:
        with self._lock:
            self._armed = True
        self._notify()

    def disarm(self) -> None:
        with self._lock:
            self._armed = False
        self._notify()

    def wait_for_frame(self, timeout: float) -> Frame:
        try:
            return self._frames.get(timeout=timeout)
        except queue.Empty:
            raise DetectorTimeout(f"detector {self.view}: no frame within {timeout:g} s") from None

    # -- used by the pair --

    def _take_trigger(self) -> bool:
        """At the trigger: capture if armed (then busy, no longer armed)."""
        with self._lock:
            if not self._armed or self._busy:
                return False
            self._armed = False
            self._busy = True
        self._notify()
        return True

    def _deliver(self, frame: Frame | None, rearm: bool) -> None:
        if frame is not None:
            self._frames.put(frame)
        with self._lock:
            self._busy = False
            if rearm:
                self._armed = True
        self._notify()

    def _notify(self) -> None:
        if self._on_ready_change is not None:
            try:
                self._on_ready_change(self.view, self.ready)
            except Exception:
                log.exception("detector %s: ready-change callback failed", self.view)


class VirtualDetectorPair:
    """Two virtual panels imaging one simulated patient on one simulated day.

    Parameters
    ----------
    region : {'spine', 'upper', 'lower'}
    seed : int
        The patient, the geometry on the day and the bead layout (as for
        :func:`simulator.exam.simulate_exam`); each exposure adds its own noise.
    auto_arm : bool
        Re-arm each panel after it delivers a frame.
    **exam_kwargs
        Passed to ``simulate_exam`` (cage, photometric, collimation,
        full_resolution, motion_mm, render_options...).

    Attributes
    ----------
    detectors : dict[str, VirtualDetector]
    truths : dict[int, dict]
        Ground truth of every rendered exposure, by exposure id.
    station, cage : dict
        The nominal station and the cage (contract JSON) of this set-up.
    """

    def __init__(self, region: str, seed: int, *, auto_arm: bool = False, **exam_kwargs):
        from simulator.exam import simulate_exam

        fixed = {
            "technique",
            "views",
            "exposure_id",
            "exposure_seed",
            "acquisition_datetime",
            "phantom",
        } & set(exam_kwargs)
        if fixed:
            raise TypeError(
                f"VirtualDetectorPair sets {', '.join(sorted(fixed))} itself, per exposure"
            )
        self.region = region
        self.seed = int(seed)
        self.auto_arm = auto_arm
        self.exam_kwargs = exam_kwargs
        self.detectors = {v: VirtualDetector(v, self._ready_changed) for v in ("A", "B")}
        self.truths: dict[int, dict] = {}
        self._controller = None
        self._remove_listener: Callable[[], None] | None = None
        self._jobs: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        # The set-up (nominal station, cage, patient) without rendering anything.
        probe = simulate_exam(region, seed, views=(), **exam_kwargs)
        self.station, self.cage = probe.station, probe.cage
        self._phantom = probe.phantom

    # -- wiring --

    def attach(self, controller) -> Callable[[], None]:
        """Listen to ``controller``'s trigger line and drive its detector interlocks.

        Returns a function that detaches the pair again.
        """
        self._controller = controller
        self._remove_listener = controller.add_trigger_listener(self.on_trigger)
        self._start_worker()
        for v, d in self.detectors.items():
            self._ready_changed(v, d.ready)
        return self.detach

    def detach(self) -> None:
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        self._controller = None
        self._stop.set()
        self._jobs.put(None)
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=30)
        self._worker = None

    def arm(self) -> None:
        """Arm both panels."""
        for d in self.detectors.values():
            d.arm()

    def _ready_changed(self, view: str, ready: bool) -> None:
        ctl = self._controller
        if ctl is not None:
            ctl.set_interlock(f"detector_{view.lower()}_ready", bool(ready))

    def _start_worker(self) -> None:
        if self._worker is None:
            self._stop.clear()
            self._worker = threading.Thread(target=self._run, name="virtual-detectors", daemon=True)
            self._worker.start()

    # -- the trigger line --

    def on_trigger(self, record: dict) -> None:
        """Called by the controller once per exposure (in its thread): queue the render."""
        capturing = tuple(v for v, d in self.detectors.items() if d._take_trigger())
        if not capturing:
            return
        if self._worker is None:  # not attached: render here (tests, scripts)
            self._render(record, capturing, datetime.now())
        else:
            self._jobs.put((record, capturing, datetime.now()))

    def _run(self) -> None:
        while not self._stop.is_set():
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._render(*job)
            except Exception:
                log.exception("virtual detectors: rendering exposure failed")
                for v in job[1]:
                    self.detectors[v]._deliver(None, self.auto_arm)

    def _render(self, record: dict, capturing: tuple[str, ...], when: datetime) -> None:
        from simulator.exam import simulate_exam

        exposure_id = int(record.get("exposure_id", 0))
        tubes = record.get("tubes", {})
        technique = {}
        for v in ("A", "B"):
            t = dict(tubes.get(v, {}))
            fired = bool(t.get("fired", True))
            kv = float(t.get("kv", 70.0))
            ma = float(t.get("ma", 0.0)) if fired else 0.0
            ms = float(t.get("ms", 0.0)) if fired else 0.0
            mas = float(t.get("mas", ma * ms / 1000.0)) if fired else 0.0
            technique[v] = {"kv": kv, "ma": ma, "ms": ms, "mas": mas}
        kwargs = {**self.exam_kwargs, "reposition": False}  # the probe placed the patient
        exam = simulate_exam(
            self.region,
            self.seed,
            phantom=self._phantom,
            technique=technique,
            views=capturing,
            exposure_id=exposure_id,
            exposure_seed=exposure_id,
            acquisition_datetime=when,
            **kwargs,
        )
        exam.truth["trigger"] = {
            "skew_us": record.get("skew_us"),
            "tubes": tubes,
            "captured": list(capturing),
        }
        self.truths[exposure_id] = exam.truth
        for v in capturing:
            self.detectors[v]._deliver(exam.frames.get(v), self.auto_arm)
