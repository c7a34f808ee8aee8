"""The one interface every environment adapter implements, single and vectorised.

Numpy float32 at the boundary, agents in ``spec.agent_ids`` order, observations padded to
``spec.obs_dim`` (see ``omgmg.datakit.spec``):

    env = make_env("mamujoco/Hopper-3x1")
    obs, state, avail = env.reset(seed=0)        # (N, O), (S,), (N, K) or None
    step = env.step(actions)                     # actions (N, A) float32 or (N,) int
    step.obs, step.state, step.avail, step.reward, step.terminated, step.truncated, step.info

``terminated`` is a true terminal state (a fall, a battle decided); ``truncated`` is the time limit.
Tasks that report wins put ``info["won"]`` (bool) in the info of an episode's last step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from omgmg.datakit.spec import EnvSpec


class Reset(NamedTuple):
    obs: np.ndarray  # (N, O) float32
    state: np.ndarray  # (S,) float32
    avail: np.ndarray | None  # (N, K) bool, discrete tasks


class Step(NamedTuple):
    obs: np.ndarray  # (N, O) float32, after the action
    state: np.ndarray  # (S,) float32
    avail: np.ndarray | None  # (N, K) bool
    reward: float  # team reward
    terminated: bool
    truncated: bool
    info: dict[str, Any]


class MultiAgentEnv(ABC):
    """One environment instance."""

    spec: EnvSpec

    @abstractmethod
    def reset(self, seed: int | None = None) -> Reset:
        """Start an episode. The same seed gives the same episode; ``None`` continues the env's RNG."""

    @abstractmethod
    def step(self, actions: np.ndarray) -> Step:
        """Advance one step with every agent's action."""

    def close(self) -> None:  # noqa: B027 - optional: an env that holds nothing has nothing to release
        """Release simulator resources."""


@dataclass
class VecStep:
    """One step of E environments, auto-reset: where an episode ended, ``obs``/``state``/``avail``
    already belong to the next episode and ``final_*`` hold the last observation of the ended one."""

    obs: np.ndarray  # (E, N, O)
    state: np.ndarray  # (E, S)
    avail: np.ndarray | None  # (E, N, K)
    reward: np.ndarray  # (E,) float32
    terminated: np.ndarray  # (E,) bool
    truncated: np.ndarray  # (E,) bool
    won: np.ndarray  # (E,) bool, False where the task reports no wins or the episode goes on
    final_obs: np.ndarray  # (E, N, O), meaningful where terminated | truncated
    final_state: np.ndarray  # (E, S)
    final_avail: np.ndarray | None  # (E, N, K)

    @property
    def done(self) -> np.ndarray:
        return self.terminated | self.truncated


class VectorEnv(ABC):
    """E environments of one task stepped together, with auto-reset."""

    spec: EnvSpec
    num_envs: int

    @abstractmethod
    def reset(self, seed: int) -> Reset:
        """Reset all envs; env e starts from seed ``seed + e`` (as ``reseed`` would restart it).
        Arrays gain a leading (E,) axis."""

    @abstractmethod
    def step(self, actions: np.ndarray, active: np.ndarray | None = None, reseed: np.ndarray | None = None) -> VecStep:
        """actions (E, N, A) float32 or (E, N) int.

        ``active`` (E,) bool, optional: the envs to step; the others keep their state, report no
        reward and no end, and their rows repeat their last observation.
        ``reseed`` (E,) int, optional: an env whose episode ends in this step auto-resets from seed
        ``reseed[e]`` (the episode a reset with seed ``reseed[e] - e`` gives env e) where that is
        >= 0, instead of continuing its own RNG."""

    def step_async(
        self, actions: np.ndarray, active: np.ndarray | None = None, reseed: np.ndarray | None = None
    ) -> None:
        """Start ``step(actions, active, reseed)``; :meth:`step_wait` returns its result. A runner
        that computes in the background (SMAX: JAX dispatches asynchronously) lets the caller work
        in between; the others step in ``step_wait``."""
        self._started = (actions, active, reseed)

    def step_wait(self) -> VecStep:
        started, self._started = self._started, None
        return self.step(*started)

    def groups(self) -> list[EnvGroup]:
        """The parts of this vector env that step independently, in env order (rows ``group.envs``):
        while one part steps, the caller can work on another (see ``omgmg.collectors.collect``). Parts are
        stepped through their own ``step_async``/``step_wait``, never mixed with the whole env's within
        one step. The default is one part: the whole env."""
        return [EnvGroup(slice(0, self.num_envs), self.step_async, self.step_wait)]

    def close(self) -> None:  # noqa: B027 - optional: an env that holds nothing has nothing to release
        """Stop workers and release simulators."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class EnvGroup:
    """Rows ``envs`` of a vector env, stepped on their own: ``step_async(actions, active, reseed)``
    with arrays of those rows only, then ``step_wait() -> VecStep`` of those rows."""

    envs: slice
    step_async: Callable[..., None]
    step_wait: Callable[[], VecStep]

    @property
    def size(self) -> int:
        return self.envs.stop - self.envs.start


class EpisodeResults(NamedTuple):
    returns: np.ndarray  # (E,) one episode per env
    won: np.ndarray  # (E,) bool
    lengths: np.ndarray  # (E,)


def run_episodes(
    vec: VectorEnv, act: Callable[[np.ndarray, np.ndarray | None], np.ndarray], seed: int
) -> EpisodeResults:
    """Run exactly one episode in each env of ``vec`` (so short episodes are not over-represented),
    ``act(obs (E, N, O), avail (E, N, K) or None) -> actions``; envs that finished wait (or, on a
    runner that steps all envs at once, keep stepping uncounted) until all have."""
    r = vec.reset(seed=seed)
    obs, avail = r.obs, r.avail
    E = vec.num_envs
    returns, won, lengths = np.zeros(E), np.zeros(E, bool), np.zeros(E, int)
    running = np.ones(E, bool)
    while running.any():
        s = vec.step(act(obs, avail), active=running)
        returns[running] += s.reward[running]
        lengths[running] += 1
        won |= running & s.won
        running &= ~s.done
        obs, avail = s.obs, s.avail
    return EpisodeResults(returns, won, lengths)
