"""Servo models and their control tables: the registers forethought uses, their encodings, the
fault bits; the same for both protocols (`ServoFault`) so that the layers above need not know which."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping


class ServoFault(enum.Flag):
    """What a servo reports as wrong, the same for both protocols."""

    NONE = 0
    VOLTAGE = enum.auto()
    ENCODER = enum.auto()
    OVERHEAT = enum.auto()
    ELECTRICAL = enum.auto()
    OVERLOAD = enum.auto()

    def describe(self) -> str:
        return ", ".join(f.name.lower() for f in ServoFault if f and f in self) or "none"


def encode_sign_magnitude(value: int, sign_bit: int) -> int:
    """value -> magnitude with the sign in bit `sign_bit` (Feetech); ValueError if it does not fit."""
    magnitude = abs(int(value))
    if magnitude >= 1 << sign_bit:
        raise ValueError(f"{value} does not fit a sign-magnitude field with the sign in bit {sign_bit}")
    return magnitude | ((1 << sign_bit) if value < 0 else 0)


def decode_sign_magnitude(raw: int, sign_bit: int) -> int:
    magnitude = raw & ((1 << sign_bit) - 1)
    return -magnitude if raw & (1 << sign_bit) else magnitude


@dataclass(frozen=True)
class Register:
    """One control-table entry: little-endian, `size` bytes; signed as sign-magnitude (`sign_bit`)
    or two's complement (`signed`), else unsigned."""

    address: int
    size: int
    sign_bit: int | None = None
    signed: bool = False

    def encode(self, value: int) -> bytes:
        value = int(value)
        if self.sign_bit is not None:
            value = encode_sign_magnitude(value, self.sign_bit)
        elif self.signed:
            low, high = -(1 << (8 * self.size - 1)), (1 << (8 * self.size - 1)) - 1
            if not low <= value <= high:
                raise ValueError(f"{value} does not fit a signed {self.size}-byte register")
            value &= (1 << (8 * self.size)) - 1
        elif not 0 <= value < 1 << (8 * self.size):
            raise ValueError(f"{value} does not fit an unsigned {self.size}-byte register")
        return value.to_bytes(self.size, "little")

    def decode(self, data: bytes) -> int:
        raw = int.from_bytes(bytes(data[: self.size]), "little")
        if self.sign_bit is not None:
            return decode_sign_magnitude(raw, self.sign_bit)
        if self.signed and raw & (1 << (8 * self.size - 1)):
            return raw - (1 << (8 * self.size))
        return raw


@dataclass(frozen=True)
class ServoModel:
    """A servo model and the part of its control table forethought uses.

    registers: by role ("model_number", "return_delay", "homing_offset", "operating_mode",
        "torque_limit", "torque_enable", "goal_position", "present_position", "present_velocity",
        "present_load", "present_voltage", "present_temperature", "status", and "lock" on Feetech).
    state_block: (start, length) of the one sync read per tick; it covers the present_* registers.
    homing_sign: present position = actual position + homing_sign * homing offset.
    position_wraps: the present position wraps within one turn (Feetech); else it counts on across
        turns from where the servo powered up (Dynamixel X-series).
    velocity_unit: ticks/s per count; load_unit: fraction of stall torque per count;
    voltage_unit: V per count; torque_limit_full_scale: the torque_limit count for 100 %.
    eeprom_end: first address of RAM (EEPROM writes need the lock opened or torque off).
    stall_torque: N m at the model's rated voltage (present_load is a fraction of it).
    fault_bits: status bit -> fault.
    """

    name: str
    protocol: str
    model_number: int
    resolution: int
    registers: Mapping[str, Register]
    state_block: tuple[int, int]
    homing_sign: int
    position_wraps: bool
    velocity_unit: float
    load_unit: float
    voltage_unit: float
    torque_limit_full_scale: int
    position_mode: int
    eeprom_end: int
    stall_torque: float
    fault_bits: Mapping[int, ServoFault] = field(default_factory=dict)

    def faults(self, status: int) -> ServoFault:
        found = ServoFault.NONE
        for bit, fault in self.fault_bits.items():
            if status & bit:
                found |= fault
        return found


