"""MACQL: Conservative Q-Learning (Kumar et al., NeurIPS 2020) with value decomposition.

Q_tot(s, a) = sum_i w_i(s) Q_i(o_i, a_i) + b(s) with the shared non-negative mixer, trained by

    min  E_D[(Q_tot(s, a) - y)^2] + cql_alpha * mean_i E_D[logsumexp_a Q_i(o_i, a) - Q_i(o_i, a_i)]

the CQL(H) regulariser of Kumar et al. Eq. (4), applied to each agent's local Q, which pushes down
Q on actions the data does not support and up on the dataset's actions.

- Continuous actions: the logsumexp over the action box is estimated by importance sampling as in
  the CQL code: ``n_action_samples`` uniform actions, and as many from pi_i(.|o_i) and from pi_i(.|o'_i),
  each minus its log-density. The actor is SAC's with the mixed critic: min E[alpha_H log pi_i
  - w_i(s) Q_i(o_i, a_i ~ pi_i)], its temperature alpha_H tuned towards entropy -|A_i| (SAC). The
  target is y = r + gamma Qbar_tot(s', a' ~ pi(o')), without the entropy bonus (CQL's default).
- Discrete actions: the logsumexp is exact over each agent's available actions; there is no actor:
  the policy is greedy in Q_i over the available actions, and y = r + gamma Qbar_tot(s', a'*) with
  a'*_i = argmax Q_i(o'_i, .) evaluated by the target network (double Q-learning, as QMIX-style code).

Terminations cut the bootstrap, truncations keep it. The regulariser weight is the fixed cql_alpha
(CQL's Lagrange variant is not implemented).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from omgmg.algos.base import OfflineAlgorithm, TDConfig
from omgmg.datakit.errors import ConfigError
from omgmg.datakit.loader import Batch
from omgmg.datakit.spec import EnvSpec
from omgmg.members import member_mean, per_member
from omgmg.nets import adam, masked_max, mix, soft_update


@dataclass
class MACQLConfig(TDConfig):
    """MACQL hyperparameters (shared ones are documented on OfflineConfig and TDConfig)."""

    cql_alpha: float = 1.0
    """Weight of the conservative regulariser."""
    n_action_samples: int = 10
    """Sampled actions per source (uniform, pi(o), pi(o')) for the continuous logsumexp (the CQL code's 10)."""
    init_entropy_alpha: float = 1.0
    """Initial SAC temperature (continuous actions; tuned towards entropy -|A_i|)."""

    def __post_init__(self):
        super().__post_init__()
        if self.cql_alpha < 0 or self.n_action_samples < 1 or self.init_entropy_alpha <= 0:
            raise ConfigError("cql_alpha must be >= 0, n_action_samples >= 1 and init_entropy_alpha > 0")


# ----- losses ---------------------------------------------------------------------------------------------------


def conservative_penalty(q_candidates: torch.Tensor, q_data: torch.Tensor) -> torch.Tensor:
    """CQL(H): E[logsumexp_a Q_i(o_i, a) - Q_i(o_i, a_i)], averaged over batch and agents.

    q_candidates (M, B, N, C): Q_i at C candidate actions (minus their log-density when sampled; masked
    to -inf where unavailable); q_data (M, B, N): Q_i at the dataset's action. Each member's: (M,).
    """
    return member_mean(torch.logsumexp(q_candidates, dim=-1) - q_data)


def td_loss(q_tot: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return member_mean((q_tot - target.detach()) ** 2)


# ----- the algorithm ----------------------------------------------------------------------------------------------


class MACQL(OfflineAlgorithm):
    name = "macql"
    config_cls = MACQLConfig
    member_hyperparameters = ("cql_alpha",)

    def __init__(self, spec: EnvSpec, cfg: MACQLConfig | list[MACQLConfig]):
        super().__init__(spec, cfg)
        cfg = self.cfg
        self.q = self.local_q()
        if not spec.discrete:  # discrete MACQL is greedy in Q: no actor
            self.actor = self.stochastic_actor()
            self.log_entropy_alpha = nn.Parameter(torch.full((self.members,), math.log(cfg.init_entropy_alpha)))
            self.register_buffer("target_entropy", -self.actor.box.mask.sum(-1))  # -|A_i|, (N,)
        self.mixer = self.make_mixer()
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.mixer_target = copy.deepcopy(self.mixer).requires_grad_(False)
        self.optimizers = {"q": adam(self.critic_parameters(), cfg.lr)}
        if not spec.discrete:
            self.optimizers["actor"] = adam(self.actor.parameters(), cfg.lr)
            self.optimizers["entropy_alpha"] = adam([self.log_entropy_alpha], cfg.lr)

    def critic_parameters(self) -> list[nn.Parameter]:
        return [*self.q.parameters(), *self.mixer.parameters()]

    def update(self, b: Batch) -> dict[str, torch.Tensor]:
        stats = self.update_critic(b)
        if not self.spec.discrete:
            stats |= self.update_actor(b)
        self.update_targets()
        return stats

    # ----- critic -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _target(self, b: Batch) -> torch.Tensor:
        if self.spec.discrete:
            _, greedy = masked_max(self.q(b.next_obs), b.next_avail)  # online argmax (double Q)
            next_q = self.q_target(b.next_obs).gather(-1, greedy[..., None])[..., 0]
        else:
            next_q = self.q_at(self.q_target, b.next_obs, self.actor.sample(b.next_obs, self.rng)[0])
        next_w, next_b = self.mixer_target(b.next_state)
        return b.reward + (1.0 - b.terminated) * self.cfg.gamma * mix(next_w, next_q, next_b)

    def _candidates(self, b: Batch) -> torch.Tensor:
        """Q_i at the logsumexp's candidate actions, (M, B, N, C), minus log-densities when sampled."""
        if self.spec.discrete:
            return self.q(b.obs).masked_fill(~b.avail, -torch.inf)
        k, (M, B) = self.cfg.n_action_samples, b.obs.shape[:2]
        with torch.no_grad():
            uniform, log_u = self.actor.box.uniform((k, B), self.rng)  # (M, k, B, N, A), (M, k, B, N)
            pi_now, log_now = self.actor.sample_repeated(b.obs, k, self.rng)  # (M, k B, N, A), (M, k B, N)
            pi_next, log_next = self.actor.sample_repeated(b.next_obs, k, self.rng)
        actions = torch.cat([uniform.reshape(M, k * B, *uniform.shape[3:]), pi_now, pi_next], 1)  # (M, 3kB, N, A)
        log_density = torch.cat([log_u.reshape(M, k * B, -1), log_now, log_next], 1)  # (M, 3kB, N)
        q = self.q_at(self.q, b.obs.repeat(1, 3 * k, 1, 1), actions) - log_density  # (M, 3kB, N)
        return q.reshape(M, 3 * k, B, -1).permute(0, 2, 3, 1)

    def update_critic(self, b: Batch) -> dict:
        target = self._target(b)
        w, bias = self.mixer(b.state)
        q_data = self.q_at(self.q, b.obs, b.actions)
        q_tot = mix(w, q_data, bias)
        bellman = td_loss(q_tot, target)
        penalty = conservative_penalty(self._candidates(b), q_data)
        self.optimize("q", bellman + self.hp("cql_alpha") * penalty, self.critic_parameters())
        return {"loss/q": bellman.detach(), "loss/cql": penalty.detach(), "value/q_tot": member_mean(q_tot.detach())}

    # ----- actor (continuous) -------------------------------------------------------------------------------
    def update_actor(self, b: Batch) -> dict:
        """SAC's actor on the mixed critic, then its temperature."""
        entropy_alpha = self.log_entropy_alpha.exp().detach()  # (M,)
        self.q.requires_grad_(False)
        try:
            actions, log_prob = self.actor.sample(b.obs, self.rng)
            with torch.no_grad():
                w, _ = self.mixer(b.state)
            loss = member_mean(per_member(entropy_alpha, log_prob) * log_prob - w * self.q_at(self.q, b.obs, actions))
            self.optimize("actor", loss, self.actor)
        finally:
            self.q.requires_grad_(True)
        log_alpha = per_member(self.log_entropy_alpha, log_prob)
        alpha_loss = -member_mean(log_alpha * (log_prob.detach() + self.target_entropy))
        self.optimize("entropy_alpha", alpha_loss, [self.log_entropy_alpha])
        return {"loss/actor": loss.detach(), "value/entropy_alpha": entropy_alpha}

    def update_targets(self) -> None:
        soft_update(self.q_target, self.q, self.cfg.tau)
        soft_update(self.mixer_target, self.mixer, self.cfg.tau)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, avail: torch.Tensor | None) -> torch.Tensor:
        if self.spec.discrete:
            return masked_max(self.q(obs), avail)[1]
        return self.actor.deterministic(obs)
