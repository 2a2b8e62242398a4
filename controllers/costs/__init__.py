"""Costs declared in the experiment YAML: each term defined once, in torch, for every consumer.

A `Cost` is a weighted sum of terms. In float64 it gives iLQR and GPS, for a batch of states
x (B, n) and actions u (B, m), the value l (B,) and the derivatives l_x (B, n), l_u (B, m),
l_xx (B, n, n), l_uu (B, m, m), l_ux (B, m, n); a call without actions (u None) is the terminal
cost, and `cost(x, u) -> float` on a single pair makes it `rollout`'s cost. `TrajectoryCost`
gives the sampling planners the same totals of whole batches of trajectories in float32 torch;
PILCO's expected cost (controllers.pilco) takes the saturating terms' parameters.

The package:
    term.py          what a term is (value in torch; derivatives analytic or by autograd) and the registry
    schedule.py      the weighting schedule (running weight and ramp, terminal weight) and trajectory totals
    reader.py        build_cost: the YAML mapping -> Cost, errors naming cost.terms[i].key
    cost.py          Cost (float64, numpy in and out) and CostDerivatives
    planning.py      TrajectoryCost and build_planning_cost for the sampling planners
    distance.py      the weighted distance that `state` and `saturating` share
    state.py, saturating.py, action.py, joint_limits.py, site_distance.py: the terms

A new term type is a module with a `Term` subclass decorated by `@register(name, keys=...)`, plus
its name on the import line below.

YAML schema (the experiment's `task.cost`): a list of terms, each with its type's keys (written in
its module's docstring) and the keys every term takes:

    cost:
      terms:
        - type: site_distance    # an MJCF site's distance to a target point     (site_distance.py)
          site: ee
          target: target
          weight: 100.0          # weight of the running cost (default 1)
          final_weight: 1000.0   # weight of the terminal cost (default: `weight`; `action` has none)
          ramp: constant         # the running weight over a horizon of T steps: constant (default),
                                 # linear ((t+1)/T), quadratic (((t+1)/T)^2) or final_only (0)
        - type: state            # 0.5 sum_i w_i e_i^2 over state entries         (state.py)
          weights: {d_shoulder_pan: 0.01}
        - type: saturating       # PILCO's 1 - exp(-d^2 / (2 sigma^2))            (saturating.py)
          weights: {pole: 1.0}
          target: {pole: 3.14159}
          angles: [pole]
          sigma: 0.25
        - type: action           # 0.5 sum_j w_j (u_j - c_j)^2                    (action.py)
          weights: 0.001
        - type: joint_limits     # a soft barrier at the joints' ranges           (joint_limits.py)
          margin: 0.05

Without a time index (a single cost(x, u) call) the ramp is 1.
"""

from forethought.controllers.costs.term import TERM_TYPES, Term, TermDerivatives, register
from forethought.controllers.costs.schedule import RAMPS, Weighted, trajectory_total
from forethought.controllers.costs.cost import Cost, CostDerivatives
from forethought.controllers.costs.reader import TermReader, build_cost
from forethought.controllers.costs.planning import TrajectoryCost, build_planning_cost

# The term types; importing each module registers it.
from forethought.controllers.costs import action, joint_limits, saturating, site_distance, state  # noqa: E402, I001

from forethought.controllers.costs.distance import WeightedDistance
from forethought.controllers.costs.action import ActionCost
from forethought.controllers.costs.joint_limits import JointLimitCost
from forethought.controllers.costs.saturating import SaturatingCost
from forethought.controllers.costs.site_distance import SiteDistanceCost
from forethought.controllers.costs.state import StateCost

__all__ = [
    "TERM_TYPES", "Term", "TermDerivatives", "register", "RAMPS", "Weighted", "trajectory_total", "Cost",
    "CostDerivatives", "TermReader", "build_cost", "TrajectoryCost", "build_planning_cost", "WeightedDistance",
    "ActionCost", "JointLimitCost", "SaturatingCost", "SiteDistanceCost", "StateCost",
]
