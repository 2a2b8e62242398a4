"""What a dynamics model can offer a controller, defined once.

A model class lists what it offers in `capabilities`; a controller's registration line lists what
it needs (controllers/registry.py). An experiment whose controller needs a capability its model
lacks is refused when it loads, in one line naming the model, the controller and the capability.

The calls behind each capability (x: (B, n) states, u: (B, m) actions; float64 numpy unless said):

- PREDICT: `predict(x, u) -> (mean (B, n), var (B, n))` of the next state.
- LINEARIZE: `linearize(x, u) -> (A (B, n, n), B (B, n, m), c (B, n), Sigma (B, n, n))`, the
  next state about each row as A x + B u + c with noise covariance Sigma (iLQR, LQG).
- ROLLOUT: `rollout(x0 (B, n), U (B, H, m), generator) -> X (B, H+1, n)`, torch float32, batched
  particles through whole action sequences, random draws only from the torch generator (the
  sampling planners).
- PROPAGATE: `propagate(mean, cov, ...)`: a Gaussian over (state, action) pushed through the model
  by exact moment matching (PILCO).

A model with `time_varying = True` (TVLG) is indexed by the time step as well: predict and
linearize take `t` (an int or (B,) ints), rollout takes `t0`, the step of its first action.

Two more class attributes say how the experiment loop treats a model: `learned` (refitted after
every iteration; a controller on a learned model acts randomly until the first fit) and `fit_on`:
"all_trials" (refit on every trial so far) or "latest_iteration" (refit on the last iteration's
trials, the model carrying what came before in a prior, as TVLG's GMM prior does).
"""

from __future__ import annotations

PREDICT = "predict"
LINEARIZE = "linearize"
ROLLOUT = "rollout"
PROPAGATE = "propagate"

CAPABILITIES: dict[str, str] = {
    PREDICT: "mean and variance of the next state",
    LINEARIZE: "a linear-Gaussian model of the next state about a point",
    ROLLOUT: "batched particle rollouts of whole action sequences",
    PROPAGATE: "moment matching of a Gaussian through the model",
}

FIT_ON = ("all_trials", "latest_iteration")


def offered(model_class: type) -> frozenset[str]:
    """The capabilities a model class declares."""
    return frozenset(getattr(model_class, "capabilities", frozenset()))


def missing(model_class: type, needs) -> list[str]:
    """The capabilities in `needs` that `model_class` does not offer, in the order of CAPABILITIES."""
    have = offered(model_class)
    return [c for c in CAPABILITIES if c in set(needs) and c not in have]
