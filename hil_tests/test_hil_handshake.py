"""Handshake, versioning, status and frame hygiene, through the serial port only."""

from __future__ import annotations

import time

import pytest
import serial

from firmware_bridge import ProtocolVersionMismatch, SyncController, codec
from firmware_bridge import protocol as P


def test_handshake_reports_identity_timing_and_capabilities(board):
    info = board.ctl.hello()
    assert info.protocol_version[0] == codec.PROTOCOL_VERSION
    assert info.serial_number
    assert info.boot_id != 0
    assert "software_hold" in info.capabilities
    # the timing the host must keep, as docs/protocol.md states it
    assert info.heartbeat_ms < info.watchdog_ms
    assert 0 < info.hold_timeout_ms <= 500
    assert info.skew_limit_us <= 500
    s = board.ctl.status()
    assert s.state == "idle" and s.session
    assert s.boot_id == info.boot_id


def test_version_mismatch_is_refused_and_board_stays_usable(board_url, board):
    board.ctl.close()  # one host on the line at a time
    with pytest.raises(ProtocolVersionMismatch) as exc:
        SyncController(board_url, protocol_version=codec.PROTOCOL_VERSION + 1).open()
    assert exc.value.board_version == codec.PROTOCOL_VERSION
    with SyncController(board_url) as ctl:
        assert ctl.status().state == "idle"


def test_garbage_on_the_line_is_dropped_and_the_board_resynchronises(board_url, board):
    board.ctl.close()
    port = serial.serial_for_url(board_url, baudrate=115200, timeout=0.05)
    try:
        hello = codec.Frame(int(P.MsgType.HELLO), 7, P.HELLO_REQ.pack(1, 0, 12345))
        good = codec.encode_frame(hello)
        garbage = bytes(range(1, 200)) + b"\x00\x13\x37\x00" + good[: len(good) // 2] + b"\x00"
        port.write(garbage + good)
        dec = codec.FrameDecoder()
        frames = []
        end = time.monotonic() + 10
        while time.monotonic() < end and not any(f.type == P.MsgType.ACK for f in frames):
            frames += dec.feed(port.read(256))
        acks = [f for f in frames if f.type == P.MsgType.ACK and f.seq == 7]
        assert acks, f"no ACK for the HELLO after garbage; got {frames}"
        assert acks[0].payload[0] == P.MsgType.HELLO
        # bad frames get no answer at all: only our one command was answered
        assert all(f.seq == 7 for f in frames if f.type in (P.MsgType.ACK, P.MsgType.NAK))
    finally:
        port.close()


def test_status_exposes_arm_blockers_for_the_ui(board):
    board.require_bench()
    s = board.ctl.status()
    assert s.can_arm or s.arm_blockers == ["no_technique"]
    board.set_both()
    board.ctl.bench_set_interlock("door", False)
    board.ctl.bench_set_interlock("detector_b_ready", False)
    s = board.ctl.status()
    assert not s.can_arm
    assert "door_open" in s.arm_blockers and "detector_b_not_ready" in s.arm_blockers
    assert all(m for m in s.arm_blocker_messages)
    assert s.interlocks["door"] is False and s.interlocks["collimator"] is True
