"""Damaged servo packets, for the decoders' property tests and `bench servo_fuzz`.

A sound packet of either protocol (an instruction or a status, any id and parameters) is damaged
by one of MUTATIONS: bits flipped, a bad checksum/CRC, a bad length field, cut short, garbage or a
stray FF before the header, a bad id, or two packets run together with a cut one between them.
`drain` feeds the bytes to the protocol's decoder until it waits for more or nothing is left, and
`take` to the host's receive path (servo_rx); both say what came out. Choices come from a Chooser
(`trial_damage.RandomChooser` for the bench, hypothesis in the tests).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from forethought.robots import servo_packets as sp
from forethought.robots.dynamixel_bus import DynamixelBus
from forethought.robots.feetech_bus import FeetechBus
from forethought.robots.servo_rx import Received, take_replies
from forethought.scripts.trial_damage import Chooser

PROTOCOLS = ("feetech", "dynamixel")
MUTATIONS = ("flip", "checksum", "length", "truncate", "garbage_before", "stray_ff", "id", "splice")

ENCODE = {"feetech": sp.feetech_encode, "dynamixel": sp.dxl_encode}
DECODE = {"feetech": sp.feetech_decode, "dynamixel": sp.dxl_decode}
LENGTH_AT = {"feetech": 3, "dynamixel": 5}
ID_AT = {"feetech": 2, "dynamixel": 4}


def sound_packet(protocol: str, choose: Chooser) -> bytes:
    """A valid packet: id 0..254, any code, up to 40 parameter bytes (FF and FD favoured)."""
    n = choose.integer(0, 40)
    params = bytes(choose.choice((0x00, 0xFF, 0xFD, choose.integer(0, 255))) for _ in range(n))
    code = sp.DXL_INST_STATUS if protocol == "dynamixel" and choose.integer(0, 1) else choose.integer(0, 255)
    return ENCODE[protocol](choose.integer(0, 0xFE), code, params)


def mutate(protocol: str, packet: bytes, kind: str, choose: Chooser) -> bytes:
    """packet damaged by one of MUTATIONS."""
    out = bytearray(packet)
    if kind == "flip":
        for _ in range(choose.integer(1, 3)):
            i = choose.integer(0, len(out) - 1)
            out[i] ^= 1 << choose.integer(0, 7)
    elif kind == "checksum":
        out[-1] ^= choose.integer(1, 255)
    elif kind == "length":
        at = LENGTH_AT[protocol]
        out[at] = choose.integer(0, 255)
        if protocol == "dynamixel" and choose.integer(0, 1):
            out[at + 1] = choose.integer(0, 255)
    elif kind == "truncate":
        del out[choose.integer(0, len(out) - 1):]
    elif kind == "garbage_before":
        out[:0] = bytes(choose.choice((0xFF, 0xFD, 0x00, choose.integer(0, 255))) for _ in range(choose.integer(1, 12)))
    elif kind == "stray_ff":
        out[:0] = b"\xff"
    elif kind == "id":
        out[ID_AT[protocol]] = choose.choice((0xFD, 0xFF, choose.integer(0, 255)))
    elif kind == "splice":
        other = sound_packet(protocol, choose)
        cut = other[: choose.integer(0, len(other) - 1)]
        out = cut + out + other
    else:
        raise ValueError(f"unknown mutation '{kind}' (known: {', '.join(MUTATIONS)})")
    return bytes(out)


@dataclass
class Drained:
    """What a decoder made of a buffer: the packets, the errors by kind, and the bytes left waiting."""

    packets: list[sp.Packet] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    waiting: int = 0
    false_packets: int = 0  # decoded packets that do not re-encode to the bytes they came from


def drain(protocol: str, buf: bytes) -> Drained:
    """Decode buf front to back until the decoder waits for more bytes. Raises AssertionError when
    a call breaks the Decoded contract or makes no progress (a decoder that would hang)."""
    decode, encode = DECODE[protocol], ENCODE[protocol]
    data = bytearray(buf)
    out = Drained()
    for _ in range(len(buf) + 1):
        if not data:
            return out
        decoded = decode(data)
        assert isinstance(decoded, sp.Decoded), f"decoder returned {decoded!r}"
        assert 0 <= decoded.consumed <= len(data), f"consumed {decoded.consumed} of {len(data)} bytes"
        if decoded.consumed == 0:
            assert decoded.packet is None and decoded.error is None, f"waiting, yet {decoded}"
            out.waiting = len(data)
            return out
        taken = bytes(data[: decoded.consumed])
        del data[: decoded.consumed]
        if decoded.packet is None:
            assert decoded.error, f"dropped {taken.hex()} without saying why"
            out.errors[decoded.error] += 1
        else:
            assert decoded.error is None
            p = decoded.packet
            if encode(p.servo_id, p.code, p.params) != taken:
                out.false_packets += 1
            out.packets.append(p)
    raise AssertionError(f"the decoder made no progress on {bytes(buf).hex()}")


def take(protocol: str, buf: bytes, n: int) -> Received:
    """The host's receive path on buf, as at an exchange's deadline: status replies of n data
    bytes from any id."""
    bus = FeetechBus if protocol == "feetech" else DynamixelBus
    out = Received()
    take_replies(bytearray(buf), DECODE[protocol], bus._STATUS_FORMAT, bus._unpack, n, set(range(0xFE)), out, final=True)
    return out
