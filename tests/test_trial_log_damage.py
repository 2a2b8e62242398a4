"""Damaged trial files: each is a TrialLogError naming the file, in bounded time, and the others load.

One test for each defect found by reading and fuzzing the reader (issue 18); the property tests in
test_trial_log_fuzz.py cover the kinds of damage at large.
"""

import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest

from forethought.robots import trial_log_read
from forethought.robots.hdf5_checksum import lookup3_hash
from forethought.robots.hdf5_layout import check_file, read_superblock
from forethought.robots.trial_log import TrialLogError, TrialWriter, load_trial, load_trials, partial_path, save_trial
from forethought.scripts.bench_fuzz_trials import HOLD_LOCK  # holds a writer's lock until killed
from test_trial_log import SPEC, assert_same, synthetic_trial


def crashed_partial(folder, T: int = 30) -> "Path":
    """A partial file as a writer killed after its last flush leaves it: marked open, no writer."""
    trial = synthetic_trial(T=T)
    path = folder / "writer" / "trial_0000.h5"
    writer = TrialWriter(path, SPEC, {"task": "reach"}, x0=trial.states[0], flush_interval=0)
    for t in range(T):
        writer.append(trial.states[t + 1], trial.actions[t], trial.timestamps[t + 1], trial.costs[t])
    crashed = folder / "trial_0000.partial.h5"
    shutil.copyfile(writer.partial, crashed)
    writer.close()
    return crashed


def edited(source, target, edit) -> "Path":
    """A copy of the trial file `source` at `target`, edited through h5py (edit(f))."""
    shutil.copyfile(source, target)
    with h5py.File(target, "r+") as f:
        edit(f)
    return target


def replace_dataset(name, **create):
    def edit(f):
        del f[name]
        f.create_dataset(name, **create)

    return edit


def set_attribute(name, value):
    def edit(f):
        f.attrs[name] = value

    return edit


def set_value(name, row, value):
    def edit(f):
        data = f[name][()]
        data[row] = value
        f[name][...] = data

    return edit


HUGE = 2**40
FINISHED_DAMAGE = {
    "scalar_actions": replace_dataset("actions", data=1.0),
    "complex_states": replace_dataset("states", data=np.ones((41, 3)) * (1 + 2j)),
    "complex_costs": replace_dataset("costs", data=np.ones(41) * 1j),
    "huge_states": replace_dataset("states", shape=(HUGE, 3), dtype="f8"),
    "huge_everything": lambda f: [
        replace_dataset(name, shape=(HUGE + (name not in ("actions", "requested_actions")), *f[name].shape[1:]),
                        dtype="f8")(f)
        for name in ("states", "actions", "timestamps", "costs", "requested_actions")
    ],
    "format_version_inf": set_attribute("format_version", np.inf),
    "format_version_text": set_attribute("format_version", "1"),
    "metadata_nested_2000_deep": set_attribute("metadata", "[" * 2000 + "]" * 2000),
    "metadata_42": set_attribute("metadata", "42"),
    "metadata_null": set_attribute("metadata", "null"),
    "metadata_list": set_attribute("metadata", "[1,2,3]"),
    "metadata_not_json": set_attribute("metadata", "{'task': 1}"),
    "dt_0": set_attribute("dt", 0.0),
    "dt_negative": set_attribute("dt", -0.002),
    "dt_nan": set_attribute("dt", np.nan),
    "dt_inf": set_attribute("dt", np.inf),
    "dt_complex": set_attribute("dt", 1 + 2j),
    "dt_text": set_attribute("dt", "0.002"),
    "state_names_2d": set_attribute("state_names", np.array([["q0", "q1", "d_q0"]] * 2, dtype=h5py.string_dtype())),
    "state_names_numbers": set_attribute("state_names", np.arange(3.0)),
    "complete_text": set_attribute("complete", "yes"),
    **{f"{v}_in_{name}": set_value(name, 5, v) for name in ("states", "actions", "timestamps")
       for v in (np.nan, np.inf)},
    **{f"{v}_in_requested_actions": set_value("requested_actions", 5, v) for v in (np.nan, np.inf)},
    "requested_actions_short": replace_dataset("requested_actions", data=np.zeros((39, 2))),
    "requested_actions_3_columns": replace_dataset("requested_actions", data=np.zeros((40, 3))),
    "requested_actions_text": replace_dataset("requested_actions", data=np.zeros((40, 2)).astype("S8")),
    "requested_actions_missing": lambda f: f.__delitem__("requested_actions"),
    "requested_actions_soft_link_to_actions": lambda f: (
        f.__delitem__("requested_actions"), f.__setitem__("requested_actions", h5py.SoftLink("/actions"))
    ),
    "huge_requested_actions": replace_dataset("requested_actions", shape=(HUGE, 2), dtype="f8"),
    "states_is_a_group": lambda f: (f.__delitem__("states"), f.create_group("states")),
    "states_is_an_external_link": lambda f: (
        f.__delitem__("states"), f.__setitem__("states", h5py.ExternalLink("/x.h5", "/s"))
    ),
}


