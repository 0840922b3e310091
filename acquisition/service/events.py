"""Live status: a broadcast of small JSON events to every open SSE stream.

Publishers are threads (the serial owner, detector waits, processing jobs);
subscribers are asyncio tasks. :meth:`EventBus.publish` is thread-safe: it
hands each event to the event loop with ``call_soon_threadsafe``. A slow
subscriber loses its oldest events rather than holding the station up, and the
last event of each ``topic`` is kept so a new stream starts with the current
picture (controller state, interlocks, tube heat).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Event:
    id: int
    kind: str
    data: dict
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "time": self.time, **self.data}


# Event kinds whose latest value describes the present (sent first to a new stream).
STICKY = ("status", "exam")


class EventBus:
    def __init__(self, queue_size: int = 256):
        self._subs: set[asyncio.Queue] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._last: dict[str, Event] = {}
        self._queue_size = queue_size
        self._listeners: list = []  # plain callables (tests, the headless exam)

    def bind(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop

    def add_listener(self, fn) -> None:
        with self._lock:
            self._listeners.append(fn)

    def remove_listener(self, fn) -> None:
        with self._lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    def publish(self, kind: str, **data: Any) -> Event:
        ev = Event(next(self._ids), kind, data)
        with self._lock:
            if kind in STICKY:
                self._last[kind] = ev
            listeners = list(self._listeners)
        for fn in listeners:
            fn(ev)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._deliver, ev)
            except RuntimeError:  # loop shutting down
                pass
        return ev

    def _deliver(self, ev: Event) -> None:
        for q in list(self._subs):
            if q.full():
                q.get_nowait()
            q.put_nowait(ev)

    def snapshot(self) -> list[Event]:
        with self._lock:
            return list(self._last.values())

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(self._queue_size)
        self._subs.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._subs.discard(q)
