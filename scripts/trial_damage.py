"""A catalogue of damage to trial files, for the fuzz benchmark and the property tests.

`make_trial_file` writes a sound trial file (finished, finished in format 1 without
requested_actions, a partial one its writer closed, or one a writer killed after a flush left
marked open); `damage` damages it in one of DAMAGE's ways:
truncated, bytes flipped or zeroed (in the global heap too), random bytes, garbage before the
header, the signature followed by zeros, a string's stated length changed, the superblock's
end-of-file address moved past the file; a dataset dropped, reshaped, retyped, declared 2^20..2^62
rows long, holding NaN or inf, or replaced by a link; an attribute deleted or given a bad value.
Every choice is drawn through a `Chooser`: a seeded generator in the benchmark, hypothesis in the
suite. `unsound` says what is wrong with a trial that loaded anyway.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Protocol, Sequence, TypeVar

import h5py
import numpy as np

from forethought.robots.hdf5_checksum import lookup3_hash
from forethought.robots.hdf5_layout import GCOL_HEADER, check_file, read_superblock
from forethought.robots.robot import RobotSpec
from forethought.robots.trial import Trial
from forethought.robots.trial_log import TrialWriter, partial_path, save_trial

T_ = TypeVar("T_")
BASES = ("finished", "finished_v1", "partial_closed", "partial_crashed")
DATASETS = ("states", "actions", "timestamps", "costs", "requested_actions")
STEP_DATASETS = ("actions", "requested_actions")  # one row per step; the others one more
ATTRIBUTES = ("format", "format_version", "state_names", "action_names", "dt", "complete", "metadata", "robot", "seed")


class Chooser(Protocol):
    """Where the catalogue's choices come from: a seeded generator here, hypothesis in the suite."""

    def integer(self, low: int, high: int) -> int:
        """An integer in [low, high]."""

    def choice(self, options: Sequence[T_]) -> T_: ...


class RandomChooser:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def integer(self, low: int, high: int) -> int:
        return int(self.rng.integers(low, high, endpoint=True))

    def choice(self, options: Sequence[T_]) -> T_:
        return options[int(self.rng.integers(len(options)))]


# -- Sound trial files ------------------------------------------------------------------------------
def _spec(choose: Chooser) -> RobotSpec:
    n, m = choose.integer(1, 5), choose.integer(1, 3)
    return RobotSpec(
        "fuzz", tuple(f"x{i}" for i in range(n)), tuple(f"u{j}" for j in range(m)), -np.ones(m), np.ones(m), 0.01
    )


def _trial(spec: RobotSpec, T: int, seed: int) -> Trial:
    rng = np.random.default_rng(seed)
    metadata = {"robot": spec.name, "task": "fuzz", "seed": seed, "notes": {"kind": "fuzz", "list": [1, 2.5, None]}}
    return Trial(
        rng.standard_normal((T + 1, spec.n)), rng.uniform(-1, 1, (T, spec.m)), np.arange(T + 1) * spec.dt,
        rng.random(T + 1), spec.state_names, spec.action_names, spec.dt, metadata,
        requested_actions=rng.uniform(-2, 2, (T, spec.m)),
    )


def make_trial_file(folder: Path, base: str, choose: Chooser) -> Path:
    """A sound trial file of kind `base` (BASES) in `folder`, of up to 600 steps."""
    spec, T, seed = _spec(choose), choose.integer(0, 600), choose.integer(0, 2**31)
    trial = _trial(spec, T, seed)
    path = folder / "trial_0000.h5"
    if base == "finished":
        return save_trial(trial, path)
    if base == "finished_v1":  # as forethought wrote trials before requested_actions
        save_trial(trial, path)
        with h5py.File(path, "r+") as f:
            del f["requested_actions"]
            f.attrs["format_version"] = 1
        return path
    writer = TrialWriter(path, spec, dict(trial.metadata), x0=trial.states[0] if choose.integer(0, 3) else None)
    every = choose.integer(1, 300)
    for t in range(T):
        writer.append(trial.states[t + 1], trial.actions[t], trial.timestamps[t + 1], trial.costs[t],
                      trial.requested_actions[t])
        if (t + 1) % every == 0:
            writer.flush()
    writer.flush()
    if base == "partial_crashed":
        # What a writer killed after its last flush leaves: the file as it is on disk, marked open.
        crashed = folder / "crashed.partial.h5"
        shutil.copyfile(writer.partial, crashed)
        writer.close()
        partial_path(path).unlink()
        return crashed
    writer.close()
    return writer.partial


