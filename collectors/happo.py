"""HAPPO (Kuba et al. 2022, "Trust Region Policy Optimisation in Multi-Agent Reinforcement Learning")
for continuous-action tasks (MaMuJoCo): the behaviour policy of the MaMuJoCo datasets.

Algorithm (the paper's Algorithm 2, PPO-clip version), per iteration:
1. Roll out all agents' current policies; compute GAE advantages A(s, a) from a centralised V(s).
2. Draw a random permutation i_1..i_n of the agents and set M = 1.
3. For m = 1..n: update agent i_m for ``epochs`` epochs on the clipped objective
   ``min(r M A, clip(r, 1-eps, 1+eps) M A)`` with ``r = pi_new(a_i|o_i) / pi_old(a_i|o_i)``, then
   compound ``M <- M * r`` with the *updated* policy (no gradient): later agents see the change
   earlier agents made.
4. Fit V(s) to the returns.

Each agent has its own actor (no parameter sharing) and its own optimiser: a diagonal Gaussian
whose mean is an MLP of the agent's observation and whose standard deviation is a learned vector,
both in the agent's own optimiser. Rollout inference evaluates all agents' actors as one batched op
(``stacked_forward``). How a Gaussian sample u becomes an action in the bounds is ``policy``:

- ``tanh`` (the default): a tanh-squashed Gaussian, a = c + h tanh(u) with c, h the bounds' centre
  and half-width, as D4RL's and SAC's behaviour policies: actions lie inside the bounds (on one only
  where tanh saturates in float32, |u| > 8.3), and their density is the Gaussian's with the
  change-of-variables term ``-sum log(h (1 - tanh(u)^2))``.
- ``capped``: HARL's HAPPO: the std is ``max_std * sigmoid(w)`` (at most ``max_std``), the mean is
  kept inside the bounds (c + h tanh(mean head)), and the sample is clipped to the bounds.
- ``clip``: omgmg 0.1's policy, kept to reproduce its datasets: an unbounded mean, an uncapped std
  exp(w), the sample clipped to the bounds. Nothing pulls a mean back once it is past a bound, so
  on Hopper-3x1 about half of the stored action entries sit on a bound (docs/collecting.md).

PPO's ratio is taken on the Gaussian sample u in every case (for ``tanh`` the change-of-variables
term is the same in both policies of the ratio and cancels).

Defaults after HARL's HAPPO for MaMuJoCo (lr 5e-4, 5 epochs, gamma 0.99, GAE 0.95, hidden
128x3, ReLU), with clip 0.2 and observation/state normalisation by running statistics (HARL uses a
feature LayerNorm) and a clipped-MSE value loss on normalised returns (HARL: Huber, delta 10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from omgmg.collectors.common import (
    FrozenActor,
    Rollout,
    RolloutPolicy,
    RunningMeanStd,
    clipped_value_loss,
    minibatches,
    mlp,
    stacked_forward,
)
from omgmg.collectors.config import LoopConfig
from omgmg.datakit.errors import ConfigError
from omgmg.datakit.spec import EnvSpec


@dataclass
class HAPPOConfig(LoopConfig):
    """HAPPO hyperparameters (loop fields are documented on LoopConfig)."""

    actor_lr: float = 5e-4
    """Adam learning rate of each agent's actor."""
    critic_lr: float = 5e-4
    """Adam learning rate of the centralised critic."""
    clip: float = 0.2
    """PPO ratio clip epsilon."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (HARL uses 0 on MaMuJoCo)."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    epochs: int = 5
    """Epochs per agent (and for the critic) per rollout."""
    num_minibatches: int = 1
    """Minibatches per epoch."""
    hidden: int = 128
    """Width of the three hidden layers."""
    init_log_std: float = -0.5
    """Initial log standard deviation of every action dimension."""
    max_grad_norm: float = 10.0
    """Gradient-norm clip."""
    policy: str = "tanh"
    """How a Gaussian sample becomes an in-bound action: tanh (squashed inside the bounds),
    capped (HARL: std at most max_std, mean inside the bounds, sample clipped) or clip (omgmg 0.1:
    unbounded mean and std, sample clipped; reproduces its datasets). See the module docstring."""
    max_std: float = 0.5
    """The std cap of the capped policy (HARL's std_y_coef); the other policies ignore it."""

    LEGACY = {"policy": "clip", "max_std": 0.5}
    """Fields added after runs were made, with the values those runs had: a checkpoint whose config lacks
    a field was made with this value, and a run's key (its directory name) leaves a field out at it."""

    def __post_init__(self):
        super().__post_init__()
        if self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if not self.max_std > 0:  # also refuses NaN
            raise ConfigError(f"max_std must be positive, got {self.max_std}")


POLICIES = ("tanh", "capped", "clip")


class HAPPOAgent(nn.Module):
    algorithm = "happo"

    def __init__(self, spec: EnvSpec, cfg: HAPPOConfig):
        super().__init__()
        self.spec, self.cfg = spec, cfg
        N, O, A, S, H = spec.n_agents, spec.obs_dim, spec.action_dim, spec.state_dim, cfg.hidden
        self.actors = nn.ModuleList([mlp([O, H, H, H, A], out_gain=0.01) for _ in range(N)])
        # the std's parameter w: std = exp(w), or max_std * sigmoid(w) for the capped policy (w = 1 as HARL)
        w0 = 1.0 if cfg.policy == "capped" else cfg.init_log_std
        self.log_stds = nn.ParameterList([nn.Parameter(torch.full((A,), w0)) for _ in range(N)])
        self.critic = mlp([S, H, H, H, 1])
        self.obs_norm = RunningMeanStd((N, O))
        self.state_norm = RunningMeanStd((S,))
        self.value_norm = RunningMeanStd(())
        low, high, mask = spec.action_bounds()  # (N, A); mask 1 on each agent's own entries, 0 on padding
        self.register_buffer("low", torch.from_numpy(low))
        self.register_buffer("high", torch.from_numpy(high))
        self.register_buffer("action_mask", torch.from_numpy(mask))
        self.register_buffer("centre", (self.high + self.low) / 2, persistent=False)
        self.register_buffer("half_width", (self.high - self.low) / 2, persistent=False)
        # one optimiser per agent over its own actor and log-std: updating agent i touches nothing else
        self.actor_optims = [
            torch.optim.Adam(list(a.parameters()) + [s], lr=cfg.actor_lr) for a, s in zip(self.actors, self.log_stds)
        ]
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)

    def optimizer_state(self) -> dict:
        return {"actors": [o.state_dict() for o in self.actor_optims], "critic": self.critic_optim.state_dict()}

    def load_optimizer_state(self, state: dict) -> None:
        for o, s in zip(self.actor_optims, state["actors"]):
            o.load_state_dict(s)
        self.critic_optim.load_state_dict(state["critic"])

    # ----- the policy: a Gaussian sample u, and the action it becomes ------------------------------------
    def _mean(self, head: torch.Tensor, agent: int | None = None) -> torch.Tensor:
        """The Gaussian's mean from the actor output of every agent (..., N, A), or of ``agent`` alone
        (..., A): the output itself, or inside the bounds (c + h tanh(output)) for ``capped``."""
        if self.cfg.policy != "capped":
            return head
        c, h = (self.centre, self.half_width) if agent is None else (self.centre[agent], self.half_width[agent])
        return c + h * torch.tanh(head)

    def _log_std(self, w: torch.Tensor) -> torch.Tensor:
        """The Gaussian's log-std from its parameter w: w itself, or log(max_std sigmoid(w)) when capped."""
        return math.log(self.cfg.max_std) + nn.functional.logsigmoid(w) if self.cfg.policy == "capped" else w

    def _std(self, w: torch.Tensor) -> torch.Tensor:
        return self._log_std(w).exp()

    def _log_prob(self, mean: torch.Tensor, w: torch.Tensor, u: torch.Tensor, mask: torch.Tensor):
        """Log-density of the Gaussian sample u, summed over the agent's own action entries."""
        log_std = self._log_std(w)
        z = (u - mean) / log_std.exp()
        per_dim = -0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)
        return (per_dim * mask).sum(-1)

    def squash(self, u: torch.Tensor) -> torch.Tensor:
        """The action a Gaussian sample u (E, N, A) becomes: c + h tanh(u), or u clipped to the bounds."""
        if self.cfg.policy == "tanh":
            return self.centre + self.half_width * torch.tanh(u)
        return torch.maximum(torch.minimum(u, self.high), self.low)

    def log_prob_of_action(self, u: torch.Tensor, gaussian_log_prob: torch.Tensor) -> torch.Tensor:
        """The behaviour policy's log-density of the action that u became (E, N): for ``tanh`` the
        Gaussian's minus sum log(h (1 - tanh(u)^2)) over the agent's own entries; for the clipping
        policies the density of the pre-clip sample u (an action on a bound has none of its own)."""
        if self.cfg.policy != "tanh":
            return gaussian_log_prob
        # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|
        log_dtanh = 2 * (math.log(2) - u - nn.functional.softplus(-2 * u))
        own = self.action_mask > 0
        per_dim = torch.where(own, log_dtanh + torch.log(torch.where(own, self.half_width, 1.0)), 0.0)
        return gaussian_log_prob - per_dim.sum(-1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, avail, deterministic: bool, gen: torch.Generator):
        """obs (E, N, O) normalised -> Gaussian samples u (E, N, A), their log-probs (E, N)."""
        mean = self._mean(stacked_forward(self.actors, obs))  # (E, N, A): all agents in one batched op
        if deterministic:
            actions = mean
        else:
            noise = torch.randn(mean.shape, generator=gen)
            actions = mean + noise * self._std(self.log_std)
        actions = actions * self.action_mask
        return actions, self._log_prob(mean, self.log_std, actions, self.action_mask)

    @property
    def behaviour_arrays(self) -> tuple[str, ...]:
        """What a dataset of this policy records beside its actions (``omgmg.datakit.format.BEHAVIOUR_ARRAYS``):
        the log-probability, and the pre-clip sample where the policy clips."""
        return ("log_prob",) if self.cfg.policy == "tanh" else ("log_prob", "pre_clip")

    def behaviour_record(self, u: torch.Tensor, gaussian_log_prob: torch.Tensor) -> dict[str, np.ndarray]:
        """The behaviour arrays of Gaussian samples ``u`` (E, N, A) with their log-densities (E, N)."""
        out = {"behaviour_log_prob": self.log_prob_of_action(u, gaussian_log_prob).numpy()}
        if "pre_clip" in self.behaviour_arrays:
            out["behaviour_pre_clip"] = u.numpy()
        return out

    def sampler(self) -> RolloutPolicy:
        """The stochastic policy frozen for collecting datasets (see :class:`RolloutPolicy`): the
        same actions as ``act`` + ``executed`` given the same normal noise, at a fraction of the cost.
        The Gaussian's log-density needs no division: the sample's standardised value is the noise."""
        actor = FrozenActor(list(self.actors), self.obs_norm)
        log_std = self._log_std(self.log_std.detach())
        std, constant = log_std.exp(), (log_std + 0.5 * math.log(2 * math.pi)) * self.action_mask  # (N, A)

        @torch.no_grad()
        def act(obs: np.ndarray, avail, noise: torch.Tensor) -> tuple[np.ndarray, dict[str, np.ndarray]]:
            u = (self._mean(actor(obs)) + noise * std) * self.action_mask
            gaussian = -(0.5 * noise**2 * self.action_mask + constant).sum(-1)  # (E, N)
            return self.squash(u).numpy(), self.behaviour_record(u, gaussian)

        return RolloutPolicy(act, "normal", tuple(self.low.shape), self.behaviour_arrays)

    @property
    def log_std(self) -> torch.Tensor:
        """Every agent's std parameter w, (N, A) (the log-std itself except for the capped policy)."""
        return torch.stack(list(self.log_stds))

    @torch.no_grad()
    def value(self, state: torch.Tensor) -> torch.Tensor:
        return self.value_norm.denormalise(self.critic(state)[..., 0])

    def executed(self, actions: torch.Tensor):
        """The action the environment receives for Gaussian samples ``actions`` (see ``squash``)."""
        return self.squash(actions).cpu().numpy()

    # ----- losses ---------------------------------------------------------------------------------------
    @staticmethod
    def sequential_policy_loss(log_probs, old_log_probs, factor, advantages, clip):
        """HAPPO's clipped objective for one agent (Kuba et al. 2022, Eq. 11 with PPO clipping), negated:
        ``-E[min(r M A, clip(r, 1-eps, 1+eps) M A)]`` where M compounds earlier agents' ratios."""
        ratio = torch.exp(log_probs - old_log_probs)  # (B,)
        weighted = factor * advantages  # (B,)
        return -torch.min(ratio * weighted, ratio.clamp(1 - clip, 1 + clip) * weighted).mean()

    # ----- update ---------------------------------------------------------------------------------------
    def update(self, ro: Rollout, advantages: torch.Tensor, returns: torch.Tensor, gen: torch.Generator) -> dict:
        cfg, N = self.cfg, self.spec.n_agents
        self.value_norm.update(returns)
        flat = ro.flat()
        adv = advantages.reshape(-1)
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)  # (B,)
        factor = torch.ones_like(adv)  # M
        order = torch.randperm(N, generator=gen).tolist()
        stats = {}
        for i in order:
            actor, mask = self.actors[i], self.action_mask[i]
            obs_i, act_i, old_i = flat.obs[:, i], flat.actions[:, i], flat.log_probs[:, i]
            for _ in range(cfg.epochs):
                for idx in minibatches(adv.shape[0], cfg.num_minibatches, gen):
                    log_std = self.log_stds[i]
                    logp = self._log_prob(self._mean(actor(obs_i[idx]), i), log_std, act_i[idx], mask)
                    entropy = ((self._log_std(log_std) + 0.5 * math.log(2 * math.pi * math.e)) * mask).sum()
                    loss = self.sequential_policy_loss(logp, old_i[idx], factor[idx], adv[idx], cfg.clip)
                    loss = loss - cfg.entropy_coef * entropy
                    self.actor_optims[i].zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(list(actor.parameters()) + [log_std], cfg.max_grad_norm)
                    self.actor_optims[i].step()
            with torch.no_grad():  # compound the factor with agent i's *updated* policy
                new_logp = self._log_prob(self._mean(actor(obs_i), i), self.log_stds[i], act_i, mask)
                factor = factor * torch.exp(new_logp - old_i)
            stats[f"loss/actor_{i}"] = loss.item()
        targets = self.value_norm.normalise(returns.reshape(-1), clip=1e6)
        old_values = self.value_norm.normalise(flat.values, clip=1e6)
        for _ in range(cfg.epochs):
            for idx in minibatches(adv.shape[0], cfg.num_minibatches, gen):
                values = self.critic(flat.state[idx])[..., 0]
                v_loss = clipped_value_loss(values, old_values[idx], targets[idx], cfg.clip)
                self.critic_optim.zero_grad()
                v_loss.backward()
                nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
                self.critic_optim.step()
        stats["loss/critic"] = v_loss.item()
        stats["loss/actor"] = float(np.mean([stats[f"loss/actor_{i}"] for i in range(N)]))
        stats["policy/std"] = self._std(self.log_std).mean().item()
        stats["policy/factor_mean"] = factor.mean().item()
        return stats
