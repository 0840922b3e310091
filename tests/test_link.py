"""The host bridge: reliability rules, typed errors, events, reconnection, URL kinds."""

from __future__ import annotations

import socket
import threading
import time

import pytest

import simulator.controller as sc
from firmware_bridge import (
    CommandRefused,
    ConnectionChanged,
    ExposureReport,
    InterlockChanged,
    LinkTimeout,
    NotConnected,
    PortError,
    StateChanged,
    SyncController,
    codec,
)
from firmware_bridge import protocol as P
from simulator.controller.pty_server import PtyServer

_n = 0


def fresh(**opts) -> tuple[str, sc.VirtualSyncController]:
    global _n
    _n += 1
    name = f"link{_n}"
    sc.remove_controller(name)
    return f"sim://{name}", sc.get_controller(name, clock_scale=50, **opts)


class Filter:
    """Drops chosen frames on the in-process cable, in either direction."""

    def __init__(self, ctl: sc.VirtualSyncController) -> None:
        self.ctl = ctl
        self.drop_to_host: list = []  # predicates on decoded frames
        self.drop_to_board: list = []
        self.seen_by_board: list[codec.Frame] = []
        self._dec_h, self._dec_b = codec.FrameDecoder(), codec.FrameDecoder()
        feed, self._feed = ctl.feed, ctl.feed

        def filtered_feed(data: bytes) -> None:
            for f in self._dec_b.feed(data):
                if self._take(self.drop_to_board, f):
                    continue
                self.seen_by_board.append(f)
                feed(codec.encode_frame(f))

        ctl.feed = filtered_feed

    def _take(self, preds: list, f: codec.Frame) -> bool:
        for p in preds:
            if p(f):
                preds.remove(p)
                return True
        return False

    def hook_sink(self) -> None:
        sink = self.ctl._sink

        def filtered_sink(data: bytes) -> None:
            for f in self._dec_h.feed(data):
                if not self._take(self.drop_to_host, f):
                    sink(codec.encode_frame(f))

        self.ctl._sink = filtered_sink


def is_answer_to(mtype):
    return lambda f: f.type == P.MsgType.ACK and f.payload[:1] == bytes([mtype])


def is_cmd(mtype):
    return lambda f: f.type == mtype


def test_lost_ack_of_arm_is_resolved_by_query_not_by_resending():
    url, ctl = fresh()
    filt = Filter(ctl)
    with SyncController(url, ack_timeout=0.05) as c:
        filt.hook_sink()
        c.set_technique("A", 70, 100, 10)
        c.set_technique("B", 70, 100, 10)
        filt.drop_to_host.append(is_answer_to(P.MsgType.ARM))
        assert c.arm() == 1
        arms = [f for f in filt.seen_by_board if f.type == P.MsgType.ARM]
        assert len(arms) == 1  # never re-sent: the board was asked instead
        queries = [f for f in filt.seen_by_board if f.type == P.MsgType.QUERY_SEQ]
        assert [P.U16.unpack(q.payload)[0] for q in queries] == [arms[0].seq]
        assert c.stats.queries == 1 and c.status().state == "armed"


def test_lost_arm_is_resent_only_after_the_board_confirms_it_never_saw_it():
    url, ctl = fresh()
    filt = Filter(ctl)
    with SyncController(url, ack_timeout=0.05) as c:
        filt.hook_sink()
        c.set_technique("A", 70, 100, 10)
        c.set_technique("B", 70, 100, 10)
        filt.drop_to_board.append(is_cmd(P.MsgType.ARM))
        assert c.arm() == 1
        kinds = [f.type for f in filt.seen_by_board if f.type in (P.MsgType.ARM, 0x0B)]
        assert kinds == [P.MsgType.QUERY_SEQ, P.MsgType.ARM]
        arm = next(f for f in filt.seen_by_board if f.type == P.MsgType.ARM)
        assert (
            arm.seq
            == P.U16.unpack(next(f for f in filt.seen_by_board if f.type == 0x0B).payload)[0]
        )  # the same number: a late original would be a duplicate


def test_idempotent_command_is_retried_with_the_same_seq():
    url, ctl = fresh()
    filt = Filter(ctl)
    with SyncController(url, ack_timeout=0.05) as c:
        filt.hook_sink()
        filt.drop_to_host.append(is_answer_to(P.MsgType.GET_STATUS))
        start = len(filt.seen_by_board)
        assert c.status().state == "idle"
        gets = [f for f in filt.seen_by_board[start:] if f.type == P.MsgType.GET_STATUS]
        assert len(gets) == 2 and gets[0].seq == gets[1].seq
        assert c.stats.retransmits == 1 and c.stats.queries == 0


