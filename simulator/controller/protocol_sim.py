"""pyserial URL handler for ``sim://NAME?param=value&...``.

pyserial finds it through ``serial.protocol_handler_packages`` (see
:func:`simulator.controller.register_url_handler`): ``serial_for_url`` imports
``simulator.controller.protocol_sim`` for the scheme ``sim`` and instantiates
:class:`Serial`. Opening the port connects to the in-process
:class:`~simulator.controller.virtual.VirtualSyncController` named NAME,
creating it if needed. Parameters (docs/protocol.md, "Simulator"):

- at creation: ``clock`` (real|fast|factor), ``seed``, ``bench`` (0|1),
  ``faults`` (0|1: SIM_* commands accepted), ``serial`` (serial number),
  ``disable`` (comma-separated safety rules: mutation tests only),
  ``fresh=1`` (replace an existing controller of that name);
- at every open: ``drop``, ``corrupt``, ``delay`` (byte fault rates in both
  directions), ``delay_ms``, ``line_timing`` (0|1, at the port's baud rate).
"""

from __future__ import annotations

import urllib.parse

from serial.serialutil import PortNotOpenError, SerialBase, SerialException

_CREATE = {"clock", "seed", "bench", "faults", "serial", "disable", "fresh"}
_LINK = {
    "drop": "drop_rate",
    "corrupt": "corrupt_rate",
    "delay": "delay_rate",
    "delay_ms": "delay_ms",
    "line_timing": "line_timing",
}


def parse_url(url: str) -> tuple[str, dict[str, str]]:
    """Split ``sim://NAME?k=v`` into the name and its parameters."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "sim":
        raise SerialException(f"expected a sim:// URL, not {url!r}")
    name = (parts.netloc + parts.path).strip("/") or "sim"
    params = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query, True).items()}
    unknown = set(params) - _CREATE - set(_LINK)
    if unknown:
        raise SerialException(
            f"{url!r}: unknown parameter(s) {', '.join(sorted(unknown))}; known: "
            f"{', '.join(sorted(_CREATE | set(_LINK)))}"
        )
    return name, params


class Serial(SerialBase):
    """A pyserial port whose other end is a VirtualSyncController."""

    BAUDRATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)

    def __init__(self, *args, **kwargs) -> None:
        self._ep = None
        self._ctl = None
        super().__init__(*args, **kwargs)

    def open(self) -> None:
        from simulator.controller import get_controller, remove_controller
        from simulator.controller.clock import parse_clock

        if self.is_open:
            raise SerialException("Port is already open.")
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        name, params = parse_url(self.portstr)
        try:
            create = {}
            if "clock" in params:
                create["clock_scale"] = parse_clock(params["clock"])
            if "seed" in params:
                create["seed"] = int(params["seed"])
            if "bench" in params:
                create["bench_mode"] = params["bench"] not in ("0", "false", "no")
            if "faults" in params:
                create["fault_injection"] = params["faults"] not in ("0", "false", "no")
            if "serial" in params:
                create["serial_number"] = params["serial"]
            if params.get("disable"):
                create["disabled_rules"] = frozenset(params["disable"].split(","))
            link = {}
            for key, attr in _LINK.items():
                if key in params:
                    link[attr] = float(params[key])
        except ValueError as exc:
            raise SerialException(f"{self.portstr!r}: {exc}") from None
        if params.get("fresh") in ("1", "true", "yes"):
            remove_controller(name)
        self._ctl = get_controller(name, **create)
        if "clock_scale" in create:
            self._ctl.set_clock_scale(create["clock_scale"])
        link["baudrate"] = self._baudrate
        self._ctl.set_link(**link)
        self._ep = self._ctl.connect()
        self.is_open = True

    def close(self) -> None:
        if self._ep is not None:
            self._ep.close()
            self._ep = None
        self.is_open = False

    def _reconfigure_port(self) -> None:
        if self._ctl is not None:
            self._ctl.set_link(baudrate=self._baudrate)

    @property
    def in_waiting(self) -> int:
        if not self.is_open:
            raise PortNotOpenError()
        return self._ep.in_waiting

    def read(self, size: int = 1) -> bytes:
        if not self.is_open:
            raise PortNotOpenError()
        if self._ep.closed:
            raise SerialException("sim:// port was disconnected (another host connected)")
        return self._ep.read(size, self._timeout)

    def write(self, data) -> int:
        if not self.is_open:
            raise PortNotOpenError()
        try:
            return self._ep.write(bytes(data))
        except OSError as exc:
            raise SerialException(str(exc)) from None

    def cancel_read(self) -> None:
        if self._ep is not None:
            self._ep.cancel_read()

    def reset_input_buffer(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()
        self._ep.reset_input()

    def reset_output_buffer(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()

    @property
    def out_waiting(self) -> int:
        return 0

    def _update_break_state(self) -> None:
        pass

    def _update_rts_state(self) -> None:
        pass

    def _update_dtr_state(self) -> None:
        pass

    @property
    def cts(self) -> bool:
        return True

    @property
    def dsr(self) -> bool:
        return True

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return True