def set_consistency_flags(path: Path, flags: int) -> None:
    """Rewrite a version 2/3 superblock's open-for-writing flags (and its checksum) in place."""
    data = bytearray(path.read_bytes())
    sb = read_superblock(bytes(data), len(data))
    data[sb.offset + 11] = flags
    path.write_bytes(bytes(_with_checksum(data, sb)))


def _with_checksum(data: bytearray, sb) -> bytearray:
    """`data` with its version 2/3 superblock's checksum made to match the superblock."""
    end = sb.offset + sb.length
    data[end - 4 : end] = lookup3_hash(bytes(data[sb.offset : end - 4])).to_bytes(4, "little")
    return data


# -- Damage -----------------------------------------------------------------------------------------
def _rewrite(path: Path, edit: Callable[[bytearray], bytes | bytearray]) -> None:
    path.write_bytes(bytes(edit(bytearray(path.read_bytes()))))


def _truncate(path: Path, choose: Chooser) -> None:
    _rewrite(path, lambda data: data[: choose.integer(0, len(data) - 1)])


def _flip_bytes(path: Path, choose: Chooser) -> None:
    def edit(data: bytearray) -> bytearray:
        # Anywhere, or where the metadata lives: the first and last pages and the global heap.
        region = choose.choice(("anywhere", "start", "end", "heap"))
        low, high = 0, len(data) - 1
        heap = data.find(GCOL_HEADER)
        if region == "start":
            high = min(high, 4095)
        elif region == "end":
            low = max(0, len(data) - 4096)
        elif region == "heap" and heap >= 0:
            low, high = heap, min(high, heap + 4095)
        for _ in range(choose.integer(1, 8)):
            data[choose.integer(low, high)] ^= choose.integer(1, 255)
        return data

    _rewrite(path, edit)


def _zero_bytes(path: Path, choose: Chooser) -> None:
    def edit(data: bytearray) -> bytearray:
        heaps, at = [], data.find(GCOL_HEADER)
        while at >= 0:
            heaps.append(at)
            at = data.find(GCOL_HEADER, at + 1)
        heaps = heaps if choose.integer(0, 1) else []
        if heaps:  # 8 aligned bytes of a global heap collection: an object's header or size
            heap = choose.choice(heaps)
            at = heap + 8 * choose.integer(0, (min(4096, len(data) - heap) - 8) // 8)
        else:
            at = choose.integer(0, len(data) - 1)
        length = choose.choice((1, 2, 4, 8, 16, 64))
        data[at : at + length] = bytes(len(data[at : at + length]))
        return data

    _rewrite(path, edit)


def _random_bytes(path: Path, choose: Chooser) -> None:
    def edit(data: bytearray) -> bytearray:
        at, length = choose.integer(0, len(data) - 1), choose.choice((4, 16, 256, 4096))
        noise = np.random.default_rng(choose.integer(0, 2**32 - 1)).bytes(length)
        data[at : at + length] = noise[: len(data[at : at + length])]
        return data

    _rewrite(path, edit)


def _garbage_before(path: Path, choose: Chooser) -> None:
    length = choose.choice((1, 8, 511, 512, 1024, 3000))
    noise = np.random.default_rng(choose.integer(0, 2**32 - 1)).bytes(length)
    _rewrite(path, lambda data: noise + data)


def _string_length(path: Path, choose: Chooser) -> None:
    """A variable-length string's stated length (4 bytes before the address of its heap collection)."""

    def edit(data: bytearray) -> bytearray:
        values, heap = [], data.find(GCOL_HEADER)
        while heap >= 0:
            at = data.find(heap.to_bytes(8, "little"))
            while at >= 4:
                values.append(at - 4)
                at = data.find(heap.to_bytes(8, "little"), at + 1)
            heap = data.find(GCOL_HEADER, heap + 1)
        if values:
            at = choose.choice(values)
            data[at : at + 4] = choose.choice((0, 1, 2**16, 2**31, 2**32 - 1, choose.integer(0, 2**32 - 1))).to_bytes(
                4, "little"
            )
        return data

    _rewrite(path, edit)


def _grow_end_of_file(path: Path, choose: Chooser) -> None:
    """The superblock's end-of-file address moved past the file's end (a writer killed mid-flush)."""
    data = bytearray(path.read_bytes())
    sb = read_superblock(bytes(data), len(data))
    # After the base and the free-space (or superblock extension) addresses.
    eof_at = sb.offset + {0: 24, 1: 28, 2: 12, 3: 12}[sb.version] + 2 * sb.sizeof_addr
    eof = sb.eof - sb.offset + choose.choice((1, 4096, 2**20, 2**27, choose.integer(1, 2**40)))
    data[eof_at : eof_at + sb.sizeof_addr] = eof.to_bytes(sb.sizeof_addr, "little")
    path.write_bytes(bytes(_with_checksum(data, sb) if sb.version >= 2 else data))


def _signature_then_zeros(path: Path, choose: Chooser) -> None:
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(choose.choice((0, 8, 40, 96, 4096, 20000))))


