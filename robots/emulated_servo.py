"""What the bus emulator keeps of each servo: how it is mounted in the arm, its control table, the
faults it can be given.

`EmulatedServo` holds one servo's control table (registers as `servo_bus.SERVO_MODELS` lays them
out) and converts between its ticks and its joint's angle through the homing offset and the mount
(`ServoMount`: encoder offset and direction, what calibration finds). `Fault` is a fault to inject
into the emulated bus (`forethought emulate`'s `fault KIND:ARG[@SECONDS]`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forethought.robots.servo_models import ServoFault, ServoModel

TWO_PI = 2.0 * np.pi
AMBIENT_C = 32.0
OVERHEAT_C = 80.0
FAULT_KINDS = ("corrupt", "drop", "silent", "overheat", "overload", "voltage")


@dataclass(frozen=True)
class ServoMount:
    """How a servo sits in the arm: the encoder reads `offset` ticks at joint angle 0 and counts up
    with the joint angle when direction is +1, down when -1."""

    offset: int
    direction: int = 1


@dataclass(frozen=True)
class Fault:
    """A fault to inject. kind: corrupt (value = rate of corrupted replies), drop (value = rate of
    replies that never come), silent, overheat,
    overload (servo_id), voltage (value = supply V). at: seconds after torque first goes on
    (None: at once)."""

    kind: str
    servo_id: int | None = None
    value: float | None = None
    at: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault '{self.kind}' (known: {', '.join(FAULT_KINDS)})")
        if self.kind in ("silent", "overheat", "overload") and self.servo_id is None:
            raise ValueError(f"fault '{self.kind}' needs a servo id ({self.kind}:ID)")
        if self.kind in ("corrupt", "drop", "voltage") and self.value is None:
            raise ValueError(f"fault '{self.kind}' needs a value ({self.kind}:VALUE)")
        if self.kind in ("corrupt", "drop") and not 0.0 <= self.value <= 1.0:
            raise ValueError(f"fault 'corrupt' needs a rate in [0, 1], got {self.value}")

    @classmethod
    def parse(cls, text: str) -> "Fault":
        """"corrupt:0.02", "silent:3@1.5", "overheat:6", "overload:2@2", "voltage:6.5@1" -> Fault."""
        spec, _, at = text.partition("@")
        kind, _, arg = spec.partition(":")
        try:
            at_s = float(at) if at else None
            number = float(arg) if kind in ("corrupt", "drop", "voltage") else int(arg)
        except ValueError:
            raise ValueError(f"fault '{text}': expected KIND:ARG[@SECONDS], e.g. silent:3@1.5 or corrupt:0.02") from None
        if kind in ("corrupt", "drop", "voltage"):
            return cls(kind, value=number, at=at_s)
        return cls(kind, servo_id=number, at=at_s)


def random_mounts(n: int, seed: int) -> list[ServoMount]:
    """Mounts as an assembled arm has them: any encoder offset, either direction."""
    rng = np.random.default_rng(seed)
    return [ServoMount(int(rng.integers(0, 4096)), int(rng.choice([-1, 1]))) for _ in range(n)]


class EmulatedServo:
    """One emulated servo: its control table and its joint."""

    def __init__(self, servo_id: int, model: ServoModel, mount: ServoMount, joint: str, min_voltage: float, q0: float):
        self.servo_id, self.model, self.mount, self.joint = servo_id, model, mount, joint
        self.ticks_per_rad = model.resolution / TWO_PI
        # The encoder powers up reading within one turn; where positions count on across turns,
        # they count from there.
        turn = (mount.offset + mount.direction * q0 * self.ticks_per_rad) % model.resolution
        self.encoder_base = turn - mount.direction * q0 * self.ticks_per_rad
        self.table = bytearray(256)
        self.silent = False
        self.faults = ServoFault.NONE
        self.set("model_number", model.model_number)
        self.set("return_delay", 250)  # the factory default: 500 us
        self.set("operating_mode", model.position_mode)
        self.set("torque_limit", model.torque_limit_full_scale)
        self.set("min_voltage_limit", int(round(min_voltage / model.voltage_unit)))
        if "lock" in model.registers:
            self.set("lock", 1)
        self.table[5 if model.protocol == "feetech" else 7] = servo_id  # the ID register

    def get(self, role: str) -> int:
        reg = self.model.registers[role]
        return reg.decode(self.table[reg.address : reg.address + reg.size])

    def set(self, role: str, value: int) -> None:
        reg = self.model.registers[role]
        low, high = self._bounds(reg)
        self.table[reg.address : reg.address + reg.size] = reg.encode(int(np.clip(value, low, high)))

    @staticmethod
    def _bounds(reg) -> tuple[int, int]:
        if reg.sign_bit is not None:
            return -((1 << reg.sign_bit) - 1), (1 << reg.sign_bit) - 1
        if reg.signed:
            return -(1 << (8 * reg.size - 1)), (1 << (8 * reg.size - 1)) - 1
        return 0, (1 << (8 * reg.size)) - 1

    @property
    def torque_on(self) -> bool:
        return self.get("torque_enable") == 1

    def frame_offset(self) -> float:
        """Ticks the servo reports at joint angle 0 (before wrapping into one turn, where it wraps)."""
        return self.encoder_base + self.model.homing_sign * self.get("homing_offset")

    def present_ticks(self, q: float) -> int:
        ticks = int(np.floor(self.frame_offset() + self.mount.direction * q * self.ticks_per_rad + 0.5))
        return ticks % self.model.resolution if self.model.position_wraps else ticks

    def goal_angle(self) -> float:
        offset = self.frame_offset()
        if self.model.position_wraps:
            offset %= self.model.resolution
        return self.mount.direction * (self.get("goal_position") - offset) / self.ticks_per_rad

    def status_bits(self) -> int:
        return sum(bit for bit, fault in self.model.fault_bits.items() if fault in self.faults)
