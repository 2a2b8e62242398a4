"""Dynamixel X-series servos (Koch arm: XL430, XL330) on the vendor SDK `dynamixel-sdk`, Protocol 2.0."""

from __future__ import annotations

import dynamixel_sdk as dxl

from forethought.robots import servo_packets as sp
from forethought.robots.servo_bus import BusServo, ServoBus
from forethought.robots.servo_wire import WirePort
from forethought.robots.servo_models import ServoFault
from forethought.robots.servo_rx import StatusFormat

ALERT_BIT = 0x80  # status packet error byte: the servo has a hardware error (see its Hardware Error Status)


class DynamixelPort(WirePort, dxl.PortHandler):
    """The SDK's port with wire-time timeouts (see WirePort)."""


class StuffingPacketHandler(dxl.Protocol2PacketHandler):
    """Protocol 2.0 handler that sends stuffed packets.

    dynamixel-sdk 4.1.0 stuffs an instruction into a new list when stuffing lengthens it, and
    `txPacket` then sends the unstuffed original: a value holding FF FF FD would reach the servos
    as a false header. Stuffing in place lets `txPacket` send the stuffed bytes.
    """

    def addStuffing(self, packet):  # noqa: N802 (SDK name)
        packet[:] = super().addStuffing(list(packet))
        return packet


class DynamixelBus(ServoBus):
    """A ServoBus speaking Dynamixel Protocol 2.0 (CRC-16, byte stuffing, two's complement values).

    A status packet's error byte holds the instruction's result in its low bits and the alert bit;
    on an alert the servo's Hardware Error Status register says which fault it is.
    """

    protocol = "dynamixel"
    _COMM_SUCCESS = dxl.COMM_SUCCESS
    _STATUS_FORMAT = StatusFormat(sp.DXL_HEADER, length_at=5, wide=True, overhead=4, stuffing=True)
    _STATUS_OVERHEAD = 11  # FF FF FD 00 ID LEN_L LEN_H 55 ERROR ... CRC_L CRC_H
    _TX_OVERHEAD = 10  # FF FF FD 00 ID LEN_L LEN_H INST ... CRC_L CRC_H
    _ADDRESS_BYTES = 2

    def _new_port(self, name: str) -> DynamixelPort:
        return DynamixelPort(name)

    def _new_packet_handler(self):
        return StuffingPacketHandler()

    def _sync_read_tx(self, ids: list[int], start: int, length: int) -> int:
        return self._ph.syncReadTx(self._port, start, length, list(ids), len(ids), False)

    def _decode(self, buf: bytearray) -> sp.Decoded:
        return sp.dxl_decode(buf)

    @staticmethod
    def _unpack(packet: sp.Packet, n: int) -> tuple[bytes, int] | None:
        # A status packet: INST 0x55, params = ERROR + data (unstuffed).
        if packet.code != sp.DXL_INST_STATUS or len(packet.params) != n + 1:
            return None
        return packet.params[1:], packet.params[0]

    def _is_timeout(self, result: int) -> bool:
        return result == dxl.COMM_RX_TIMEOUT

    def _status_faults(self, servo: BusServo, error: int, block: bytes) -> ServoFault | None:
        return None if error & ALERT_BIT else ServoFault.NONE

    def _write_refused(self, error: int) -> bool:
        return bool(error & ~ALERT_BIT)
