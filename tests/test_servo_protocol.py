"""Servo wire protocols: packets against the protocol documents' own examples, byte stuffing,
checksum failures, sign-magnitude values, homing offsets at the encoder's wrap point, and the
vendor SDKs agreeing with our encoding over a real pseudo-terminal."""

import os
import select
import time
import tty

import dynamixel_sdk as dxl
import numpy as np
import pytest
import scservo_sdk as scs
from hypothesis import given, settings
from hypothesis import strategies as st

from forethought.robots import servo_packets as sp
from forethought.robots.calibration import homing_offset_for, wrap_ticks
from forethought.robots.dynamixel_bus import DynamixelPort, StuffingPacketHandler
from forethought.robots.feetech_bus import FeetechPort
from forethought.robots.servo_wire import usb_latency_timer_ms, wire_time
from forethought.robots.servo_models import SERVO_MODELS, Register, ServoFault, decode_sign_magnitude, encode_sign_magnitude


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# Examples from the ROBOTIS e-manual, "DYNAMIXEL Protocol 2.0", section "Instruction Details".
DXL_EXAMPLES = [
    ("ping ID 1", 1, sp.INST_PING, "", "FF FF FD 00 01 03 00 01 19 4E"),
    ("ping status (model 1030, firmware 38)", 1, sp.DXL_INST_STATUS, "00 06 04 26", "FF FF FD 00 01 07 00 55 00 06 04 26 65 5D"),
    ("read present position", 1, sp.INST_READ, "84 00 04 00", "FF FF FD 00 01 07 00 02 84 00 04 00 1D 15"),
    ("read status (166)", 1, sp.DXL_INST_STATUS, "00 A6 00 00 00", "FF FF FD 00 01 08 00 55 00 A6 00 00 00 8C C0"),
    ("write goal position 512", 1, sp.INST_WRITE, "74 00 00 02 00 00", "FF FF FD 00 01 09 00 03 74 00 00 02 00 00 CA 89"),
    ("sync read IDs 1 and 2", 0xFE, sp.INST_SYNC_READ, "84 00 04 00 01 02", "FF FF FD 00 FE 09 00 82 84 00 04 00 01 02 CE FA"),
    ("sync write IDs 1 and 2", 0xFE, sp.INST_SYNC_WRITE, "74 00 04 00 01 96 00 00 00 02 AA 00 00 00",
     "FF FF FD 00 FE 11 00 83 74 00 04 00 01 96 00 00 00 02 AA 00 00 00 82 87"),
]

# Examples from the Protocol 1.0 document, the framing Feetech STS servos use.
FEETECH_EXAMPLES = [
    ("ping ID 1", 1, sp.INST_PING, "", "FF FF 01 02 01 FB"),
    ("read temperature", 1, sp.INST_READ, "2B 01", "FF FF 01 04 02 2B 01 CC"),
    ("status: 32 degrees", 1, 0x00, "20", "FF FF 01 03 00 20 DB"),
]


@pytest.mark.parametrize("what, servo_id, code, params, wire", DXL_EXAMPLES, ids=[e[0] for e in DXL_EXAMPLES])
def test_dynamixel_packets_match_the_protocol_document(what, servo_id, code, params, wire):
    assert sp.dxl_encode(servo_id, code, h(params)) == h(wire)
    decoded = sp.dxl_decode(h(wire))
    assert decoded.packet == sp.Packet(servo_id, code, h(params))
    assert decoded.consumed == len(h(wire)) and decoded.error is None


def test_dynamixel_ping_of_id_1_ends_in_crc_19_4e():
    assert sp.dxl_encode(1, sp.INST_PING)[-2:] == h("19 4E")
    assert sp.dxl_crc16(h("FF FF FD 00 01 03 00 01")) == 0x4E19


@pytest.mark.parametrize("what, servo_id, code, params, wire", FEETECH_EXAMPLES, ids=[e[0] for e in FEETECH_EXAMPLES])
def test_feetech_packets_match_the_protocol_document(what, servo_id, code, params, wire):
    assert sp.feetech_encode(servo_id, code, h(params)) == h(wire)
    assert sp.feetech_decode(h(wire)).packet == sp.Packet(servo_id, code, h(params))