@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize("damage", sorted(FINISHED_DAMAGE))
def test_a_damaged_finished_trial_is_refused_by_name(tmp_path, damage):
    good = save_trial(synthetic_trial(), tmp_path / "good.h5")
    bad = edited(good, tmp_path / f"{damage}.h5", FINISHED_DAMAGE[damage])
    with pytest.raises(TrialLogError, match=f"^{bad}: "):
        load_trial(bad)


PARTIAL_DAMAGE = {
    "actions_1d": replace_dataset("actions", data=np.zeros(30)),
    "timestamps_2d": replace_dataset("timestamps", data=np.zeros((31, 2))),
    "states_3_columns_short": replace_dataset("states", data=np.zeros((31, 2))),
    "requested_actions_1d": replace_dataset("requested_actions", data=np.zeros(30)),
    "huge_everything": lambda f: [
        replace_dataset(name, shape=(HUGE, *f[name].shape[1:]), dtype="f8", chunks=(256, *f[name].shape[1:]),
                        maxshape=(None, *f[name].shape[1:]))(f)
        for name in ("states", "actions", "timestamps", "costs", "requested_actions")
    ],
}


@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize("damage", sorted(PARTIAL_DAMAGE))
def test_a_damaged_partial_trial_is_refused_by_name(tmp_path, damage):
    writer_path = tmp_path / "w" / "trial_0000.h5"
    trial = synthetic_trial(T=30)
    with TrialWriter(writer_path, SPEC, x0=trial.states[0]) as writer:
        for t in range(30):
            writer.append(trial.states[t + 1], trial.actions[t], trial.timestamps[t + 1], trial.costs[t])
    bad = edited(partial_path(writer_path), tmp_path / f"{damage}.partial.h5", PARTIAL_DAMAGE[damage])
    with pytest.raises(TrialLogError, match=f"^{bad}: "):
        load_trial(bad)


