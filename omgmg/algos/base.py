"""What every offline algorithm shares: the loop's config fields, input normalisation from dataset
statistics (kept in the checkpoint), optimiser state, and evaluation-time acting.

An algorithm subclasses :class:`OfflineAlgorithm`, sets ``name`` and ``config_cls``, builds its
networks and ``self.optimizers`` (a dict) in ``__init__``, and implements ``update(batch)`` (one
gradient step, returning metrics) and ``act(obs, avail)`` (deterministic actions on normalised obs).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from datakit.loader import Batch
from datakit.spec import EnvSpec


@dataclass
class OfflineConfig:
    """Fields of the offline training loop shared by every algorithm."""

    steps: int = 100_000
    """Gradient steps to train for."""
    batch_size: int = 128
    """Transitions per gradient step."""
    seed: int = 0
    """Seed of network initialisation, minibatch sampling and evaluation."""
    eval_every: int = 5_000
    """Gradient steps between evaluations in the environment (and checkpoints)."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    log_every: int = 100
    """Gradient steps between log lines (step-indexed, JSONL)."""
    normalize_obs: bool = True
    """Standardise observations and states by the dataset's mean and std (stored in checkpoints)."""
    torch_threads: int = 2
    """Torch intra-op threads for training."""

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every", "eval_episodes", "log_every", "torch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def action_bounds(spec: EnvSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, mask) as (N, A) arrays; mask is 1 on each agent's own action entries."""
    N, A = spec.n_agents, spec.action_dim
    low, high, mask = np.zeros((N, A), np.float32), np.ones((N, A), np.float32), np.zeros((N, A), np.float32)
    for i, s in enumerate(spec.action_spaces):
        low[i, : s.dim], high[i, : s.dim], mask[i, : s.dim] = s.low, s.high, 1
    return low, high, mask


class OfflineAlgorithm(nn.Module):
    name = "base"
    config_cls = OfflineConfig

    def __init__(self, spec: EnvSpec, cfg: OfflineConfig):
        super().__init__()
        self.spec, self.cfg = spec, cfg
        self.register_buffer("obs_mean", torch.zeros(spec.n_agents, spec.obs_dim))
        self.register_buffer("obs_std", torch.ones(spec.n_agents, spec.obs_dim))
        self.register_buffer("state_mean", torch.zeros(spec.state_dim))
        self.register_buffer("state_std", torch.ones(spec.state_dim))
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    # ----- normalisation ------------------------------------------------------------------------------------
    def set_normalisation(self, obs_mean, obs_std, state_mean, state_std) -> None:
        for name, value in (("obs_mean", obs_mean), ("obs_std", obs_std), ("state_mean", state_mean),
                            ("state_std", state_std)):
            getattr(self, name).copy_(torch.as_tensor(value, dtype=torch.float32))

    def normalise_obs(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def normalise_state(self, state: torch.Tensor) -> torch.Tensor:
        return (state - self.state_mean) / self.state_std

    def prepare(self, b: Batch) -> Batch:
        """A batch with normalised observations and states (what ``update`` sees)."""
        return Batch(obs=self.normalise_obs(b.obs), state=self.normalise_state(b.state), actions=b.actions,
                     reward=b.reward, next_obs=self.normalise_obs(b.next_obs),
                     next_state=self.normalise_state(b.next_state), terminated=b.terminated, truncated=b.truncated,
                     episode_start=b.episode_start, avail=b.avail, next_avail=b.next_avail)

    # ----- to implement -------------------------------------------------------------------------------------
    def update(self, batch: Batch) -> dict[str, float]:
        raise NotImplementedError

    def act(self, obs: torch.Tensor, avail: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    # ----- checkpoints --------------------------------------------------------------------------------------
    def optimizer_state(self) -> dict:
        return {k: o.state_dict() for k, o in self.optimizers.items()}

    def load_optimizer_state(self, state: dict) -> None:
        for k, o in self.optimizers.items():
            o.load_state_dict(state[k])