def test_crc_agrees_with_the_sdk_on_random_bytes():
    rng = np.random.default_rng(0)
    handler = dxl.PacketHandler(2.0)
    for _ in range(50):
        data = rng.integers(0, 256, size=int(rng.integers(1, 200))).tolist()
        assert sp.dxl_crc16(bytes(data)) == handler.updateCRC(0, data, len(data))


def test_byte_stuffing_inserts_fd_after_every_header_pattern():
    params = h("74 00 FF FF FD 00 FF FF FD")
    packet = sp.dxl_encode(1, sp.INST_WRITE, params)
    payload = packet[7:-2]
    assert payload == h("03 74 00 FF FF FD FD 00 FF FF FD FD")
    assert packet[5] | (packet[6] << 8) == len(payload) + 2  # the length counts the stuffed bytes
    assert sp.dxl_crc16(packet[:-2]) == packet[-2] | (packet[-1] << 8)  # CRC over the stuffed packet
    assert sp.dxl_decode(packet).packet.params == params
    assert sp.DXL_HEADER[:3] + b"\x00" not in payload


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 253), st.integers(0, 255), st.binary(max_size=64))
def test_dynamixel_packets_round_trip_whatever_the_params(servo_id, code, params):
    packet = sp.dxl_encode(servo_id, code, params)
    assert packet.find(sp.DXL_HEADER, 1) == -1  # stuffing keeps the header out of the body
    assert sp.dxl_decode(packet).packet == sp.Packet(servo_id, code, params)
    # Junk before a packet is skipped, a cut packet waits for more bytes.
    assert sp.dxl_decode(b"\x00\x13" + packet).consumed == 2
    assert sp.dxl_decode(packet[:-1]) == sp.Decoded(None, 0)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 253), st.integers(0, 255), st.binary(max_size=60), st.data())
def test_a_flipped_bit_fails_the_checksum_or_crc(servo_id, code, params, data):
    for encode, decode, error in ((sp.feetech_encode, sp.feetech_decode, "checksum"), (sp.dxl_encode, sp.dxl_decode, "crc")):
        packet = bytearray(encode(servo_id, code, params))
        first = 4 if encode is sp.feetech_encode else 7  # after the header, id and length
        i = data.draw(st.integers(first, len(packet) - 1))
        packet[i] ^= 1 << data.draw(st.integers(0, 7))
        decoded = decode(packet)
        assert decoded.packet is None and decoded.error == error and decoded.consumed == len(packet)


def test_sign_magnitude_fields_and_their_limits():
    offset = Register(31, 2, sign_bit=11)  # STS3215 homing offset
    assert offset.encode(-5) == bytes([5, 0x08])
    assert offset.decode(bytes([5, 0x08])) == -5
    assert offset.decode(offset.encode(-2047)) == -2047
    with pytest.raises(ValueError):
        offset.encode(2048)  # the overflow of a naive half-turn offset
    assert decode_sign_magnitude(0x8010, 15) == -16  # present velocity, moving backwards
    assert encode_sign_magnitude(-16, 15) == 0x8010
    assert Register(128, 4, signed=True).decode(h("FF FF FF FF")) == -1
    assert Register(126, 2, signed=True).encode(-2) == h("FE FF")


