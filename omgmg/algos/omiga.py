"""OMIGA: Offline Multi-Agent RL with Implicit Global-to-Local Value Regularization
(Wang et al., NeurIPS 2023), section 4 and the official code.

The method OMGMG builds on. Per gradient step, on a minibatch (o, s, a, r, o', s'):

1. V_i    <- min E[exp(z_i) + w_i(s) V_i(o_i) / alpha],   z_i = w_i(s) (Qbar_i(o_i,a_i) - V_i(o_i)) / alpha
             (the implicit local value regularisation; OMGMG's Eq. 11 is this loss)
2. Q_i, w, b <- min E[(r + gamma Vbar_tot(s') - Q_tot(s, a))^2],  Q_tot = sum_i w_i(s) Q_i + b(s)
3. pi_i   <- max E_D[exp(z_i) log pi_i(a_i | o_i)]   (in-sample, advantage-weighted likelihood)
4. soft updates of Qbar_i, Vbar_i and the target mixer.

What separates it from OMGMG: the Q target bootstraps from V alone (OMGMG mixes in lam * E_pi Qbar_tot),
and the actor is pure weighted imitation (OMGMG adds E_pi Q_i and weighs imitation by nu).

As the official code: z is clamped to [-10, 10] and the V loss divided by exp(max z); the weights in
step 1 and 3 come from the target mixer and target Q; the Q target uses the target V and target
mixer; exp(z) in step 3 is computed before step 1 updates V. The clamp of z bounds the actor weights
by exp(10): that is the clipping of the official code. Discrete actions (its SMAC variant):
Q_i(o_i, .) over all actions, a masked softmax actor.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from omgmg.algos.base import OfflineAlgorithm, TDConfig
from omgmg.datakit.errors import ConfigError
from omgmg.datakit.loader import Batch
from omgmg.datakit.spec import EnvSpec
from omgmg.nets import AgentMLP, Mixer, adam, mix, soft_update


@dataclass
class OMIGAConfig(TDConfig):
    """OMIGA hyperparameters (shared ones are documented on OfflineConfig and TDConfig)."""

    alpha: float = 10.0
    """Regularisation temperature alpha (the official code's default, 10)."""
    z_clip: float = 10.0
    """Clamp of z = w (Qbar - V) / alpha, as the official code."""

    def __post_init__(self):
        super().__post_init__()
        if self.alpha <= 0 or self.z_clip <= 0:
            raise ConfigError(f"alpha and z_clip must be > 0, got alpha={self.alpha}, z_clip={self.z_clip}")


# ----- losses ---------------------------------------------------------------------------------------------------


def advantage_exponent(
    w: torch.Tensor, q_target: torch.Tensor, v: torch.Tensor, alpha: float, clip: float
) -> torch.Tensor:
    """z_i = w_i(s) / alpha * (Qbar_i(o_i, a_i) - V_i(o_i)), clamped to [-clip, clip] as the official code. (B, N)"""
    return (w * (q_target - v) / alpha).clamp(-clip, clip)


def implicit_value_loss(z: torch.Tensor, w: torch.Tensor, v: torch.Tensor, alpha: float) -> torch.Tensor:
    """OMIGA's implicit local value loss E[exp(z) + w V / alpha], divided by exp(max z) as the official
    code does for stability. (OMGMG's Eq. (11) is this loss; omgmg.py states it on its own, so that a
    change to either method leaves the other as its paper defines it.)"""
    max_z = z.max().detach().clamp(min=-1.0)
    return (torch.exp(z - max_z) + torch.exp(-max_z) * w * v / alpha).mean()


def omiga_q_target(
    reward: torch.Tensor,
    terminated: torch.Tensor,
    next_w: torch.Tensor,
    next_b: torch.Tensor,
    next_v: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """OMIGA's Q target r + gamma * Vbar_tot(s'), with Vbar_tot = sum_i wbar_i(s') Vbar_i(o'_i) + bbar(s');
    cut at terminations only (a truncation still bootstraps)."""
    return reward + (1.0 - terminated) * gamma * mix(next_w, next_v, next_b)


def weighted_likelihood_actor_loss(weight: torch.Tensor, log_prob_data: torch.Tensor) -> torch.Tensor:
    """OMIGA's policy loss, -E_D[exp(z_i) log pi_i(a_i | o_i)], weight (B, N) = exp(z_i) detached."""
    return -(weight.detach() * log_prob_data).mean()


# ----- the algorithm ----------------------------------------------------------------------------------------------


class OMIGA(OfflineAlgorithm):
    name = "omiga"
    config_cls = OMIGAConfig

    def __init__(self, spec: EnvSpec, cfg: OMIGAConfig):
        super().__init__(spec, cfg)
        self.actor = self.stochastic_actor()
        self.q = self.local_q()
        self.v = AgentMLP(spec.n_agents, spec.obs_dim, 1, cfg.hidden, shared=cfg.shared_networks)
        self.mixer = Mixer(spec.state_dim, spec.n_agents, cfg.mixer_hidden)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.v_target = copy.deepcopy(self.v).requires_grad_(False)
        self.mixer_target = copy.deepcopy(self.mixer).requires_grad_(False)
        self.optimizers = {
            "v": adam(self.v.parameters(), cfg.lr),
            "q": adam([*self.q.parameters(), *self.mixer.parameters()], cfg.lr),
            "actor": adam(self.actor.parameters(), cfg.lr),
        }

    def update(self, b: Batch) -> dict[str, float]:
        z, stats = self.update_critic(b)  # steps 1-2
        stats |= self.update_actor(b, z)  # step 3
        self.update_targets()  # step 4
        return stats

    def update_critic(self, b: Batch) -> tuple[torch.Tensor, dict]:
        """Steps 1-2: V_i by the implicit value loss, then Q_i, w, b by the Q target. Returns z."""
        cfg = self.cfg
        with torch.no_grad():
            w_bar, _ = self.mixer_target(b.state)
            q_bar = self.q_at(self.q_target, b.obs, b.actions)
            next_w, next_b = self.mixer_target(b.next_state)
            target = omiga_q_target(
                b.reward, b.terminated, next_w, next_b, self.v_target(b.next_obs)[..., 0], cfg.gamma
            )
        v = self.v(b.obs)[..., 0]
        z = advantage_exponent(w_bar, q_bar, v, cfg.alpha, cfg.z_clip)
        v_loss = implicit_value_loss(z, w_bar, v, cfg.alpha)
        self.optimize("v", v_loss, self.v)
        w, bias = self.mixer(b.state)
        q_tot = mix(w, self.q_at(self.q, b.obs, b.actions), bias)
        q_loss = ((q_tot - target) ** 2).mean()
        self.optimize("q", q_loss, [*self.q.parameters(), *self.mixer.parameters()])
        return z.detach(), {
            "loss/v": v_loss.item(),
            "loss/q": q_loss.item(),
            "value/q_tot": q_tot.mean().item(),
            "value/v": v.mean().item(),
            "value/exp_z": torch.exp(z).mean().item(),
        }

    def update_actor(self, b: Batch, z: torch.Tensor | None = None) -> dict:
        """Step 3: advantage-weighted likelihood with weights exp(z) (recomputed when not given)."""
        if z is None:
            with torch.no_grad():
                w_bar, _ = self.mixer_target(b.state)
                z = advantage_exponent(
                    w_bar,
                    self.q_at(self.q_target, b.obs, b.actions),
                    self.v(b.obs)[..., 0],
                    self.cfg.alpha,
                    self.cfg.z_clip,
                )
        loss = weighted_likelihood_actor_loss(torch.exp(z), self.log_prob_data(b))
        self.optimize("actor", loss, self.actor)
        return {"loss/actor": loss.item()}

    # ----- diagnostics (omgmg.diagnostics) ---------------------------------------------------------------------
    def q_tot(self, b: Batch) -> torch.Tensor:
        w, bias = self.mixer(b.state)
        return mix(w, self.q_at(self.q, b.obs, b.actions), bias)

    def diagnostics(self, b: Batch, mc_return: torch.Tensor | None = None) -> dict[str, float]:
        """Adds the share of z at its clamp (the implicit value loss gets no exp-term gradient there)."""
        cfg, out = self.cfg, super().diagnostics(b, mc_return)
        with torch.no_grad():
            w_bar, _ = self.mixer_target(b.state)
            q_bar = self.q_at(self.q_target, b.obs, b.actions)
            z = advantage_exponent(w_bar, q_bar, self.v(b.obs)[..., 0], cfg.alpha, cfg.z_clip)
        out["value/z_at_clip"] = float((z.abs() >= cfg.z_clip).float().mean())
        return out

    def update_targets(self) -> None:
        for target, source in ((self.q_target, self.q), (self.v_target, self.v), (self.mixer_target, self.mixer)):
            soft_update(target, source, self.cfg.tau)
