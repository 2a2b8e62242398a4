"""Property tests: damaged servo packets give the decoders' own verdict (a Decoded with an error, or
a wait for more bytes), never another exception or a hang; the host's receive path takes only
whole replies of the length asked for; the emulator survives any instruction packet.

The damage catalogue (scripts/servo_damage.py) is the fuzz benchmark's, which feeds 100,000
packets (`forethought bench servo_fuzz`); here hypothesis drives it, seeded, a few hundred.
"""

import os
import select
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from forethought.robots import servo_packets as sp
from forethought.robots.arm_description import load_arm
from forethought.robots.bus_emulator import BusEmulator
from forethought.scripts.servo_damage import DECODE, ENCODE, MUTATIONS, PROTOCOLS, drain, mutate, sound_packet, take
from forethought.sim.scenes import scene_path
from hypothesis_chooser import HypothesisChooser

pytestmark = pytest.mark.realtime  # the bus emulator answers on the wall clock (pyproject.toml)

FUZZ = settings(max_examples=50, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", MUTATIONS)
@FUZZ
@given(data=st.data())
def test_a_damaged_packet_gives_the_decoders_verdict_and_never_a_false_packet(protocol, kind, data):
    choose = HypothesisChooser(data)
    packet = sound_packet(protocol, choose)
    damaged = mutate(protocol, packet, kind, choose)
    result = drain(protocol, damaged)  # asserts the Decoded contract and progress
    assert result.false_packets == 0
    n = choose.integer(0, 40)
    received = take(protocol, damaged, n)
    assert all(len(block) == n for block, _ in received.replies.values())


@pytest.mark.parametrize("protocol", PROTOCOLS)
@FUZZ
@given(data=st.data())
def test_the_host_takes_only_replies_of_the_length_asked_for(protocol, data):
    choose = HypothesisChooser(data)
    n = choose.integer(0, 12)
    replies = []
    for servo_id in range(1, choose.integer(1, 4) + 1):
        k = n if choose.integer(0, 3) else choose.integer(0, 12)  # now and then a reply of another length
        block = bytes(choose.integer(0, 255) for _ in range(k))
        replies.append((servo_id, k, sp.feetech_encode(servo_id, 0, block) if protocol == "feetech"
                        else sp.dxl_encode(servo_id, sp.DXL_INST_STATUS, b"\x00" + block)))
    received = take(protocol, b"".join(r for _, _, r in replies), n)
    assert sorted(received.replies) == [i for i, k, _ in replies if k == n]
    assert all(len(d) == n for d, _ in received.replies.values())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_stray_ff_before_a_packet_does_not_lose_it(protocol):
    packet = ENCODE[protocol](5, sp.INST_READ, b"\x38\x0a" if protocol == "feetech" else b"\x38\x00\x0a\x00")
    result = drain(protocol, b"\xff" + packet)
    assert [p.servo_id for p in result.packets] == [5]
    assert sum(result.errors.values()) == 1 and result.waiting == 0  # one byte dropped, as junk or a bad id


def test_id_ff_is_never_a_packet():
    # ~(FF + 02 + 01) & FF == FD: a checksum-valid packet with id 0xFF, which no servo carries.
    assert sp.feetech_decode(bytes.fromhex("ffffff0201fd")).packet is None
    assert sp.feetech_decode(bytes.fromhex("ffffff0201fd")) == sp.Decoded(None, 1, "id")
    with pytest.raises(ValueError):
        sp.feetech_encode(0xFF, sp.INST_PING)


# -- The emulator and short instruction packets --------------------------------------------------------

def _ask(emulator, packet: bytes, timeout: float = 1.0) -> bytes:
    os.write(emulator._slave, packet)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([emulator._slave], [], [], 0.02)
        if ready:
            out += os.read(emulator._slave, 1024)
        elif out:
            break
    return out


@pytest.mark.parametrize("arm_name, short", [
    ("koch", sp.dxl_encode(1, sp.INST_READ, b"\x84\x00")),  # READ without its data length (checksum valid)
    ("so101", sp.feetech_encode(sp.BROADCAST_ID, sp.INST_SYNC_READ)),  # SYNC_READ without start, length, ids
    ("so101", sp.feetech_encode(1, sp.INST_READ, b"\x38")),
    ("koch", sp.dxl_encode(sp.BROADCAST_ID, sp.INST_SYNC_WRITE, b"\x74")),
])
def test_a_short_instruction_packet_leaves_the_emulator_serving(arm_name, short):
    arm = load_arm(arm_name)
    encode = ENCODE[arm.protocol]
    with BusEmulator(arm, scene_path(arm.scene)) as emulator:
        reply = _ask(emulator, short, timeout=0.3)
        if arm.protocol == "dynamixel" and short[4] == 1:
            assert sp.dxl_decode(reply).packet == sp.Packet(1, sp.DXL_INST_STATUS, b"\x05")  # data length error
        else:
            assert reply == b""  # ignored, as a real servo does
        assert emulator.malformed == 1 and emulator._thread.is_alive()
        ping = _ask(emulator, encode(1, sp.INST_PING))  # still answering
        assert DECODE[arm.protocol](ping).packet.servo_id == 1
        assert emulator.errors == []


@pytest.fixture(scope="module")
def emulators():
    """One emulator per arm, not serving: its reply logic is called directly."""
    made = {name: BusEmulator(load_arm(name), scene_path(load_arm(name).scene)) for name in ("so101", "koch")}
    yield made
    for emulator in made.values():
        emulator.close()


@pytest.mark.parametrize("arm_name", ["so101", "koch"])
@settings(max_examples=200, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(inst=st.sampled_from([sp.INST_PING, sp.INST_READ, sp.INST_WRITE, sp.INST_SYNC_READ, sp.INST_SYNC_WRITE, 0x55, 0x07]),
       servo_id=st.sampled_from([1, 3, 6, 9, sp.BROADCAST_ID]), params=st.binary(max_size=24))
@example(inst=sp.INST_SYNC_WRITE, servo_id=1, params=b"\x00\x00")  # a sync write of 0 bytes to no servo
def test_the_emulator_answers_any_instruction_packet_without_raising(emulators, arm_name, inst, servo_id, params):
    emulator = emulators[arm_name]
    replies = emulator._replies_to(sp.Packet(servo_id, inst, params))
    for _, reply in replies:
        assert DECODE[emulator.arm.protocol](reply).packet is not None
