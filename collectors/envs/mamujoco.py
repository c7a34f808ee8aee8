"""MaMuJoCo through gymnasium-robotics (``mamujoco_v1``) on MuJoCo.

Task names are ``{Scenario}-{agent_conf}`` (``HalfCheetah-6x1``, ``Hopper-3x1``, ``Ant-2x4``,
``Walker2d-2x3``, ``Humanoid-9|8``, ...): any pair gymnasium-robotics supports, with agent_obsk=1.

- Observations are each agent's local observation, zero-padded to the widest (HalfCheetah-6x1:
  9,9,8,9,9,8 -> 9); the state is the single-agent observation (``env.state()``).
- The reward is the team reward; the 1000-step time limit is a truncation, falls are terminations.
- ``obs_mode="omiga"`` reproduces the observations of the public OMIGA datasets: every agent sees
  ``znorm(concat(s, onehot(i)))`` and the state is ``znorm(s)``, where s is the single-agent
  observation and znorm subtracts the vector's own mean and divides by its own std. It is only
  offered where gymnasium's v5 observation has the layout of the v2 one OMIGA's data used
  (HalfCheetah, Hopper, Walker2d, Swimmer); Ant's v2 observation carried 84 contact-force entries
  (v5: 78) and Humanoid's and Reacher's differ too, so those are refused.

Speed: steps go straight to the single-agent env with a precomputed action permutation and the
local observations are written into one preallocated array, so the wrapper does less work per step
than the PettingZoo dict interface it replaces (benchmarks/envs.py).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import re

import numpy as np

from omgmg.collectors.envs.base import MultiAgentEnv, Reset, Step
from omgmg.datakit.errors import BackendUnavailable, RequestError
from omgmg.datakit.spec import EPISODE_LIMITS, Box, EnvSpec

log = logging.getLogger(__name__)

SCENARIOS = (
    "Ant",
    "CoupledHalfCheetah",
    "HalfCheetah",
    "Hopper",
    "Humanoid",
    "HumanoidStandup",
    "ManySegmentAnt",
    "ManySegmentSwimmer",
    "Pusher",
    "Reacher",
    "Swimmer",
    "Walker2d",
)
PAPER_TASKS = ("HalfCheetah-6x1", "Hopper-3x1", "Ant-2x4")
OMIGA_COMPATIBLE = ("HalfCheetah", "Hopper", "Walker2d", "Swimmer")
OBS_MODES = ("local", "omiga")


class MissingBackend(BackendUnavailable):
    """A simulator package is not installed."""


@functools.cache
def _import_mamujoco():
    """Import gymnasium-robotics quietly: its import prints a notice about unrelated Adroit envs, and
    MuJoCo's C warnings would go to stderr and to MUJOCO_LOG.TXT in the working directory."""
    try:
        import mujoco

        with contextlib.redirect_stderr(io.StringIO()):
            from gymnasium_robotics import mamujoco_v1
            from gymnasium_robotics.envs.multiagent_mujoco.obsk import get_parts_and_edges
    except ImportError as e:
        raise MissingBackend(
            f"MaMuJoCo needs gymnasium-robotics and mujoco ({e.name} is missing): pip install gymnasium-robotics mujoco"
        ) from None
    mujoco.set_mju_user_warning(lambda msg: log.debug("mujoco: %s", msg))
    return mamujoco_v1, get_parts_and_edges


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("gymnasium-robotics", "gymnasium", "mujoco")}


def valid_agent_confs(scenario: str) -> list[str]:
    """Every agent_conf of the forms AxB and A|B (A, B <= 20) gymnasium-robotics accepts for a scenario."""
    _, get_parts_and_edges = _import_mamujoco()
    found = []
    for a in range(1, 21):
        for b in range(1, 21):
            for conf in (f"{a}x{b}", f"{a}|{b}"):
                try:
                    get_parts_and_edges(scenario, conf)
                    found.append(conf)
                except Exception:  # gymnasium-robotics raises a bare Exception for unknown configs
                    pass
    return found


def parse_task(task: str) -> tuple[str, str]:
    """``halfcheetah-6x1`` -> (``HalfCheetah``, ``6x1``), checked against gymnasium-robotics."""
    m = re.fullmatch(r"([A-Za-z0-9]+)-(\S+)", task.strip())
    by_lower = {s.lower(): s for s in SCENARIOS}
    if not m or m.group(1).lower() not in by_lower:
        raise RequestError(
            f"unknown MaMuJoCo task {task!r}: name it Scenario-agent_conf, e.g. "
            f"{', '.join(PAPER_TASKS)}; scenarios: {', '.join(SCENARIOS)}"
        )
    scenario, conf = by_lower[m.group(1).lower()], m.group(2).lower()
    _, get_parts_and_edges = _import_mamujoco()
    try:
        get_parts_and_edges(scenario, conf)
    except Exception:
        confs = valid_agent_confs(scenario)
        raise RequestError(
            f"gymnasium-robotics has no agent_conf {conf!r} for {scenario}; valid: "
            + ", ".join(f"{scenario}-{c}" for c in confs)
        ) from None
    return scenario, conf


