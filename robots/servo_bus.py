"""The servo bus an arm is driven through: readings, faults, reads and writes with their retries.

`ServoBus` is one interface with two implementations on the vendor SDKs (`FeetechBus` for Feetech
STS servos, `DynamixelBus` for Dynamixel Protocol 2.0). It pings and checks models, sync-reads
position, velocity, load, voltage, temperature and faults in one transaction, sync-writes goal
positions, and switches torque. The SDKs send; replies are taken by `servo_rx` from the raw bytes.
A status packet that is corrupted or missing is retried (only the servos still missing are asked
again) before the bus gives a servo up, naming it. The servo models and their control tables
are in `servo_models`; the wire's timing and the SDK port's in `servo_wire`.

Positions stay in encoder ticks here; `calibration` turns them into joint angles.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from forethought.robots.servo_models import SERVO_MODELS, ServoFault, ServoModel
from forethought.robots.servo_packets import Decoded, Packet
from forethought.robots.servo_rx import RetryEvent, RetryLog, StatusFormat, drain, hex_bytes, receive_status
from forethought.robots.servo_wire import FACTORY_RETURN_DELAY_S, RETURN_DELAY_UNIT_S, usb_latency_timer_ms, wire_time

BROADCAST_ID = 0xFE
# ms an exchange waits past its wire time, return delays and USB latency. A real servo answers
# within microseconds of that; the margin covers a host (or an emulator) that the scheduler holds
# back for a few ms, which an idle machine does now and then (docs/notes/servo-retries.md).
DEFAULT_TIMEOUT_MARGIN_MS = 5.0


class BusError(RuntimeError):
    """The bus or a servo on it failed; the message is one line that names the servo or the port."""


class ServoNotResponding(BusError):
    """A servo sent no valid status packet after every retry."""

    def __init__(self, message: str, names: Sequence[str]):
        super().__init__(message)
        self.names = tuple(names)


class ServoModelMismatch(BusError):
    """A servo answered with another model number than the arm description says."""


@dataclass(frozen=True)
class BusServo:
    """One servo on the bus: the joint it drives, its id and its model."""

    name: str
    servo_id: int
    model: ServoModel

    def label(self) -> str:
        return f"servo {self.servo_id} ({self.name})"


@dataclass
class BusReading:
    """One sync read of every servo, in bus order (k servos).

    position: (k,) ticks; velocity: (k,) ticks/s; load: (k,) fraction of stall torque, signed;
    voltage: (k,) V; temperature: (k,) deg C; faults: k ServoFault flags; time: time.monotonic() s
    when the read began.
    """

    position: np.ndarray
    velocity: np.ndarray
    load: np.ndarray
    voltage: np.ndarray
    temperature: np.ndarray
    faults: list[ServoFault]
    time: float
    valid: np.ndarray | None = None  # (k,) bool: the servo answered this read (None: all did)

    def answered(self) -> np.ndarray:
        """(k,) bool: which servos gave a valid status packet in this read."""
        return np.ones(len(self.position), dtype=bool) if self.valid is None else self.valid


class ServoBus(ABC):
    """The servos of one arm on one serial port.

    servos: in the order readings and goals use. retries: how many more times a read is tried
    after a corrupted or missing status packet. latency_ms: the USB adapter's latency timer (None:
    read it from sysfs, 1 ms when the port has none, as a pseudo-terminal). A context manager.
    """

    protocol: str = ""
    _COMM_SUCCESS = 0

    def __init__(
        self,
        port: str,
        servos: Sequence[BusServo],
        baudrate: int = 1_000_000,
        retries: int = 3,
        latency_ms: float | None = None,
        timeout_margin_ms: float = DEFAULT_TIMEOUT_MARGIN_MS,
    ):
        if not servos:
            raise ValueError("a servo bus needs at least one servo")
        ids = [s.servo_id for s in servos]
        if len(set(ids)) != len(ids):
            raise ValueError(f"servo ids must be unique, got {ids}")
        for s in servos:
            if s.model.protocol != self.protocol:
                raise ValueError(f"{s.label()}: {s.model.name} speaks {s.model.protocol}, not {self.protocol}")
        if retries < 0:
            raise ValueError(f"retries must be at least 0, got {retries}")
        self.port_name = str(port)
        self.servos = tuple(servos)
        self.baudrate = int(baudrate)
        self.retries = int(retries)
        self.latency_ms = latency_ms
        self.timeout_margin_ms = float(timeout_margin_ms)
        # reads: sync reads; retries: tries after the first; corrupt, timeouts: failed tries with
        # damaged bytes / with the line quiet; missing: servo replies given up on (allow_missing);
        # late: replies read after the exchange's deadline while they were still arriving.
        self.stats = {"reads": 0, "retries": 0, "corrupt": 0, "timeouts": 0, "missing": 0, "late": 0}
        self.retry_log = RetryLog()
        # Each servo's return delay (s): the factory default until one is read or written.
        self._return_delay_s = {s.servo_id: FACTORY_RETURN_DELAY_S for s in servos}
        self._port = None
        self._ph = None
        self._by_id = {s.servo_id: s for s in self.servos}
        starts = {s.model.state_block for s in self.servos}
        if len(starts) != 1:
            raise ValueError("all servos on one bus must share the state block (the same control table)")
        self._block = starts.pop()

    # -- the SDK underneath -------------------------------------------------------------------
    @abstractmethod
    def _new_port(self, name: str): ...

    @abstractmethod
    def _new_packet_handler(self): ...

    @abstractmethod
    def _sync_read_tx(self, ids: list[int], start: int, length: int) -> int: ...

    @abstractmethod
    def _decode(self, buf: bytearray) -> Decoded:
        """The protocol's decoder (servo_packets)."""

    @abstractmethod
    def _unpack(self, packet: Packet, n: int) -> tuple[bytes, int] | None:
        """(data, error byte) of a status packet with exactly n data bytes, else None."""

    _STATUS_FORMAT: StatusFormat
    _STATUS_OVERHEAD: int  # bytes of a status packet besides its data
    _TX_OVERHEAD: int  # bytes of an instruction packet besides its parameters
    _ADDRESS_BYTES: int  # bytes of an address or a length in an instruction's parameters

    @abstractmethod
    def _status_faults(self, servo: BusServo, error: int, block: bytes) -> ServoFault | None:
        """Faults from a status packet's error byte and the state block; None: read the status register."""

    # -- opening and closing ------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._port is not None

    def open(self) -> "ServoBus":
        if self._port is not None:
            return self
        if not os.path.exists(self.port_name):
            raise BusError(f"{self.port_name}: no such serial port")
        port = self._new_port(self.port_name)
        latency = self.latency_ms if self.latency_ms is not None else usb_latency_timer_ms(self.port_name)
        port.latency_ms = 1.0 if latency is None else float(latency)
        port.margin_ms = self.timeout_margin_ms
        try:
            ok = port.openPort() and port.setBaudRate(self.baudrate)
        except Exception as err:  # pyserial raises SerialException / OSError with the reason
            raise BusError(f"{self.port_name}: cannot open the port ({err})") from None
        if not ok:
            raise BusError(f"{self.port_name}: cannot open the port at {self.baudrate} baud")
        self._port = port
        self._ph = self._new_packet_handler()
        return self

    def close(self) -> None:
        if self._port is not None:
            try:
                self._port.closePort()
            finally:
                self._port = None

    def __enter__(self) -> "ServoBus":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _require_open(self):
        if self._port is None:
            raise BusError(f"{self.port_name}: the bus is not open")
        return self._port

    # -- single servos ------------------------------------------------------------------------
    def servo(self, name: str) -> BusServo:
        for s in self.servos:
            if s.name == name:
                return s
        raise KeyError(f"no servo named '{name}' on this bus (known: {', '.join(s.name for s in self.servos)})")

    def ping(self, servo: BusServo) -> int | None:
        """The model number the servo answers with, or None when it does not answer (after retries)."""
        port = self._require_open()
        for _ in range(self.retries + 1):
            try:
                model, result, _ = self._ph.ping(port, servo.servo_id)
            except IndexError:
                # A late status packet of the same servo, too short for a ping's answer, trips the
                # SDK up: as good as a corrupted one.
                model, result = None, None
            if result == self._COMM_SUCCESS:
                return int(model)
            self._recover()
        return None

    def check_models(self) -> None:
        """Every servo answers with its described model; one error naming the first that does not."""
        for servo in self.servos:
            found = self.ping(servo)
            if found is None:
                raise ServoNotResponding(
                    f"{servo.label()} does not answer on {self.port_name} (check power, wiring, id and baud rate)",
                    [servo.name],
                )
            if found != servo.model.model_number:
                known = {m.model_number: m.name for m in SERVO_MODELS.values()}
                raise ServoModelMismatch(
                    f"{servo.label()} is model {found} ({known.get(found, 'unknown')}), "
                    f"the arm description says {servo.model.name} (model {servo.model.model_number})"
                )

    def read_register(self, servo: BusServo, role: str) -> int:
        """One register by role, decoded; tried like every read (see `_transact`)."""
        reg = servo.model.registers[role]
        got, missing, tries = self._transact(
            f"register {role}", [servo.servo_id], reg.size, lambda k: 2 * self._ADDRESS_BYTES,
            lambda ids: self._ph.readTx(self._port, ids[0], reg.address, reg.size), quiet_limit=None,
        )
        if missing:
            raise ServoNotResponding(
                f"{servo.label()} did not answer a read of {role} (no valid status packet in {tries[servo.servo_id]} tries)",
                [servo.name],
            )
        value = reg.decode(got[servo.servo_id][0])
        if role == "return_delay":
            self._return_delay_s[servo.servo_id] = value * RETURN_DELAY_UNIT_S
        return value

    def write_register(self, servo: BusServo, role: str, value: int) -> None:
        """One register by role; confirmed by the servo's status packet, retried like a read.

        EEPROM registers on Feetech servos are written with the lock opened and closed again.
        """
        reg = servo.model.registers[role]
        data = reg.encode(value)
        if role == "return_delay":
            # From now on (whether or not the write is confirmed) wait for the longer of the two.
            self._return_delay_s[servo.servo_id] = max(self._return_delay_s[servo.servo_id], value * RETURN_DELAY_UNIT_S)
        eeprom = reg.address < servo.model.eeprom_end
        if eeprom and "lock" in servo.model.registers:
            self._write_raw(servo, servo.model.registers["lock"].address, b"\x00", role)
            try:
                self._write_raw(servo, reg.address, data, role)
            finally:
                self._write_raw(servo, servo.model.registers["lock"].address, b"\x01", role)
        else:
            self._write_raw(servo, reg.address, data, role)
        if role == "return_delay":
            self._return_delay_s[servo.servo_id] = value * RETURN_DELAY_UNIT_S

    def _write_raw(self, servo: BusServo, address: int, data: bytes, role: str) -> None:
        """Write data at address and wait for the servo's status packet; tried like a read."""
        got, missing, tries = self._transact(
            f"write {role}", [servo.servo_id], 0, lambda k: self._ADDRESS_BYTES + len(data),
            lambda ids: self._ph.writeTxOnly(self._port, ids[0], address, len(data), list(data)), quiet_limit=None,
        )
        if missing:
            raise ServoNotResponding(
                f"{servo.label()} did not confirm a write of {role} (no valid status packet in {tries[servo.servo_id]} tries)",
                [servo.name],
            )
        error = got[servo.servo_id][1]
        if self._write_refused(error):
            raise BusError(f"{servo.label()} refused the write of {role} (status error 0x{error:02x})")

    def _write_refused(self, error: int) -> bool:
        return False

    # -- every servo at once --------------------------------------------------------------------
    def read_state(self, allow_missing: bool = False) -> BusReading:
        """Sync read of the state block of every servo, asking again only the servos still missing.

        A servo is missing after `retries` + 1 tries without a valid reply (see `_transact`);
        missing servos raise ServoNotResponding naming them. With allow_missing (the control loop,
        whose stale window covers a missed read) a servo is also missing after two tries in which
        the line stayed quiet for it, so that a silent servo costs two exchange timeouts, not
        `retries` + 1 of them, and it comes back with `valid` False and zeros in its fields.
        """
        started = time.monotonic()
        start, length = self._block
        ids = [s.servo_id for s in self.servos]
        self.stats["reads"] += 1
        got, missing, tries = self._transact(
            "state", ids, length, lambda k: 2 * self._ADDRESS_BYTES + k,
            lambda pending: self._sync_read_tx(pending, start, length), quiet_limit=2 if allow_missing else None,
        )
        if missing and not allow_missing:
            labels = ", ".join(self._by_id[i].label() for i in missing)
            verb = "is" if len(missing) == 1 else "are"
            raise ServoNotResponding(
                f"{labels} {verb} not answering on {self.port_name} "
                f"(no valid status packet in {max(tries[i] for i in missing)} tries)",
                [self._by_id[i].name for i in missing],
            )
        self.stats["missing"] += len(missing)
        blank = (bytes(length), 0)
        return self._decode_reading([got.get(i, blank) for i in ids], started, [i not in missing for i in ids])

    def _transact(
        self, op: str, ids: list[int], n: int, n_params: Callable[[int], int], send: Callable[[list[int]], int],
        quiet_limit: int | None = 2,
    ) -> tuple[dict[int, tuple[bytes, int]], list[int], dict[int, int]]:
        """One read of n data bytes from each servo in ids, tried again for the servos still missing.

        send(pending ids) puts the instruction on the wire (an SDK call); n_params(k): its parameter
        bytes when it asks k servos. Every servo counts its tries the same way: a try is a request that
        included it and brought no valid reply. A servo is given up after `retries` + 1 tries, or
        after quiet_limit tries in which nothing at all came for it (the line quiet: a silent
        servo; the control loop's state read gives up after two, as its stale window takes over,
        while reads and writes in setup and calibration, where time matters less, use every try).
        Before a retry the line is drained, so that late replies of the failed try do not meet it.
        Returns (replies by id: (data, error byte), missing ids, tries by id); each failed try goes
        to the retry log.
        """
        port = self._require_open()
        pending = list(ids)
        got: dict[int, tuple[bytes, int]] = {}
        tries = dict.fromkeys(ids, 0)
        quiet = dict.fromkeys(ids, 0)
        attempt = 0
        while pending:
            attempt += 1
            sent_at = time.monotonic()
            result = send(pending)
            port.is_using = False
            if result != self._COMM_SUCCESS:
                received = None
            else:
                exchange = self._exchange_time(pending, n, n_params(len(pending)))
                received = receive_status(port, self._decode, self._STATUS_FORMAT, self._unpack, pending, n,
                                          sent_at + exchange, self._quiet_time(n), sent_at + 2 * exchange,
                                          expected_bytes=len(pending) * (self._STATUS_OVERHEAD + n))
                got.update(received.replies)
                self.stats["late"] += received.late
            missing = [i for i in pending if i not in got]
            for i in pending:
                if i in missing:
                    tries[i] += 1
            if not missing:
                break
            if received is None:
                outcome, reasons, rejected, waited = "send failed", (), "", 0.0
            else:
                corrupt = bool(received.rejected)
                outcome = "corrupt" if corrupt else "timeout"
                reasons, rejected, waited = tuple(received.reasons), hex_bytes(received.rejected), received.waited_s
                self.stats["corrupt" if corrupt else "timeouts"] += 1
                for i in missing:
                    quiet[i] = 0 if corrupt else quiet[i] + 1
            all_in = received is not None and received.all_in
            self.retry_log.add(RetryEvent(sent_at, op, attempt, tuple(pending), tuple(missing), outcome, reasons,
                                          rejected, waited * 1e3, all_in=all_in))
            # Replies of this try may still be on their way: drain them, so that they do not meet
            # the retry. Not when only the last servo asked is missing and the others answered:
            # then all that can still come is that servo's own reply, which answers the retry as
            # well (a few ms older), and the SDK clears the input before the next request.
            last_only = len(pending) > 1 and missing == [pending[-1]]
            if not all_in and not last_only:
                self.retry_log.drained(self._drain(missing, n))
            pending = [i for i in missing if tries[i] <= self.retries and (quiet_limit is None or quiet[i] < quiet_limit)]
            if pending:
                self.stats["retries"] += 1
        return got, [i for i in ids if i not in got], tries

    def _exchange_time(self, ids: list[int], n: int, n_params: int) -> float:
        """Seconds from sending a request with n_params parameter bytes until the replies of n
        data bytes from `ids` are in: the wire time of both, each servo's return delay, twice the
        USB adapter's latency (one each way), and the margin for a host or servo running late."""
        port = self._port
        wire = wire_time(self._TX_OVERHEAD + n_params + len(ids) * (self._STATUS_OVERHEAD + n), self.baudrate)
        delays = sum(self._return_delay_s[i] for i in ids)
        return wire + delays + 2e-3 * port.latency_ms + 1e-3 * self.timeout_margin_ms

    def _drain(self, ids: list[int], n: int) -> int:
        """Drop what still arrives from a failed exchange until the line has been quiet for the
        time one more reply would take plus the USB latency; returns the bytes dropped."""
        port = self._require_open()
        quiet = self._quiet_time(n)
        return drain(port, quiet, quiet + self._exchange_time(ids, n, 0))

    def _quiet_time(self, n: int) -> float:
        """Seconds of silence after which no more of an exchange's replies of n data bytes are on
        their way: one more reply's wire time and return delay, and the USB latency both ways."""
        return wire_time(self._STATUS_OVERHEAD + n, self.baudrate) + max(self._return_delay_s.values()) \
            + 2e-3 * self._port.latency_ms + 0.5e-3

    def _decode_reading(self, packets: list[tuple[bytes, int]], started: float, valid: list[bool]) -> BusReading:
        start, _ = self._block
        k = len(self.servos)
        pos, vel, load, volt, temp = (np.zeros(k) for _ in range(5))
        faults = []
        for i, (servo, (block, error)) in enumerate(zip(self.servos, packets)):
            model, regs = servo.model, servo.model.registers

            def field_(role: str) -> int:
                reg = regs[role]
                return reg.decode(block[reg.address - start : reg.address - start + reg.size])

            pos[i] = field_("present_position")
            vel[i] = field_("present_velocity") * model.velocity_unit
            load[i] = field_("present_load") * model.load_unit
            volt[i] = field_("present_voltage") * model.voltage_unit
            temp[i] = field_("present_temperature")
            if not valid[i]:
                faults.append(ServoFault.NONE)
                continue
            found = self._status_faults(servo, error, block)
            if found is None:
                found = model.faults(self.read_register(servo, "status"))
            faults.append(found)
        return BusReading(pos.astype(np.int64), vel, load, volt, temp, faults, started,
                          None if all(valid) else np.array(valid))

    def write_goals(self, ticks: Sequence[int]) -> None:
        """Sync write of goal positions (ticks, bus order); no status packets come back."""
        port = self._require_open()
        ticks = [int(t) for t in ticks]
        if len(ticks) != len(self.servos):
            raise ValueError(f"expected {len(self.servos)} goals, got {len(ticks)}")
        reg = self.servos[0].model.registers["goal_position"]
        params = []
        for servo, t in zip(self.servos, ticks):
            params.append(servo.servo_id)
            params.extend(reg.encode(t))
        self._ph.syncWriteTxOnly(port, reg.address, reg.size, params, len(params))
        port.is_using = False

    def set_torque(self, enabled: bool) -> None:
        """Torque on (each servo confirms) or off (broadcast, which reaches a servo that no longer answers)."""
        if enabled:
            for servo in self.servos:
                self.write_register(servo, "torque_enable", 1)
        else:
            self.torque_off_all()

    def torque_off_all(self, confirm: bool = False) -> None:
        """Broadcast torque off twice; needs no status packet, so it works with a servo gone silent.

        confirm: then also write torque off to each servo and wait for its status packet (the
        servos that still answer), so that torque is known to be off when this returns.
        """
        port = self._require_open()
        address = self.servos[0].model.registers["torque_enable"].address
        for _ in range(2):
            self._ph.write1ByteTxRx(port, BROADCAST_ID, address, 0)
            port.is_using = False
        if confirm:
            for servo in self.servos:
                try:
                    self.write_register(servo, "torque_enable", 0)
                except BusError:
                    pass

    # -- recovery ---------------------------------------------------------------------------------
    def _count_failure(self, result: int) -> None:
        key = "timeouts" if self._is_timeout(result) else "corrupt"
        self.stats[key] += 1

    @abstractmethod
    def _is_timeout(self, result: int) -> bool: ...

    def _recover(self, expected_bytes: int = 0) -> None:
        """Let the rest of a failed exchange arrive and drop it, so the next packet starts clean."""
        port = self._require_open()
        quiet = wire_time(max(expected_bytes, self._STATUS_OVERHEAD), self.baudrate) + 2e-3 * port.latency_ms + 0.5e-3
        self.retry_log.drained(drain(port, quiet, quiet + 1e-3 * self.timeout_margin_ms))
        port.is_using = False