@pytest.mark.parametrize("model_name", ["sts3215", "xl430-w250"])
def test_homing_offset_centres_every_encoder_reading_without_overflow(model_name):
    model = SERVO_MODELS[model_name]
    register = model.registers["homing_offset"]
    for actual in list(range(0, 8)) + list(range(2040, 2056)) + list(range(4088, 4096)):
        offset = homing_offset_for(model, actual)
        register.encode(offset)  # fits the register
        present = actual + model.homing_sign * offset
        if model.position_wraps:
            present %= model.resolution
        assert abs(present - model.resolution // 2) <= 1


def test_wrap_ticks_takes_the_short_way_round():
    assert wrap_ticks(4095 - 1, 4096) == 4094 - 4096
    assert wrap_ticks(np.array([2, -4094, 2047, 2048]), 4096).tolist() == [2, 2, 2047, -2048]


def test_fault_bits_of_both_protocols():
    assert SERVO_MODELS["sts3215"].faults(0x24) == ServoFault.OVERHEAT | ServoFault.OVERLOAD
    assert SERVO_MODELS["xl330-m288"].faults(0x01) == ServoFault.VOLTAGE
    assert (ServoFault.OVERHEAT | ServoFault.VOLTAGE).describe() == "voltage, overheat"


def test_wire_time_is_ten_bits_a_byte():
    assert wire_time(100, 1_000_000) == pytest.approx(1e-3)


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    tty.setraw(slave)
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


def _read_all(fd: int, timeout: float = 0.5) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.02)
        if ready:
            out += os.read(fd, 1024)
        elif out:
            break
    return out


def test_dynamixel_sdk_sends_our_bytes_and_reads_our_stuffed_status(pty_pair):
    master, path = pty_pair
    port = DynamixelPort(path)
    assert port.openPort()
    handler = StuffingPacketHandler()
    try:
        # The driver's handler stuffs a written value that holds the header pattern just as we do
        # (the SDK's own handler sends it unstuffed).
        handler.writeTxOnly(port, 1, 116, 4, [0xFF, 0xFF, 0xFD, 0x00])
        assert _read_all(master) == sp.dxl_encode(1, sp.INST_WRITE, h("74 00 FF FF FD 00"))
        dxl.PacketHandler(2.0).writeTxOnly(port, 1, 116, 4, [0xFF, 0xFF, 0xFD, 0x00])
        assert _read_all(master)[5] == 9  # unstuffed length
        # A status packet we stuff is read back by the SDK as the data we meant.
        os.write(master, sp.dxl_encode(3, sp.DXL_INST_STATUS, h("00 FF FF FD 00")))
        port.setPacketTimeout(15)
        data, result, error = handler.readRx(port, 3, 4)
        assert result == dxl.COMM_SUCCESS and error == 0 and list(data) == [0xFF, 0xFF, 0xFD, 0x00]
        # A status packet with a bad CRC is reported as corrupt.
        bad = bytearray(sp.dxl_encode(3, sp.DXL_INST_STATUS, h("00 01 02 03 04")))
        bad[-3] ^= 0x10
        os.write(master, bytes(bad))
        port.setPacketTimeout(16)
        _, result, _ = handler.readRx(port, 3, 4)
        assert result == dxl.COMM_RX_CORRUPT
    finally:
        port.closePort()


def test_feetech_sdk_sends_our_bytes_and_rejects_a_bad_checksum(pty_pair):
    master, path = pty_pair
    port = FeetechPort(path)
    assert port.openPort()
    handler = scs.PacketHandler(0)
    try:
        assert handler.syncReadTx(port, 56, 10, [1, 2, 3], 3) == scs.COMM_SUCCESS
        assert _read_all(master) == sp.feetech_encode(0xFE, sp.INST_SYNC_READ, bytes([56, 10, 1, 2, 3]))
        good = sp.feetech_encode(2, 0x00, h("00 08"))
        bad = bytearray(sp.feetech_encode(1, 0x00, h("00 08")))
        bad[-1] ^= 0xFF
        os.write(master, bytes(bad) + good)
        port.setPacketTimeout(16)
        _, result = handler.rxPacket(port)
        assert result == scs.COMM_RX_CORRUPT
        packet, result = handler.rxPacket(port)  # the next servo's packet still reads cleanly
        assert result == scs.COMM_SUCCESS and packet[2] == 2 and packet[5:7] == [0x00, 0x08]
    finally:
        port.closePort()


def test_a_pseudo_terminal_has_no_usb_latency_timer(pty_pair):
    _, path = pty_pair
    assert usb_latency_timer_ms(path) is None
