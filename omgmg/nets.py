"""Network building blocks shared by every offline algorithm: per-agent MLPs evaluated as one
batched op over agents, policy heads, and the monotonic mixer.

Batch first, agents second: inputs are ``(B, N, in)``, outputs ``(B, N, out)``.

Two ways to give each agent its own function (``AgentMLP(shared=...)``):

- ``shared=True``: one MLP for all agents whose input is extended by the agent's one-hot id (the
  official OMIGA code's choice). One matmul over B*N rows per layer.
- ``shared=False``: separate weights per agent, stored stacked ``(N, in, out)`` and applied with one
  ``torch.baddbmm`` per layer: still one op per layer, no Python loop over agents.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # as the official OMIGA actor
MEAN_MIN, MEAN_MAX = -9.0, 9.0
ATANH_EPS = 1e-6  # dataset actions on the bounds are pulled inside before atanh


class StackedLinear(nn.Module):
    """N independent linear layers applied as one batched matmul: (B, N, in) -> (B, N, out)."""

    def __init__(self, n: int, fan_in: int, fan_out: int):
        super().__init__()
        bound = 1 / math.sqrt(fan_in)  # nn.Linear's default init, per agent
        self.weight = nn.Parameter(torch.empty(n, fan_in, fan_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, fan_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.baddbmm(self.bias, x.transpose(0, 1), self.weight)  # (N, B, out)
        return y.transpose(0, 1)


class AgentMLP(nn.Module):
    """Per-agent MLP with ReLU hidden layers, batched over agents (see the module docstring)."""

    def __init__(
        self, n_agents: int, in_dim: int, out_dim: int, hidden: int = 256, layers: int = 2, shared: bool = True
    ):
        super().__init__()
        self.n, self.shared = n_agents, shared
        sizes = [in_dim + (n_agents if shared else 0)] + [hidden] * layers + [out_dim]
        make = (lambda a, b: nn.Linear(a, b)) if shared else (lambda a, b: StackedLinear(n_agents, a, b))
        self.layers = nn.ModuleList([make(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
        if shared:
            self.register_buffer("ids", torch.eye(n_agents))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., N, in) -> (..., N, out); leading axes are flattened into one batch axis."""
        lead, n = x.shape[:-2], x.shape[-2]
        x = x.reshape(-1, n, x.shape[-1])
        last = len(self.layers) - 1
        if self.shared:  # one (B * N, in + N) matrix through plain addmm's (no 3-D linear, no copies)
            x = torch.cat([x, self.ids.expand(x.shape[0], -1, -1)], dim=-1).reshape(-1, x.shape[-1] + n)
            for k, layer in enumerate(self.layers):
                x = torch.addmm(layer.bias, x, layer.weight.t())
                if k < last:
                    x = x.relu_()  # in place: ReLU's backward needs only its output
            return x.reshape(*lead, n, -1)
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k < last:
                x = torch.relu(x)
        return x.reshape(*lead, n, -1)


