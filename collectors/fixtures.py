"""Small, deterministic datasets for tests, demos and benchmarks, made without any simulator.

The data comes from a tiny linear-Gaussian multi-agent system (suite ``fixture``): a hidden state
``x`` drifts as ``x' = 0.95 x + 0.1 * B a + noise``; agent i observes a fixed projection of ``x``
(of its own size, zero-padded); the team reward is the cost ``-mean(x'^2)``, and ``-FALL_PENALTY``
when ``|x|`` leaves a ball (a "fall", which terminates the episode); episodes are truncated at the
limit. Driving x to zero and keeping it there is optimal, so a learner has something to learn. The behaviour policy is a
noisy linear controller, so the data has structure a value function can fit. In discrete
fixtures each action is a row of B, agents act greedily against x with Gumbel noise, a random
subset of actions is masked (action 0 always available), and a win is reported when the state is
driven close to zero.

Shapes can mimic real tasks (``SHAPES``), e.g. ``halfcheetah-6x1`` has 6 agents with observations
9,9,8,9,9,8, state 17 and one action each, as gymnasium-robotics' HalfCheetah 6x1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omgmg.datakit.dataset import Dataset
from omgmg.datakit.spec import Box, Discrete, EnvSpec
from omgmg.datakit.writer import DatasetWriter

FALL_PENALTY = 50.0


@dataclass(frozen=True)
class FixtureShape:
    obs_dims: tuple[int, ...]
    state_dim: int
    action_dim: int = 1  # continuous: per-agent action width
    n_actions: int = 0  # discrete when > 0
    episode_limit: int = 50
    reports_wins: bool = False


SHAPES = {
    "continuous": FixtureShape(obs_dims=(4, 3, 4), state_dim=6, action_dim=2, episode_limit=40),
    "discrete": FixtureShape(obs_dims=(5, 5, 5), state_dim=6, n_actions=6, episode_limit=30, reports_wins=True),
    "halfcheetah-6x1": FixtureShape(obs_dims=(9, 9, 8, 9, 9, 8), state_dim=17, action_dim=1, episode_limit=1000),
    "hopper-3x1": FixtureShape(obs_dims=(8, 9, 8), state_dim=11, action_dim=1, episode_limit=1000),
    "ant-2x4": FixtureShape(obs_dims=(63, 63), state_dim=105, action_dim=4, episode_limit=1000),
    "protoss-5v5": FixtureShape(obs_dims=(127,) * 5, state_dim=120, n_actions=10, episode_limit=200, reports_wins=True),
}


def fixture_spec(shape: str) -> EnvSpec:
    if shape not in SHAPES:
        raise ValueError(f"unknown fixture shape {shape!r}; choose one of {', '.join(SHAPES)}")
    s = SHAPES[shape]
    n = len(s.obs_dims)
    spaces = (
        tuple(Discrete(s.n_actions) for _ in range(n))
        if s.n_actions
        else tuple(Box((-1.0,) * s.action_dim, (1.0,) * s.action_dim) for _ in range(n))
    )
    return EnvSpec(
        suite="fixture",
        task=shape,
        backend="numpy",
        agent_ids=tuple(f"agent_{i}" for i in range(n)),
        obs_dims=s.obs_dims,
        state_dim=s.state_dim,
        action_spaces=spaces,
        episode_limit=s.episode_limit,
        reports_wins=s.reports_wins,
        backend_versions={"numpy": np.__version__},
    )


class LinearSystem:
    """The fixture dynamics (see the module docstring), seeded; one episode at a time."""

    def __init__(self, spec: EnvSpec, seed: int, fall_radius: float = 3.0):
        self.spec = spec
        self.rng = np.random.default_rng(seed)
        sys_rng = np.random.default_rng(12345)  # the system itself is the same for every seed
        n, S = spec.n_agents, spec.state_dim
        self.P = [sys_rng.normal(size=(d, S)).astype(np.float32) / np.sqrt(S) for d in spec.obs_dims]
        width = spec.n_actions if spec.discrete else spec.action_dim
        self.B = sys_rng.normal(size=(n, width, S)).astype(np.float32)
        self.K = [sys_rng.normal(size=(width, d)).astype(np.float32) * 0.3 for d in spec.obs_dims]
        self.fall_radius = fall_radius

    def observe(self, x: np.ndarray) -> np.ndarray:
        obs = np.zeros((self.spec.n_agents, self.spec.obs_dim), np.float32)  # (N, O)
        for i, P in enumerate(self.P):
            obs[i, : P.shape[0]] = P @ x
        return obs

    def avail(self) -> np.ndarray:
        k = self.spec.n_actions
        mask = self.rng.random((self.spec.n_agents, k)) < 0.7  # (N, K)
        mask[:, 0] = True
        return mask

    def act(self, x: np.ndarray, obs: np.ndarray, avail: np.ndarray | None, noise: float) -> np.ndarray:
        spec = self.spec
        if spec.discrete:  # noisy greedy: prefer the available action whose push points against x
            actions = np.zeros(spec.n_agents, np.int32)  # (N,)
            for i in range(spec.n_agents):
                logits = -(self.B[i] @ x) + 2.0 * noise * self.rng.gumbel(size=spec.n_actions)
                logits[~avail[i]] = -np.inf
                actions[i] = int(np.argmax(logits))
            return actions
        actions = np.zeros((spec.n_agents, spec.action_dim), np.float32)  # (N, A)
        for i, K in enumerate(self.K):
            actions[i] = np.clip(-(K @ obs[i, : K.shape[1]]) + noise * self.rng.normal(size=K.shape[0]), -1, 1)
        return actions

    def reward(self, x: np.ndarray, terminated: bool, won: bool) -> np.float32:
        """The team reward of arriving at x."""
        fell = terminated and not won
        return np.float32(-FALL_PENALTY if fell else -np.mean(x**2))

    def transition(self, x: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, bool, bool]:
        """One step of the dynamics: (next x, terminated, won)."""
        spec = self.spec
        if spec.discrete:
            push = np.stack([self.B[i, a[i]] for i in range(spec.n_agents)]).sum(0)
        else:
            push = np.einsum("na,nas->s", a, self.B[:, : a.shape[1]])
        x = (0.95 * x + 0.1 * push + 0.05 * self.rng.normal(size=x.shape)).astype(np.float32)
        if np.abs(x).max() > self.fall_radius:
            return x, True, False
        if spec.reports_wins and np.mean(x**2) < 0.08:
            return x, True, True
        return x, False, False

    def episode(self, noise: float = 0.5, max_len: int | None = None) -> dict:
        spec = self.spec
        limit = min(spec.episode_limit, max_len or spec.episode_limit)
        x = self.rng.normal(size=spec.state_dim).astype(np.float32)
        rows: dict[str, list] = {k: [] for k in ("obs", "state", "actions", "reward", "avail")}
        avail = self.avail() if spec.discrete else None
        terminated, won = False, False
        for _ in range(limit):
            obs = self.observe(x)
            a = self.act(x, obs, avail, noise)
            rows["obs"].append(obs)
            rows["state"].append(x.copy())
            rows["actions"].append(a)
            rows["avail"].append(avail)
            x, terminated, won = self.transition(x, a)
            rows["reward"].append(self.reward(x, terminated, won))
            if spec.discrete:
                avail = self.avail()
            if terminated:
                break
        out = {
            "obs": np.stack(rows["obs"]),
            "state": np.stack(rows["state"]),
            "actions": np.stack(rows["actions"]),
            "reward": np.asarray(rows["reward"], np.float32),
            "final_obs": self.observe(x),
            "final_state": x,
            "terminated": terminated,
            "truncated": not terminated,
        }
        if spec.discrete:
            out["avail"], out["final_avail"] = np.stack(rows["avail"]), avail
        if spec.reports_wins:
            out["won"] = won
        return out


def make_fixture(
    path,
    shape: str = "continuous",
    *,
    episodes: int = 20,
    seed: int = 0,
    noise: float = 0.5,
    max_episode_len: int | None = None,
    level: str | None = "medium",
    overwrite: bool = False,
    chunk_rows: int | None = None,
    progress=None,
) -> Dataset:
    """Write a fixture dataset of ``episodes`` episodes to ``path`` and return it opened.

    ``progress``, if given, is called with the number of episodes written so far.
    """
    spec = fixture_spec(shape)
    system = LinearSystem(spec, seed)
    behaviour = {
        "algorithm": "noisy-linear-controller",
        "checkpoint_sha256": None,
        "seed": seed,
        "noise": noise,
        "stochastic": True,
        "eval_score": None,
    }
    collection = {
        "generator": "omgmg.collectors.fixtures",
        "stored_action": "executed (clipped to bounds)",
        "note": "synthetic linear-Gaussian data for tests and demos, not a benchmark",
    }
    writer = DatasetWriter(
        Path(path),
        spec,
        level=level,
        behaviour_policy=behaviour,
        collection=collection,
        overwrite=overwrite,
        resume=False,
        chunk_rows=chunk_rows,
    )
    try:
        for e in range(episodes):
            writer.add_episode(**system.episode(noise=noise, max_len=max_episode_len))
            if progress is not None:
                progress(e + 1)
    except BaseException:
        writer.abort()  # cheap to regenerate: never leave a partial store behind
        raise
    return writer.close()
