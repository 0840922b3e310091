"""Frame codec and message layouts: CRC variant, round trips, hostile input."""

from __future__ import annotations

import binascii

import pytest
from cobs import cobs
from hypothesis import assume, given
from hypothesis import strategies as st

from firmware_bridge import codec
from firmware_bridge import protocol as P
from firmware_bridge.codec import Frame, FrameDecoder

frames = st.builds(
    Frame,
    type=st.integers(0, 255),
    seq=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=codec.MAX_PAYLOAD),
    version=st.integers(0, 255),
)


def test_crc_is_ccitt_false_by_its_check_value():
    assert codec.crc16(b"123456789") == 0x29B1
    # and not the look-alikes: KERMIT 0x2189, XMODEM 0x31C3
    assert binascii.crc_hqx(b"123456789", 0) == 0x31C3
    assert codec.crc16(b"") == 0xFFFF


def test_wire_layout_of_a_known_frame():
    f = Frame(int(P.MsgType.HEARTBEAT), 0x1234, b"")
    body = codec.frame_body(f)
    assert body[:5] == bytes([1, 0x02, 0x34, 0x12, 0])  # version, type, seq LE, length
    assert int.from_bytes(body[5:], "big") == codec.crc16(body[:5])
    wire = codec.encode_frame(f)
    assert wire.endswith(b"\x00") and b"\x00" not in wire[:-1]
    assert cobs.decode(wire[:-1]) == body


@given(frames)
def test_round_trip(frame):
    wire = codec.encode_frame(frame)
    assert b"\x00" not in wire[:-1]
    assert codec.decode_frame(wire) == frame
    assert FrameDecoder().feed(wire) == [frame]


@given(st.lists(frames, max_size=8), st.integers(1, 64))
def test_stream_split_anywhere(frames_, chunk):
    wire = b"".join(codec.encode_frame(f) for f in frames_)
    dec = FrameDecoder()
    out = []
    for i in range(0, len(wire), chunk):
        out += dec.feed(wire[i : i + chunk])
    assert out == frames_
    assert dec.stats.dropped == 0


@given(st.binary(max_size=2000))
def test_random_bytes_never_crash_the_decoder(data):
    dec = FrameDecoder()
    for f in dec.feed(data):  # whatever survives must be a self-consistent frame
        assert codec.decode_frame(codec.encode_frame(f)) == f
    assert dec.stats.bytes == len(data)


@given(st.binary(max_size=600), frames)
def test_resynchronises_after_garbage(garbage, frame):
    dec = FrameDecoder()
    dec.feed(garbage)
    # the delimiter ends whatever the garbage left half-collected
    assert dec.feed(b"\x00" + codec.encode_frame(frame)) == [frame]


@given(frames, st.data())
def test_any_single_data_byte_corruption_is_detected(frame, data):
    wire = bytearray(codec.encode_frame(frame))
    code_bytes, pos = set(), 0
    while pos < len(wire) - 1:  # COBS code bytes: each says where the next one is
        code_bytes.add(pos)
        pos += wire[pos]
    candidates = [k for k in range(len(wire) - 1) if k not in code_bytes]
    assume(candidates)  # a body of zeros is all code bytes
    i = data.draw(st.sampled_from(candidates))
    # a data byte changed to any other non-zero value: one corrupted byte in the body,
    # a burst of <= 8 bits, which CRC-16 always detects
    wire[i] = data.draw(st.integers(1, 255).filter(lambda v: v != wire[i]))
    dec = FrameDecoder()
    assert dec.feed(bytes(wire)) == []
    assert dec.stats.crc_errors == 1


def test_malformed_frames_are_counted_by_kind():
    dec = FrameDecoder()
    good = codec.encode_frame(Frame(1, 1, b"abc"))
    bad_crc = bytearray(codec.frame_body(Frame(1, 2, b"abc")))
    bad_crc[-1] ^= 1
    wrong_len = bytearray(codec.frame_body(Frame(1, 3, b"abc")))
    wrong_len[4] = 9
    wrong_len[-2:] = codec.crc16(bytes(wrong_len[:-2])).to_bytes(2, "big")
    stream = (
        cobs.encode(bytes(bad_crc))
        + b"\x00"
        + cobs.encode(bytes(wrong_len))
        + b"\x00"
        + cobs.encode(b"\x01\x02")
        + b"\x00"  # too short
        + b"\x05\x01\x00"  # COBS code pointing past the end
        + b"\x01" * (codec.MAX_ENCODED + 10)
        + b"\x00"  # overrun
        + b"\x00\x00"  # idle delimiters: not errors
        + good
    )
    assert dec.feed(stream) == [Frame(1, 1, b"abc")]
    s = dec.stats
    assert (s.crc_errors, s.length_errors, s.short_frames, s.cobs_errors, s.overruns) == (
        1,
        1,
        1,
        1,
        1,
    )
    assert s.dropped == 5 and s.frames == 1


