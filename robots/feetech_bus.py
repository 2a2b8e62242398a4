"""Feetech STS servos (SO-100 / SO-101 arms) on the vendor SDK `feetech-servo-sdk` (`scservo_sdk`)."""

from __future__ import annotations

import scservo_sdk as scs

from forethought.robots import servo_packets as sp
from forethought.robots.servo_bus import BusServo, ServoBus
from forethought.robots.servo_wire import WirePort
from forethought.robots.servo_models import ServoFault
from forethought.robots.servo_rx import StatusFormat


class FeetechPort(WirePort, scs.PortHandler):
    """The SDK's port with wire-time timeouts (see WirePort)."""


class FeetechBus(ServoBus):
    """A ServoBus speaking the Feetech STS protocol (little-endian registers, sign-magnitude values).

    Status packets carry the servo's status bits (voltage, sensor, overheat, current, overload) in
    their error byte; the state block ends with the same bits in the Status register.
    """

    protocol = "feetech"
    _COMM_SUCCESS = scs.COMM_SUCCESS
    _STATUS_FORMAT = StatusFormat(sp.FEETECH_HEADER, length_at=3, wide=False, overhead=2, stuffing=False)
    _STATUS_OVERHEAD = 6  # FF FF ID LEN ERROR ... CHECKSUM
    _TX_OVERHEAD = 6  # FF FF ID LEN INST ... CHECKSUM
    _ADDRESS_BYTES = 1

    def _new_port(self, name: str) -> FeetechPort:
        return FeetechPort(name)

    def _new_packet_handler(self):
        return scs.PacketHandler(0)  # 0: little-endian, as on STS servos

    def _sync_read_tx(self, ids: list[int], start: int, length: int) -> int:
        return self._ph.syncReadTx(self._port, start, length, list(ids), len(ids))

    def _decode(self, buf: bytearray) -> sp.Decoded:
        return sp.feetech_decode(buf)

    @staticmethod
    def _unpack(packet: sp.Packet, n: int) -> tuple[bytes, int] | None:
        # A status packet: code is the servo's error byte, params the data.
        return (packet.params, packet.code) if len(packet.params) == n else None

    def _is_timeout(self, result: int) -> bool:
        return result == scs.COMM_RX_TIMEOUT

    def _status_faults(self, servo: BusServo, error: int, block: bytes) -> ServoFault:
        status = servo.model.registers["status"]
        start = servo.model.state_block[0]
        return servo.model.faults(error | block[status.address - start])
