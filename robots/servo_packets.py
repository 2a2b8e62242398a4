"""Wire packets of the two servo protocols, encoded and decoded byte for byte.

Feetech STS (the Dynamixel Protocol 1.0 framing):
    FF FF | ID | LEN | INST or ERROR | params | CHECKSUM
    LEN = len(params) + 2; CHECKSUM = ~(ID + LEN + INST + sum(params)) & 0xFF.
Dynamixel Protocol 2.0:
    FF FF FD 00 | ID | LEN_L LEN_H | INST | params | CRC_L CRC_H
    LEN counts INST, the (stuffed) params and the CRC; the CRC-16 (polynomial 0x8005, initial value 0,
    MSB first) covers every byte from the header to the last param, after byte stuffing. Stuffing
    inserts an FD after every FF FF FD inside INST and params so that the header never appears there.
    A status packet is INST 0x55 with params = ERROR followed by the data.

The vendor SDKs speak the host side; these functions serve the servo side (the bus emulator) and
let the tests check both against the protocol documents' own examples.
"""

from __future__ import annotations

from dataclasses import dataclass

BROADCAST_ID = 0xFE

INST_PING = 0x01
INST_READ = 0x02
INST_WRITE = 0x03
INST_SYNC_READ = 0x82
INST_SYNC_WRITE = 0x83
DXL_INST_STATUS = 0x55

FEETECH_HEADER = b"\xff\xff"
DXL_HEADER = b"\xff\xff\xfd\x00"
DXL_MAX_LENGTH = 1024
FEETECH_MAX_PARAMS = 250
# Ids 0..253 name servos and 0xFE is the broadcast id; 0xFF is never an id, only a header byte.
MAX_PACKET_ID = BROADCAST_ID


@dataclass(frozen=True)
class Packet:
    """One packet: an instruction (code = INST) or a status (Feetech: code = ERROR; Dynamixel: code = 0x55)."""

    servo_id: int
    code: int
    params: bytes = b""


@dataclass(frozen=True)
class Decoded:
    """What the front of a byte buffer holds.

    packet: the first complete, valid packet, else None.
    consumed: bytes to drop from the front (junk before a header, a whole packet, or a corrupt one).
    error: why bytes were dropped without a packet ("checksum", "crc", "length", "id", "junk"), else None.
        A bad id or length drops one byte only: the header was a false one (a stray FF), and the
        real packet may start right after it.
    A Decoded with packet None, consumed 0 and no error means: wait for more bytes.
    """

    packet: Packet | None
    consumed: int
    error: str | None = None


# -- Feetech ---------------------------------------------------------------------------------

def feetech_checksum(body: bytes) -> int:
    """~sum & 0xFF over ID, LEN, INST/ERROR and params."""
    return ~sum(body) & 0xFF


def feetech_encode(servo_id: int, code: int, params: bytes = b"") -> bytes:
    """A complete Feetech packet (instruction or status)."""
    if not 0 <= servo_id <= 0xFE:
        raise ValueError(f"servo id must be 0..254, got {servo_id}")
    if len(params) > FEETECH_MAX_PARAMS:
        raise ValueError(f"a Feetech packet holds at most {FEETECH_MAX_PARAMS} parameter bytes, got {len(params)}")
    body = bytes([servo_id, len(params) + 2, code]) + bytes(params)
    return FEETECH_HEADER + body + bytes([feetech_checksum(body)])


def feetech_decode(buf: bytes | bytearray) -> Decoded:
    """The first packet at the front of buf (see Decoded)."""
    start = bytes(buf).find(FEETECH_HEADER)
    if start < 0:
        # Keep a trailing FF: it may be the first half of a header.
        keep = 1 if buf[-1:] == b"\xff" else 0
        return Decoded(None, len(buf) - keep, "junk" if len(buf) > keep else None)
    if start > 0:
        return Decoded(None, start, "junk")
    if len(buf) < 4:
        return Decoded(None, 0)
    if buf[2] > MAX_PACKET_ID:
        # An id no packet carries: the header was a stray FF before the real one (FF FF FF ID ...).
        # Drop one byte and search again, as the vendor SDK does.
        return Decoded(None, 1, "id")
    length = buf[3]
    if not 2 <= length <= FEETECH_MAX_PARAMS + 2:
        return Decoded(None, 1, "length")
    total = 4 + length
    if len(buf) < total:
        return Decoded(None, 0)
    body = bytes(buf[2 : total - 1])
    if feetech_checksum(body) != buf[total - 1]:
        return Decoded(None, total, "checksum")
    return Decoded(Packet(body[0], body[2], body[3:]), total)


# -- Dynamixel Protocol 2.0 ------------------------------------------------------------------

def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _crc_table()


def dxl_crc16(data: bytes | bytearray) -> int:
    """CRC-16 of Protocol 2.0: polynomial 0x8005, initial value 0, no reflection."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) ^ _CRC_TABLE[((crc >> 8) ^ byte) & 0xFF]) & 0xFFFF
    return crc


def dxl_stuff(payload: bytes) -> bytes:
    """Insert FD after every FF FF FD in INST + params."""
    out = bytearray()
    for byte in payload:
        out.append(byte)
        if out[-3:] == b"\xff\xff\xfd":
            out.append(0xFD)
    return bytes(out)


def dxl_unstuff(payload: bytes) -> bytes:
    """Undo dxl_stuff: drop the FD that follows every FF FF FD."""
    out = bytearray()
    i = 0
    while i < len(payload):
        out.append(payload[i])
        if out[-3:] == b"\xff\xff\xfd" and payload[i + 1 : i + 2] == b"\xfd":
            i += 1
        i += 1
    return bytes(out)


def dxl_encode(servo_id: int, code: int, params: bytes = b"") -> bytes:
    """A complete Protocol 2.0 packet; a status packet is code 0x55 with params = ERROR + data."""
    if not 0 <= servo_id <= 0xFE:
        raise ValueError(f"servo id must be 0..254, got {servo_id}")
    payload = dxl_stuff(bytes([code]) + bytes(params))
    length = len(payload) + 2
    if length > DXL_MAX_LENGTH:
        raise ValueError(f"a Protocol 2.0 packet holds at most {DXL_MAX_LENGTH} bytes after its length field")
    head = DXL_HEADER + bytes([servo_id, length & 0xFF, length >> 8]) + payload
    crc = dxl_crc16(head)
    return head + bytes([crc & 0xFF, crc >> 8])


def dxl_decode(buf: bytes | bytearray) -> Decoded:
    """The first packet at the front of buf (see Decoded); params come back unstuffed."""
    data = bytes(buf)
    start = data.find(DXL_HEADER)
    if start < 0:
        # Keep up to three trailing bytes that may begin a header.
        keep = 0
        for k in (3, 2, 1):
            if data.endswith(DXL_HEADER[:k]):
                keep = k
                break
        return Decoded(None, len(data) - keep, "junk" if len(data) > keep else None)
    if start > 0:
        return Decoded(None, start, "junk")
    if len(data) < 7:
        return Decoded(None, 0)
    if data[4] > MAX_PACKET_ID:
        return Decoded(None, 1, "id")
    length = data[5] | (data[6] << 8)
    if length < 3 or length > DXL_MAX_LENGTH:
        return Decoded(None, 1, "length")
    total = 7 + length
    if len(data) < total:
        return Decoded(None, 0)
    crc = data[total - 2] | (data[total - 1] << 8)
    if dxl_crc16(data[: total - 2]) != crc:
        return Decoded(None, total, "crc")
    payload = dxl_unstuff(data[7 : total - 2])
    return Decoded(Packet(data[4], payload[0], payload[1:]), total)
