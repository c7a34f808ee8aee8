"""The ``fixture`` suite: the linear-Gaussian system of ``omgmg.collectors.fixtures`` as a steppable
environment.

Its tasks are the fixture shapes (``fixture/continuous``, ``fixture/discrete``,
``fixture/halfcheetah-6x1``, ...). A dataset made by ``omgmg-data fixture`` has exactly this env's
spec, so trainers can be tested end to end, evaluation included, in milliseconds.
"""

from __future__ import annotations

import numpy as np

from omgmg.collectors.envs.base import MultiAgentEnv, Reset, Step
from omgmg.collectors.fixtures import SHAPES, LinearSystem, fixture_spec
from omgmg.datakit.errors import RequestError


class FixtureEnv(MultiAgentEnv):
    def __init__(self, task: str):
        if task.lower() not in SHAPES:
            raise RequestError(f"unknown fixture task {task!r}: choose one of {', '.join(SHAPES)}")
        self.spec = fixture_spec(task.lower())
        self.system = LinearSystem(self.spec, seed=0)
        self.x = np.zeros(self.spec.state_dim, np.float32)
        self.avail = None
        self.t = 0

    def _reset_obs(self) -> Reset:
        if self.spec.discrete:
            self.avail = self.system.avail()
        return Reset(self.system.observe(self.x), self.x.copy(), self.avail)

    def reset(self, seed: int | None = None) -> Reset:
        if seed is not None:
            self.system.rng = np.random.default_rng(seed)
        self.x = self.system.rng.normal(size=self.spec.state_dim).astype(np.float32)
        self.t = 0
        return self._reset_obs()

    def step(self, actions: np.ndarray) -> Step:
        x, terminated, won = self.system.transition(self.x, np.asarray(actions))
        self.x, self.t = x, self.t + 1
        truncated = not terminated and self.t >= self.spec.episode_limit
        if self.spec.discrete:
            self.avail = self.system.avail()
        info = {"won": won} if self.spec.reports_wins else {}
        reward = float(self.system.reward(x, terminated, won))
        return Step(self.system.observe(x), x.copy(), self.avail, reward, terminated, truncated, info)
