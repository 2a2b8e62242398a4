"""The damage catalogues' choices drawn by hypothesis, so that it can shrink a failing case (a
trial file for tests/test_trial_log_fuzz.py, a packet for tests/test_servo_fuzz.py); the benches
draw the same choices from a seeded generator (scripts/trial_damage.py: RandomChooser)."""

from hypothesis import strategies as st


class HypothesisChooser:
    """scripts.trial_damage.Chooser over a hypothesis data object."""

    def __init__(self, data: st.DataObject):
        self.data = data

    def integer(self, low: int, high: int) -> int:
        return self.data.draw(st.integers(low, high))

    def choice(self, options):
        return self.data.draw(st.sampled_from(list(options)))
