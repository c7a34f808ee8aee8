"""OMAR: Offline Multi-Agent RL with Actor Rectification (Pan et al., ICML 2022).

Independent TD3 learners on the team reward, each critic made conservative by CQL, and each
actor "rectified": besides following the gradient of its critic, it imitates the best action a
zeroth-order search (cross-entropy method) finds on that critic, escaping the bad local optima a
conservative critic's landscape is full of. Per agent i, per gradient step:

1. Twin critics Q^1_i, Q^2_i (on o_i ++ a_i) with TD3's target
   y = r + gamma min_k Qbar^k_i(o'_i, clip(mubar_i(o'_i) + clip(eps, +-c))), eps ~ N(0, sigma^2),
   plus cql_alpha * (logsumexp_a Q^k_i(o_i, a) - Q^k_i(o_i, a_i)) per critic, the logsumexp estimated
   from uniform actions and noisy policy actions at o and o' (each minus its log-density, as the
   OMAR code).
2. The actor mu_i: min (1 - omar_coe) * (-Q^1_i(o_i, mu_i(o_i))) + omar_coe * ||mu_i(o_i) - a_hat_i||^2,
   a_hat_i the best of the CEM's samples if it beats mu_i(o_i) on Q^1_i, else mu_i(o_i) itself.
   CEM (the official settings): a Gaussian in the unit action cube, mean 0 and std 2 at first,
   ``cem_iters`` rounds of ``cem_samples`` samples, refitted to the ``cem_elites`` best.
3. Soft target updates.

Discrete actions (the paper reports OMAR on continuous tasks; OMGMG's Table 2 runs it on SMACv2,
following the discrete variant of the CFCQL code): Q^1_i(o_i, .), Q^2_i(o_i, .) over all actions, CQL's
exact logsumexp over the available actions, target r + gamma E_{a'~pibar_i} min_k Qbar^k_i(o'_i, a') (the
exact expectation under the target softmax policy), and a masked softmax actor
    min (1 - omar_coe) * -E_{a~pi_i}[Q^1_i(o_i, a)] + omar_coe * CE(pi_i(.|o_i), a_hat_i),
a_hat_i the better by Q^1_i of the policy's most probable action and the best available action. Over
a handful of discrete actions the zeroth-order search is exact enumeration, which CEM approximates.

Independent critics are faithful to OMAR (no mixer); the team reward is every agent's reward.
Truncations bootstrap, terminations do not. The actor update runs every step (no TD3 policy delay,
as the OMAR code).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from omgmg.algos.base import OfflineAlgorithm, TDConfig, action_bounds
from omgmg.algos.macql import conservative_penalty
from omgmg.datakit.errors import ConfigError
from omgmg.datakit.loader import Batch
from omgmg.datakit.spec import EnvSpec
from omgmg.members import MemberRandom, member_mean
from omgmg.nets import ActionBox, DeterministicPolicy, TwinQ, adam, masked_max, soft_update


@dataclass
class OMARConfig(TDConfig):
    """OMAR hyperparameters (shared ones are documented on OfflineConfig and TDConfig; mixer_hidden is
    unused: OMAR's critics are independent)."""

    cql_alpha: float = 1.0
    """Weight of the conservative regulariser of each critic."""
    omar_coe: float = 0.7
    """Weight of imitating the CEM's best action against following the critic's gradient."""
    cem_iters: int = 2
    """CEM rounds (official: 2)."""
    cem_samples: int = 20
    """Samples per CEM round (official: 20)."""
    cem_elites: int = 5
    """Elites refitted per round (official: 5)."""
    cem_init_std: float = 2.0
    """Initial CEM standard deviation in the unit action cube (official: 2.0, mean 0)."""
    n_action_samples: int = 10
    """Sampled actions per source (uniform, mu(o) + noise, mu(o') + noise) for the logsumexp."""
    cql_noise: float = 0.2
    """Std of the Gaussian noise on policy actions in the logsumexp's samples (unit cube)."""
    target_noise: float = 0.2
    """TD3 target-policy smoothing noise std (unit cube)."""
    target_noise_clip: float = 0.5
    """TD3 clip of that noise."""

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.omar_coe <= 1:
            raise ConfigError(f"omar_coe must lie in [0, 1], got {self.omar_coe}")
        if not 1 <= self.cem_elites <= self.cem_samples or self.cem_iters < 1 or self.n_action_samples < 1:
            raise ConfigError("need cem_iters >= 1, 1 <= cem_elites <= cem_samples and n_action_samples >= 1")


# ----- losses and the search ------------------------------------------------------------------------------------


def cem_search(
    score,
    shape: tuple[int, ...],
    action_dim: int,
    iters: int,
    samples: int,
    elites: int,
    init_std: float,
    rng: MemberRandom,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy maximisation of ``score`` (unit-cube actions (M, S, *shape, A) -> (M, S, *shape), S
    samples) per member, batch entry and agent independently, ``shape`` = (B, N). Returns each member's
    best sample (M, *shape, A) and its score (M, *shape)."""
    M = len(rng)
    mean = torch.zeros(M, 1, *shape, action_dim, device=rng.device)
    std = torch.full_like(mean, init_std)
    for _ in range(iters):
        u = (mean + std * rng.randn((samples, *shape, action_dim))).clamp(-1.0, 1.0)  # (M, S, *shape, A)
        values = score(u)  # (M, S, *shape)
        top = values.topk(elites, dim=1).indices  # (M, elites, *shape)
        elite = u.gather(1, top[..., None].expand(M, elites, *u.shape[2:]))
        mean, std = elite.mean(1, keepdim=True), elite.std(1, unbiased=False, keepdim=True)
    best_value, best = values.max(1)
    return u.gather(1, best[:, None, ..., None].expand(M, 1, *u.shape[2:]))[:, 0], best_value


def omar_actor_loss(q_pi: torch.Tensor, pi_actions: torch.Tensor, imitation_target: torch.Tensor, coe) -> torch.Tensor:
    """(1 - coe) * -E[Q_i(o_i, mu_i(o_i))] + coe * E[||mu_i(o_i) - a_hat_i||^2] (sum over action entries),
    each member's (M,)."""
    imitation = member_mean(((pi_actions - imitation_target.detach()) ** 2).sum(-1))
    return (1 - coe) * -member_mean(q_pi) + coe * imitation


# ----- the algorithm ----------------------------------------------------------------------------------------------


class OMAR(OfflineAlgorithm):
    name = "omar"
    config_cls = OMARConfig
    member_hyperparameters = ("cql_alpha", "omar_coe")

    def __init__(self, spec: EnvSpec, cfg: OMARConfig | list[OMARConfig]):
        super().__init__(spec, cfg)
        cfg = self.cfg
        if spec.discrete:
            self.actor = self.stochastic_actor()
        else:
            box = ActionBox(*action_bounds(spec))
            self.actor = DeterministicPolicy(
                self.members, spec.n_agents, spec.obs_dim, box, cfg.hidden, cfg.shared_networks
            )
        self.q = self.local_q(twin=True)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.optimizers = {"q": adam(self.q.parameters(), cfg.lr), "actor": adam(self.actor.parameters(), cfg.lr)}

    @property
    def box(self) -> ActionBox:
        return self.actor.box

    def update(self, b: Batch) -> dict[str, torch.Tensor]:
        stats = self.update_critic(b)  # step 1
        stats |= self.update_actor(b)  # step 2
        self.update_targets()  # step 3
        return stats

    def _twin(self, obs: torch.Tensor, actions: torch.Tensor, q: TwinQ | None = None) -> torch.Tensor:
        """(Q^1_i, Q^2_i) at (o_i, a_i): (..., N, 2)."""
        return (q or self.q)(torch.cat([obs, actions], -1))[..., 0, :]

    def _noisy(self, actions: torch.Tensor, std: float, clip: float | None = None):
        """Actions plus Gaussian noise in the unit cube (optionally clipped), clamped to the box, and the
        noise's log-density (..., N)."""
        noise = self.rng.randn(actions.shape[1:]) * std
        if clip is not None:
            noise = noise.clamp(-clip, clip)
        u = (self.box.to_unit(actions) + noise).clamp(-1.0, 1.0)
        mask = self.box.mask
        log_density = ((-0.5 * (noise / std) ** 2 - math.log(std * math.sqrt(2 * math.pi))) * mask).sum(-1)
        return self.box.from_unit(u), log_density

    # ----- step 1: conservative twin critics -----------------------------------------------------------------
    def update_critic(self, b: Batch) -> dict:
        if self.spec.discrete:
            return self._update_critic_discrete(b)
        cfg = self.cfg
        with torch.no_grad():
            next_a, _ = self._noisy(self.actor_target(b.next_obs), cfg.target_noise, cfg.target_noise_clip)
            next_q = self._twin(b.next_obs, next_a, self.q_target).min(-1).values  # (M, B, N)
            target = b.reward[..., None] + (1.0 - b.terminated[..., None]) * cfg.gamma * next_q
        q_data = self._twin(b.obs, b.actions)  # (M, B, N, 2)
        bellman = member_mean((q_data - target[..., None]) ** 2) * 2  # sum over the twins
        k, (M, B) = cfg.n_action_samples, b.obs.shape[:2]
        with torch.no_grad():
            uniform, log_u = self.box.uniform((k * B,), self.rng)
            pi_now, log_now = self._noisy(self.actor(b.obs).repeat(1, k, 1, 1), cfg.cql_noise)
            pi_next, log_next = self._noisy(self.actor(b.next_obs).repeat(1, k, 1, 1), cfg.cql_noise)
        actions = torch.cat([uniform, pi_now, pi_next], 1)  # (M, 3kB, N, A)
        log_density = torch.cat([log_u, log_now, log_next], 1)[..., None]  # (M, 3kB, N, 1)
        q_candidates = self._twin(b.obs.repeat(1, 3 * k, 1, 1), actions) - log_density
        q_candidates = q_candidates.reshape(M, 3 * k, B, -1, 2)
        penalty = sum(conservative_penalty(q_candidates[..., j].permute(0, 2, 3, 1), q_data[..., j]) for j in range(2))
        self.optimize("q", bellman + self.hp("cql_alpha") * penalty, self.q)
        return {"loss/q": bellman.detach(), "loss/cql": penalty.detach(), "value/q": member_mean(q_data.detach())}

    def _update_critic_discrete(self, b: Batch) -> dict:
        cfg = self.cfg
        with torch.no_grad():
            next_probs = self.actor_target.log_probs(b.next_obs, b.next_avail).exp()[..., None]  # (M, B, N, K, 1)
            next_q = (next_probs * self.q_target(b.next_obs)).sum(-2).min(-1).values  # (M, B, N)
            target = b.reward[..., None] + (1.0 - b.terminated[..., None]) * cfg.gamma * next_q
        q_all = self.q(b.obs)  # (M, B, N, K, 2)
        q_data = q_all.gather(-2, b.actions[..., None, None].expand(*b.actions.shape, 1, 2))[..., 0, :]  # (M, B, N, 2)
        bellman = member_mean((q_data - target[..., None]) ** 2) * 2
        q_masked = q_all.masked_fill(~b.avail[..., None], -torch.inf)
        penalty = sum(conservative_penalty(q_masked[..., j], q_data[..., j]) for j in range(2))
        self.optimize("q", bellman + self.hp("cql_alpha") * penalty, self.q)
        return {"loss/q": bellman.detach(), "loss/cql": penalty.detach(), "value/q": member_mean(q_data.detach())}

    # ----- step 2: the rectified actor -----------------------------------------------------------------------
    def update_actor(self, b: Batch) -> dict:
        if self.spec.discrete:
            return self._update_actor_discrete(b)
        cfg = self.cfg
        self.q.requires_grad_(False)
        try:
            pi = self.actor(b.obs)  # (M, B, N, A)
            q_pi = self.q.q1(torch.cat([b.obs, pi], -1))[..., 0]  # (M, B, N)
            with torch.no_grad():

                def score(u):  # Q^1_i at unit-cube actions (M, S, B, N, A) -> (M, S, B, N)
                    obs = b.obs[:, None].expand(*u.shape[:2], *b.obs.shape[1:])
                    return self.q.q1(torch.cat([obs, self.box.from_unit(u)], -1))[..., 0]

                best_u, best_q = cem_search(
                    score,
                    tuple(pi.shape[1:3]),
                    pi.shape[-1],
                    cfg.cem_iters,
                    cfg.cem_samples,
                    cfg.cem_elites,
                    cfg.cem_init_std,
                    self.rng,
                )
                better = (best_q > q_pi)[..., None]
                target = torch.where(better, self.box.from_unit(best_u), pi)
            loss = omar_actor_loss(q_pi, self.box.to_unit(pi), self.box.to_unit(target), self.hp("omar_coe"))
            self.optimize("actor", loss, self.actor)
        finally:
            self.q.requires_grad_(True)
        return {"loss/actor": loss.detach(), "value/cem_better": member_mean(better.float())}

    def _update_actor_discrete(self, b: Batch) -> dict:
        with torch.no_grad():
            q1 = self.q.q1(b.obs)  # (M, B, N, K)
        log_probs = self.actor.log_probs(b.obs, b.avail)  # (M, B, N, K)
        q_pi = (log_probs.exp() * q1).sum(-1)  # E_{a~pi_i} Q^1_i(o_i, a)
        with torch.no_grad():
            policy_action = log_probs.argmax(-1)
            best_q, best_action = masked_max(q1, b.avail)  # the search, exact over the available actions
            better = best_q > q1.gather(-1, policy_action[..., None])[..., 0]
            target = torch.where(better, best_action, policy_action)
        imitation = -member_mean(log_probs.gather(-1, target[..., None]))  # cross-entropy to a_hat
        coe = self.hp("omar_coe")
        loss = (1 - coe) * -member_mean(q_pi) + coe * imitation
        self.optimize("actor", loss, self.actor)
        return {"loss/actor": loss.detach(), "value/cem_better": member_mean(better.float())}

    def update_targets(self) -> None:
        soft_update(self.q_target, self.q, self.cfg.tau)
        soft_update(self.actor_target, self.actor, self.cfg.tau)
