"""The bus's receive path against a scripted servo on a pseudo-terminal: a reply must carry the
length asked for (a short one is not taken as data, its checksum read as a register), a damaged
length field does not swallow the replies behind it, and both reads count their tries alike."""

import os
import select
import threading
import tty

import pytest

from forethought.robots import servo_packets as sp
from forethought.robots.dynamixel_bus import DynamixelBus
from forethought.robots.feetech_bus import FeetechBus
from forethought.robots.servo_bus import BusServo, ServoNotResponding
from forethought.robots.servo_models import SERVO_MODELS, ServoFault


MARGIN_MS = 100.0


class ScriptedServos:
    """Answers each instruction packet with respond(packet) -> bytes, in a thread, on a pty."""

    def __init__(self, protocol: str, respond):
        self.decode = sp.feetech_decode if protocol == "feetech" else sp.dxl_decode
        self.respond = respond
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.slave = slave
        self.port = os.ttyname(slave)
        self.requests: list[sp.Packet] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        buf = bytearray()
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.01)
            if not ready:
                continue
            try:
                buf += os.read(self.master, 1024)
            except OSError:
                return
            while buf:
                decoded = self.decode(buf)
                if decoded.consumed == 0:
                    break
                del buf[: decoded.consumed]
                if decoded.packet is not None:
                    self.requests.append(decoded.packet)
                    reply = self.respond(decoded.packet)
                    if reply:
                        os.write(self.master, reply)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        os.close(self.master)
        os.close(self.slave)


def sts_servos(k: int) -> list[BusServo]:
    return [BusServo(f"joint{i}", i, SERVO_MODELS["sts3215"]) for i in range(1, k + 1)]


def xl_servos(k: int) -> list[BusServo]:
    return [BusServo(f"joint{i}", i, SERVO_MODELS["xl430-w250"]) for i in range(1, k + 1)]


def feetech_state(servo_id: int, n: int = 10) -> bytes:
    """A status packet of n bytes of a quiet state block: position 2048, 12 V, 32 deg C, no faults."""
    block = bytes([0x00, 0x08, 0, 0, 0, 0, 120, 32, 0, 0])
    return sp.feetech_encode(servo_id, 0x00, block[:n])


def dxl_state(servo_id: int, n: int = 21) -> bytes:
    block = bytearray(21)
    block[6:10] = (2048).to_bytes(4, "little")  # present position at 132 - 126
    block[18:20] = (120).to_bytes(2, "little")  # present voltage at 144
    block[20] = 32  # present temperature at 146
    return sp.dxl_encode(servo_id, sp.DXL_INST_STATUS, b"\x00" + bytes(block[:n]))


def sync_read_ids(packet: sp.Packet, protocol: str) -> bytes:
    return packet.params[2:] if protocol == "feetech" else packet.params[4:]


@pytest.fixture
def scripted():
    made = []

    def make(protocol: str, respond, servos):
        servo = ScriptedServos(protocol, respond)
        bus_type = FeetechBus if protocol == "feetech" else DynamixelBus
        # The scripted servo is a thread of this process: on a loaded machine it may answer tens
        # of ms late, so wait long (only a silent servo pays for it).
        bus = bus_type(servo.port, servos, 1_000_000, latency_ms=1.0, timeout_margin_ms=MARGIN_MS).open()
        made.append((servo, bus))
        return servo, bus

    yield make
    for servo, bus in made:
        bus.close()
        servo.close()


def test_a_short_register_reply_is_not_taken_as_data(scripted):
    # The example: a checksum-valid reply with one data byte to a 2-byte read; the SDK
    # took its checksum 0xEB as the high byte and read present position -27408.
    short = bytes.fromhex("ffff01030010eb")
    assert sp.feetech_decode(short).packet == sp.Packet(1, 0, b"\x10")
    servo, bus = scripted("feetech", lambda p: short, sts_servos(1))
    with pytest.raises(ServoNotResponding, match=r"servo 1 \(joint1\) did not answer a read of present_position "
                                                 r"\(no valid status packet in 4 tries\)"):
        bus.read_register(bus.servos[0], "present_position")
    assert len(servo.requests) == 4
    assert all(event.outcome == "corrupt" and "length" in event.reasons for event in bus.retry_log)


def test_a_full_register_reply_reads(scripted):
    servo, bus = scripted("feetech", lambda p: sp.feetech_encode(1, 0, b"\x10\x08"), sts_servos(1))
    assert bus.read_register(bus.servos[0], "present_position") == 0x0810
    assert len(bus.retry_log) == 0


