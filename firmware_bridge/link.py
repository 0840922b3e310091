"""Reliable link over one pyserial port: the single thread that owns the port.

Everything that touches the port (open, read, write, close) happens in one
I/O thread. Callers hand it requests through a queue and wait on them; the
I/O thread wakes from a blocking read through ``port.cancel_read()`` when the
port supports it (posix ports, ``spy://``, ``sim://``) and otherwise polls with
a short read timeout (``socket://``, ``rfc2217://``).

Reliability (docs/protocol.md, "Reliability"):

- every command carries a sequence number and is answered by ACK or NAK with
  the same number; the board answers a duplicate from its response cache;
- idempotent commands are re-sent with the same number after the ACK
  timeout, up to ``retries`` times;
- exposure commands (ARM, HOLD, ...) are never re-sent blindly: after a
  timeout the link asks the board with QUERY_SEQ whether it received and
  executed that number, and re-sends it (same number) only when the board
  says it never saw it;
- board events carry the board's event number, are acknowledged with
  EVT_ACK, re-sent by the board until acknowledged, and delivered here once
  each, in order;
- a heartbeat keeps the board's watchdog fed; a changed boot id, a NAK
  NO_SESSION or a reopened port start a resynchronisation: HELLO, GET_STATUS,
  and GET_REPORT for every exposure the host has not seen.

Events are delivered to subscribers from a separate dispatcher thread, so a
slow subscriber never stalls the port.
"""

from __future__ import annotations

import logging
import queue
import random
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import serial

from firmware_bridge import codec, errors
from firmware_bridge import protocol as P
from firmware_bridge.codec import Frame

log = logging.getLogger(__name__)

Callback = Callable[["Request"], None]
#: A missing event still not re-sent after this long is given up (the board drops
#: its oldest unacknowledged event when 64 are queued).
EVENT_GAP_TIMEOUT = 3.0


class EventFactory(Protocol):
    """Turns event frames and report bodies into the caller's typed events."""

    def events(self, frame: Frame, source: str) -> list: ...

    def report(self, body: bytes, source: str) -> object: ...

    def connection(self, connected: bool, reason: str, boot_id: int | None) -> object: ...


@dataclass
class LinkOptions:
    """Tunable timing of the host side (board timing comes from HELLO)."""

    baudrate: int = 115200
    ack_timeout: float = 0.1
    retries: int = 3
    command_timeout: float = 2.0
    reconnect_interval: float = 0.5
    heartbeat_ms: int | None = None  # None: the board's advertised period
    protocol_version: int = codec.PROTOCOL_VERSION
    read_timeout: float = 0.02  # blocking read slice when cancel_read() wakes us
    poll_timeout: float = 0.002  # read slice for ports that cannot be woken
    auto_resync: bool = True


@dataclass
class LinkStats:
    """Counters for diagnostics and tests."""

    frames_sent: int = 0
    frames_received: int = 0
    retransmits: int = 0
    queries: int = 0
    stale_answers: int = 0
    foreign_version: int = 0
    unexpected_type: int = 0
    bad_payloads: int = 0
    duplicate_events: int = 0
    events_deferred: int = 0
    event_gaps: int = 0
    events_delivered: int = 0
    resyncs: int = 0
    reconnects: int = 0
    port_errors: int = 0
    last_resync_reason: str = ""


@dataclass
class Request:
    """One command in flight. ``outcome`` is ('ack', body) or ('nak', code, detail)."""

    mtype: P.MsgType
    payload: bytes
    description: str
    expires_at: float
    callback: Callback | None = None
    seq: int | None = None
    tries: int = 0
    deadline: float = 0.0
    outcome: tuple | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    query_for: Request | None = None  # set on a QUERY_SEQ: the command it asks about
    query: Request | None = None  # set on a command while a QUERY_SEQ asks about it
    board_confirmed_unseen: int = 0

    @property
    def idempotent(self) -> bool:
        return self.mtype in P.IDEMPOTENT

    def label(self) -> str:
        seq = "?" if self.seq is None else self.seq
        return f"{self.description} (seq {seq})"


