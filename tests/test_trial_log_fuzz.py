"""Property tests: damaged trial files give the reader's own error, never another exception or a hang.

The damage catalogue (scripts/trial_damage.py) is the fuzz benchmark's, which reads 10,000 such
files (`forethought bench fuzz_trials`); here hypothesis drives it, seeded (derandomize), a few
examples of each kind of damage.
A hang inside libhdf5 cannot be interrupted by an exception: pytest-timeout's thread method turns
it into a failure.
"""

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from forethought.robots.trial_log import TrialLogError, load_trial, load_trials
from forethought.scripts.trial_damage import DAMAGE, damaged_trial_file, make_trial_file, unsound
from hypothesis_chooser import HypothesisChooser

EXAMPLES_PER_KIND = 12
# No shrinking: each example writes HDF5 files, and shrinking one takes minutes; a failure is
# reported as found, with its draws.
FUZZ = settings(
    max_examples=EXAMPLES_PER_KIND, derandomize=True, deadline=None, database=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.timeout(120, method="thread")
@pytest.mark.parametrize("kind", DAMAGE)
@FUZZ
@given(data=st.data())
def test_a_damaged_trial_file_loads_soundly_or_gives_a_trial_log_error(kind, data):
    with tempfile.TemporaryDirectory() as tmp:
        path, description = damaged_trial_file(Path(tmp), HypothesisChooser(data), kind)
        note(description)
        try:
            trial = load_trial(path)
        except TrialLogError as err:
            message = str(err)
            assert message.startswith(f"{path}: ") and "\n" not in message
        else:
            assert unsound(trial) is None, unsound(trial)


@pytest.mark.timeout(120, method="thread")
@settings(FUZZ, max_examples=10)
@given(data=st.data())
def test_damaged_files_in_a_run_folder_are_skipped_by_name_and_the_sound_ones_load(data):
    chooser = HypothesisChooser(data)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run" / "trials"
        folder.mkdir(parents=True)
        damaged = [
            damaged_trial_file(Path(tmp) / f"work{i}", chooser)[0].rename(folder / f"trial_{i:04d}.h5")
            for i in range(3)
        ]
        sound = make_trial_file(Path(tmp) / "sound", "finished", chooser).rename(folder / "trial_0100.h5")
        expected = load_trial(sound)
        trials, problems = load_trials([Path(tmp) / "run"])
        named = [path for path in damaged if any(problem.startswith(f"{path}: ") for problem in problems)]
        assert len(problems) == len(named) and len(trials) + len(named) == 4
        assert any(np.array_equal(trial.states, expected.states) for trial in trials)
        for trial in trials:
            assert unsound(trial) is None, unsound(trial)
