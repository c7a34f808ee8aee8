"""The behaviour-training loop's configuration, and which of its fields name a run.

``LoopConfig`` holds the fields every behaviour-policy algorithm shares; ``MAPPOConfig`` and
``HAPPOConfig`` extend it with their hyperparameters. A run's directory is named by a hash of
:func:`run_key` (see :mod:`omgmg.collectors.runs`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from omgmg.datakit.errors import ConfigError


@dataclass
class LoopConfig:
    """Fields of the training loop shared by every behaviour-policy algorithm."""

    total_env_steps: int = 1_000_000
    """Environment steps to train for (summed over envs)."""
    num_envs: int = 16
    """Environments stepped together."""
    rollout_len: int = 250
    """Steps per env between updates (one update sees num_envs * rollout_len transitions)."""
    eval_every: int = 100_000
    """Env steps per segment: evaluation and a checkpoint after each."""
    seed: int = 0
    """Seed of network initialisation, environment resets and action sampling."""
    workers: int = 1
    """Processes for CPU simulators (MaMuJoCo); does not change results."""
    torch_threads: int = 1
    """Torch intra-op threads while training (these small networks run fastest on one, and it leaves
    the other core to the simulator)."""

    def __post_init__(self):
        for name in ("total_env_steps", "num_envs", "rollout_len", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


NOT_IN_RUN_KEY = ("workers", "torch_threads")  # they do not change results


def run_key(cfg: LoopConfig) -> dict:
    """What names a run's directory: the config without the fields that do not change results, and
    without the budget when it is a whole number of segments (see the module docstring)."""
    key = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IN_RUN_KEY}
    # a field added later, at the value the runs made before it had: their directories keep their names
    for name, value in getattr(cfg, "LEGACY", {}).items():
        if key.get(name) == value:
            del key[name]
    if cfg.total_env_steps % cfg.eval_every == 0:
        del key["total_env_steps"]
    return key