class Mixer(nn.Module):
    """Eq. (9)'s decomposition weights: w(s) >= 0 (absolute value) and b(s) from the global state,
    one hidden ReLU layer as in the official OMIGA mixer."""

    def __init__(self, state_dim: int, n_agents: int, hidden: int = 64):
        super().__init__()
        self.hidden = nn.Linear(state_dim, hidden)
        self.w = nn.Linear(hidden, n_agents)
        self.b = nn.Linear(hidden, 1)

    def forward(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.hidden(state))
        return self.w(h).abs(), self.b(h)[..., 0]  # (B, N), (B,)

    def total(self, state: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The mixed total sum_i w_i(s) values_i + b(s) of per-agent values (B, N) -> (B,)."""
        w, b = self(state)
        return mix(w, values, b)


def mix(w: torch.Tensor, values: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. (9): sum_i w_i * values_i + b, over (B, N) -> (B,)."""
    return (w * values).sum(-1) + b


# ----- policies -----------------------------------------------------------------------------------------------


class ActionBox(nn.Module):
    """Each agent's action box as buffers, and the map between it and the unit cube (-1, 1)^A.

    Padded action entries (agents with fewer action dimensions than the widest) are masked to 0.
    """

    def __init__(self, low: np.ndarray, high: np.ndarray, mask: np.ndarray):
        super().__init__()
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32))  # (N, A)
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32))
        self.register_buffer("mask", torch.as_tensor(mask, dtype=torch.float32))

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        return (self.low + (u + 1) * 0.5 * (self.high - self.low)) * self.mask

    def to_unit(self, a: torch.Tensor) -> torch.Tensor:
        return 2 * (a - self.low) / (self.high - self.low).clamp(min=1e-8) - 1

    def clamp(self, a: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(a, self.high), self.low) * self.mask

    def uniform(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform actions of shape (*shape, N, A) and their log-density (*shape, N) under the box."""
        u = torch.rand(*shape, *self.low.shape, device=self.low.device) * 2 - 1
        log_density = -(torch.log((self.high - self.low).clamp(min=1e-8)) * self.mask).sum(-1)
        return self.from_unit(u), log_density.expand(*shape, -1)


class TanhGaussianPolicy(nn.Module):
    """Per-agent tanh-squashed Gaussian over each agent's box (OMIGA's actor, batched over agents).

    Actions are mapped from (-1, 1) to [low, high]; padded action entries (agents with fewer action
    dimensions than the widest) are masked out of log-densities and set to 0.
    """

    def __init__(
        self,
        n_agents: int,
        obs_dim: int,
        action_dim: int,
        low: np.ndarray,
        high: np.ndarray,
        mask: np.ndarray,
        hidden: int = 256,
        shared: bool = True,
    ):
        super().__init__()
        self.net = AgentMLP(n_agents, obs_dim, 2 * action_dim, hidden, shared=shared)
        self.box = ActionBox(low, high, mask)

    def _dist(self, obs):
        mean, log_std = self.net(obs).chunk(2, dim=-1)  # (B, N, A) each
        return mean.clamp(MEAN_MIN, MEAN_MAX), log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def _pre_tanh(self, a: torch.Tensor) -> torch.Tensor:
        """atanh of an action's unit-cube coordinates, pulled inside (-1, 1) first."""
        return torch.atanh(self.box.to_unit(a).clamp(-1 + ATANH_EPS, 1 - ATANH_EPS))

    def _log_prob(self, mean, log_std, pre_tanh):
        """log N(x; mean, std) minus the tanh Jacobian, summed over each agent's own entries -> (B, N)."""
        z = (pre_tanh - mean) / log_std.exp()
        gauss = -0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)
        jac = 2 * (math.log(2) - pre_tanh - F.softplus(-2 * pre_tanh))  # log(1 - tanh(x)^2), stable
        return ((gauss - jac) * self.box.mask).sum(-1)

    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None):
        """Reparameterised sample: (actions in the box (B, N, A), log-probs (B, N))."""
        mean, log_std = self._dist(obs)
        noise = (
            torch.randn(mean.shape, generator=generator, device=mean.device)
            if generator is not None
            else torch.randn_like(mean)
        )
        pre = mean + noise * log_std.exp()
        return self.box.from_unit(torch.tanh(pre)), self._log_prob(mean, log_std, pre)

    def sample_and_log_prob(self, obs: torch.Tensor, actions: torch.Tensor):
        """One forward pass for both: a reparameterised sample (B, N, A) and log pi(actions | o) (B, N)."""
        mean, log_std = self._dist(obs)
        pre = mean + torch.randn_like(mean) * log_std.exp()
        return self.box.from_unit(torch.tanh(pre)), self._log_prob(mean, log_std, self._pre_tanh(actions))

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log pi(a | o) of dataset actions (B, N, A) -> (B, N)."""
        mean, log_std = self._dist(obs)
        return self._log_prob(mean, log_std, self._pre_tanh(actions))

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        mean, _ = self._dist(obs)
        return self.box.from_unit(torch.tanh(mean))


class DeterministicPolicy(nn.Module):
    """Per-agent deterministic actor a_i = box(tanh(f_i(o_i))) (TD3's actor, batched over agents)."""

    def __init__(self, n_agents: int, obs_dim: int, box: ActionBox, hidden: int = 256, shared: bool = True):
        super().__init__()
        self.net = AgentMLP(n_agents, obs_dim, box.low.shape[-1], hidden, shared=shared)
        self.box = box

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.box.from_unit(torch.tanh(self.net(obs)))

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return self(obs)


class TwinQ(nn.Module):
    """Two independent per-agent critics Q^1_i, Q^2_i over (o_i ++ a_i) or o_i (BCQ, TD3, OMAR)."""

    def __init__(self, n_agents: int, in_dim: int, out_dim: int, hidden: int = 256, shared: bool = True):
        super().__init__()
        self.q1 = AgentMLP(n_agents, in_dim, out_dim, hidden, shared=shared)
        self.q2 = AgentMLP(n_agents, in_dim, out_dim, hidden, shared=shared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Both critics' outputs stacked on a new last axis: (..., out, 2)."""
        return torch.stack([self.q1(x), self.q2(x)], dim=-1)


class AgentVAE(nn.Module):
    """Per-agent conditional VAE of behaviour actions, batched over agents (BCQ's generative model).

    Encoder (o_i, a_i) -> (mu, log sigma) of a latent of size ``latent``; decoder (o_i, z) -> an action in
    the unit cube via tanh, mapped into the agent's box.
    """

    def __init__(
        self, n_agents: int, obs_dim: int, box: ActionBox, latent: int, hidden: int = 256, shared: bool = True
    ):
        super().__init__()
        A = box.low.shape[-1]
        self.latent, self.box = latent, box
        self.encoder = AgentMLP(n_agents, obs_dim + A, 2 * latent, hidden, shared=shared)
        self.decoder = AgentMLP(n_agents, obs_dim + latent, A, hidden, shared=shared)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor):
        """(reconstruction in the box, latent mean, latent log-std) for dataset actions."""
        mean, log_std = self.encoder(torch.cat([obs, actions], -1)).chunk(2, dim=-1)
        log_std = log_std.clamp(-4.0, 15.0)  # as BCQ's reference implementation
        z = mean + log_std.exp() * torch.randn_like(mean)
        return self.decode(obs, z), mean, log_std

    def decode(
        self, obs: torch.Tensor, z: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Actions for latents z; without z, latents drawn from N(0, 1) clipped to [-0.5, 0.5] (BCQ)."""
        if z is None:
            shape = (*obs.shape[:-1], self.latent)
            z = torch.randn(shape, generator=generator, device=obs.device).clamp(-0.5, 0.5)
        return self.box.from_unit(torch.tanh(self.decoder(torch.cat([obs, z], -1))))


class CategoricalPolicy(nn.Module):
    """Per-agent softmax over the available actions (masked logits)."""

    def __init__(self, n_agents: int, obs_dim: int, n_actions: int, hidden: int = 256, shared: bool = True):
        super().__init__()
        self.net = AgentMLP(n_agents, obs_dim, n_actions, hidden, shared=shared)

    def log_probs(self, obs: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
        """log pi(. | o) over all actions (B, N, K); unavailable actions get a very negative value."""
        return F.log_softmax(self.net(obs).masked_fill(~avail, -1e9), dim=-1)

    def deterministic(self, obs: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
        return self.log_probs(obs, avail).argmax(-1)

    def sample(self, obs: torch.Tensor, avail: torch.Tensor, generator: torch.Generator | None = None):
        logp = self.log_probs(obs, avail)
        flat = logp.exp().reshape(-1, logp.shape[-1])
        return torch.multinomial(flat, 1, generator=generator).reshape(logp.shape[:-1])


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel (one op per step instead of several per tensor: ~10% of a step here)."""
    return torch.optim.Adam(params, lr=lr, fused=True)


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging: target <- tau * source + (1 - tau) * target."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def masked_max(q: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max, argmax) of per-action values (..., K) over the allowed actions only."""
    return q.masked_fill(~allowed, -torch.inf).max(-1)
