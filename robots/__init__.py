"""Robots behind one interface, trials and their log, and the servo-arm driver."""

from forethought.robots.robot import ActionError, Robot, RobotSpec, check_action
from forethought.robots.trial import Trial, rollout

__all__ = ["ActionError", "Robot", "RobotSpec", "Trial", "check_action", "rollout"]
