"""The behaviour policy a dataset was collected with, as a density: log pi_beta(a | o) of any action.

The mechanism the OMGMG paper claims (Definition 4.2) is a policy whose actions stay in a neighbourhood
of the behaviour policy's support. With the policy that generated the data at hand, that can be measured
instead of guessed: the trainer logs ``policy/behaviour_log_prob`` of the learned policy's actions beside
``policy/behaviour_log_prob_data`` of the data's own actions (omgmg.diagnostics).

    density = behaviour_density(dataset)     # None where the data has no single behaviour policy at hand
    logp = density(raw_obs, actions, avail)  # (..., N)

A dataset has one when it was collected by omgmg at the expert or medium level (one checkpoint acted) and
that checkpoint is still in ``$OMGMG_HOME``, with the sha256 the dataset recorded; the random level's is the
uniform density. Medium-expert and medium-replay mix policies; imported data names none.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from omgmg.datakit.dataset import Dataset
from omgmg.datakit.integrity import file_sha256
from omgmg.datakit.outputs import from_home_relative

ATANH_EDGE = 1 - 1e-6  # an action on its bound is taken this close to it: atanh stays finite


def behaviour_density(ds: Dataset) -> Callable | None:
    """``f(raw obs (..., N, O), actions (..., N[, A]), avail (..., N, K) or None) -> log pi_beta (..., N)``
    for the policy that collected ``ds`` (see the module docstring), or None."""
    meta = ds.meta
    bp = meta.get("behaviour_policy") or {}
    if bp.get("algorithm") == "uniform-random":
        return _uniform(ds)
    checkpoint = _checkpoint_path(meta, bp.get("checkpoint_sha256"))
    if checkpoint is None:
        return None
    from omgmg.collectors.behaviour import load_agent

    agent, _ = load_agent(checkpoint)
    return _agent_density(agent)


def _checkpoint_path(meta: dict, sha256: str | None) -> Path | None:
    """The behaviour checkpoint's file in the run the dataset names, when it is there and unchanged."""
    collection = meta.get("collection") or {}
    run = collection.get("behaviour_run")
    if not sha256 or not run:
        return None
    picked = [c for c in (collection.get("checkpoints") or {}).values() if c.get("sha256") == sha256]
    if not picked:
        return None
    path = from_home_relative(run) / "checkpoints" / f"step_{int(picked[0]['env_steps']):010d}.pt"
    return path if path.exists() and file_sha256(path) == sha256 else None


def _uniform(ds: Dataset) -> Callable:
    spec = ds.spec
    if spec.discrete:

        def log_prob(obs, actions, avail):
            return -torch.log(avail.float().sum(-1))

        return log_prob
    low, high, mask = (torch.from_numpy(x) for x in spec.action_bounds())
    per_agent = -torch.where(mask > 0, torch.log(torch.where(mask > 0, high - low, 1.0)), 0.0).sum(-1)  # (N,)

    def log_prob(obs, actions, avail):
        return per_agent.to(actions.device).expand(actions.shape[:-1])

    return log_prob


@torch.no_grad()
def _agent_density(agent) -> Callable:
    """log pi_beta of a MAPPO or HAPPO agent: its masked softmax, or its Gaussian (tanh-squashed where its
    policy squashes; for a clipping policy the Gaussian density of the action itself, which is the pre-clip
    sample's wherever the action lies inside the bounds)."""
    from omgmg.collectors.common import FrozenActor

    if agent.spec.discrete:
        actor = FrozenActor([agent.actor] * agent.spec.n_agents, agent.obs_norm, agent_id_input=True)

        def log_prob(obs, actions, avail):
            lead = obs.shape[:-2]
            logits = actor(obs.reshape(-1, *obs.shape[-2:]).cpu().numpy()).reshape(*lead, *obs.shape[-2:-1], -1)
            logits = logits.masked_fill(~avail.cpu(), -float("inf"))
            out = torch.log_softmax(logits, -1).gather(-1, actions.long().cpu()[..., None])[..., 0]
            return out.to(obs.device)

        return log_prob
    actor = FrozenActor(list(agent.actors), agent.obs_norm)
    log_std = agent._log_std(agent.log_std)  # (N, A)
    mask, centre, half = agent.action_mask, agent.centre, agent.half_width
    tanh = agent.cfg.policy == "tanh"

    def log_prob(obs, actions, avail):
        flat = obs.reshape(-1, *obs.shape[-2:]).cpu().numpy()
        mean = agent._mean(actor(flat)).reshape(*obs.shape[:-1], actions.shape[-1])  # (..., N, A)
        a = actions.cpu()
        if tanh:
            t = torch.where(mask > 0, (a - centre) / torch.where(mask > 0, half, 1.0), 0.0).clamp(
                -ATANH_EDGE, ATANH_EDGE
            )
            u = torch.atanh(t)
        else:
            u = a
        z = (u - mean) / log_std.exp()
        gaussian = ((-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)) * mask).sum(-1)
        return (agent.log_prob_of_action(u, gaussian) if tanh else gaussian).to(obs.device)

    return log_prob
