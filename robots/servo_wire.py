"""The serial wire under a servo bus: how long bytes take on it, the USB adapter's latency, and
the SDK port with timeouts derived from both.

A byte is ten bits on the wire (start, eight data, stop); a servo answers after its return delay
(a register, in 2 us counts); a USB serial adapter holds received bytes for up to its latency
timer before the host sees them.
"""

from __future__ import annotations

import os
from pathlib import Path

BITS_PER_BYTE = 10  # start + 8 data + stop bits on the wire
RETURN_DELAY_UNIT_S = 2e-6  # one count of the return delay register, on STS and X-series alike
FACTORY_RETURN_DELAY_S = 500e-6  # 250 counts, as the servos leave the factory


def wire_time(n_bytes: int, baudrate: int) -> float:
    """Seconds that n_bytes take on the wire."""
    return n_bytes * BITS_PER_BYTE / baudrate


def usb_latency_timer_ms(port: str) -> float | None:
    """The FTDI latency timer of a USB serial port in ms (Linux sysfs), or None when the port has none."""
    try:
        device = Path(os.path.realpath(port)).name
    except OSError:
        return None
    path = Path("/sys/bus/usb-serial/devices") / device / "latency_timer"
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return None


class WirePort:
    """Mixin placed before an SDK's PortHandler.

    The SDKs wait for a status packet `2 x 16 ms + 2 ms` beyond its wire time, assuming the FTDI
    default latency timer; with the timer at 1 ms that turns a lost packet into a lost control
    period. Here the wait (for the SDK's own exchanges: ping) is the wire time + 2 x the port's
    actual latency + a margin; reads and writes set their deadlines in `ServoBus._exchange_time`.
    Reads block for up to a millisecond instead of spinning, and clearing the port drops stale
    input bytes.
    """

    latency_ms: float = 1.0
    margin_ms: float = 2.0

    def setPacketTimeout(self, packet_length):  # noqa: N802 (SDK name)
        self.packet_start_time = self.getCurrentTime()
        self.packet_timeout = self.tx_time_per_byte * packet_length + 2.0 * self.latency_ms + self.margin_ms

    def clearPort(self):  # noqa: N802
        self.ser.reset_input_buffer()

    def setupPort(self, cflag_baud):  # noqa: N802
        ok = super().setupPort(cflag_baud)
        self.ser.timeout = 0.001
        return ok
