"""Feetech STS servos (SO-100 / SO-101 arms) on the vendor SDK `feetech-servo-sdk` (`scservo_sdk`)."""

from __future__ import annotations

import scservo_sdk as scs

from forethought.robots.servo_bus import BusServo, ServoBus, ServoFault, WirePort


class FeetechPort(WirePort, scs.PortHandler):
    """The SDK's port with wire-time timeouts (see WirePort)."""


class FeetechBus(ServoBus):
    """A ServoBus speaking the Feetech STS protocol (little-endian registers, sign-magnitude values).

    Status packets carry the servo's status bits (voltage, sensor, overheat, current, overload) in
    their error byte; the state block ends with the same bits in the Status register.
    """

    protocol = "feetech"
    _COMM_SUCCESS = scs.COMM_SUCCESS
    _ID_AT = 2
    _ERROR_AT = 4
    _DATA_AT = 5
    _STATUS_OVERHEAD = 6

    def _new_port(self, name: str) -> FeetechPort:
        return FeetechPort(name)

    def _new_packet_handler(self):
        return scs.PacketHandler(0)  # 0: little-endian, as on STS servos

    def _sync_read_tx(self, ids: list[int], start: int, length: int) -> int:
        return self._ph.syncReadTx(self._port, start, length, list(ids), len(ids))

    def _rx_packet(self) -> tuple[list[int], int]:
        return self._ph.rxPacket(self._port)

    def _is_timeout(self, result: int) -> bool:
        return result == scs.COMM_RX_TIMEOUT

    def _status_faults(self, servo: BusServo, error: int, block: bytes) -> ServoFault:
        status = servo.model.registers["status"]
        start = servo.model.state_block[0]
        return servo.model.faults(error | block[status.address - start])