def construction(task: str, obs_mode: str = "local") -> dict:
    """How a MaMuJoCo env of this task is built (recorded in every dataset's provenance)."""
    scenario, conf = parse_task(task)
    return {
        "constructor": "gymnasium_robotics.mamujoco_v1.parallel_env",
        "arguments": {"scenario": scenario, "agent_conf": conf, "agent_obsk": 1},
        "obs_mode": obs_mode,
    }


class MaMuJoCoEnv(MultiAgentEnv):
    """One MaMuJoCo task; see the module docstring."""

    def __init__(self, task: str, obs_mode: str = "local"):
        scenario, conf = parse_task(task)
        if obs_mode not in OBS_MODES:
            raise RequestError(f"unknown obs_mode {obs_mode!r} for MaMuJoCo: choose {', '.join(OBS_MODES)}")
        if obs_mode == "omiga" and scenario not in OMIGA_COMPATIBLE:
            raise RequestError(
                f"obs_mode 'omiga' is not available for {scenario}: gymnasium's v5 {scenario} observation differs "
                "from the v2 one the OMIGA datasets were recorded with (Ant: v2 has 84 contact-force entries, v5 78), "
                "so a policy trained on OMIGA data would see inputs it never saw; offered for "
                + ", ".join(OMIGA_COMPATIBLE)
            )
        mamujoco_v1, _ = _import_mamujoco()
        self.obs_mode = obs_mode
        self.env = mamujoco_v1.parallel_env(scenario, conf, agent_obsk=1)
        self.single = self.env.single_agent_env
        self.data_env = self.single.unwrapped
        agents = list(self.env.possible_agents)
        act_dims = [self.env.action_space(a).shape[0] for a in agents]
        local_dims = [self.env.observation_space(a).shape[0] for a in agents]
        S = self.data_env._get_obs().shape[0]
        N = len(agents)
        obs_dims = [S + N] * N if obs_mode == "omiga" else local_dims
        self.spec = EnvSpec(
            suite="mamujoco",
            task=f"{scenario}-{conf}",
            backend="gymnasium-robotics",
            agent_ids=tuple(agents),
            obs_dims=tuple(obs_dims),
            state_dim=S,
            action_spaces=tuple(
                Box(tuple(map(float, self.env.action_space(a).low)), tuple(map(float, self.env.action_space(a).high)))
                for a in agents
            ),
            episode_limit=int(self.single.spec.max_episode_steps or EPISODE_LIMITS["mamujoco"]),
            options={"obs_mode": obs_mode} if obs_mode != "local" else {},
            backend_versions=_versions(),
        )
        self._local_dims = local_dims
        self._perm = self._action_permutation(act_dims)
        self._onehot = np.eye(N, dtype=np.float64)

    def _action_permutation(self, act_dims: list[int]) -> np.ndarray:
        """Indices p such that global_action = padded_actions.flatten()[p], found by mapping markers."""
        A = max(act_dims)
        markers = {
            a: np.arange(d, dtype=np.float64) + i * A
            for i, (a, d) in enumerate(zip(self.env.possible_agents, act_dims))
        }
        return self.env.map_local_actions_to_global_action(markers).astype(np.int64)

    def _observe(self) -> tuple[np.ndarray, np.ndarray]:
        s = self.data_env._get_obs()  # single-agent observation
        spec = self.spec
        obs = np.zeros((spec.n_agents, spec.obs_dim), np.float32)  # (N, O)
        if self.obs_mode == "omiga":
            full = np.concatenate([np.broadcast_to(s, (spec.n_agents, s.shape[0])), self._onehot], axis=1)
            mean, std = full.mean(axis=1, keepdims=True), full.std(axis=1, keepdims=True)
            obs[:] = (full - mean) / std
            state = (s - s.mean()) / s.std()
        else:
            for i, d in enumerate(self._local_dims):
                obs[i, :d] = self.env._get_obs_agent(i)
            state = s
        return obs, state.astype(np.float32)

    def reset(self, seed: int | None = None) -> Reset:
        self.single.reset(seed=seed)
        obs, state = self._observe()
        return Reset(obs, state, None)

    def step(self, actions: np.ndarray) -> Step:
        actions = np.asarray(actions, np.float64).reshape(-1)  # (N * A,)
        _, reward, terminated, truncated, _ = self.single.step(actions[self._perm])
        obs, state = self._observe()
        return Step(obs, state, None, float(reward), bool(terminated), bool(truncated), {})

    def close(self) -> None:
        self.env.close()
