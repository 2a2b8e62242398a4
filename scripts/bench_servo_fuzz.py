"""How the servo packet decoders take damaged packets: 100,000 of them (10,000 with --quick).

Each is a sound packet of either protocol damaged by one of servo_damage.MUTATIONS (seeded), fed
to the protocol's decoder until it waits for more bytes (`drain`) and to the host's receive path
as at an exchange's deadline (`take`). Reported per protocol and mutation: the count of outcomes:
`packet` (a valid packet came out, e.g. the one behind a stray byte), `rejected` (only the
decoder's own errors), `waiting` (too few bytes for a verdict: a cut packet), and the bugs:
`other_exception`, `no_progress` (a decoder that would hang), `false_packet` (a packet that does
not re-encode to its bytes), `wrong_length` (the host took a reply of another length); the
time per packet; and the first bugs' descriptions.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

from forethought.robots.config import ConfigError
from forethought.scripts.servo_damage import MUTATIONS, PROTOCOLS, drain, mutate, sound_packet, take
from forethought.scripts.trial_damage import RandomChooser

BUGS = ("other_exception", "no_progress", "false_packet", "wrong_length")


def classify(protocol: str, damaged: bytes, n: int) -> str:
    """One damaged packet's outcome (see the module docstring)."""
    try:
        result = drain(protocol, damaged)
    except AssertionError:
        return "no_progress"
    if result.false_packets:
        return "false_packet"
    received = take(protocol, damaged, n)
    if any(len(block) != n for block, _ in received.replies.values()):
        return "wrong_length"
    if result.packets:
        return "packet"
    return "waiting" if result.waiting and not result.errors else "rejected"


def run_bench_servo_fuzz(quick: bool = False, packets: int | None = None, seed: int = 0) -> tuple[dict, dict]:
    total = (10_000 if quick else 100_000) if packets is None else int(packets)
    if total < 1:
        raise ConfigError(f"servo_fuzz: --packets must be at least 1, got {total}")
    choose = RandomChooser(np.random.default_rng(seed))
    counts: dict[str, Counter] = {f"{p}_{m}": Counter() for p in PROTOCOLS for m in MUTATIONS}
    bugs: list[str] = []
    started = time.perf_counter()
    for _ in range(total):
        protocol, kind = choose.choice(PROTOCOLS), choose.choice(MUTATIONS)
        damaged = mutate(protocol, sound_packet(protocol, choose), kind, choose)
        n = choose.integer(0, 40)
        try:
            outcome = classify(protocol, damaged, n)
        except Exception as err:  # noqa: BLE001 - counted: any exception here is a bug found
            outcome = "other_exception"
            detail = f"{type(err).__name__}: {err}"
        else:
            detail = ""
        counts[f"{protocol}_{kind}"][outcome] += 1
        if outcome in BUGS and len(bugs) < 10:
            bugs.append(f"{protocol} {kind} {damaged.hex()} n={n}: {outcome} {detail}".strip())
    elapsed = time.perf_counter() - started
    overall = Counter()
    for counter in counts.values():
        overall.update(counter)
    metrics = {
        "packets": total,
        "outcomes": dict(overall),
        "bugs": sum(overall[b] for b in BUGS),
        "by_mutation": {key: dict(counter) for key, counter in counts.items()},
        "us_per_packet": elapsed / total * 1e6,
        "first_bugs": bugs,
    }
    return metrics, {"seed": seed, "protocols": list(PROTOCOLS), "mutations": list(MUTATIONS)}
