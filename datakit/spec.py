"""What a multi-agent task looks like from the outside: agents, observation sizes, action spaces.

An :class:`EnvSpec` is produced by an environment adapter (``omgmg.collectors.envs``), written into every
dataset's metadata, and checked by a trainer before it evaluates a policy on an environment. It is
plain data with a JSON form (``to_json`` / ``from_json``), so it can be compared and hashed.

Padding convention (also in ``schemas/dataset-v3.md``): agents may have observations of different
sizes (MaMuJoCo HalfCheetah-6x1 gives 9,9,8,9,9,8). Arrays use one common width ``obs_dim`` =
max over agents, and agent i's entries past ``obs_dims[i]`` are zero. Continuous actions are padded
the same way to ``action_dim``; discrete agents with fewer actions than ``n_actions`` have the extra
actions marked unavailable in the mask.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omgmg.datakit.errors import DatasetError


@dataclass(frozen=True)
class Box:
    """A continuous action space: one vector of ``len(low)`` entries, each in ``[low[k], high[k]]``."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self):
        if len(self.low) != len(self.high) or not self.low:
            raise DatasetError(
                f"Box space needs low and high of the same non-zero length, got {self.low} / {self.high}"
            )
        if any(lo > hi for lo, hi in zip(self.low, self.high)):
            raise DatasetError(f"Box space has low > high: {self.low} / {self.high}")

    @property
    def dim(self) -> int:
        return len(self.low)

    def to_json(self) -> dict:
        return {"type": "box", "low": list(self.low), "high": list(self.high)}


@dataclass(frozen=True)
class Discrete:
    """A discrete action space with actions ``0 .. n-1``."""

    n: int

    def __post_init__(self):
        if self.n < 1:
            raise DatasetError(f"Discrete space needs n >= 1, got {self.n}")

    def to_json(self) -> dict:
        return {"type": "discrete", "n": self.n}


Space = Box | Discrete


def space_from_json(d: dict) -> Space:
    if d.get("type") == "box":
        return Box(tuple(float(x) for x in d["low"]), tuple(float(x) for x in d["high"]))
    if d.get("type") == "discrete":
        return Discrete(int(d["n"]))
    raise DatasetError(f"unknown action space {d!r}: expected type 'box' or 'discrete'")


EPISODE_LIMITS = {"mamujoco": 1000, "smacv2": 200}
"""Each suite's time limit in steps: MaMuJoCo's (gymnasium's TimeLimit on every task) and SMACv2's. An episode
that reaches it is a truncation; data from elsewhere is read by the same rule (the importers)."""