def _present(f: h5py.File) -> tuple[str, ...]:
    """The trial datasets the file holds (a format 1 file has no requested_actions)."""
    return tuple(name for name in DATASETS if name in f)


def _drop_dataset(f: h5py.File, choose: Chooser) -> None:
    del f[choose.choice(_present(f))]


def _replace(f: h5py.File, name: str, **create) -> None:
    del f[name]
    f.create_dataset(name, **create)


def _reshape_dataset(f: h5py.File, choose: Chooser) -> None:
    name = choose.choice(_present(f))
    rows, rest = f[name].shape[0], f[name].shape[1:]
    shape = choose.choice(((), (rows,), (rows, 1), (rows + choose.integer(-3, 3), *rest), (rows, *rest, 2), (0, *rest)))
    shape = tuple(max(0, d) for d in shape)
    _replace(f, name, data=np.random.default_rng(rows).standard_normal(shape))


def _retype_dataset(f: h5py.File, choose: Chooser) -> None:
    name = choose.choice(_present(f))
    values = f[name][()]
    kind = choose.choice(("complex", "int", "uint8", "bool", "bytes", "text", "float16", "compound", "vlen"))
    if kind == "complex":
        data = values * (1 + 2j)
    elif kind in ("int", "uint8", "bool", "float16"):
        data = np.nan_to_num(values).astype({"int": "i4", "uint8": "u1", "bool": "?", "float16": "f2"}[kind])
    elif kind == "bytes":
        data = values.astype("S12")
    elif kind == "text":
        data = values.astype(str).astype(object)
    elif kind == "compound":
        data = np.zeros(values.shape[:1], dtype=[("a", "f8"), ("b", "i4")])
    else:
        _replace(f, name, shape=values.shape[:1], dtype=h5py.vlen_dtype(np.float64))
        return
    _replace(f, name, data=data)


def _huge_dataset(f: h5py.File, choose: Chooser) -> None:
    chunked = bool(choose.integer(0, 1))
    # Contiguous storage must fit in 64-bit addresses (5 columns of 8 bytes); chunks need not.
    rows = 2 ** choose.integer(20, 62 if chunked else 56)
    names = _present(f) if choose.integer(0, 1) else (choose.choice(_present(f)),)
    for name in names:
        rest = f[name].shape[1:]
        shape = (rows + (name not in STEP_DATASETS), *rest)
        _replace(f, name, shape=shape, dtype="f8", chunks=(256, *rest) if chunked else None,
                 maxshape=(None, *rest) if chunked else None)


def _nonfinite_value(f: h5py.File, choose: Chooser) -> None:
    name = choose.choice(_present(f))
    values = f[name][()]
    if values.size:
        flat = values.reshape(-1)
        flat[choose.integer(0, flat.size - 1)] = choose.choice((np.nan, np.inf, -np.inf))
        f[name][...] = values


def _link_dataset(f: h5py.File, choose: Chooser) -> None:
    name = choose.choice(_present(f))
    kind = choose.choice(("group", "soft", "dangling", "external", "external_self", "other_dataset"))
    del f[name]
    if kind == "group":
        f.create_group(name)
    elif kind == "soft":
        f[name] = h5py.SoftLink("/" + choose.choice([d for d in _present(f) if d != name]))
    elif kind == "dangling":
        f[name] = h5py.SoftLink("/nowhere")
    elif kind == "external":
        f[name] = h5py.ExternalLink("/nonexistent/elsewhere.h5", "/states")
    elif kind == "external_self":
        f[name] = h5py.ExternalLink(f.filename, "/" + name)
    else:
        f[name] = f[choose.choice([d for d in _present(f) if d != name])]


