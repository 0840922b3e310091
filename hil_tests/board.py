"""Helpers for the HIL suite: one :class:`Board` wraps a SyncController and its events.

Everything goes through the serial port: the board is driven with the
protocol's commands only (bench mode for the hand switch and interlocks, the
simulator's SIM_* commands for fault injection and its fast clock).
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Iterator

import pytest

from firmware_bridge import (
    BridgeError,
    ExposureReport,
    StateChanged,
    SyncController,
)

EVENT_TIMEOUT = 15.0  # generous: a loaded 2-core machine


class Board:
    """The board under test, as the station sees it."""

    def __init__(self, ctl: SyncController, url: str) -> None:
        self.ctl = ctl
        self.url = url
        self.q: queue.Queue = ctl.events()
        self.log: list = []
        self._used: set[int] = set()
        self.event_timeout = EVENT_TIMEOUT
        assert ctl.info is not None
        self.info = ctl.info

    # -- capabilities --

    @property
    def is_sim(self) -> bool:
        return self.info.fault_injection

    def require_bench(self) -> None:
        if not self.info.bench_mode:
            pytest.skip(
                f"needs the board's bench mode (service jumper) to press the hand switch and "
                f"open interlocks over the link; {self.url} does not advertise it"
            )

    def require_sim(self, why: str) -> None:
        if not self.is_sim:
            pytest.skip(f"needs the simulator's {why}; {self.url} does not offer it (a real board)")

    # -- set-up --

    def prepare(self, clock: float = 50.0) -> None:
        """Bring the board to IDLE with nothing pending, and forget old events."""
        c = self.ctl
        if self.is_sim:
            c.sim_inject("clear")
            c.sim_config(clock_scale=clock, corrupt_rate=0, drop_rate=0, delay_rate=0)
            c.sim_inject("reset_hardware")
        elif self.info.bench_mode:
            c.bench_set_hand_switch("off")
            for name in ("door", "collimator", "detector_a_ready", "detector_b_ready"):
                c.bench_set_interlock(name, True)
        c.release()
        c.disarm()
        c.reset_fault()
        self.wait_status("idle")
        self.drain()

    def drain(self) -> None:
        time.sleep(0.05)
        with contextlib.suppress(queue.Empty):
            while True:
                self.q.get_nowait()
        self.log.clear()
        self._used.clear()

    def wait_status(self, state: str, timeout: float | None = None) -> None:
        end = time.monotonic() + (self.event_timeout if timeout is None else timeout)
        while True:
            s = self.ctl.status()
            if s.state == state:
                return
            if time.monotonic() > end:
                raise AssertionError(f"board state {s.state!r}, expected {state!r}")
            time.sleep(0.01)

    # -- events --

    def _next(self, timeout: float):
        ev = self.q.get(timeout=timeout)
        self.log.append(ev)
        return ev

    def wait_for(self, kind: type, timeout: float | None = None, **match):
        """The earliest not yet awaited event of ``kind`` whose attributes equal ``match``.

        Events already received count (the board may send a fault before or
        after the report it explains); each event satisfies one wait only.
        """

        def ok(i: int, ev) -> bool:
            return (
                i not in self._used
                and isinstance(ev, kind)
                and all(getattr(ev, k) == v for k, v in match.items())
            )

        timeout = self.event_timeout if timeout is None else timeout
        for i, ev in enumerate(self.log):
            if ok(i, ev):
                self._used.add(i)
                return ev
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no {kind.__name__} {match or ''} within {timeout} s; saw {self.log[-8:]}"
                )
            try:
                ev = self._next(left)
            except queue.Empty:
                continue
            if ok(len(self.log) - 1, ev):
                self._used.add(len(self.log) - 1)
                return ev

    def wait_state(self, new: str, timeout: float | None = None) -> StateChanged:
        return self.wait_for(StateChanged, timeout, new=new)

    def collect(self, seconds: float) -> list:
        """Every event arriving in the next ``seconds``."""
        end = time.monotonic() + seconds
        out = []
        while (left := end - time.monotonic()) > 0:
            try:
                out.append(self._next(left))
            except queue.Empty:
                break
        return out

    # -- actions --

    def set_both(self, kv: float = 70.0, ma: float = 100.0, ms: float = 10.0) -> None:
        self.ctl.set_technique("A", kv, ma, ms)
        self.ctl.set_technique("B", kv, ma, ms)

    def expose(self, **technique) -> ExposureReport:
        """One whole cycle with the bench hand switch; returns the report."""
        if technique:
            self.set_both(**technique)
        self.ctl.arm()
        self.ctl.bench_set_hand_switch("expose")
        report = self.wait_for(ExposureReport)
        self.ctl.bench_set_hand_switch("off")
        self.wait_state("idle")
        return report


@contextlib.contextmanager
def open_board(url: str, clock: float = 50.0, **opts) -> Iterator[Board]:
    with SyncController(url, **opts) as ctl:
        board = Board(ctl, url)
        board.prepare(clock)
        try:
            yield board
        finally:
            with contextlib.suppress(BridgeError):
                if board.info.bench_mode:
                    ctl.bench_set_hand_switch("off")
                ctl.release()
                ctl.disarm()
