"""MAPPO (Yu et al. 2022, "The Surprising Effectiveness of PPO in Cooperative Multi-Agent Games")
for discrete-action tasks (SMACv2 backends): the behaviour policy of the SMACv2 datasets.

- one actor shared by all agents, input ``[obs_i, onehot(i)]``, logits masked by available actions;
- a centralised critic V(s) on the global state, trained on value-normalised returns;
- GAE, the clipped surrogate, an entropy bonus, several epochs per rollout.

Defaults follow the MAPPO reference for SMACv2 (lr 5e-4, clip 0.2, entropy 0.01, gamma 0.99,
GAE 0.95, 5 PPO epochs, grad-norm clip 10). Deviations: observations and states are normalised by
running statistics (the reference uses a feature LayerNorm); the value loss is a clipped MSE on
normalised returns (the reference uses a Huber loss of delta 10 on the same quantity).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from omgmg.collectors.common import (
    FrozenActor,
    Rollout,
    RolloutPolicy,
    RunningMeanStd,
    categorical_sample,
    clipped_value_loss,
    minibatches,
    mlp,
)
from omgmg.collectors.config import LoopConfig
from omgmg.datakit.spec import EnvSpec


@dataclass
class MAPPOConfig(LoopConfig):
    """MAPPO hyperparameters (loop fields are documented on LoopConfig)."""

    lr: float = 5e-4
    """Adam learning rate of actor and critic."""
    clip: float = 0.2
    """PPO ratio clip epsilon."""
    entropy_coef: float = 0.01
    """Weight of the policy entropy bonus."""
    value_coef: float = 1.0
    """Weight of the value loss."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    epochs: int = 5
    """PPO epochs per rollout."""
    num_minibatches: int = 1
    """Minibatches per epoch."""
    hidden: int = 64
    """Width of the two hidden layers of actor and critic."""
    max_grad_norm: float = 10.0
    """Gradient-norm clip."""
    num_envs: int = 64
    rollout_len: int = 64
    eval_every: int = 100_000


# ----- networks ---------------------------------------------------------------------------------------------


class MAPPOAgent(nn.Module):
    algorithm = "mappo"

    def __init__(self, spec: EnvSpec, cfg: MAPPOConfig):
        super().__init__()
        self.spec, self.cfg = spec, cfg
        N, O, K = spec.n_agents, spec.obs_dim, spec.n_actions
        self.actor = mlp([O + N, cfg.hidden, cfg.hidden, K], out_gain=0.01)  # shared by all agents
        self.critic = mlp([spec.state_dim, cfg.hidden, cfg.hidden, 1])  # centralised V(s)
        self.obs_norm = RunningMeanStd((N, O))
        self.state_norm = RunningMeanStd((spec.state_dim,))
        self.value_norm = RunningMeanStd(())
        self.register_buffer("agent_ids", torch.eye(N))
        self.optim = torch.optim.Adam(self.parameters(), lr=cfg.lr)

    def optimizer_state(self) -> dict:
        return {"optim": self.optim.state_dict()}

    def load_optimizer_state(self, state: dict) -> None:
        self.optim.load_state_dict(state["optim"])

    def _logits(self, obs: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
        ids = self.agent_ids.expand(*obs.shape[:-2], -1, -1)  # (..., N, N)
        logits = self.actor(torch.cat([obs, ids], dim=-1))  # (..., N, K)
        return logits.masked_fill(~avail, -1e9)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, avail: torch.Tensor, deterministic: bool, gen: torch.Generator):
        """obs (E, N, O) normalised, avail (E, N, K) -> actions (E, N) long, log-probs (E, N)."""
        logp_all = F.log_softmax(self._logits(obs, avail), dim=-1)  # (E, N, K)
        if deterministic:
            actions = logp_all.argmax(-1)
        else:
            actions = torch.multinomial(logp_all.exp().reshape(-1, logp_all.shape[-1]), 1, generator=gen)
            actions = actions.reshape(logp_all.shape[:-1])
        return actions, logp_all.gather(-1, actions[..., None])[..., 0]

    def sampler(self) -> RolloutPolicy:
        """The stochastic policy frozen for collecting datasets (see :class:`RolloutPolicy`). The
        agent-id input becomes a per-agent first-layer bias, and the masked softmax is sampled by the
        Gumbel-max trick: the same distribution as ``act``."""
        actor = FrozenActor([self.actor] * self.spec.n_agents, self.obs_norm, agent_id_input=True)

        @torch.no_grad()
        def act(obs: np.ndarray, avail: np.ndarray, noise: torch.Tensor) -> tuple[np.ndarray, dict[str, np.ndarray]]:
            logits = actor(obs).masked_fill_(~torch.from_numpy(avail), -float("inf"))
            actions, log_prob = categorical_sample(logits, noise)
            return actions.to(torch.int32).numpy(), {"behaviour_log_prob": log_prob.numpy()}

        return RolloutPolicy(act, "uniform", (self.spec.n_agents, self.spec.n_actions))

    behaviour_arrays = ("log_prob",)
    """What a dataset of this policy records beside its actions: the log-probability of each action."""

    def behaviour_record(self, actions: torch.Tensor, log_probs: torch.Tensor) -> dict[str, np.ndarray]:
        """The behaviour arrays of sampled actions (E, N) with their log-probabilities (E, N)."""
        return {"behaviour_log_prob": log_probs.numpy()}

    @torch.no_grad()
    def value(self, state: torch.Tensor) -> torch.Tensor:
        """state (E, S) normalised -> V(s) (E,) in return units."""
        return self.value_norm.denormalise(self.critic(state)[..., 0])

    def executed(self, actions: torch.Tensor):
        return actions.cpu().numpy()

    # ----- losses ---------------------------------------------------------------------------------------
    @staticmethod
    def policy_loss(log_probs, old_log_probs, advantages, clip):
        """Clipped surrogate objective (PPO, Schulman et al. 2017), negated, per agent and sample."""
        ratio = torch.exp(log_probs - old_log_probs)  # (B, N)
        adv = advantages[:, None]  # (B, 1): the team advantage is every agent's
        return -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()

    # ----- update ---------------------------------------------------------------------------------------
    def update(self, ro: Rollout, advantages: torch.Tensor, returns: torch.Tensor, gen: torch.Generator) -> dict:
        cfg = self.cfg
        self.value_norm.update(returns)
        flat = ro.flat()
        adv = advantages.reshape(-1)
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        targets = self.value_norm.normalise(returns.reshape(-1), clip=1e6)  # (B,)
        old_values = self.value_norm.normalise(flat.values, clip=1e6)
        stats = {}
        for _ in range(cfg.epochs):
            for idx in minibatches(adv.shape[0], cfg.num_minibatches, gen):
                logp_all = F.log_softmax(self._logits(flat.obs[idx], flat.avail[idx]), dim=-1)  # (B, N, K)
                log_probs = logp_all.gather(-1, flat.actions[idx][..., None])[..., 0]
                entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
                pi_loss = self.policy_loss(log_probs, flat.log_probs[idx], adv[idx], cfg.clip)
                values = self.critic(flat.state[idx])[..., 0]
                v_loss = clipped_value_loss(values, old_values[idx], targets[idx], cfg.clip)
                loss = pi_loss + cfg.value_coef * v_loss - cfg.entropy_coef * entropy
                self.optim.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.parameters(), cfg.max_grad_norm)
                self.optim.step()
                stats = {
                    "loss/actor": pi_loss.item(),
                    "loss/critic": v_loss.item(),
                    "policy/entropy": entropy.item(),
                }
        return stats
