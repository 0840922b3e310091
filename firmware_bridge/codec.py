"""Frame codec of the sync-controller serial link: bytes <-> frames.

A frame on the wire is ``COBS(header | payload | crc) 0x00`` (docs/protocol.md,
"Framing"). The header is ``version u8, type u8, seq u16 LE, length u8``; the CRC
is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final XOR,
check value 0x29B1) over header and payload, sent big-endian.

Consistent Overhead Byte Stuffing: S. Cheshire and M. Baker, "Consistent
Overhead Byte Stuffing", IEEE/ACM Trans. Networking 7(2):159-172, 1999. The
zero byte never occurs inside an encoded frame, so a receiver resynchronises
at the next zero whatever garbage came before it.

Pure: no I/O, no clock, no threads.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass, field

from cobs import cobs

#: Protocol major version carried in every frame header.
PROTOCOL_VERSION = 1
#: Minor version, carried in HELLO only (additive changes).
PROTOCOL_MINOR = 0

HEADER = struct.Struct("<BBHB")
CRC = struct.Struct(">H")
MAX_PAYLOAD = 255
#: Largest decoded frame: header + payload + CRC.
MAX_FRAME = HEADER.size + MAX_PAYLOAD + CRC.size
#: Largest encoded frame without its delimiter (COBS adds one byte per 254).
MAX_ENCODED = MAX_FRAME + (MAX_FRAME // 254) + 1
DELIMITER = b"\x00"


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (check value 0x29B1 for b"123456789")."""
    return binascii.crc_hqx(data, 0xFFFF)


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: message type, sequence number and raw payload."""

    type: int
    seq: int
    payload: bytes = b""
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if not 0 <= self.type <= 0xFF:
            raise ValueError(f"frame type {self.type} outside 0..255")
        if not 0 <= self.seq <= 0xFFFF:
            raise ValueError(f"frame seq {self.seq} outside 0..65535")
        if not 0 <= self.version <= 0xFF:
            raise ValueError(f"frame version {self.version} outside 0..255")
        if len(self.payload) > MAX_PAYLOAD:
            raise ValueError(f"payload of {len(self.payload)} bytes exceeds {MAX_PAYLOAD}")


def frame_body(frame: Frame) -> bytes:
    """Header, payload and CRC of ``frame``, before COBS stuffing."""
    body = HEADER.pack(frame.version, frame.type, frame.seq, len(frame.payload)) + frame.payload
    return body + CRC.pack(crc16(body))


def encode_frame(frame: Frame) -> bytes:
    """The bytes to put on the wire for ``frame``, delimiter included."""
    return cobs.encode(frame_body(frame)) + DELIMITER


class FrameError(ValueError):
    """A received frame that is not well formed (the reason is in the message)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def decode_body(body: bytes) -> Frame:
    """Parse one unstuffed frame body; raise :class:`FrameError` if malformed."""
    if len(body) < HEADER.size + CRC.size:
        raise FrameError("short", f"frame of {len(body)} bytes is shorter than header and CRC")
    (sent_crc,) = CRC.unpack_from(body, len(body) - CRC.size)
    if crc16(memoryview(body)[: -CRC.size]) != sent_crc:
        raise FrameError("crc", "CRC mismatch")
    version, mtype, seq, length = HEADER.unpack_from(body, 0)
    if length != len(body) - HEADER.size - CRC.size:
        raise FrameError("length", f"length field {length} != {len(body) - HEADER.size - CRC.size}")
    return Frame(mtype, seq, bytes(body[HEADER.size : HEADER.size + length]), version)


def decode_frame(encoded: bytes) -> Frame:
    """Decode one COBS-encoded frame (with or without its trailing delimiter)."""
    if encoded.endswith(DELIMITER):
        encoded = encoded[:-1]
    try:
        body = cobs.decode(encoded)
    except cobs.DecodeError as exc:
        raise FrameError("cobs", f"COBS: {exc}") from None
    return decode_body(body)


@dataclass
class DecoderStats:
    """Counters of what a :class:`FrameDecoder` has seen; malformed frames are dropped."""

    frames: int = 0
    bytes: int = 0
    cobs_errors: int = 0
    crc_errors: int = 0
    length_errors: int = 0
    short_frames: int = 0
    overruns: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        """Malformed frames dropped so far."""
        return (
            self.cobs_errors
            + self.crc_errors
            + self.length_errors
            + self.short_frames
            + self.overruns
        )


class FrameDecoder:
    """Incremental decoder: feed it any chunks of bytes, get whole frames back.

    Malformed frames (bad COBS, CRC, length, too long) are counted in
    :attr:`stats` and dropped; decoding resumes at the next delimiter. Never
    raises on input.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._overflow = False
        self.stats = DecoderStats()

    def reset(self) -> None:
        """Forget a partially received frame."""
        self._buf.clear()
        self._overflow = False

    def feed(self, data: bytes | bytearray) -> list[Frame]:
        """Consume ``data``; return the frames completed by it, in order."""
        out: list[Frame] = []
        self.stats.bytes += len(data)
        start = 0
        n = len(data)
        while start < n:
            end = data.find(0, start)
            if end < 0:
                self._append(data[start:])
                break
            self._append(data[start:end])
            self._finish(out)
            start = end + 1
        return out

    def _append(self, chunk: bytes | bytearray) -> None:
        if self._overflow:
            return
        self._buf += chunk
        if len(self._buf) > MAX_ENCODED:
            self._overflow = True
            self._buf.clear()

    def _finish(self, out: list[Frame]) -> None:
        if self._overflow:
            self._overflow = False
            self.stats.overruns += 1
            self._count("overrun")
            return
        if not self._buf:
            return  # back-to-back delimiters: idle fill, not an error
        encoded = bytes(self._buf)
        self._buf.clear()
        try:
            body = cobs.decode(encoded)
            frame = decode_body(body)
        except cobs.DecodeError:
            self.stats.cobs_errors += 1
            self._count("cobs")
            return
        except FrameError as exc:
            if exc.kind == "crc":
                self.stats.crc_errors += 1
            elif exc.kind == "length":
                self.stats.length_errors += 1
            else:
                self.stats.short_frames += 1
            self._count(exc.kind)
            return
        self.stats.frames += 1
        out.append(frame)

    def _count(self, kind: str) -> None:
        self.stats.by_kind[kind] = self.stats.by_kind.get(kind, 0) + 1