def test_timeout_error_names_what_was_pending():
    url, _ctl = fresh(drop_rate=1.0)
    t0 = time.monotonic()
    with pytest.raises(LinkTimeout) as exc:
        SyncController(url, ack_timeout=0.02, retries=2).open()
    assert "HELLO (seq" in str(exc.value) and "3 tries" in str(exc.value)
    assert exc.value.pending.startswith("HELLO")
    assert time.monotonic() - t0 < 5


def test_exposure_command_timeout_says_outcome_unknown():
    url, ctl = fresh()
    with SyncController(url, ack_timeout=0.02, retries=2, command_timeout=0.5) as c:
        c.set_technique("A", 70, 100, 10)
        c.set_technique("B", 70, 100, 10)
        ctl.set_link(drop_rate=1.0)
        with pytest.raises(LinkTimeout) as exc:
            c.arm()
        assert exc.value.pending.startswith("ARM (seq")
        assert "outcome unknown" in str(exc.value)
        ctl.set_link(drop_rate=0.0)


def test_refusal_carries_code_and_reason():
    url, _ctl = fresh()
    with SyncController(url) as c:
        with pytest.raises(CommandRefused) as exc:
            c.arm()
        assert exc.value.code == "no_technique"
        assert "ARM refused by the board: no_technique" in str(exc.value)
        with pytest.raises(ValueError, match="tube must be"):
            c.set_technique("C", 70, 100, 10)
        with pytest.raises(ValueError, match="interlock must be"):
            c.bench_set_interlock("window", True)


def test_events_subscribe_and_queue():
    url, ctl = fresh()
    with SyncController(url) as c:
        got: list = []
        unsubscribe = c.subscribe(got.append)
        q = c.events()
        ctl.set_interlock("door", False)
        ev = q.get(timeout=5)
        assert ev == InterlockChanged("door", False)
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got == [ev]
        unsubscribe()
        ctl.set_interlock("door", True)
        assert q.get(timeout=5) == InterlockChanged("door", True)
        time.sleep(0.05)
        assert got == [ev]


def test_board_reboot_triggers_resync_and_reports_stay_exactly_once():
    url, ctl = fresh()
    with SyncController(url) as c:
        q = c.events()
        c.set_technique("A", 70, 100, 10)
        c.set_technique("B", 70, 100, 10)
        boot = c.info.boot_id
        ctl.reboot()
        deadline = time.monotonic() + 10
        ev = None
        while time.monotonic() < deadline:
            ev = q.get(timeout=10)
            if isinstance(ev, ConnectionChanged):
                break
        assert isinstance(ev, ConnectionChanged) and ev.connected and ev.boot_id != boot
        assert c.stats.resyncs >= 1
        assert c.status().techniques == {"A": None, "B": None}


def test_subscriber_exception_does_not_stop_delivery():
    url, ctl = fresh()
    with SyncController(url) as c:
        c.subscribe(lambda ev: 1 / 0)
        q = c.events()
        ctl.set_interlock("collimator", False)
        assert q.get(timeout=5) == InterlockChanged("collimator", False)


def test_bad_url_and_options_are_one_line_errors():
    with pytest.raises(PortError, match="/dev/no-such-port"):
        SyncController("/dev/no-such-port").open()
    with pytest.raises(TypeError, match="unknown SyncController option"):
        SyncController("sim://x", speed=3)


def _socket_bridge(ctl: sc.VirtualSyncController):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctl.attach_sink(conn.sendall)
        while data := conn.recv(4096):
            ctl.feed(data)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1]


def test_socket_url_works_without_cancel_read():
    _, ctl = fresh()
    port = _socket_bridge(ctl)
    with SyncController(f"socket://127.0.0.1:{port}") as c:
        assert not c._link._can_wake  # the polling path
        q = c.events()
        c.set_technique("A", 70, 100, 10)
        c.set_technique("B", 70, 100, 10)
        c.arm()
        assert q.get(timeout=5) == StateChanged("idle", "armed", "command")


def test_spy_url_over_a_pty_logs_the_traffic(tmp_path):
    ctl = sc.VirtualSyncController("spy", start=True)
    server = PtyServer(ctl)
    server.start()
    log = tmp_path / "spy.txt"
    try:
        with SyncController(f"spy://{server.path}?file={log}") as c:
            assert c.status().state == "idle"
        assert log.read_text().count("TX") >= 2
    finally:
        server.stop()
        ctl.stop()


def test_pulled_cable_fails_pending_calls_then_reopens_and_resyncs():
    url, ctl = fresh()
    with SyncController(url, reconnect_interval=0.05) as c:
        q = c.events()
        boot = c.info.boot_id
        ctl.unplug()
        lost = q.get(timeout=5)
        assert isinstance(lost, ConnectionChanged) and not lost.connected
        back = q.get(timeout=5)
        assert isinstance(back, ConnectionChanged) and back.connected
        assert "port reopened" in back.reason and back.boot_id == boot
        assert c.status().session and c.stats.port_errors == 1


