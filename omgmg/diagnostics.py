"""What can go wrong in an offline update, measured on one batch every ``log_every`` steps.

The trainer asks the algorithm for :meth:`~omgmg.algos.base.OfflineAlgorithm.diagnostics` of the batch
it last trained on and logs the numbers beside the losses (docs/omgmg.md says which equation each
one watches):

- ``policy/actions_on_bounds``: the share of continuous action entries on their bounds. A
  tanh-Gaussian's log-density there needs atanh(+-1), which the actors clamp at 1 - 1e-6 (pre-tanh
  +-7.25); those entries' gradients dwarf interior ones' in every log-likelihood term (BC, OMIGA,
  OMGMG's Eq. 10).
- ``value/z_at_clip`` (OMGMG, OMIGA): the share of z = w (Qbar - V) / alpha at the clamp; there
  the exp term of Eq. (11) has no gradient, so V_i is pushed by its linear term alone.
- ``policy/grad_q_term`` and ``policy/grad_bc_term`` (OMGMG): the gradient norms of Eq. (10)'s two
  terms over the actor's parameters, before clipping: which term moves the policy.
- ``policy/action_distance`` (continuous) or ``policy/action_differs`` (discrete), and
  ``policy/behaviour_log_prob`` against ``policy/behaviour_log_prob_data`` (OMGMG, OMIGA, and BC as their
  yardstick): the mechanism the paper claims, Definition 4.2's neighbourhood of the data. How far the policy's
  actions a' ~ pi(o) sit from the data's actions at the same o, and how likely the behaviour policy that
  collected the data finds them (:mod:`omgmg.behaviour`) beside how likely it finds its own actions. A policy
  that generalises moderately moves a' off the data (distance above that of a BC policy) while log pi_beta(a')
  stays near the data's own; a policy that reproduces the data keeps both close to BC's.
- ``value/q_tot_batch`` against ``value/mc_return``: Q_tot(s, a) against the discounted
  return-to-go the data actually collected from those transitions. For a policy better than the
  data Q_tot may lie somewhat above it; far above it is overestimation. Episodes cut by the time
  limit make the return-to-go an underestimate near their end.

:func:`returns_to_go` and :func:`divergence_bound` are also what the sweep judges divergence by.
"""

from __future__ import annotations

import numpy as np
import torch

from omgmg.datakit import Dataset

DIVERGENCE_FACTOR = 2.0
"""|Q_tot| above this many times the largest |discounted return-to-go| in the data counts as diverged."""


def returns_to_go(ds: Dataset, gamma: float) -> np.ndarray:
    """Each transition's discounted return to the end of its episode in the data, (T,) float32:
    G_t = sum_{k >= t} gamma^(k - t) r_k over the rest of the episode."""
    reward = ds.read("steps/reward", 0, ds.n_transitions).astype(np.float64)
    out = np.empty_like(reward)
    start = 0
    for length in ds.episode_lengths():
        end = start + int(length)
        g = 0.0
        for t in range(end - 1, start - 1, -1):  # float64 running sum: no gamma^-L blow-up on long episodes
            g = reward[t] + gamma * g
            out[t] = g
        start = end
    return out.astype(np.float32)


def divergence_bound(rtg: np.ndarray) -> float:
    """The |Q_tot| above which a run counts as diverged: DIVERGENCE_FACTOR x the largest |return-to-go|."""
    return DIVERGENCE_FACTOR * max(float(np.abs(rtg).max(initial=0.0)), 1e-8)


def actions_on_bounds(actions: torch.Tensor, low: torch.Tensor, high: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each member's share of the agents' own continuous action entries within 1e-6 of their low or high
    bound: (M, B, N, A) -> (M,)."""
    own = (mask > 0).expand_as(actions)
    on = (((actions - low).abs() < 1e-6) | ((high - actions).abs() < 1e-6)) & own
    return on.flatten(1).sum(1) / own.flatten(1).sum(1).clamp(min=1)


def action_distance(
    a_policy: torch.Tensor, a_data: torch.Tensor, low: torch.Tensor, high: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Each member's distance of the policy's actions from the data's, (M, B, N, A) -> (M,): per agent the RMS
    over its own entries of (a' - a) / (high - low), averaged over agents and batch."""
    own = (mask > 0).to(a_policy.dtype)  # (N, A)
    span = torch.where(mask > 0, high - low, 1.0)
    squares = (((a_policy - a_data) / span) ** 2 * own).sum(-1) / own.sum(-1).clamp(min=1)  # (M, B, N)
    return squares.sqrt().flatten(1).mean(1)


def grad_norm(loss: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """Each member's gradient norm of its loss ``loss`` (M,) over ``module``'s (member-stacked) parameters,
    without touching their .grad: (M,)."""
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss.sum(), params, retain_graph=True, allow_unused=True)
    squares = [g.detach().reshape(g.shape[0], -1).square().sum(1) for g in grads if g is not None]
    return torch.stack(squares).sum(0).sqrt()
