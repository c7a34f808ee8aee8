"""Shared test helpers: small hand-built specs and episodes whose values say where they came from.

In hand-built episodes ``obs[t, i, 0] = 1000 * i + g`` where g is the global step row, and
``final_obs[i, 0] = -(1000 * i + e + 1)`` for episode e, so any next observation can be traced back.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from omgmg.datakit import Box, DatasetWriter, Discrete, EnvSpec

# ----- test tiers ----------------------------------------------------------------------------------------------
# Every test is in one of four tiers (`pytest -m unit`, ...): unit (pieces against hand-computed values,
# layering, errors), roundtrip (write -> read -> validate, commands, crash and resume), learning (a few
# hundred steps on tiny data), checkpoint (reload gives identical parameters, actions, runs). A module
# names its tier in TIERS; a test of another tier says so with its own marker. `slow` marks tests over
# about ten seconds on 2 cores: `pytest -m "not slow"` is the quick inner loop, CI runs everything.
TIERS = ("unit", "roundtrip", "learning", "checkpoint")
MODULE_TIERS = {
    "test_baselines": "unit",
    "test_cli": "roundtrip",
    "test_cluster": "roundtrip",
    "test_collectors": "unit",
    "test_config": "unit",
    "test_coverage": "roundtrip",
    "test_diagnostics": "unit",
    "test_envs": "unit",
    "test_experiments": "roundtrip",
    "test_format": "roundtrip",
    "test_hub": "roundtrip",
    "test_layers": "unit",
    "test_loader": "roundtrip",
    "test_members": "unit",
    "test_metrics": "unit",
    "test_omgmg": "unit",
    "test_ogmarl": "roundtrip",
    "test_omiga": "roundtrip",
    "test_packaging": "unit",
    "test_readme": "roundtrip",
    "test_remote": "roundtrip",
    "test_reliability": "roundtrip",
    "test_s3": "roundtrip",
    "test_terminal": "roundtrip",
    "test_verify": "roundtrip",
    "test_validate": "roundtrip",
}


@pytest.hookimpl(tryfirst=True)  # before `-m` selects
def pytest_collection_modifyitems(config, items):
    for item in items:
        own = [m.name for m in item.iter_markers() if m.name in TIERS]
        if len(own) > 1:
            raise pytest.UsageError(f"{item.nodeid} is marked with several tiers: {own}")
        if not own:
            module = item.module.__name__.rpartition(".")[2]
            if module not in MODULE_TIERS:
                raise pytest.UsageError(f"{module} has no tier: add it to MODULE_TIERS in tests/conftest.py")
            item.add_marker(MODULE_TIERS[module])


def continuous_spec(**kw) -> EnvSpec:
    """3 agents with different observation sizes (4, 3, 4) and action sizes (2, 1, 2)."""
    base = dict(
        suite="fixture",
        task="hand-continuous",
        backend="numpy",
        agent_ids=("a", "b", "c"),
        obs_dims=(4, 3, 4),
        state_dim=5,
        action_spaces=(Box((-1.0, -2.0), (1.0, 2.0)), Box((-0.5,), (0.5,)), Box((-1.0, -1.0), (1.0, 1.0))),
        episode_limit=10,
    )
    base.update(kw)
    return EnvSpec(**base)


def discrete_spec(**kw) -> EnvSpec:
    """2 agents with 4 and 3 actions (the second agent's 4th action is padding), wins reported."""
    base = dict(
        suite="fixture",
        task="hand-discrete",
        backend="numpy",
        agent_ids=("a", "b"),
        obs_dims=(3, 3),
        state_dim=4,
        action_spaces=(Discrete(4), Discrete(3)),
        episode_limit=10,
        reports_wins=True,
    )
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
        ep = dict(
            obs=obs,
            state=state,
            reward=rng.normal(size=L).astype(np.float32),
            final_obs=final_obs,
            final_state=final_state,
            terminated=end in ("terminated", "both"),
            truncated=end in ("truncated", "both"),
        )
        if spec.discrete:
            avail = rng.random((L + 1, N, spec.n_actions)) < 0.6
            for i, s in enumerate(spec.action_spaces):
                avail[:, i, s.n :] = False
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


@pytest.fixture(autouse=True, scope="session")
def _own_omgmg_home(tmp_path_factory):
    """The tests' own $OMGMG_HOME (behaviour runs, datasets collected or fetched without --out, locks): never
    the user's. One per test session, so what one test caches there another may reuse."""
    before = os.environ.get("OMGMG_HOME")
    os.environ["OMGMG_HOME"] = str(tmp_path_factory.mktemp("omgmg-home"))
    yield
    if before is None:
        os.environ.pop("OMGMG_HOME", None)
    else:
        os.environ["OMGMG_HOME"] = before


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


def small_config(algo: str, **kw):
    """An offline algorithm's config shrunk for tests (narrow networks, small batches, one thread)."""
    from omgmg.algos import algorithm_class

    cls = algorithm_class(algo).config_cls
    base = {"hidden": 32, "batch_size": 64, "torch_threads": 1, "lr": 1e-3}
    if "mixer_hidden" in cls.__dataclass_fields__:
        base["mixer_hidden"] = 16
    return cls(**{**base, **kw})


PACKAGE_FOLDERS = {
    "schemas": "omgmg.schemas",
    "datakit": "omgmg.datakit",
    "collectors": "omgmg.collectors",
    "cli": "omgmg.cli",
    "omgmg": "omgmg",
}
"""Repository folder -> the package it installs as (pyproject's package-dir)."""


def fixture_datasets(root, continuous: int = 30, discrete: int = 40) -> dict:
    """A continuous and a discrete fixture dataset of that many episodes, under ``root``."""
    from omgmg.collectors.fixtures import make_fixture

    return {
        "continuous": make_fixture(root / "c.zarr", "continuous", episodes=continuous),
        "discrete": make_fixture(root / "d.zarr", "discrete", episodes=discrete),
    }


def bc_sweep_toml(dataset_path, steps: int, eval_every: int, name: str = "tiny", algorithms=("bc",),
                  seeds=(0, 1), grid: dict | None = None, small: str = "bc") -> str:  # fmt: skip
    """A sweep spec file's text: BC or these algorithms, seeds 0 and 1 or these, on one dataset; the ``small``
    algorithm at hidden 16; with ``grid`` ({knob: values}), an ablation over it."""
    layout = '\nlayout = "ablation"' if grid else ""
    knobs = "".join(f"\n{knob} = {list(values)}" for knob, values in (grid or {}).items())
    return f"""name = "{name}"{layout}
algorithms = {list(algorithms)}
seeds = {list(seeds)}
datasets = [{{ path = "{dataset_path}", label = "fixture" }}]
[budget]
steps = {steps}
eval_every = {eval_every}
eval_episodes = 1
[smoke]
seeds = [0]
steps = 10
eval_every = 10
eval_episodes = 1
[overrides.{small}]
hidden = 16{"" if not grid else chr(10) + "[grid]" + knobs}
"""