def test_pty_that_vanishes_gives_typed_errors_not_hangs():
    ctl = sc.VirtualSyncController("vanish")
    server = PtyServer(ctl)
    server.start()
    try:
        with SyncController(server.path, reconnect_interval=0.05, command_timeout=0.5) as c:
            q = c.events()
            server.stop()
            ev = q.get(timeout=5)
            assert isinstance(ev, ConnectionChanged) and not ev.connected
            with pytest.raises((NotConnected, LinkTimeout)):
                c.status()
    finally:
        ctl.stop()


def test_crc_valid_frames_with_unreadable_payloads_are_dropped_by_the_host():
    url, ctl = fresh()
    with SyncController(url) as c:
        q = c.events()
        # hand-made board output: an event whose payload is too short, then a good one
        bad = codec.encode_frame(codec.Frame(int(P.MsgType.EVT_INTERLOCK), 0, b"\x00"))
        good = codec.encode_frame(
            codec.Frame(int(P.MsgType.EVT_INTERLOCK), 1, P.EVT_INTERLOCK.pack(1, 0))
        )
        ctl._sink(bad + good + b"\x00\x13\x37\x00")
        assert q.get(timeout=5) == InterlockChanged("collimator", False)
        assert c.stats.bad_payloads == 0 or c.stats.events_delivered >= 1
        assert c.status().state == "idle"  # the I/O thread is alive


def test_dropped_and_delayed_bytes_lose_and_duplicate_nothing():
    url, ctl = fresh(seed=9)
    with SyncController(url, ack_timeout=0.02, retries=10, command_timeout=5.0) as c:
        q = c.events()
        c.set_technique("A", 70, 100, 10)
        c.set_technique("B", 70, 100, 10)
        # delays longer than the ACK timeout: late answers and duplicate commands
        ctl.set_link(drop_rate=0.01, delay_rate=0.02, delay_ms=40)
        ids = []
        for _ in range(15):
            ids.append(c.arm())
            ctl.press_hand_switch("expose")
            while not isinstance(ev := q.get(timeout=10), ExposureReport):
                pass
            assert ev.exposure_id == ids[-1]
            ctl.press_hand_switch("off")
            while not (isinstance(ev := q.get(timeout=10), StateChanged) and ev.new == "idle"):
                pass
        ctl.set_link(drop_rate=0.0, delay_rate=0.0)
        assert ids == list(range(1, 16))
        assert c.status().last_exposure_id == 15
        assert not [e for e in _drain(q) if isinstance(e, ExposureReport)]
        s = c.stats
        assert s.retransmits + s.queries > 0 and ctl.rx.stats.stalls > 0


def _drain(q) -> list:
    time.sleep(0.2)
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


def test_event_gap_that_never_fills_is_skipped(monkeypatch):
    import firmware_bridge.link as link_mod

    monkeypatch.setattr(link_mod, "EVENT_GAP_TIMEOUT", 0.2)
    url, ctl = fresh()
    with SyncController(url) as c:
        q = c.events()
        expected = c._link._evt_expected
        # the event numbered `expected` is lost for good; the next one arrives
        ahead = codec.encode_frame(
            codec.Frame(int(P.MsgType.EVT_INTERLOCK), expected + 1, P.EVT_INTERLOCK.pack(0, 0))
        )
        ctl._sink(b"\x00" + ahead)
        assert q.get(timeout=5) == InterlockChanged("door", False)
        assert c.stats.event_gaps == 1


def test_open_without_a_board_waits_for_it():
    url, ctl = fresh()
    c2 = SyncController(url)
    with c2:  # an earlier host made exposures: not ours to report
        c2.set_technique("A", 70, 100, 10)
        c2.set_technique("B", 70, 100, 10)
        c2.arm()
        ctl.press_hand_switch("expose")
        deadline = time.monotonic() + 10
        while c2.status().last_exposure_id < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        ctl.press_hand_switch("off")
    ctl.set_link(drop_rate=1.0)  # the board is mute
    c = SyncController(url, ack_timeout=0.02, retries=1, reconnect_interval=0.1)
    c.open(require_board=False)
    try:
        q = c.events()
        assert not c.connected
        ctl.set_link(drop_rate=0.0)
        ev = q.get(timeout=10)
        while not isinstance(ev, ConnectionChanged):
            ev = q.get(timeout=10)
        assert ev.connected and c.connected
        assert c.status().last_exposure_id == 1
        assert not [e for e in _drain(q) if isinstance(e, ExposureReport)]
    finally:
        c.close()


def test_open_without_a_port_does_not_raise_when_told_so():
    c = SyncController("/dev/no-such-port", reconnect_interval=0.05)
    c.open(require_board=False)
    try:
        assert not c.connected
        with pytest.raises(NotConnected):
            c.status(timeout=0.5)
    finally:
        c.close()
