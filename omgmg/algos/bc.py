"""BC: behaviour cloning, maximum likelihood of the dataset's actions, per agent.

The baseline every offline method should beat: it learns the average behaviour policy of the
dataset, with the same actor networks (tanh-Gaussian or masked softmax) as the other algorithms.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from datakit.loader import Batch
from datakit.spec import EnvSpec
from omgmg.algos.base import OfflineAlgorithm, OfflineConfig, action_bounds
from omgmg.nets import CategoricalPolicy, TanhGaussianPolicy, adam


@dataclass
class BCConfig(OfflineConfig):
    """BC hyperparameters (loop fields are documented on OfflineConfig)."""

    lr: float = 5e-4
    """Adam learning rate."""
    hidden: int = 256
    """Hidden width of the per-agent networks (two hidden layers)."""
    shared_networks: bool = True
    """One network for all agents with a one-hot id input (True) or separate stacked weights (False)."""
    grad_norm_clip: float = 1.0
    """Gradient-norm clip."""


def bc_loss(log_prob_data: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the dataset actions, -E_D[log pi_i(a_i | o_i)]."""
    return -log_prob_data.mean()


class BC(OfflineAlgorithm):
    name = "bc"
    config_cls = BCConfig

    def __init__(self, spec: EnvSpec, cfg: BCConfig):
        super().__init__(spec, cfg)
        N, O, H = spec.n_agents, spec.obs_dim, cfg.hidden
        if spec.discrete:
            self.actor = CategoricalPolicy(N, O, spec.n_actions, H, cfg.shared_networks)
        else:
            low, high, mask = action_bounds(spec)
            self.actor = TanhGaussianPolicy(N, O, spec.action_dim, low, high, mask, H, cfg.shared_networks)
        self.optimizers = {"actor": adam(self.actor.parameters(), cfg.lr)}

    def update(self, b: Batch) -> dict[str, float]:
        if self.spec.discrete:
            log_prob = self.actor.log_probs(b.obs, b.avail).gather(-1, b.actions[..., None])[..., 0]
        else:
            log_prob = self.actor.log_prob(b.obs, b.actions)
        loss = bc_loss(log_prob)
        opt = self.optimizers["actor"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.actor.parameters(), self.cfg.grad_norm_clip)
        opt.step()
        return {"loss/actor": loss.item()}

    @torch.no_grad()
    def act(self, obs: torch.Tensor, avail: torch.Tensor | None) -> torch.Tensor:
        return self.actor.deterministic(obs, avail) if self.spec.discrete else self.actor.deterministic(obs)
