"""Kept for imports written before controllers.costs became a package: the planners' cost is
`controllers.costs.TrajectoryCost` / `build_planning_cost`."""

from forethought.controllers.costs import TrajectoryCost, build_planning_cost

__all__ = ["TrajectoryCost", "build_planning_cost"]