@dataclass(frozen=True)
class EnvSpec:
    """The outside of a multi-agent task, as stored in dataset metadata."""

    suite: str
    """Environment suite, lower case: ``mamujoco``, ``smacv2``, ``toy``."""
    task: str
    """Task name within the suite, e.g. ``HalfCheetah-6x1`` or ``protoss_5v5``."""
    backend: str
    """Simulator that produced the data, e.g. ``gymnasium-robotics``, ``sc2``, ``smax``, ``omiga-hdf5``."""
    agent_ids: tuple[str, ...]
    """Agent names in array order: index i of the agent axis is ``agent_ids[i]``."""
    obs_dims: tuple[int, ...]
    """Each agent's own observation size before padding to ``obs_dim``."""
    state_dim: int
    """Size of the global state vector."""
    action_spaces: tuple[Space, ...]
    """Each agent's action space; all Box or all Discrete."""
    episode_limit: int
    """Steps after which an episode is truncated (a time limit, not a terminal state)."""
    reports_wins: bool = False
    """Whether episodes end in a win/loss (SMAC-style tasks); then datasets store ``episodes/won``."""
    options: dict[str, Any] = field(default_factory=dict)
    """Task options that change observations or dynamics (e.g. ``{"obs_mode": "omiga"}``)."""
    backend_versions: dict[str, str] = field(default_factory=dict)
    """Package versions of the simulator stack (informative; not part of the identity)."""

    def __post_init__(self):
        n = len(self.agent_ids)
        if n == 0:
            raise DatasetError("EnvSpec needs at least one agent")
        if len(self.obs_dims) != n or len(self.action_spaces) != n:
            raise DatasetError(
                f"EnvSpec has {n} agents but {len(self.obs_dims)} obs dims and {len(self.action_spaces)} action spaces"
            )
        kinds = {type(s) for s in self.action_spaces}
        if len(kinds) != 1:
            raise DatasetError("EnvSpec mixes continuous and discrete action spaces; all agents must share one kind")

    # ----- derived sizes -------------------------------------------------------------------------
    @property
    def n_agents(self) -> int:
        return len(self.agent_ids)

    @property
    def obs_dim(self) -> int:
        """Common (padded) observation width O."""
        return max(self.obs_dims)

    @property
    def discrete(self) -> bool:
        return isinstance(self.action_spaces[0], Discrete)

    @property
    def action_dim(self) -> int:
        """Continuous: common (padded) action width A. Discrete: 1 (one integer per agent)."""
        return 1 if self.discrete else max(s.dim for s in self.action_spaces)

    @property
    def n_actions(self) -> int:
        """Discrete: common number of actions K (the width of the availability mask)."""
        if not self.discrete:
            raise DatasetError(f"{self.name} has continuous actions; n_actions is only defined for discrete tasks")
        return max(s.n for s in self.action_spaces)

    @property
    def name(self) -> str:
        return f"{self.suite}/{self.task}"

    def action_bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Continuous: (low, high, mask), each (N, A) float32; entries past an agent's own action size
        are padding, with low = high = 0 and mask 0 (mask is 1 on each agent's own entries)."""
        if self.discrete:
            raise DatasetError(f"{self.name} has discrete actions; action bounds are only defined for continuous tasks")
        low = np.zeros((self.n_agents, self.action_dim), np.float32)
        high, mask = np.zeros_like(low), np.zeros_like(low)
        for i, s in enumerate(self.action_spaces):
            low[i, : s.dim], high[i, : s.dim], mask[i, : s.dim] = s.low, s.high, 1
        return low, high, mask

    # ----- JSON ---------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "suite": self.suite,
            "task": self.task,
            "backend": self.backend,
            "agent_ids": list(self.agent_ids),
            "obs_dims": list(self.obs_dims),
            "state_dim": self.state_dim,
            "action_spaces": [s.to_json() for s in self.action_spaces],
            "episode_limit": self.episode_limit,
            "reports_wins": self.reports_wins,
            "options": dict(self.options),
            "backend_versions": dict(self.backend_versions),
        }

    @classmethod
    def from_json(cls, d: dict) -> EnvSpec:
        try:
            return cls(
                suite=d["suite"],
                task=d["task"],
                backend=d["backend"],
                agent_ids=tuple(d["agent_ids"]),
                obs_dims=tuple(int(x) for x in d["obs_dims"]),
                state_dim=int(d["state_dim"]),
                action_spaces=tuple(space_from_json(s) for s in d["action_spaces"]),
                episode_limit=int(d["episode_limit"]),
                reports_wins=bool(d.get("reports_wins", False)),
                options=dict(d.get("options", {})),
                backend_versions=dict(d.get("backend_versions", {})),
            )
        except KeyError as e:
            raise DatasetError(f"env spec is missing the key {e.args[0]!r}") from None

    def identity(self) -> dict:
        """The fields that define which task and which arrays a dataset holds (immutable once written)."""
        d = self.to_json()
        d.pop("backend_versions")
        d.pop("episode_limit")
        return d

    def mismatches(self, other: EnvSpec) -> list[str]:
        """Human-readable differences in identity between two specs (empty when compatible)."""
        a, b = self.identity(), other.identity()
        return [f"{k}: {a[k]!r} vs {b[k]!r}" for k in a if a[k] != b[k]]

    def replace(self, **changes) -> EnvSpec:
        return dataclasses.replace(self, **changes)
