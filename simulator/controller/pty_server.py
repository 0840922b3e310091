"""Serve a :class:`VirtualSyncController` on a pseudo-terminal.

The host opens the slave side (``/dev/pts/N``) like any serial device; the
server reads and writes the master side. The server keeps its own handle on
the slave open, so a host may close and reopen the port without the master
seeing EIO; board output written while no host listens is dropped once the
pty buffer is full (a UART with nobody listening loses bytes too).
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import threading
import tty

from simulator.controller.virtual import VirtualSyncController


class PtyServer:
    """Pseudo-terminal transport for one controller."""

    def __init__(self, ctl: VirtualSyncController) -> None:
        self.ctl = ctl
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        tty.setraw(self.master)
        fl = fcntl.fcntl(self.master, fcntl.F_GETFL)
        fcntl.fcntl(self.master, fcntl.F_SETFL, fl | os.O_NONBLOCK)
        self.path = os.ttyname(self._slave)
        self.dropped_output = 0
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.ctl.attach_sink(self._write)
        self._thread = threading.Thread(target=self._read_loop, name="sim-pty-reader", daemon=True)
        self._thread.start()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                self.dropped_output += len(view)
                return
            view = view[n:]

    def _read_loop(self) -> None:
        while True:
            ready, _, _ = select.select([self.master, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                data = os.read(self.master, 4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:  # no slave open: cannot happen while we hold one
                    continue
                raise
            if data:
                self.ctl.feed(data)

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self.ctl.attach_sink(None)
        for fd in (self.master, self._slave, self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass
