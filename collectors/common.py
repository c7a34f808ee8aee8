"""Pieces MAPPO and HAPPO share: GAE, running normalisers, networks, rollout storage.

Axis convention in training code: time first, then envs, then agents: ``(T, E, N, ...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

# ----- returns and advantages --------------------------------------------------------------------------


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    done: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over (T, E) tensors.

    ``next_values[t]`` is V of the observation after step t: V(o_{t+1}) inside an episode, V of the
    stored final observation where the episode ended at t. ``terminated`` zeroes the bootstrap (true
    terminal state); ``done`` (terminated or truncated) stops the advantage from flowing across an
    episode boundary. So a time-limit truncation bootstraps from V(final obs), as it should.
    Returns (advantages, returns = advantages + values).
    """
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in reversed(range(T)):
        delta = rewards[t] + gamma * next_values[t] * (1 - terminated[t]) - values[t]
        last = delta + gamma * lam * (1 - done[t]) * last
        adv[t] = last
    return adv, adv + values


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, targets: torch.Tensor, clip: float
) -> torch.Tensor:
    """PPO's clipped value loss (as in MAPPO and HAPPO): the larger of the squared errors of the new
    value and of the old value moved at most ``clip`` towards it, on normalised returns."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return torch.max((values - targets) ** 2, (clipped - targets) ** 2).mean()


# ----- normalisers ---------------------------------------------------------------------------------------


class RunningMeanStd(nn.Module):
    """Running mean and variance over a stream of batches (Chan et al.'s parallel update), kept as
    buffers so they travel with ``state_dict`` into checkpoints."""

    def __init__(self, shape: tuple[int, ...] = (), eps: float = 1e-4):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(eps, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, *self.mean.shape).double()
        b_mean, b_var, b_count = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta = b_mean - self.mean
        total = self.count + b_count
        self.mean += delta * b_count / total
        self.var.copy_((self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total) / total)
        self.count.copy_(total)

    def normalise(self, x: torch.Tensor, clip: float = 10.0) -> torch.Tensor:
        out = (x - self.mean.float()) / torch.sqrt(self.var.float() + 1e-8)
        return out.clamp(-clip, clip)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sqrt(self.var.float() + 1e-8) + self.mean.float()


# ----- networks --------------------------------------------------------------------------------------------


def mlp(sizes: list[int], activation=nn.ReLU, out_gain: float = 1.0) -> nn.Sequential:
    """Linear layers with orthogonal init (gain sqrt(2) hidden, ``out_gain`` last), activation between."""
    layers: list[nn.Module] = []
    for k in range(len(sizes) - 1):
        lin = nn.Linear(sizes[k], sizes[k + 1])
        last = k == len(sizes) - 2
        nn.init.orthogonal_(lin.weight, out_gain if last else np.sqrt(2))
        nn.init.zeros_(lin.bias)
        layers += [lin] if last else [lin, activation()]
    return nn.Sequential(*layers)


def stacked_forward(nets: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """Evaluate N same-shaped MLPs (one per agent) as one batched op: x (B, N, in) -> (B, N, out).

    Weights are stacked on the fly, so each agent keeps its own parameters (and its own optimiser)
    while rollout inference costs one einsum per layer instead of a Python loop over agents.
    """
    layers = list(zip(*[list(net) for net in nets]))
    for group in layers:
        if isinstance(group[0], nn.Linear):
            w = torch.stack([m.weight for m in group])  # (N, out, in)
            b = torch.stack([m.bias for m in group])  # (N, out)
            x = torch.einsum("bni,noi->bno", x, w) + b
        else:
            x = group[0](x)
    return x


@dataclass(frozen=True)
class RolloutPolicy:
    """A frozen, stochastic policy for collecting datasets.

    ``act(raw obs (E, N, O), avail (E, N, K) or None, noise (E, *noise_shape)) -> (executed actions,
    what the policy did)``: actions (E, N, A) float32 or (E, N) int32, and a dict of the dataset's
    behaviour arrays for this step (``behaviour_log_prob`` (E, N), and ``behaviour_pre_clip`` (E, N, A)
    for a policy that clips), exactly those ``behaviour_arrays`` names. The caller draws ``noise``
    (``noise_kind``: "normal" or "uniform" on [0, 1)), one row per env, so that each env's randomness
    can come from its own stream and what an env does never depends on the other envs.
    """

    act: Callable[[np.ndarray, np.ndarray | None, torch.Tensor], tuple[np.ndarray, dict[str, np.ndarray]]]
    noise_kind: str
    noise_shape: tuple[int, ...]
    behaviour_arrays: tuple[str, ...] = ("log_prob",)


def gumbel_argmax(scores: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """A sample of softmax(scores) over the last axis (the Gumbel-max trick), from uniform noise;
    scores of -inf (unavailable actions) are never picked."""
    return (scores - torch.log(-torch.log(uniform))).argmax(-1)


def categorical_sample(scores: torch.Tensor, uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`gumbel_argmax` and the sampled action's log-probability under softmax(scores) (-inf scores:
    unavailable actions, probability 0). (..., K) -> actions (...) int64, log-probabilities (...)."""
    actions = gumbel_argmax(scores, uniform)
    log_prob = scores.gather(-1, actions[..., None])[..., 0] - torch.logsumexp(scores, -1)
    return actions, log_prob


class FrozenActor:
    """An inference-only copy of per-agent MLP actors for collecting datasets: raw observations
    (E, N, O) as numpy -> outputs (E, N, out), one ``baddbmm`` per layer over weights stacked across
    agents once (not on every call), the observation normaliser applied first.

    ``actors`` holds one :func:`mlp` per agent (a shared actor is repeated N times). With
    ``agent_id_input`` the first layer's last N inputs are the agent-id one-hot (MAPPO): they become
    a per-agent first-layer bias instead of N extra input columns.
    """

    def __init__(self, actors: list[nn.Sequential], obs_norm: RunningMeanStd, agent_id_input: bool = False):
        with torch.no_grad():
            linears = [[m for m in actor if isinstance(m, nn.Linear)] for actor in actors]
            self.weights = [
                torch.stack([a[k].weight.T for a in linears]).contiguous()  # (N, in, out)
                for k in range(len(linears[0]))
            ]
            self.biases = [
                torch.stack([a[k].bias for a in linears])[:, None, :].clone()  # (N, 1, out)
                for k in range(len(linears[0]))
            ]
            if agent_id_input:
                N = len(actors)
                ids = self.weights[0][:, -N:, :]  # (N, N, H): agent i's row i is W_id @ onehot(i)
                self.biases[0] += ids[torch.arange(N), torch.arange(N)][:, None, :]
                self.weights[0] = self.weights[0][:, :-N, :].contiguous()
            self.mean = obs_norm.mean.float().clone()
            self.std = torch.sqrt(obs_norm.var.float() + 1e-8)

    @torch.no_grad()
    def __call__(self, obs: np.ndarray) -> torch.Tensor:
        x = ((torch.from_numpy(obs) - self.mean) / self.std).clamp_(-10.0, 10.0).transpose(0, 1)  # (N, E, O)
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if k < len(self.weights) - 1:
                x = x.relu_()
        return x.transpose(0, 1)


# ----- rollout storage --------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """T steps of E envs as tensors, time first. Filled by the training loop, read by ``update``."""

    obs: torch.Tensor  # (T, E, N, O) normalised observations the policy saw
    state: torch.Tensor  # (T, E, S) normalised states the critic saw
    actions: torch.Tensor  # (T, E, N, A) float (pre-clip samples) or (T, E, N) long
    log_probs: torch.Tensor  # (T, E, N) log pi_old(a_i | o_i)
    values: torch.Tensor  # (T, E) V_old(s_t), denormalised
    next_values: torch.Tensor  # (T, E) V_old(s_{t+1}) or V_old(final state), denormalised
    rewards: torch.Tensor  # (T, E)
    terminated: torch.Tensor  # (T, E) float
    done: torch.Tensor  # (T, E) float: terminated or truncated
    avail: torch.Tensor | None = None  # (T, E, N, K) bool

    def flat(self) -> Rollout:
        """Merge time and env axes: every tensor becomes (T * E, ...)."""
        return Rollout(
            **{
                f.name: None if (v := getattr(self, f.name)) is None else v.reshape(-1, *v.shape[2:])
                for f in fields(self)
            }
        )


def minibatches(n: int, num_minibatches: int, generator: torch.Generator):
    """Random index chunks covering 0..n-1 once."""
    perm = torch.randperm(n, generator=generator)
    size = max(1, n // num_minibatches)
    for k in range(num_minibatches):
        yield perm[k * size : (k + 1) * size] if k < num_minibatches - 1 else perm[k * size :]
