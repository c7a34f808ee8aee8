"""Shared test helpers: small hand-built specs and episodes whose values say where they came from.

In hand-built episodes ``obs[t, i, 0] = 1000 * i + g`` where g is the global step row, and
``final_obs[i, 0] = -(1000 * i + e + 1)`` for episode e, so any next observation can be traced back.
"""
from __future__ import annotations

import numpy as np
import pytest

from datakit import Box, DatasetWriter, Discrete, EnvSpec


def continuous_spec(**kw) -> EnvSpec:
    """3 agents with different observation sizes (4, 3, 4) and action sizes (2, 1, 2)."""
    base = dict(suite="fixture", task="hand-continuous", backend="numpy", agent_ids=("a", "b", "c"),
                obs_dims=(4, 3, 4), state_dim=5,
                action_spaces=(Box((-1.0, -2.0), (1.0, 2.0)), Box((-0.5,), (0.5,)), Box((-1.0, -1.0), (1.0, 1.0))),
                episode_limit=10)
    base.update(kw)
    return EnvSpec(**base)


def discrete_spec(**kw) -> EnvSpec:
    """2 agents with 4 and 3 actions (the second agent's 4th action is padding), wins reported."""
    base = dict(suite="fixture", task="hand-discrete", backend="numpy", agent_ids=("a", "b"), obs_dims=(3, 3),
                state_dim=4, action_spaces=(Discrete(4), Discrete(3)), episode_limit=10, reports_wins=True)
    base.update(kw)
    return EnvSpec(**base)


def hand_episodes(spec: EnvSpec, lengths, ends, seed: int = 0) -> list[dict]:
    """Episodes of the given lengths; ``ends[e]`` is "terminated", "truncated" or "both"."""
    rng = np.random.default_rng(seed)
    episodes, g = [], 0
    N, O, S = spec.n_agents, spec.obs_dim, spec.state_dim
    for e, (L, end) in enumerate(zip(lengths, ends)):
        obs = np.zeros((L, N, O), np.float32)
        for i, d in enumerate(spec.obs_dims):
            obs[:, i, :d] = rng.normal(size=(L, d))
            obs[:, i, 0] = 1000 * i + g + np.arange(L)
        state = rng.normal(size=(L, S)).astype(np.float32)
        state[:, 0] = g + np.arange(L)
        final_obs = np.zeros((N, O), np.float32)
        for i, d in enumerate(spec.obs_dims):
            final_obs[i, :d] = rng.normal(size=d)
            final_obs[i, 0] = -(1000 * i + e + 1)
        final_state = rng.normal(size=S).astype(np.float32)
        final_state[0] = -(e + 1)
        ep = dict(obs=obs, state=state, reward=rng.normal(size=L).astype(np.float32), final_obs=final_obs,
                  final_state=final_state, terminated=end in ("terminated", "both"),
                  truncated=end in ("truncated", "both"))
        if spec.discrete:
            avail = rng.random((L + 1, N, spec.n_actions)) < 0.6
            for i, s in enumerate(spec.action_spaces):
                avail[:, i, s.n:] = False
                avail[:, i, 0] = True
            actions = np.zeros((L, N), np.int32)
            for t in range(L):
                for i in range(N):
                    actions[t, i] = rng.choice(np.flatnonzero(avail[t, i]))
            ep.update(actions=actions, avail=avail[:L], final_avail=avail[L])
            if spec.reports_wins:
                ep["won"] = bool(e % 2)
        else:
            actions = np.zeros((L, N, spec.action_dim), np.float32)
            for i, s in enumerate(spec.action_spaces):
                actions[:, i, : s.dim] = rng.uniform(s.low, s.high, size=(L, s.dim))
            actions[0, 0, 0] = spec.action_spaces[0].high[0]  # a bound itself is allowed
            ep["actions"] = actions
        episodes.append(ep)
        g += L
    return episodes


def crash(writer) -> None:
    """What the OS does to a writer whose process dies: its lock is released, its files stay as they are."""
    writer._lock.release()


def write(path, spec, episodes, **kw):
    with DatasetWriter(path, spec, level=kw.pop("level", "medium"), **kw) as w:
        for ep in episodes:
            w.add_episode(**ep)
    return w.close()


LENGTHS = [5, 10, 1, 7, 10, 3]
ENDS = ["terminated", "truncated", "terminated", "both", "truncated", "truncated"]


@pytest.fixture
def continuous_data(tmp_path):
    spec = continuous_spec()
    eps = hand_episodes(spec, LENGTHS, ENDS)
    return write(tmp_path / "c.zarr", spec, eps), eps


@pytest.fixture
def discrete_data(tmp_path):
    spec = discrete_spec()
    eps = hand_episodes(spec, LENGTHS, ENDS)
    return write(tmp_path / "d.zarr", spec, eps), eps
