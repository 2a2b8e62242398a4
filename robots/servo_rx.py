"""Receiving status packets on the host side: one exchange's replies, the line drained, a retry log.

The vendor SDKs send the instructions; replies are taken here, from the raw bytes, with the
project's decoders (`servo_packets`), because the SDKs' receive loop has three habits that turn one
corrupted reply into several lost ones (docs/notes/servo-retries.md has the measurements):

- it trusts a packet's length field: a flipped bit there makes it read on into the next servos'
  replies and wait for the rest until the exchange times out, so one bad byte fails every servo
  after it, and the failure looks like silence;
- it takes `packet[DATA : DATA + n]` whatever the packet's own length says, so a short reply hands
  its checksum over as data;
- a retry clears the input buffer and asks again at once, while the previous exchange's replies may
  still be on their way: they arrive during the retry and are taken for its answers, or crowd them
  out.

Here every reply must carry exactly the length the request asked for (Feetech LEN == n + 2,
Dynamixel LEN == n + 4); a header with another length is a false one and only its first byte is
dropped, so a reply right behind a damaged one is still found. An exchange waits until every
servo asked has answered, or every byte their replies take has come (the rest came damaged: a
flipped bit changes no byte count), or the last servo asked has answered (the servos answer in the
order asked, so a reply missing before the last one is not on its way: lost, or damaged past
recognition), or its deadline (the wire time of the request and the
replies, the servos' return delays, twice the USB latency, a margin) has passed; after a deadline
the line is drained until it has been quiet for a while before a retry, so the retry starts clean.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from forethought.robots.servo_packets import Decoded, Packet

# Bytes of a rejected stretch kept in the retry log (enough for one status packet of the state block).
LOGGED_BYTES = 48


@dataclass(frozen=True)
class StatusFormat:
    """Where a protocol keeps things in a status packet, for the length check before decoding.

    header: the header bytes; length_at: index of the length field (2 bytes little-endian where
    wide); overhead: length-field value minus the data bytes (Feetech 2: ERROR and CHECKSUM;
    Dynamixel 4: INST, ERROR and the CRC); stuffing: the length may grow by byte stuffing.
    """

    header: bytes
    length_at: int
    wide: bool
    overhead: int
    stuffing: bool

    def length_fits(self, buf: bytearray, n: int) -> bool | None:
        """Whether the header at the front of buf announces a reply of n data bytes (None: too few bytes yet)."""
        end = self.length_at + (2 if self.wide else 1)
        if len(buf) < end:
            return None
        length = buf[self.length_at] | (buf[self.length_at + 1] << 8 if self.wide else 0)
        low = n + self.overhead
        # Stuffing adds at most one FD for every three bytes of ERROR + data.
        high = low + ((n + 1) // 3 if self.stuffing else 0)
        return low <= length <= high


@dataclass
class Received:
    """What one exchange brought: valid replies by id (data, error byte), and what was rejected."""

    replies: dict[int, tuple[bytes, int]] = field(default_factory=dict)
    rejected: bytearray = field(default_factory=bytearray)  # bytes dropped: damaged, foreign or stale packets
    reasons: list[str] = field(default_factory=list)  # why, in order ("checksum", "length", "stale", ...)
    received_any: bool = False  # any byte at all arrived
    late: int = 0  # replies taken after the deadline, while they were still streaming in
    waited_s: float = 0.0
    all_in: bool = False  # nothing more is on its way: every byte came, or the last servo asked answered


@dataclass(frozen=True)
class RetryEvent:
    """One try of a read that did not bring every servo's reply.

    at: time.monotonic() s the try began; op: "state", "register ROLE", "write ROLE";
    attempt: 1 for the first try; asked, missing: servo ids; outcome: "timeout" (the line stayed
    quiet for the missing servos) or "corrupt" (bytes came, not a valid reply); reasons: why bytes
    were rejected; rejected: those bytes in hex (the first LOGGED_BYTES); waited_ms: how long the
    try took; drained: bytes that came after the try, dropped before the next one; all_in: nothing
    more of the try was on its way (every byte of the asked replies had come, the missing ones
    damaged, or the last servo asked had answered, the missing ones passed over), so the try ended
    without waiting for its deadline and the line was not drained.
    """

    at: float
    op: str
    attempt: int
    asked: tuple[int, ...]
    missing: tuple[int, ...]
    outcome: str
    reasons: tuple[str, ...]
    rejected: str
    waited_ms: float
    drained: int = 0
    all_in: bool = False

    def as_dict(self) -> dict:
        return {
            "at": self.at, "op": self.op, "attempt": self.attempt, "asked": list(self.asked),
            "missing": list(self.missing), "outcome": self.outcome, "reasons": list(self.reasons),
            "rejected": self.rejected, "waited_ms": round(self.waited_ms, 3), "drained": self.drained,
            "all_in": self.all_in,
        }


class RetryLog:
    """The last `size` retry events of a bus (see RetryEvent), oldest first."""

    def __init__(self, size: int = 10_000):
        self.events: deque[RetryEvent] = deque(maxlen=size)

    def add(self, event: RetryEvent) -> None:
        self.events.append(event)

    def drained(self, n_bytes: int) -> None:
        """Record on the last event the bytes drained after it."""
        if self.events and n_bytes:
            last = self.events[-1]
            self.events[-1] = RetryEvent(**{**last.__dict__, "drained": last.drained + n_bytes})

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self):
        return iter(self.events)


def receive_status(
    port,
    decode: Callable[[bytearray], Decoded],
    status_format: StatusFormat,
    unpack: Callable[[Packet, int], tuple[bytes, int] | None],
    ids: list[int],
    n: int,
    deadline: float,
    quiet_s: float = 0.0,
    cap: float | None = None,
    expected_bytes: int | None = None,
) -> Received:
    """Read status packets of n data bytes from the servos `ids` until all came or time.monotonic()
    passes deadline with the line quiet for quiet_s: replies still streaming in at the deadline
    (a servo or emulator answering late) are read to their end, up to the time `cap`.
    port: the SDK port (its `ser` a pyserial port with a short read timeout).
    unpack(packet, n): (data, error) of a status packet with exactly n data bytes, else None.
    expected_bytes: what the asked replies take on the wire (unstuffed): once that many have come
    and none is left half-read, the replies still missing came damaged and nothing more of this
    exchange is on its way, so it ends there (`all_in`) instead of at its deadline. The same holds
    once the last of `ids` has answered with nothing half-read behind it: the servos answer in the
    order asked (a sync read's order; on one line no reply overtakes another), so a reply missing
    before it was lost or came damaged past recognition, and is not waited for."""
    started = last = time.monotonic()
    cap = deadline if cap is None else max(cap, deadline)
    out = Received()
    want = set(ids)
    buf = bytearray()
    total = 0
    while want:
        waiting = port.ser.in_waiting
        chunk = port.ser.read(waiting or 1)  # blocks for at most the port's read timeout (about 1 ms)
        now = time.monotonic()
        if chunk:
            out.received_any = True
            last = now
            buf += chunk
            total += len(chunk)
            before = len(want)
            take_replies(buf, decode, status_format, unpack, n, want, out, final=False)
            if now > deadline:
                out.late += before - len(want)
            if want and not buf and (expected_bytes is not None and total >= expected_bytes or ids[-1] not in want):
                out.all_in = True
                break
        if want and now >= deadline and (now - last >= quiet_s or not out.received_any or now >= cap):
            break
    # What is left is a reply cut short or a false header: drop it byte by byte, taking any
    # whole reply found behind it.
    take_replies(buf, decode, status_format, unpack, n, want, out, final=True)
    out.waited_s = time.monotonic() - started
    return out


def take_replies(
    buf: bytearray,
    decode: Callable[[bytearray], Decoded],
    status_format: StatusFormat,
    unpack: Callable[[Packet, int], tuple[bytes, int] | None],
    n: int,
    want: set[int],
    out: Received,
    final: bool,
) -> None:
    """Move the replies of the servos in `want` from the front of buf into out (removing their ids
    from want), and what is not one into out.rejected. final: nothing more will come, so a cut
    reply or a false header is dropped byte by byte instead of waited on."""
    header = status_format.header
    while buf:
        if buf.startswith(header) and status_format.length_fits(buf, n) is False:
            out.rejected += buf[:1]
            out.reasons.append("length")
            del buf[:1]
            continue
        decoded = decode(buf)
        if decoded.consumed == 0:
            if not final:
                return  # wait for more bytes
            out.rejected += buf[:1]
            out.reasons.append("cut")
            del buf[:1]
            continue
        taken = bytes(buf[: decoded.consumed])
        del buf[: decoded.consumed]
        if decoded.packet is None:
            out.rejected += taken
            out.reasons.append(decoded.error or "junk")
            continue
        unpacked = unpack(decoded.packet, n)
        if unpacked is None:
            out.rejected += taken
            out.reasons.append("not a status")
        elif decoded.packet.servo_id in want:
            out.replies[decoded.packet.servo_id] = unpacked
            want.discard(decoded.packet.servo_id)
        else:
            out.rejected += taken
            out.reasons.append("unasked")  # a late reply of an earlier exchange, or a foreign id


def drain(port, quiet_s: float, max_s: float) -> int:
    """Read and drop input until the line has been quiet for quiet_s (at most max_s); bytes dropped."""
    started = last = time.monotonic()
    dropped = 0
    while True:
        now = time.monotonic()
        if now - last >= quiet_s or now - started >= max_s:
            return dropped
        chunk = port.ser.read(port.ser.in_waiting or 1)
        if chunk:
            dropped += len(chunk)
            last = time.monotonic()


def hex_bytes(data: bytes | bytearray) -> str:
    """The first LOGGED_BYTES bytes in hex, with "..." when there were more."""
    text = bytes(data[:LOGGED_BYTES]).hex()
    return text + ("..." if len(data) > LOGGED_BYTES else "")
