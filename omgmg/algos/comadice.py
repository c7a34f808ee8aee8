"""ComaDICE: Offline Cooperative Multi-Agent RL with Stationary Distribution Shift Regularization
(Bui et al., ICLR 2025).

A DICE method: instead of a Q function it learns the Lagrange multipliers nu of the Bellman-flow
constraints of the regularised problem max_d E_d[r] - alpha D_f(d || d_D), decomposed over agents with
the same non-negative mixer as the value methods:

    nu_tot(s) = sum_i w_i(s) nu_i(o_i) + b(s),        e(s, a, s') = r + gamma nu_tot(s') - nu_tot(s)

For the soft-chi^2 divergence (f(x) = x log x - x + 1 for x < 1, (x - 1)^2 / 2 otherwise) the inner
maximisation over the ratio w = d / d_D has the closed form (OptiDICE, Lee et al. 2021)

    w*(e) = exp(e / alpha) if e < 0 else e / alpha + 1,

which leaves a convex loss in nu alone:

    L(nu) = (1 - gamma) E_{s_0}[nu_tot(s_0)] + E_D[g(e)],
    g(e)  = -alpha f(w*(e)) + w*(e) e = alpha (exp(e / alpha) - 1) if e < 0 else e + e^2 / (2 alpha).

The first term needs initial states: the loader's ``sample_initial``. The policy is extracted per
agent by ratio-weighted likelihood, max E_D[w*(e) log pi_i(a_i | o_i)] with the global ratio shared by
the agents (the decomposition of the weighted BC objective the paper derives).

Stated choices: e uses the current nu and mixer on both s and s' (no target network: the DICE loss
is a plain convex minimisation); terminations cut the gamma nu_tot(s') term, truncations keep it;
the ratio in the actor loss is computed after the nu step, detached, and clipped at ``max_ratio`` so
that a few transitions cannot dominate a batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from omgmg.algos.base import OfflineAlgorithm, TDConfig
from omgmg.datakit.errors import ConfigError
from omgmg.datakit.loader import Batch, InitialStates
from omgmg.datakit.spec import EnvSpec
from omgmg.members import member_mean, per_member
from omgmg.nets import adam, mix


@dataclass
class ComaDICEConfig(TDConfig):
    """ComaDICE hyperparameters (shared ones are documented on OfflineConfig and TDConfig; tau is unused:
    ComaDICE keeps no target network)."""

    alpha: float = 10.0
    """Weight alpha of the soft-chi^2 divergence from the data distribution: the official code's value (its
    ``main.py`` runs every task at 10); ``select-clean-comadice-alpha`` selects it on held-out copies."""
    max_ratio: float = 100.0
    """Clip of the ratio w*(e) in the actor's weights."""

    def __post_init__(self):
        super().__post_init__()
        if self.alpha <= 0 or self.max_ratio <= 0:
            raise ConfigError(f"alpha and max_ratio must be > 0, got {self.alpha}, {self.max_ratio}")


# ----- losses ---------------------------------------------------------------------------------------------------


def soft_chi2_ratio(e: torch.Tensor, alpha) -> torch.Tensor:
    """The optimal ratio w*(e) = (f')^{-1}(e / alpha), clipped at 0: exp(e/alpha) below 0, e/alpha + 1 above."""
    alpha = per_member(alpha, e)
    return torch.where(e < 0, torch.exp(torch.clamp(e, max=0.0) / alpha), e / alpha + 1.0)


def soft_chi2_dual(e: torch.Tensor, alpha) -> torch.Tensor:
    """g(e) = -alpha f(w*(e)) + w*(e) e: alpha (exp(e/alpha) - 1) below 0, e + e^2 / (2 alpha) above."""
    alpha = per_member(alpha, e)
    return torch.where(e < 0, alpha * (torch.exp(torch.clamp(e, max=0.0) / alpha) - 1.0), e + e**2 / (2 * alpha))


def dice_nu_loss(nu_tot_initial: torch.Tensor, e: torch.Tensor, gamma: float, alpha) -> torch.Tensor:
    """L(nu) = (1 - gamma) E_{s_0}[nu_tot(s_0)] + E_D[g(e)], each member's (M,)."""
    return (1.0 - gamma) * member_mean(nu_tot_initial) + member_mean(soft_chi2_dual(e, alpha))


def ratio_weighted_actor_loss(ratio: torch.Tensor, log_prob_data: torch.Tensor) -> torch.Tensor:
    """-E_D[w*(s, a) log pi_i(a_i | o_i)]: ratio (M, B) shared by all agents, log_prob_data (M, B, N). (M,)"""
    return -member_mean(ratio.detach()[..., None] * log_prob_data)


# ----- the algorithm ----------------------------------------------------------------------------------------------


class ComaDICE(OfflineAlgorithm):
    name = "comadice"
    config_cls = ComaDICEConfig
    member_hyperparameters = ("alpha",)

    def __init__(self, spec: EnvSpec, cfg: ComaDICEConfig | list[ComaDICEConfig]):
        super().__init__(spec, cfg)
        cfg = self.cfg
        self.actor = self.stochastic_actor()
        self.nu = self.agent_mlp(spec.obs_dim, 1)
        self.mixer = self.make_mixer()
        self.optimizers = {
            "nu": adam([*self.nu.parameters(), *self.mixer.parameters()], cfg.lr),
            "actor": adam(self.actor.parameters(), cfg.lr),
        }

    def nu_tot(self, obs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        w, bias = self.mixer(state)
        return mix(w, self.nu(obs)[..., 0], bias)

    def advantage(self, b: Batch) -> torch.Tensor:
        """e(s, a, s') = r + gamma nu_tot(s') - nu_tot(s), (M, B)."""
        return (
            b.reward
            + (1.0 - b.terminated) * self.cfg.gamma * self.nu_tot(b.next_obs, b.next_state)
            - self.nu_tot(b.obs, b.state)
        )

    def step(self, loader) -> dict[str, torch.Tensor]:
        device = self.obs_mean.device
        initial = loader.sample_initial_members()
        initial = self.prepare_initial(
            dataclasses.replace(initial, **{k: None if v is None else v.to(device) for k, v in vars(initial).items()})
        )
        self.last_batch = self.prepare(loader.sample_members().to(device))
        return self.update(self.last_batch, initial)

    def update(self, b: Batch, initial: InitialStates) -> dict[str, torch.Tensor]:
        stats = self.update_critic(b, initial)
        stats |= self.update_actor(b)
        return stats

    def update_critic(self, b: Batch, initial: InitialStates) -> dict:
        """The nu step: minimise L(nu) over the local nu_i and the mixer."""
        e = self.advantage(b)
        loss = dice_nu_loss(self.nu_tot(initial.obs, initial.state), e, self.cfg.gamma, self.hp("alpha"))
        self.optimize("nu", loss, [*self.nu.parameters(), *self.mixer.parameters()])
        return {"loss/nu": loss.detach(), "value/e": member_mean(e.detach())}

    def update_actor(self, b: Batch) -> dict:
        """Ratio-weighted likelihood with w*(e) from the nu just updated."""
        with torch.no_grad():
            ratio = soft_chi2_ratio(self.advantage(b), self.hp("alpha")).clamp(max=self.cfg.max_ratio)
        loss = ratio_weighted_actor_loss(ratio, self.log_prob_data(b))
        self.optimize("actor", loss, self.actor)
        return {"loss/actor": loss.detach(), "value/ratio": member_mean(ratio)}