def test_a_declared_hundred_million_rows_are_refused_before_any_is_read(tmp_path):
    good = save_trial(synthetic_trial(), tmp_path / "good.h5")
    rows = 10**8  # 2.4 GB of states: allocatable, so only the check keeps it from being read
    bad = edited(good, tmp_path / "bad.h5", lambda f: [
        replace_dataset(name, shape=(rows + (name not in ("actions", "requested_actions")), *f[name].shape[1:]),
                        dtype="f8")(f)
        for name in ("states", "actions", "timestamps", "costs", "requested_actions")
    ])
    tracemalloc.start()
    try:
        with pytest.raises(TrialLogError, match="declares 2400000024 bytes but the file stores 0"):
            load_trial(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20


def test_nan_rows_in_a_partial_trials_unfinished_tail_are_cut_off(tmp_path):
    bad = crashed_partial(tmp_path, T=30)
    data = bytearray(bad.read_bytes())
    # Rows 20.. of the timestamps read as the NaN fill value, as if their chunk never reached the disk.
    stamps = synthetic_trial(T=30).timestamps
    at = bytes(data).find(stamps[20:].tobytes())
    assert at > 0
    data[at : at + 8 * 11] = np.full(11, np.nan).tobytes()
    bad.write_bytes(bytes(data))
    loaded = load_trial(bad)
    assert loaded.horizon == 19 and not loaded.complete
    np.testing.assert_array_equal(loaded.timestamps[1:], stamps[1:20])  # the writer starts its clock at 0
    np.testing.assert_array_equal(loaded.states, synthetic_trial(T=30).states[:20])


def test_a_partial_trial_whose_first_row_is_damaged_starts_at_its_first_logged_state(tmp_path):
    crashed = crashed_partial(tmp_path, T=30)
    whole = load_trial(crashed)
    data = bytearray(crashed.read_bytes())
    at = bytes(data).find(whole.timestamps[:3].tobytes())  # the first timestamp, 0.0, then two steps
    data[at : at + 8] = np.full(1, np.nan).tobytes()
    crashed.write_bytes(bytes(data))
    loaded = load_trial(crashed)
    assert loaded.horizon == 29
    np.testing.assert_array_equal(loaded.states, whole.states[1:])


def test_the_signature_followed_by_zeros_is_refused(tmp_path):
    bad = tmp_path / "trial_0000.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(4096))
    with pytest.raises(TrialLogError, match=f"^{bad}: damaged trial log"):
        load_trial(bad)


@pytest.mark.timeout(60, method="thread")
def test_a_truncated_partial_file_fails_at_once(tmp_path):
    crashed = crashed_partial(tmp_path)
    bad = tmp_path / "cut.partial.h5"
    bad.write_bytes(crashed.read_bytes()[:1629])
    with pytest.raises(TrialLogError, match=r"truncated file \(1629 bytes, its superblock says \d+\)"):
        load_trial(bad)


def test_a_partial_file_whose_writer_died_mid_flush_keeps_what_it_holds(tmp_path):
    """Killed after the superblock grew and before the file did: the missing tail reads as
    never written, and the steps before it load."""
    crashed = crashed_partial(tmp_path)
    whole = load_trial(crashed)
    data = bytearray(crashed.read_bytes())
    superblock = read_superblock(bytes(data), len(data))
    eof_at = superblock.offset + 12 + 2 * superblock.sizeof_addr
    data[eof_at : eof_at + 8] = (len(data) + 4096).to_bytes(8, "little")
    end = superblock.offset + superblock.length
    data[end - 4 : end] = lookup3_hash(bytes(data[superblock.offset : end - 4])).to_bytes(4, "little")
    crashed.write_bytes(bytes(data))
    assert check_file(crashed).missing == 4096
    loaded = load_trial(crashed)
    assert loaded.horizon == whole.horizon == 30 and not loaded.complete
    assert_same(loaded, whole)
    # A finished file that ends early was cut short: refused.
    finished = save_trial(synthetic_trial(), tmp_path / "trial_0001.h5")
    finished.write_bytes(finished.read_bytes()[:-100])
    with pytest.raises(TrialLogError, match="truncated file"):
        load_trial(finished)


def global_heap_free_space_size(data: bytes) -> int:
    """Where the size field of the first global heap collection's free space is (bytes)."""
    at = data.find(b"GCOL")
    p = at + 16
    while int.from_bytes(data[p : p + 2], "little"):  # objects until the free space (index 0)
        p += 16 + -(-int.from_bytes(data[p + 8 : p + 16], "little") // 8) * 8
    return p + 8


@pytest.mark.timeout(60, method="thread")
def test_a_global_heap_with_8_bytes_zeroed_does_not_spin(tmp_path):
    good = save_trial(synthetic_trial(), tmp_path / "trial_0000.h5")
    data = bytearray(good.read_bytes())
    at = global_heap_free_space_size(bytes(data))
    data[at : at + 8] = bytes(8)  # libhdf5 reads a zero-size free space forever
    good.write_bytes(bytes(data))
    with pytest.raises(TrialLogError, match="damaged global heap collection"):
        load_trial(good)


def test_a_string_claiming_4_gib_is_refused_before_libhdf5_allocates_it(tmp_path):
    good = save_trial(synthetic_trial(), tmp_path / "trial_0000.h5")
    data = bytearray(good.read_bytes())
    heap = data.find(b"GCOL")
    # The format attribute's value: length 17, the collection's address, object 1.
    at = bytes(data).find((17).to_bytes(4, "little") + heap.to_bytes(8, "little") + (1).to_bytes(4, "little"))
    data[at : at + 4] = (2**32 - 16).to_bytes(4, "little")
    good.write_bytes(bytes(data))
    with pytest.raises(TrialLogError, match="attribute format: a value at byte .* claims 4294967280 bytes"):
        load_trial(good)


@pytest.mark.timeout(60, method="thread")
def test_a_fifo_named_like_a_trial_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "trial_0000.h5"
    os.mkfifo(fifo)
    with pytest.raises(TrialLogError, match="not a regular file"):
        load_trial(fifo)


def test_every_damaged_file_is_skipped_by_name_and_the_others_load(tmp_path):
    folder = tmp_path / "run" / "trials"
    good = [save_trial(synthetic_trial(seed=s), folder / f"trial_{s:04d}.h5") for s in range(2)]
    bad = [edited(good[0], folder / f"trial_{100 + i:04d}.h5", FINISHED_DAMAGE[name])
           for i, name in enumerate(sorted(FINISHED_DAMAGE))]
    (folder / "trial_0999.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(4096))
    trials, problems = load_trials([tmp_path / "run"])
    assert [t.metadata["seed"] for t in trials] == [0, 1]
    assert len(problems) == len(bad) + 1
    for problem, path in zip(problems, [*bad, folder / "trial_0999.h5"]):
        assert problem.startswith(f"{path}: ") and "\n" not in problem


@pytest.mark.timeout(120, method="thread")
def test_a_damaged_file_of_a_running_writer_gives_up_at_the_deadline(tmp_path, monkeypatch):
    """In SWMR mode libhdf5 retries a damaged object header for many minutes: the child reading
    it is stopped at the deadline."""
    crashed = crashed_partial(tmp_path)
    data = bytearray(crashed.read_bytes())
    header = data.find(b"OHDR", data.find(b"OHDR") + 1)  # a dataset's object header
    data[header + 20] ^= 0xFF
    crashed.write_bytes(bytes(data))
    monkeypatch.setattr(trial_log_read, "LIVE_READ_DEADLINE_S", 5.0)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(crashed)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(TrialLogError, match=f"^{crashed}: reading the trial log took over 5 s"):
            load_trial(crashed)
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(TrialLogError, match=f"^{crashed}: .*checksum"):  # the writer gone: no SWMR, no retries
        load_trial(crashed)