class Link:
    """The port-owning I/O thread plus request/response and event plumbing."""

    def __init__(self, url: str, options: LinkOptions | None = None) -> None:
        self.url = url
        self.opts = options or LinkOptions()
        self.stats = LinkStats()
        self._port: serial.SerialBase | None = None
        self._can_wake = False
        self._decoder = codec.FrameDecoder()
        self._submit: deque[Request] = deque()
        self._submit_lock = threading.Lock()
        self._pending: dict[int, Request] = {}
        self._seq = random.randrange(0x10000)
        self._nonce = random.randrange(1 << 32)
        self._thread: threading.Thread | None = None
        self._dispatch_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_evt = threading.Event()
        self._dispatch_q: queue.Queue = queue.Queue()
        self._subscribers: list[Callable] = []
        self._sub_lock = threading.Lock()
        self._mute_until = 0.0
        self._next_reopen = 0.0
        # session
        self.info: P.HelloInfo | None = None
        self.session_open = False
        self._evt_expected = 0
        self._evt_buffer: dict[int, Frame] = {}
        self._gap_since = 0.0
        self._seen_exposures: deque[int] = deque(maxlen=256)
        self.last_exposure_seen = 0
        self.baseline_known = False
        self.last_state: P.State | None = None
        self._hb_due = 0.0
        self._hb_inflight = False
        self._resyncing = False
        self._resync_retry_at = 0.0
        self._resync_reason = ""
        # set by SyncController: turns frames into typed events
        self.factory: EventFactory | None = None

    # -- lifecycle ------------------------------------------------------------

    def open(self, require_port: bool = True) -> None:
        """Open the port and start the threads.

        With ``require_port=False`` a port that cannot be opened yet is retried
        every ``reconnect_interval`` in the background (then HELLO and resync).
        """
        try:
            self._open_port()
        except errors.PortError:
            if require_port:
                raise
            self._port = None
            self._resync_reason = "port opened"
            self._next_reopen = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sync-link-io", daemon=True)
        self._dispatch_thread = threading.Thread(
            target=self._dispatch, name="sync-link-events", daemon=True
        )
        self._thread.start()
        self._dispatch_thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._dispatch_q.put(None)
        if self._dispatch_thread is not None:
            self._dispatch_thread.join(timeout=2.0)
        self._thread = self._dispatch_thread = None

    def _open_port(self) -> None:
        try:
            port = serial.serial_for_url(
                self.url,
                baudrate=self.opts.baudrate,
                timeout=self.opts.read_timeout,
                write_timeout=2.0,
            )
        except ValueError as exc:
            hint = ""
            if self.url.lower().startswith("sim://"):
                hint = " (import simulator.controller to register the sim:// scheme)"
            raise errors.PortError(f"cannot open {self.url!r}: {exc}{hint}") from None
        except (serial.SerialException, OSError) as exc:
            raise errors.PortError(f"cannot open {self.url!r}: {exc}") from None
        self._can_wake = callable(getattr(port, "cancel_read", None))
        if not self._can_wake:
            port.timeout = self.opts.poll_timeout
        self._decoder.reset()
        self._port = port

    # -- caller side -------------------------------------------------------------

    def request(
        self,
        mtype: P.MsgType,
        payload: bytes = b"",
        *,
        description: str,
        timeout: float | None,
        callback: Callback | None = None,
    ) -> bytes:
        """Send a command and wait; return the ACK body or raise a typed error.

        ``callback(request)`` runs in the I/O thread when the answer arrives,
        before any later frame is handled (used to open a session in step
        with the event numbering).
        """
        if self._thread is None:
            raise errors.NotConnected(f"{description}: the link is not open")
        timeout = self.opts.command_timeout if timeout is None else timeout
        req = Request(mtype, payload, description, time.monotonic() + timeout, callback)
        with self._submit_lock:
            self._submit.append(req)
        self._wake()
        if not req.done.wait(timeout + 1.0):
            raise errors.LinkTimeout(req.label(), f"no answer within {timeout:.3g} s")
        if req.error is not None:
            raise req.error
        assert req.outcome is not None
        if req.outcome[0] == "ack":
            return req.outcome[1]
        raise self.refusal(req, req.outcome[1], req.outcome[2])

    def refusal(self, req: Request, code: int, detail: int) -> errors.BridgeError:
        try:
            ec = P.ErrorCode(code)
            name, reason = ec.name.lower(), ec.describe()
        except ValueError:
            ec, name, reason = None, f"code_0x{code:02x}", "unknown error code"
        if ec is P.ErrorCode.VERSION_MISMATCH:
            return errors.ProtocolVersionMismatch(self.opts.protocol_version, detail)
        cls = errors.CommandRefused
        if ec is P.ErrorCode.BENCH_DISABLED:
            cls = errors.BenchModeDisabled
        elif ec is P.ErrorCode.NOT_SIMULATOR or (
            ec is P.ErrorCode.UNKNOWN_TYPE
            and req.mtype in (P.MsgType.SIM_CONFIG, P.MsgType.SIM_INJECT)
        ):
            cls = errors.NotASimulator
        return cls(req.description, name, detail, reason)

    def subscribe(self, callback: Callable) -> Callable[[], None]:
        with self._sub_lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._sub_lock, _suppress():
                self._subscribers.remove(callback)

        return unsubscribe

    def mute(self, seconds: float) -> None:
        """Send nothing (no heartbeat, no EVT_ACK, no command) for ``seconds``."""
        self._mute_until = time.monotonic() + seconds

    def emit(self, event: object) -> None:
        self._dispatch_q.put(event)

    def _wake(self) -> None:
        self._wake_evt.set()
        port = self._port
        if port is not None and self._can_wake:
            with _suppress():
                port.cancel_read()

    # -- the I/O thread ------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._port is None:
                self._reopen()
                continue
            try:
                self._drain_submissions()
                data = self._port.read(1)
                if data:
                    n = self._port.in_waiting
                    if n:
                        data += self._port.read(n)
                    for frame in self._decoder.feed(data):
                        try:
                            self._on_frame(frame)
                        except (ValueError, IndexError, struct.error) as exc:
                            # CRC-valid but not a payload we can read: drop, count, go on
                            self.stats.bad_payloads += 1
                            log.warning("dropping frame type 0x%02x: %s", frame.type, exc)
                self._on_timers(time.monotonic())
            except (serial.SerialException, OSError, TypeError) as exc:
                # TypeError: pyserial's posix read on a just-closed fd
                self._lost(exc)
        self._fail_all(lambda r: errors.NotConnected(f"{r.label()}: link closed"))
        if self._port is not None:
            with _suppress():
                self._port.close()
            self._port = None

    def _drain_submissions(self) -> None:
        while True:
            with self._submit_lock:
                if not self._submit:
                    return
                req = self._submit.popleft()
            self._send_request(req)

    def _next_seq(self) -> int:
        for _ in range(0x10000):
            self._seq = (self._seq + 1) & 0xFFFF
            if self._seq not in self._pending:
                return self._seq
        raise errors.BridgeError("no free sequence number")  # 65536 commands in flight

    def _send_request(self, req: Request) -> None:
        if req.seq is None:
            req.seq = self._next_seq()
        self._pending[req.seq] = req
        req.tries += 1
        if req.tries > 1:
            self.stats.retransmits += 1
        # exponential back-off (x1, x2, x4, x8 cap): a congested or slow line is
        # not made worse by our own retransmissions
        req.deadline = time.monotonic() + self.opts.ack_timeout * min(8, 1 << (req.tries - 1))
        self._write(Frame(int(req.mtype), req.seq, req.payload, self.opts.protocol_version))

    def _write(self, frame: Frame) -> None:
        if time.monotonic() < self._mute_until:
            return
        assert self._port is not None
        # leading delimiter: ends any garbage the line left in the board's receiver
        self._port.write(codec.DELIMITER + codec.encode_frame(frame))
        self.stats.frames_sent += 1

    def _internal(
        self,
        mtype: P.MsgType,
        payload: bytes,
        description: str,
        callback: Callback,
        timeout: float | None = None,
    ) -> Request:
        timeout = self.opts.command_timeout if timeout is None else timeout
        req = Request(mtype, payload, description, time.monotonic() + timeout, callback)
        self._send_request(req)
        return req

    # -- frames in --

    def _on_frame(self, frame: Frame) -> None:
        self.stats.frames_received += 1
        if frame.version != self.opts.protocol_version and frame.type != P.MsgType.NAK:
            self.stats.foreign_version += 1
            return
        if frame.type in (P.MsgType.ACK, P.MsgType.NAK):
            self._on_answer(frame)
        elif frame.type in P.EVENT_TYPES:
            self._on_event(frame)
        else:
            self.stats.unexpected_type += 1

    def _on_answer(self, frame: Frame) -> None:
        req = self._pending.get(frame.seq)
        if req is None or not frame.payload or frame.payload[0] != req.mtype:
            self.stats.stale_answers += 1
            return
        if frame.type == P.MsgType.ACK:
            outcome: tuple = ("ack", frame.payload[1:])
        else:
            if len(frame.payload) != P.NAK.size:
                self.stats.stale_answers += 1
                return
            _, code, detail = P.NAK.unpack(frame.payload)
            outcome = ("nak", code, detail)
        self._resolve(req, outcome)

    def _resolve(self, req: Request, outcome: tuple | None, error: BaseException | None = None):
        if req.seq is not None and self._pending.get(req.seq) is req:
            del self._pending[req.seq]
        if req.done.is_set():
            return
        req.outcome, req.error = outcome, error
        parent = req.query_for
        if parent is not None:
            self._on_query_answer(parent, req)
        if outcome and outcome[0] == "nak" and outcome[1] == P.ErrorCode.NO_SESSION:
            self.session_open = False
            self._start_resync("board lost the session")
        if req.callback is not None:
            try:
                req.callback(req)
            except Exception:  # a bug in an internal callback must not kill the port thread
                log.exception("link callback failed for %s", req.label())
        req.done.set()

    def _on_query_answer(self, parent: Request, query: Request) -> None:
        parent.query = None
        if parent.done.is_set():
            return
        if query.error is not None or query.outcome is None or query.outcome[0] != "ack":
            self._resolve(
                parent,
                None,
                errors.LinkTimeout(
                    parent.label(),
                    "no answer, and the board could not be asked what happened: outcome unknown",
                ),
            )
            return
        body = query.outcome[1]
        outcome, ref_type, code, detail = P.QUERY_ACK.unpack_from(body, 0)
        if outcome == P.QueryOutcome.ACKED and ref_type == parent.mtype:
            self._resolve(parent, ("ack", body[P.QUERY_ACK.size :]))
        elif outcome == P.QueryOutcome.NAKED and ref_type == parent.mtype:
            self._resolve(parent, ("nak", code, detail))
        elif time.monotonic() < parent.expires_at and parent.tries <= self.opts.retries:
            # the board confirms it never saw this number: sending it again is not blind
            parent.board_confirmed_unseen += 1
            self._send_request(parent)
        else:
            self._resolve(
                parent,
                None,
                errors.LinkTimeout(
                    parent.label(),
                    f"the board never received it ({parent.tries} tries); not executed",
                ),
            )

    def _on_event(self, frame: Frame) -> None:
        if any(r.mtype == P.MsgType.HELLO for r in self._pending.values()):
            # a session is being opened: these events belong to it, but their
            # numbering starts only with the HELLO's ACK; leave them unacknowledged
            # and the board sends them again
            self.stats.events_deferred += 1
            return
        self._write(Frame(int(P.MsgType.EVT_ACK), frame.seq, b"", self.opts.protocol_version))
        delta = (frame.seq - self._evt_expected) & 0xFFFF
        if delta >= 0x8000 or frame.seq in self._evt_buffer:
            self.stats.duplicate_events += 1
            return
        if not self._evt_buffer:
            self._gap_since = time.monotonic()
        self._evt_buffer[frame.seq] = frame
        self._flush_events()

    def _flush_events(self) -> None:
        while self._evt_expected in self._evt_buffer:
            f = self._evt_buffer.pop(self._evt_expected)
            self._evt_expected = (self._evt_expected + 1) & 0xFFFF
            self._deliver_frame(f)
        if self._evt_buffer:
            self._gap_since = min(self._gap_since, time.monotonic())

    def _skip_event_gap(self, now: float) -> None:
        """Give up on a missing event the board will never re-send (its queue overflowed)."""
        if self._evt_buffer and now - self._gap_since > EVENT_GAP_TIMEOUT:
            self.stats.event_gaps += 1
            self._evt_expected = min(
                self._evt_buffer, key=lambda s: (s - self._evt_expected) & 0xFFFF
            )
            self._gap_since = now
            self._flush_events()

    def _deliver_frame(self, frame: Frame) -> None:
        if frame.type == P.MsgType.EVT_STATE and len(frame.payload) == P.EVT_STATE.size:
            with _suppress():
                self.last_state = P.State(frame.payload[1])
        if frame.type == P.MsgType.EVT_REPORT and len(frame.payload) >= 4:
            (eid,) = struct.unpack_from("<I", frame.payload, 0)
            if not self._note_exposure(eid):
                self.stats.duplicate_events += 1
                return
        if self.factory is None:
            return
        try:
            events = self.factory.events(frame, "event")
        except (ValueError, struct.error) as exc:
            log.warning("dropping undecodable event type 0x%02x: %s", frame.type, exc)
            return
        for ev in events:
            self.stats.events_delivered += 1
            self.emit(ev)

    def _note_exposure(self, eid: int) -> bool:
        """Record an exposure id; False if it was delivered before."""
        if eid in self._seen_exposures:
            return False
        self._seen_exposures.append(eid)
        self.last_exposure_seen = max(self.last_exposure_seen, eid)
        return True

    # -- timers --

    def _on_timers(self, now: float) -> None:
        for req in list(self._pending.values()):
            if req.done.is_set() or req.query is not None:
                continue
            if now >= req.expires_at:
                self._resolve(
                    req,
                    None,
                    errors.LinkTimeout(
                        req.label(), f"no answer after {req.tries} tries, command timeout expired"
                    ),
                )
            elif now >= req.deadline:
                self._on_ack_timeout(req)
        self._skip_event_gap(now)
        if self.session_open and now >= self._hb_due and not self._hb_inflight:
            self._send_heartbeat(now)
        if (
            not self.session_open
            and self._resync_reason
            and not self._resyncing
            and now >= self._resync_retry_at
        ):
            self._begin_resync()

    def _on_ack_timeout(self, req: Request) -> None:
        if req.idempotent:
            # a QUERY_SEQ keeps asking until its command's time is up: we must find out
            if req.tries <= self.opts.retries or req.query_for is not None:
                self._send_request(req)
            else:
                self._resolve(
                    req,
                    None,
                    errors.LinkTimeout(
                        req.label(),
                        f"no ACK within {self.opts.ack_timeout * 1000:.0f} ms after "
                        f"{req.tries} tries",
                    ),
                )
            return
        # exposure command: ask, do not re-send
        self.stats.queries += 1
        q = self._internal(
            P.MsgType.QUERY_SEQ,
            P.U16.pack(req.seq),
            f"QUERY_SEQ about {req.label()}",
            callback=lambda _q: None,
            timeout=max(0.05, req.expires_at - time.monotonic()),
        )
        q.query_for = req
        req.query = q

    def _send_heartbeat(self, now: float) -> None:
        period = self.opts.heartbeat_ms or (self.info.heartbeat_ms if self.info else 200)
        self._hb_due = now + period / 1000.0
        self._hb_inflight = True
        self._internal(
            P.MsgType.HEARTBEAT,
            b"",
            "HEARTBEAT",
            self._on_heartbeat,
            timeout=max(0.3, 4 * period / 1000.0),
        )

    def _on_heartbeat(self, req: Request) -> None:
        self._hb_inflight = False
        if req.outcome is None or req.outcome[0] != "ack":
            return
        _state, boot_id = P.HEARTBEAT_ACK.unpack_from(req.outcome[1], 0)
        if self.info is not None and boot_id != self.info.boot_id:
            self.session_open = False
            self._start_resync("board rebooted")

    # -- sessions and resync --

    def set_baseline(self, last_exposure_id: int) -> None:
        """Exposures up to this id happened before this host connected."""
        self.last_exposure_seen = max(self.last_exposure_seen, last_exposure_id)
        self.baseline_known = True

    def schedule_resync(self, reason: str) -> None:
        """Keep trying to open a session in the background (board not answering yet)."""
        self._resync_retry_at = time.monotonic() + self.opts.reconnect_interval
        self._resync_reason = reason

    def hello_payload(self) -> bytes:
        return P.HELLO_REQ.pack(self.opts.protocol_version, codec.PROTOCOL_MINOR, self._nonce)

    def on_hello_answer(self, req: Request) -> None:
        """Request callback of a caller's HELLO: open the session in the I/O thread."""
        if req.outcome is not None and req.outcome[0] == "ack":
            info = P.HelloInfo.unpack(req.outcome[1])
            if info.protocol_major == self.opts.protocol_version:
                self.start_session(info)

    def start_session(self, info: P.HelloInfo) -> None:
        """Called (in the I/O thread) when a HELLO was acknowledged."""
        self.info = info
        self.session_open = True
        self._evt_expected = 0
        self._evt_buffer.clear()
        self._hb_due = time.monotonic()
        self._hb_inflight = False

    def _start_resync(self, reason: str) -> None:
        if not self.opts.auto_resync or self._resyncing:
            return
        self._resync_reason = reason
        self._resync_retry_at = 0.0
        self._begin_resync()

    def _begin_resync(self) -> None:
        if self._port is None:
            return
        self._resyncing = True
        self.stats.resyncs += 1
        self.stats.last_resync_reason = self._resync_reason
        self._internal(P.MsgType.HELLO, self.hello_payload(), "HELLO (resync)", self._resync_hello)

    def _resync_failed(self) -> None:
        self._resyncing = False
        self._resync_retry_at = time.monotonic() + self.opts.reconnect_interval

    def _resync_hello(self, req: Request) -> None:
        if req.outcome is None or req.outcome[0] != "ack":
            self._resync_failed()
            return
        self.start_session(P.HelloInfo.unpack(req.outcome[1]))
        self._internal(P.MsgType.GET_STATUS, b"", "GET_STATUS (resync)", self._resync_status)

    def _resync_status(self, req: Request) -> None:
        if req.outcome is None or req.outcome[0] != "ack":
            self._resync_failed()
            return
        status = P.StatusBody.unpack(req.outcome[1])
        if self.last_state is not None and status.state != self.last_state and self.factory:
            payload = P.EVT_STATE.pack(self.last_state, status.state, P.StateReason.SESSION)
            for ev in self.factory.events(Frame(int(P.MsgType.EVT_STATE), 0, payload), "resync"):
                self.emit(ev)
        self.last_state = status.state
        if not self.baseline_known:
            # first contact: exposures made before we connected are not ours to report
            self.set_baseline(status.last_exposure_id)
        missing = range(
            max(self.last_exposure_seen + 1, status.last_exposure_id - 31),
            status.last_exposure_id + 1,
        )
        for eid in missing:
            if eid in self._seen_exposures:
                continue
            self._internal(
                P.MsgType.GET_REPORT,
                P.U32.pack(eid),
                f"GET_REPORT {eid} (resync)",
                self._resync_report,
            )
        reason = self._resync_reason
        self._resyncing = False
        self._resync_reason = ""
        self.stats.reconnects += 1
        if self.factory is not None:
            self.emit(self.factory.connection(True, reason, status.boot_id))

    def _resync_report(self, req: Request) -> None:
        if req.outcome is None or req.outcome[0] != "ack" or self.factory is None:
            return
        body = req.outcome[1]
        (eid,) = struct.unpack_from("<I", body, 0)
        if self._note_exposure(eid):
            self.stats.events_delivered += 1
            self.emit(self.factory.report(body, "resync"))

    # -- port loss --

    def _lost(self, exc: BaseException) -> None:
        self.stats.port_errors += 1
        log.warning("serial port %s lost: %s", self.url, exc)
        if self._port is not None:
            with _suppress():
                self._port.close()
        self._port = None
        self.session_open = False
        self._resyncing = False
        self._resync_reason = f"port reopened after: {exc}"
        self._fail_all(lambda r: errors.NotConnected(f"{r.label()}: port lost ({exc})"))
        self._next_reopen = time.monotonic() + self.opts.reconnect_interval
        if self.factory is not None:
            self.emit(self.factory.connection(False, f"port lost: {exc}", None))

    def _reopen(self) -> None:
        wait = self._next_reopen - time.monotonic()
        if wait > 0:
            self._wake_evt.wait(wait)
            self._wake_evt.clear()
            return
        try:
            self._open_port()
        except errors.PortError:
            self._next_reopen = time.monotonic() + self.opts.reconnect_interval
            self._fail_submissions()
            return
        if self.opts.auto_resync:
            self._begin_resync()

    def _fail_submissions(self) -> None:
        while True:
            with self._submit_lock:
                if not self._submit:
                    return
                req = self._submit.popleft()
            self._resolve(req, None, errors.NotConnected(f"{req.label()}: port not open"))

    def _fail_all(self, make_error: Callable[[Request], BaseException]) -> None:
        self._fail_submissions()
        for req in list(self._pending.values()):
            self._resolve(req, None, make_error(req))
        self._pending.clear()
        self._hb_inflight = False

    # -- dispatcher thread --

    def _dispatch(self) -> None:
        while True:
            ev = self._dispatch_q.get()
            if ev is None:
                return
            with self._sub_lock:
                subs = list(self._subscribers)
            for sub in subs:
                try:
                    sub(ev)
                except Exception:
                    log.exception("event subscriber %r failed", sub)


class _suppress:
    """contextlib.suppress(Exception) without the import cost in the hot path."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True