@pytest.mark.parametrize("protocol", ["feetech", "dynamixel"])
def test_a_state_reply_one_byte_short_is_a_missing_servo_not_a_fault(scripted, protocol):
    # Feetech: a 9-byte reply to the 10-byte read handed its checksum over as the Status register
    # (ENCODER|ELECTRICAL); Dynamixel: the CRC's low byte became the temperature (79 deg C).
    state, n = (feetech_state, 10) if protocol == "feetech" else (dxl_state, 21)

    def respond(packet):
        return b"".join(state(i, n - 1 if i == 2 else n) for i in sync_read_ids(packet, protocol))

    servos = sts_servos(3) if protocol == "feetech" else xl_servos(3)
    servo, bus = scripted(protocol, respond, servos)
    with pytest.raises(ServoNotResponding, match=r"servo 2 \(joint2\) is not answering .* in 4 tries") as caught:
        bus.read_state()
    assert caught.value.names == ("joint2",)
    reading = bus.read_state(allow_missing=True)
    assert list(reading.answered()) == [True, False, True]
    assert reading.faults == [ServoFault.NONE] * 3
    assert list(reading.temperature[[0, 2]]) == [32, 32]
    # Only the servo still missing is asked again.
    assert [list(sync_read_ids(p, protocol)) for p in servo.requests[:4]] == [[1, 2, 3], [2], [2], [2]]


@pytest.mark.parametrize("protocol", ["feetech", "dynamixel"])
def test_a_damaged_length_field_does_not_swallow_the_replies_behind_it(scripted, protocol):
    state, at = (feetech_state, 3) if protocol == "feetech" else (dxl_state, 5)
    first = [True]

    def respond(packet):
        replies = [bytearray(state(i)) for i in sync_read_ids(packet, protocol)]
        if first[0]:
            replies[0][at] |= 0x40  # servo 1's length now claims far more bytes than come
            first[0] = False
        return b"".join(replies)

    servos = sts_servos(6) if protocol == "feetech" else xl_servos(6)
    servo, bus = scripted(protocol, respond, servos)
    reading = bus.read_state()
    assert list(reading.position) == [2048] * 6
    (event,) = bus.retry_log
    # One try lost servo 1 alone, as a corrupt reply (not as silence), and the retry asked it alone.
    assert event.missing == (1,) and event.outcome == "corrupt" and "length" in event.reasons
    assert list(sync_read_ids(servo.requests[1], protocol)) == [1]


@pytest.mark.parametrize("protocol", ["feetech", "dynamixel"])
def test_a_damaged_reply_among_whole_ones_is_retried_without_waiting_out_the_deadline(scripted, protocol):
    """A flipped data bit in servo 3's reply: every byte of the exchange came, so the try ends
    there (nothing more is on its way; no drain) and servo 3 alone is asked again. The scripted
    servos run with a long margin (MARGIN_MS), which the try would otherwise wait out."""
    state = feetech_state if protocol == "feetech" else dxl_state
    first = [True]

    def respond(packet):
        replies = [bytearray(state(i)) for i in sync_read_ids(packet, protocol)]
        if first[0]:
            replies[2][-3] ^= 0x10  # a data byte of servo 3: its checksum no longer matches
            first[0] = False
        return b"".join(replies)

    servos = sts_servos(6) if protocol == "feetech" else xl_servos(6)
    servo, bus = scripted(protocol, respond, servos)
    assert list(bus.read_state().position) == [2048] * 6
    (event,) = bus.retry_log
    assert event.missing == (3,) and event.outcome == "corrupt" and event.all_in and event.drained == 0
    assert list(sync_read_ids(servo.requests[1], protocol)) == [3]


@pytest.mark.parametrize("protocol", ["feetech", "dynamixel"])
@pytest.mark.parametrize("lost", [3, 6])
def test_a_lost_reply_is_waited_for_only_when_it_was_the_last_asked(scripted, protocol, lost):
    """Servo `lost`'s reply never comes in the first try. Before the last servo's turn (3 of 6) it
    is passed over once servo 6 has answered: the try ends there (no drain) and servo 3 alone is
    asked again. The last servo's (6) is waited for to the deadline."""
    state = feetech_state if protocol == "feetech" else dxl_state
    first = [True]

    def respond(packet):
        ids = list(sync_read_ids(packet, protocol))
        skip = lost if first[0] else None
        first[0] = False
        return b"".join(state(i) for i in ids if i != skip)

    servos = sts_servos(6) if protocol == "feetech" else xl_servos(6)
    servo, bus = scripted(protocol, respond, servos)
    assert list(bus.read_state().position) == [2048] * 6
    (event,) = bus.retry_log
    assert event.missing == (lost,) and event.outcome == "timeout"
    assert event.all_in == (lost != 6)
    assert list(sync_read_ids(servo.requests[1], protocol)) == [lost]


