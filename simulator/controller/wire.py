"""One direction of the simulated cable: byte faults, then line timing.

A pty or an in-process queue delivers bytes instantly whatever the baud rate;
a UART at 115200 8N1 needs 10 bit times per byte (86.8 µs). With line timing
on, a chunk written at ``t`` becomes readable when its last bit has left the
line: ``max(t, line free) + 10 * n / baud``. Fault injection acts per byte:
a byte may be dropped, corrupted (XOR with a random non-zero mask) or
followed by a stall of ``delay_ms`` (the rest of the stream is held up,
order kept, as on a real line).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass


@dataclass
class LinkFaults:
    drop_rate: float = 0.0
    corrupt_rate: float = 0.0
    delay_rate: float = 0.0
    delay_ms: float = 20.0

    @property
    def active(self) -> bool:
        return self.drop_rate > 0 or self.corrupt_rate > 0 or self.delay_rate > 0


@dataclass
class WireStats:
    bytes_in: int = 0
    bytes_out: int = 0
    dropped: int = 0
    corrupted: int = 0
    stalls: int = 0


class Wire:
    """Bytes in at one end, out at the other when their time has come."""

    def __init__(
        self,
        faults: LinkFaults,
        rng: random.Random,
        baudrate: int = 115200,
        line_timing: bool = False,
    ) -> None:
        self.faults = faults
        self.rng = rng
        self.baudrate = baudrate
        self.line_timing = line_timing
        self.stats = WireStats()
        self._items: deque[tuple[float, bytes]] = deque()
        self._line_free = 0.0

    def _apply_faults(self, data: bytes) -> tuple[bytes, float]:
        f = self.faults
        if not f.active:
            return data, 0.0
        rnd = self.rng.random
        out = bytearray()
        stall = 0.0
        for b in data:
            if f.drop_rate and rnd() < f.drop_rate:
                self.stats.dropped += 1
                continue
            if f.corrupt_rate and rnd() < f.corrupt_rate:
                b ^= self.rng.randrange(1, 256)
                self.stats.corrupted += 1
            if f.delay_rate and rnd() < f.delay_rate:
                stall += f.delay_ms / 1000.0
                self.stats.stalls += 1
            out.append(b)
        return bytes(out), stall

    def put(self, data: bytes, now: float) -> None:
        if not data:
            return
        self.stats.bytes_in += len(data)
        data, stall = self._apply_faults(bytes(data))
        if not data:
            return
        last = self._items[-1][0] if self._items else 0.0
        if self.line_timing:
            start = max(now, self._line_free) + stall
            t = start + 10.0 * len(data) / self.baudrate
            self._line_free = t
        else:
            t = now + stall
        self._items.append((max(t, last), data))

    def take(self, now: float) -> bytes:
        out = bytearray()
        items = self._items
        while items and items[0][0] <= now:
            out += items.popleft()[1]
        self.stats.bytes_out += len(out)
        return bytes(out)

    def next_time(self) -> float | None:
        return self._items[0][0] if self._items else None

    def clear(self) -> None:
        self._items.clear()