_STS_REGISTERS = {
    "model_number": Register(3, 2),
    "return_delay": Register(7, 1),
    "min_voltage_limit": Register(15, 1),
    "homing_offset": Register(31, 2, sign_bit=11),
    "operating_mode": Register(33, 1),
    "torque_enable": Register(40, 1),
    "goal_position": Register(42, 2, sign_bit=15),
    "torque_limit": Register(48, 2),
    "lock": Register(55, 1),
    "present_position": Register(56, 2, sign_bit=15),
    "present_velocity": Register(58, 2, sign_bit=15),
    "present_load": Register(60, 2, sign_bit=10),
    "present_voltage": Register(62, 1),
    "present_temperature": Register(63, 1),
    "status": Register(65, 1),
}

_STS_FAULTS = {
    0x01: ServoFault.VOLTAGE,
    0x02: ServoFault.ENCODER,
    0x04: ServoFault.OVERHEAT,
    0x08: ServoFault.ELECTRICAL,
    0x20: ServoFault.OVERLOAD,
}

_X_SERIES_REGISTERS = {
    "model_number": Register(0, 2),
    "return_delay": Register(9, 1),
    "operating_mode": Register(11, 1),
    "homing_offset": Register(20, 4, signed=True),
    "min_voltage_limit": Register(34, 2),
    "torque_limit": Register(36, 2),  # PWM limit: what bounds the motor's torque on XL330 and XL430 alike
    "torque_enable": Register(64, 1),
    "status": Register(70, 1),  # Hardware Error Status
    "goal_position": Register(116, 4, signed=True),
    "present_load": Register(126, 2, signed=True),  # Present Load (XL430) / Present Current (XL330)
    "present_velocity": Register(128, 4, signed=True),
    "present_position": Register(132, 4, signed=True),
    "present_voltage": Register(144, 2),
    "present_temperature": Register(146, 1),
}

_X_SERIES_FAULTS = {
    0x01: ServoFault.VOLTAGE,
    0x04: ServoFault.OVERHEAT,
    0x08: ServoFault.ENCODER,
    0x10: ServoFault.ELECTRICAL,
    0x20: ServoFault.OVERLOAD,
}

_X_VELOCITY_UNIT = 0.229 / 60.0 * 4096  # 0.229 rpm per count, in ticks/s

SERVO_MODELS: dict[str, ServoModel] = {
    "sts3215": ServoModel(
        name="sts3215", protocol="feetech", model_number=777, resolution=4096,
        registers=_STS_REGISTERS, state_block=(56, 10), homing_sign=-1, position_wraps=True,
        velocity_unit=1.0, load_unit=0.001, voltage_unit=0.1, torque_limit_full_scale=1000,
        position_mode=0, eeprom_end=40, stall_torque=2.94, fault_bits=_STS_FAULTS,
    ),
    "xl430-w250": ServoModel(
        name="xl430-w250", protocol="dynamixel", model_number=1060, resolution=4096,
        registers=_X_SERIES_REGISTERS, state_block=(126, 21), homing_sign=1, position_wraps=False,
        velocity_unit=_X_VELOCITY_UNIT, load_unit=0.001, voltage_unit=0.1, torque_limit_full_scale=885,
        position_mode=3, eeprom_end=64, stall_torque=1.5, fault_bits=_X_SERIES_FAULTS,
    ),
    "xl330-m288": ServoModel(
        name="xl330-m288", protocol="dynamixel", model_number=1200, resolution=4096,
        registers=_X_SERIES_REGISTERS, state_block=(126, 21), homing_sign=1, position_wraps=False,
        # Present Current in mA against the 1.47 A stall current at 5 V.
        velocity_unit=_X_VELOCITY_UNIT, load_unit=1.0 / 1470.0, voltage_unit=0.1, torque_limit_full_scale=885,
        position_mode=3, eeprom_end=64, stall_torque=0.52, fault_bits=_X_SERIES_FAULTS,
    ),
}


def servo_model(name: str) -> ServoModel:
    try:
        return SERVO_MODELS[name.lower()]
    except KeyError:
        raise KeyError(f"unknown servo model '{name}' (known: {', '.join(SERVO_MODELS)})") from None