@pytest.mark.parametrize("protocol", ["feetech", "dynamixel"])
def test_the_last_servos_late_reply_answers_its_retry_and_leaves_no_stale_bytes(scripted, protocol):
    """Servo 6's reply to the first read comes 2 ms after that try's deadline, while its retry
    waits (the line is not drained before a retry that asks the last servo alone); the retry's own
    reply comes after the read is done. Every read takes six replies and none after the first needs
    a retry: the SDK clears the input before each request. (On a host that holds this process
    back past the late reply, the first try takes it and no retry happens: nothing to check then.)"""
    import time

    state = feetech_state if protocol == "feetech" else dxl_state
    requests = [0]

    def respond(packet):
        requests[0] += 1
        ids = list(sync_read_ids(packet, protocol))
        if requests[0] == 1:
            # Servos 1-5 answer at once (written before the timer starts: on a line no reply
            # overtakes another); servo 6 past the deadline, inside what a drain would wait out.
            deadline_s = bus._exchange_time(ids, bus._block[1], 2 * bus._ADDRESS_BYTES + len(ids))
            os.write(servo.master, b"".join(state(i) for i in ids if i != 6))
            threading.Timer(deadline_s + 2e-3, lambda: os.write(servo.master, state(6))).start()
            return b""
        if ids == [6]:  # the retry: its own reply comes after the late one
            threading.Timer(0.03, lambda: os.write(servo.master, state(6))).start()
            return b""
        return b"".join(state(i) for i in ids)

    servos = sts_servos(6) if protocol == "feetech" else xl_servos(6)
    servo, bus = scripted(protocol, respond, servos)
    for _ in range(3):
        assert list(bus.read_state().position) == [2048] * 6
        time.sleep(0.05)
    events = list(bus.retry_log)
    assert len(events) <= 1
    for event in events:
        assert event.missing == (6,) and event.drained == 0 and not event.all_in


def test_a_stray_byte_before_a_reply_costs_nothing(scripted):
    def respond(packet):
        return b"\xff" + b"".join(feetech_state(i) for i in sync_read_ids(packet, "feetech"))

    servo, bus = scripted("feetech", respond, sts_servos(6))
    assert list(bus.read_state().position) == [2048] * 6
    assert bus.stats["retries"] == 0


@pytest.mark.parametrize("protocol", ["feetech", "dynamixel"])
def test_a_silent_servo_costs_the_control_loop_two_quiet_tries_and_setup_all_four(scripted, protocol):
    state = feetech_state if protocol == "feetech" else dxl_state

    def respond(packet):
        if packet.code == sp.INST_SYNC_READ:
            return b"".join(state(i) for i in sync_read_ids(packet, protocol) if i != 2)
        return b""  # servo 2 answers nothing

    servos = sts_servos(3) if protocol == "feetech" else xl_servos(3)
    servo, bus = scripted(protocol, respond, servos)
    reading = bus.read_state(allow_missing=True)  # the control loop: its stale window takes over
    assert list(reading.answered()) == [True, False, True]
    with pytest.raises(ServoNotResponding, match=r"servo 2 \(joint2\) is not answering .* in 4 tries"):
        bus.read_state()
    with pytest.raises(ServoNotResponding, match=r"servo 2 \(joint2\) did not answer a read of status .* in 4 tries"):
        bus.read_register(bus.servos[1], "status")
    # Every try counted alike, and each missed try here was a quiet one.
    assert [(e.op, e.attempt, e.missing) for e in bus.retry_log] == \
        [("state", k, (2,)) for k in (1, 2)] + [("state", k, (2,)) for k in (1, 2, 3, 4)] \
        + [("register status", k, (2,)) for k in (1, 2, 3, 4)]
    # Servo 3 answers after servo 2's turn, so a try that asked both ends there; servo 2 asked
    # alone is waited for to the deadline.
    assert [e.all_in for e in bus.retry_log] == [True, False, True, False, False, False, False, False, False, False]
    assert {e.outcome for e in bus.retry_log} == {"timeout"}