def _delete_attribute(f: h5py.File, choose: Chooser) -> None:
    name = choose.choice(ATTRIBUTES)
    if name in f.attrs:
        del f.attrs[name]


BAD_VALUES: tuple = (
    0, -1, 2, 1.5, np.nan, np.inf, -np.inf, 1 + 2j, True, "", "text", b"bytes", b"\xff\xfe", "42", "null",
    "[1,2,3]", "{", "[" * 2000 + "]" * 2000, '{"a":' * 2000 + "1" + "}" * 2000, "1" * 5000, np.zeros(3),
    np.zeros((2, 2)), np.array([b"a", b"b"]), np.array([["a", "b"]], dtype=h5py.string_dtype()),
    np.zeros(6000), np.array([1 + 1j]), np.array([], dtype="f8"), h5py.Empty("f8"),
    np.zeros((), dtype=[("a", "f8"), ("b", "i4")]), np.array(["x"] * 3, dtype=h5py.string_dtype()),
)


def _bad_attribute(f: h5py.File, choose: Chooser) -> None:
    f.attrs[choose.choice(ATTRIBUTES)] = choose.choice(BAD_VALUES)


BYTE_DAMAGE = {
    "truncate": _truncate, "flip_bytes": _flip_bytes, "zero_bytes": _zero_bytes, "random_bytes": _random_bytes,
    "garbage_before": _garbage_before, "signature_then_zeros": _signature_then_zeros,
    "string_length": _string_length, "grow_end_of_file": _grow_end_of_file,
}
STRUCTURE_DAMAGE = {
    "drop_dataset": _drop_dataset, "reshape_dataset": _reshape_dataset, "retype_dataset": _retype_dataset,
    "huge_dataset": _huge_dataset, "nonfinite_value": _nonfinite_value, "link_dataset": _link_dataset,
    "delete_attribute": _delete_attribute, "bad_attribute": _bad_attribute,
}
DAMAGE = (*BYTE_DAMAGE, *STRUCTURE_DAMAGE)


def damage(path: Path, kind: str, choose: Chooser) -> None:
    """Damage the sound trial file at `path` in place by one of DAMAGE."""
    if kind in BYTE_DAMAGE:
        BYTE_DAMAGE[kind](path, choose)
        return
    # h5py edits only a file not marked open: clear a crashed file's mark for the edit, then restore it.
    flags = check_file(path).superblock.flags
    if flags:
        set_consistency_flags(path, 0)
    with h5py.File(path, "r+") as f:
        STRUCTURE_DAMAGE[kind](f, choose)
    if flags:
        set_consistency_flags(path, flags)


def damaged_trial_file(folder: Path, choose: Chooser, kind: str | None = None) -> tuple[Path, str]:
    """A sound trial file damaged once by `kind` (drawn from DAMAGE if None), a structural damage
    perhaps followed by a damage of its bytes; returns (path, description)."""
    base = choose.choice(BASES)
    path = make_trial_file(folder, base, choose)
    kinds = [kind or choose.choice(DAMAGE)]
    if kinds[0] in STRUCTURE_DAMAGE and choose.integer(0, 1):
        kinds.append(choose.choice(tuple(BYTE_DAMAGE)))
    for each in kinds:
        damage(path, each, choose)
    return path, f"{base}+{'+'.join(kinds)}"


def unsound(trial: Trial) -> str | None:
    """What is wrong with a loaded trial, damaged file or not (None: nothing)."""
    T, n, m = trial.horizon, len(trial.state_names), len(trial.action_names)
    if trial.states.shape != (T + 1, n) or trial.actions.shape != (T, m) or trial.requested_actions.shape != (T, m):
        return (f"states {trial.states.shape}, actions {trial.actions.shape} and requested actions "
                f"{trial.requested_actions.shape} for {n} states, {m} actions")
    if trial.timestamps.shape != (T + 1,) or trial.costs.shape != (T + 1,):
        return f"timestamps {trial.timestamps.shape} and costs {trial.costs.shape} for {T} steps"
    if not (np.isfinite(trial.dt) and trial.dt > 0) or not isinstance(trial.metadata, dict):
        return f"dt {trial.dt} or metadata {type(trial.metadata).__name__}"
    for name in ("states", "actions", "requested_actions", "timestamps"):
        if not np.all(np.isfinite(getattr(trial, name))):
            return f"{name} not finite"
    return None
