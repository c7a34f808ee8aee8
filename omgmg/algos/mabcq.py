"""MABCQ: Batch-Constrained Q-learning (Fujimoto et al., ICML 2019) per agent, with value decomposition.

Each agent acts only with actions its behaviour model finds likely, and the team value is
Q_tot(s, a) = sum_i w_i(s) Q_i(o_i, a_i) + b(s) with the shared non-negative mixer. Because w_i >= 0,
the joint argmax of Q_tot over per-agent candidates is each agent's own argmax of Q_i.

Continuous actions (BCQ, Fujimoto et al. 2019a, Algorithm 1):
1. G_i: a conditional VAE of (o_i, a_i), min reconstruction + 0.5 KL (``vae_loss``).
2. Twin critics Q^1, Q^2 (each with its mixer), target
   y = r + gamma * [lam * min_k Qbar^k_tot + (1 - lam) * max_k Qbar^k_tot](s', a'), lam = 0.75, where
   a'_i is the best of ``n_candidates`` perturbed samples a + xi_i(o'_i, a) of G_i(o'_i), a sample
   a being scored by Qbar^1_i (as BCQ's acting rule).
3. The perturbation model xi_i (output within +-phi of the action range, phi = 0.05) maximises
   Q^1_tot(s, a + xi(o, a)), a ~ G(o).
   Acting: the best (by Q^1_i) of ``n_candidates`` perturbed VAE samples. For evaluation the latent
   draws come from a generator reseeded at every call, so actions are a deterministic function of o.
   Deviation: BCQ takes max over candidates of the soft-clipped twin value; with two mixers that is
   not per-agent decomposable, so candidates are chosen by Qbar^1_i and the soft clip applies to the
   mixed totals of the chosen joint action.

Discrete actions (discrete BCQ, Fujimoto et al. 2019b):
1. G_i(a | o_i): a masked softmax classifier of the behaviour action (cross-entropy).
2. Q_i(o_i, .) over all actions; the allowed actions are the available ones with
   G_i(a | o_i) / max_a G_i(a | o_i) > ``threshold`` (0.3); y = r + gamma Qbar_tot(s', a'*) with
   a'*_i = argmax of Q_i(o'_i, .) over the allowed actions (Huber loss, as the reference code).
   Acting: argmax of Q_i over the allowed actions.

Terminations cut the bootstrap, truncations keep it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omgmg.algos.base import OfflineAlgorithm, TDConfig, action_bounds
from omgmg.datakit.errors import ConfigError
from omgmg.datakit.loader import Batch
from omgmg.datakit.spec import EnvSpec
from omgmg.members import MemberRandom, member_mean
from omgmg.nets import ActionBox, AgentVAE, adam, masked_max, soft_update

EVAL_SEED = 12345  # latent draws when acting, so evaluation actions depend on the observation only


@dataclass
class MABCQConfig(TDConfig):
    """MABCQ hyperparameters (shared ones are documented on OfflineConfig and TDConfig)."""

    phi: float = 0.05
    """Largest perturbation, as a fraction of each action's range (continuous; BCQ's 0.05)."""
    twin_min_weight: float = 0.75
    """Soft clipped double Q: weight * min + (1 - weight) * max of the twin targets (continuous; BCQ's 0.75)."""
    n_candidates: int = 10
    """Behaviour-model samples scored per state for the target and for acting (continuous; BCQ's 10)."""
    threshold: float = 0.3
    """Allowed discrete actions: behaviour probability relative to the most likely one above this."""

    def __post_init__(self):
        super().__post_init__()
        if not (
            0 <= self.twin_min_weight <= 1 and 0 <= self.threshold < 1 and self.phi >= 0 and self.n_candidates >= 1
        ):
            raise ConfigError("twin_min_weight must lie in [0, 1], threshold in [0, 1), phi >= 0 and n_candidates >= 1")


# ----- losses ---------------------------------------------------------------------------------------------------


def vae_loss(recon: torch.Tensor, actions: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """BCQ's generative-model loss: squared reconstruction error + 0.5 KL(N(mean, std) || N(0, 1))."""
    kl = -0.5 * (1 + 2 * log_std - mean**2 - (2 * log_std).exp()).sum(-1)
    return member_mean(((recon - actions) ** 2).sum(-1)) + 0.5 * member_mean(kl)


def soft_clipped_double_q(q1: torch.Tensor, q2: torch.Tensor, lam: float) -> torch.Tensor:
    """BCQ's target value lam * min(q1, q2) + (1 - lam) * max(q1, q2)."""
    return lam * torch.minimum(q1, q2) + (1 - lam) * torch.maximum(q1, q2)


def allowed_actions(behaviour_probs: torch.Tensor, avail: torch.Tensor, threshold: float) -> torch.Tensor:
    """Discrete BCQ's filter: available actions whose behaviour probability, relative to the most likely
    action's, exceeds ``threshold``. (..., K) bool."""
    relative = behaviour_probs / behaviour_probs.max(-1, keepdim=True).values.clamp(min=1e-12)
    return avail & (relative > threshold)


# ----- the algorithm ----------------------------------------------------------------------------------------------


class MABCQ(OfflineAlgorithm):
    name = "mabcq"
    config_cls = MABCQConfig

    def __init__(self, spec: EnvSpec, cfg: MABCQConfig | list[MABCQConfig]):
        super().__init__(spec, cfg)
        cfg, M = self.cfg, self.members
        N, O, H, shared = spec.n_agents, spec.obs_dim, cfg.hidden, cfg.shared_networks
        if spec.discrete:
            self.behaviour = self.stochastic_actor()  # G_i(a | o_i): a masked softmax classifier
            self.q = self.local_q()
            self.mixer = self.make_mixer()
        else:
            A = spec.action_dim
            box = ActionBox(*action_bounds(spec))
            self.behaviour = AgentVAE(M, N, O, box, latent=2 * A, hidden=H, shared=shared)  # G_i
            self.actor = self.agent_mlp(O + A, A)  # the perturbation xi_i(o_i, a_i)
            self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
            self.q = self.local_q(twin=True)
            self.mixer = nn.ModuleList([self.make_mixer(), self.make_mixer()])
            self.optimizers["actor"] = adam(self.actor.parameters(), cfg.lr)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.mixer_target = copy.deepcopy(self.mixer).requires_grad_(False)
        self.optimizers |= {
            "behaviour": adam(self.behaviour.parameters(), cfg.lr),
            "q": adam(self.critic_parameters(), cfg.lr),
        }

    def critic_parameters(self) -> list[nn.Parameter]:
        return [*self.q.parameters(), *self.mixer.parameters()]

    def update(self, b: Batch) -> dict[str, torch.Tensor]:
        stats = self.update_behaviour_model(b)  # step 1
        stats |= self.update_critic(b)  # step 2
        if not self.spec.discrete:
            stats |= self.update_actor(b)  # step 3
        self.update_targets()
        return stats

    # ----- step 1: the behaviour model -------------------------------------------------------------------------
    def update_behaviour_model(self, b: Batch) -> dict:
        if self.spec.discrete:
            log_probs = self.behaviour.log_probs(b.obs, b.avail)
            loss = -member_mean(log_probs.gather(-1, b.actions[..., None]))  # the negative log-likelihood
        else:
            recon, mean, log_std = self.behaviour(b.obs, b.actions, self.rng)
            loss = vae_loss(recon, b.actions, mean, log_std)
        self.optimize("behaviour", loss, self.behaviour)
        return {"loss/behaviour": loss.detach()}

    # ----- continuous: candidates perturbed by xi ------------------------------------------------------------
    def _perturb(self, xi: nn.Module, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        box = self.behaviour.box
        scale = self.cfg.phi * (box.high - box.low) / 2
        return box.clamp(actions + scale * torch.tanh(xi(torch.cat([obs, actions], -1))))

    def _best_candidates(self, obs: torch.Tensor, xi: nn.Module, q1: nn.Module, rng: MemberRandom) -> torch.Tensor:
        """Per agent, the best by Q^1_i of n perturbed behaviour samples: (M, B, N, A)."""
        k, (M, B) = self.cfg.n_candidates, obs.shape[:2]
        obs_k = obs.repeat(1, k, 1, 1)  # (M, kB, N, O)
        candidates = self._perturb(xi, obs_k, self.behaviour.decode(obs_k, rng))
        scores = q1(torch.cat([obs_k, candidates], -1))[..., 0].reshape(M, k, B, -1)  # (M, k, B, N)
        best = scores.argmax(1)  # (M, B, N)
        candidates = candidates.reshape(M, k, B, *candidates.shape[2:])
        return candidates.gather(1, best[:, None, ..., None].expand(M, 1, *candidates.shape[2:]))[:, 0]

    # ----- step 2: the critic ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _target(self, b: Batch) -> torch.Tensor:
        cfg = self.cfg
        if self.spec.discrete:
            allowed = allowed_actions(
                self.behaviour.log_probs(b.next_obs, b.next_avail).exp(), b.next_avail, cfg.threshold
            )
            _, greedy = masked_max(self.q(b.next_obs), allowed)
            next_q = self.q_target(b.next_obs).gather(-1, greedy[..., None])[..., 0]
            next_value = self.mixer_target.total(b.next_state, next_q)
        else:
            a_next = self._best_candidates(b.next_obs, self.actor_target, self.q_target.q1, self.rng)
            q = self.q_target(torch.cat([b.next_obs, a_next], -1))[..., 0, :]  # (M, B, N, 2)
            totals = [self.mixer_target[k].total(b.next_state, q[..., k]) for k in range(2)]
            next_value = soft_clipped_double_q(totals[0], totals[1], cfg.twin_min_weight)
        return b.reward + (1.0 - b.terminated) * cfg.gamma * next_value

    def update_critic(self, b: Batch) -> dict:
        target = self._target(b)
        if self.spec.discrete:
            q_tot = self.mixer.total(b.state, self.q_at(self.q, b.obs, b.actions))
            loss = member_mean(F.smooth_l1_loss(q_tot, target, reduction="none"))
        else:
            q = self.q(torch.cat([b.obs, b.actions], -1))[..., 0, :]  # (M, B, N, 2)
            totals = [self.mixer[k].total(b.state, q[..., k]) for k in range(2)]
            q_tot = totals[0]
            loss = member_mean((totals[0] - target) ** 2) + member_mean((totals[1] - target) ** 2)
        self.optimize("q", loss, self.critic_parameters())
        return {"loss/q": loss.detach(), "value/q_tot": member_mean(q_tot.detach())}

    # ----- step 3: the perturbation model (continuous) -----------------------------------------------------------
    def update_actor(self, b: Batch) -> dict:
        with torch.no_grad():
            sampled = self.behaviour.decode(b.obs, self.rng)
            w, _ = self.mixer[0](b.state)
        self.q.requires_grad_(False)
        try:
            perturbed = self._perturb(self.actor, b.obs, sampled)
            loss = -member_mean((w * self.q.q1(torch.cat([b.obs, perturbed], -1))[..., 0]).sum(-1))
            self.optimize("actor", loss, self.actor)
        finally:
            self.q.requires_grad_(True)
        return {"loss/actor": loss.detach()}

    def update_targets(self) -> None:
        soft_update(self.q_target, self.q, self.cfg.tau)
        soft_update(self.mixer_target, self.mixer, self.cfg.tau)
        if not self.spec.discrete:
            soft_update(self.actor_target, self.actor, self.cfg.tau)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, avail: torch.Tensor | None) -> torch.Tensor:
        if self.spec.discrete:
            allowed = allowed_actions(self.behaviour.log_probs(obs, avail).exp(), avail, self.cfg.threshold)
            return masked_max(self.q(obs), allowed)[1]
        rng = MemberRandom.seeded([EVAL_SEED] * self.members, device=obs.device)
        return self._best_candidates(obs, self.actor, self.q.q1, rng)