def test_frame_fields_are_range_checked():
    with pytest.raises(ValueError):
        Frame(256, 0)
    with pytest.raises(ValueError):
        Frame(1, 0x10000)
    with pytest.raises(ValueError):
        Frame(1, 0, b"x" * 256)


# -- message layouts --------------------------------------------------------------

tubes = st.builds(
    P.TubeActual,
    fired=st.booleans(),
    kv=st.integers(0, 6553).map(lambda v: v / 10),
    ma=st.integers(0, 6553).map(lambda v: v / 10),
    ms=st.integers(0, 10**7).map(lambda v: v / 1000),
    mas=st.integers(0, 10**7).map(lambda v: v / 1000),
)


@given(
    st.integers(0, 2**32 - 1),
    st.booleans(),
    st.booleans(),
    st.sampled_from(list(P.EndReason)),
    st.integers(0, 10**6).map(lambda v: v / 1000),
    tubes,
    tubes,
)
def test_report_round_trip(eid, aborted, over, reason, skew, a, b):
    r = P.ReportBody(eid, aborted, over, reason, skew, {"A": a, "B": b})
    packed = r.pack()
    assert len(packed) == P.ReportBody.size() == 36
    assert P.ReportBody.unpack(packed) == r


techniques = st.one_of(
    st.none(),
    st.builds(
        P.Technique,
        kv=st.integers(0, 6553).map(lambda v: v / 10),
        ma=st.integers(0, 6553).map(lambda v: v / 10),
        ms=st.integers(0, 10**7).map(lambda v: v / 1000),
    ),
)


@given(
    st.sampled_from(list(P.State)),
    st.integers(0, 2**32 - 1),
    st.integers(0, 15),
    st.sampled_from(list(P.Stage)),
    st.sampled_from(list(P.Stage)),
    st.sampled_from(list(P.ErrorCode)),
    techniques,
    techniques,
    st.lists(st.sampled_from(list(P.ErrorCode)), max_size=12),
    st.booleans(),
)
def test_status_round_trip(state, boot, mask, hs, soft, fault, ta, tb, blockers, flag):
    s = P.StatusBody(
        state,
        boot,
        mask,
        hs,
        soft,
        fault,
        7,
        (12, 999),
        500,
        flag,
        not flag,
        flag,
        {"A": ta, "B": tb},
        42,
        123456,
        tuple(blockers),
    )
    packed = s.pack()
    assert len(packed) == 43 + len(blockers)
    assert P.StatusBody.unpack(packed) == s


def test_hello_info_round_trip_and_size():
    h = P.HelloInfo(1, 0, (1, 2, 3), "RSA-0042", 0b1011, 0xDEADBEEF, 200, 1000, 250, 30000, 100, 50)
    packed = h.pack()
    assert len(packed) == 39
    assert P.HelloInfo.unpack(packed) == h


def test_technique_refuses_values_that_do_not_fit():
    with pytest.raises(ValueError):
        P.Technique(7000, 100, 10).pack()
    with pytest.raises(ValueError):
        P.Technique(70, -1, 10).pack()


def test_message_type_ranges_and_retry_classes_are_disjoint():
    for t in P.MsgType:
        host_to_board = t < 0x80
        assert host_to_board == (t not in P.EVENT_TYPES and t not in (P.MsgType.ACK, P.MsgType.NAK))
    assert not P.IDEMPOTENT & P.EXPOSURE_COMMANDS
    commands = {t for t in P.MsgType if t < 0x80 and t != P.MsgType.EVT_ACK}
    assert commands == P.IDEMPOTENT | P.EXPOSURE_COMMANDS
