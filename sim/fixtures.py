"""A condition's fixtures on a MuJoCo scene, set alike on the robot and on every planning model.

A task's condition may move the reach target (the mocap body `target`: condition key `target`,
(3,) m) and place a fixture (the static body holding the site `hole_bottom`: condition key `hole`,
(3,) m, where that site must come to lie). `SceneFixtures` applies a condition to an MjModel and
the mocap positions that go with it, every time from the scene's own defaults: what a condition
does not set is the scene's, never the previous condition's.
"""

from __future__ import annotations

import mujoco
import numpy as np

# condition key -> (object kind, name): which part of the scene the key moves.
MOCAP_KEYS = {"target": "target"}
SITE_KEYS = {"hole": "hole_bottom"}


class SceneFixtures:
    """The scene defaults of `model` (as loaded) and how a condition moves its fixtures."""

    def __init__(self, model: mujoco.MjModel):
        self.body_pos = model.body_pos.copy()
        self._scratch = mujoco.MjData(model)
        home = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_KEY, "home")
        if home >= 0:  # the home keyframe may place the mocap bodies itself
            mujoco.mj_resetDataKeyframe(model, self._scratch, home)
        self.mocap_pos = self._scratch.mocap_pos.copy()  # (nmocap, 3) m

    def apply(self, model: mujoco.MjModel, mocap_pos: np.ndarray, condition: dict, who: str = "scene") -> None:
        """Reset model.body_pos and mocap_pos (nmocap, 3) to the defaults, then move what `condition` sets.

        A key whose body or site the scene lacks is left to the cost (a target that only the cost
        reads); a site on a moving body cannot be placed (ValueError naming `who`)."""
        model.body_pos[:] = self.body_pos
        mocap_pos[:] = self.mocap_pos
        for key, body in MOCAP_KEYS.items():
            if key in condition:
                body_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, body)
                if body_id >= 0 and model.body_mocapid[body_id] >= 0:
                    mocap_pos[model.body_mocapid[body_id]] = np.asarray(condition[key], dtype=np.float64).reshape(3)
        for key, site in SITE_KEYS.items():
            if key in condition:
                self.place_site(model, site, condition[key], who)

    def place_site(self, model: mujoco.MjModel, name: str, pos, who: str = "scene") -> None:
        """Move the static body that holds site `name` so that the site lies at pos (3,) m."""
        site_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, name)
        if site_id < 0:
            raise ValueError(f"{who}: no site named '{name}'")
        body_id = model.site_bodyid[site_id]
        if model.body_dofnum[body_id] or model.body_mocapid[body_id] >= 0:
            raise ValueError(f"{who}: site '{name}' is on a moving body; only fixtures can be placed")
        mujoco.mj_kinematics(model, self._scratch)
        model.body_pos[body_id] += np.asarray(pos, dtype=np.float64).reshape(3) - self._scratch.site_xpos[site_id]
