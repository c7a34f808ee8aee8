"""Network building blocks shared by every offline algorithm: per-agent MLPs evaluated as one
batched op over agents and over members, policy heads, and the monotonic mixer.

Members first, batch second, agents third: inputs are ``(M, B, N, in)``, outputs ``(M, B, N, out)``.
M independent training runs (``omgmg.members``) share every op; a single run is M = 1. Every
parameter carries the leading member axis (each member's slice is that member's whole network, laid
out as the layer it replaces: ``nn.Linear``'s (out, in) weight), so stacking or slicing members is a
concatenation or an index on axis 0 of every parameter.

Two ways to give each agent its own function (``AgentMLP(shared=...)``):

- ``shared=True``: one MLP for all agents whose input is extended by the agent's one-hot id (the
  official OMIGA code's choice). One batched matmul over M x (B*N rows) per layer.
- ``shared=False``: separate weights per agent, stored ``(M, N, in, out)`` and applied with one
  ``torch.baddbmm`` over M*N per layer: still one op per layer, no Python loop over agents.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from omgmg.members import MemberRandom

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # as the official OMIGA actor
MEAN_MIN, MEAN_MAX = -9.0, 9.0
ATANH_EPS = 1e-6  # dataset actions on the bounds are pulled inside before atanh
CENSOR_EDGE = math.atanh(1 - 1e-3)  # censored likelihood: an action on a bound = tanh(x) in the range's last 0.1%


def batched_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``bias + x @ weight^T`` for each member: x (M, R, in), weight (M, out, in), bias (M, 1, out).

    A single run (M = 1) takes plain ``addmm``, the fastest kernel for it on CPUs (``bmm`` of one
    matrix costs ~15% more there); M > 1 one ``baddbmm``."""
    if x.shape[0] == 1:
        return torch.addmm(bias.view(-1), x.squeeze(0), weight.squeeze(0).t()).unsqueeze(0)  # views, no copies
    return torch.baddbmm(bias, x, weight.transpose(1, 2))


class MemberLinear(nn.Module):
    """M independent linear layers, one per member, as one batched matmul: (M, R, in) -> (M, R, out).

    Member k's weight (out, in) and bias are drawn as ``nn.Linear``'s default initialisation."""

    def __init__(self, members: int, fan_in: int, fan_out: int):
        super().__init__()
        bound = 1 / math.sqrt(fan_in)
        self.weight = nn.Parameter(torch.empty(members, fan_out, fan_in).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, fan_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[1:-1]
        y = batched_linear(x.reshape(x.shape[0], -1, x.shape[-1]), self.weight, self.bias)
        return y.reshape(x.shape[0], *lead, -1)


class StackedLinear(nn.Module):
    """M x N independent linear layers (member, agent) as one batched matmul: (M, B, N, in) -> (M, B, N, out)."""

    def __init__(self, members: int, n: int, fan_in: int, fan_out: int):
        super().__init__()
        bound = 1 / math.sqrt(fan_in)  # nn.Linear's default init, per agent
        self.weight = nn.Parameter(torch.empty(members, n, fan_in, fan_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, n, 1, fan_out).uniform_(-bound, bound))

    def forward_agents_first(self, x: torch.Tensor) -> torch.Tensor:
        """(M * N, B, in) -> (M * N, B, out): the layout consecutive layers keep between them."""
        w = self.weight.reshape(-1, *self.weight.shape[-2:])
        return torch.baddbmm(self.bias.reshape(-1, 1, w.shape[-1]), x, w)


class AgentMLP(nn.Module):
    """Per-agent MLP with ReLU hidden layers, batched over members and agents (see the module docstring)."""

    def __init__(
        self,
        members: int,
        n_agents: int,
        in_dim: int,
        out_dim: int,
        hidden: int = 256,
        layers: int = 2,
        shared: bool = True,
    ):
        super().__init__()
        self.n, self.shared = n_agents, shared
        sizes = [in_dim + (n_agents if shared else 0)] + [hidden] * layers + [out_dim]
        if shared:
            self.layers = nn.ModuleList([MemberLinear(members, a, b) for a, b in zip(sizes[:-1], sizes[1:])])
            self.register_buffer("ids", torch.eye(n_agents))
        else:
            self.layers = nn.ModuleList([StackedLinear(members, n_agents, a, b) for a, b in zip(sizes[:-1], sizes[1:])])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(M, ..., N, in) -> (M, ..., N, out); axes between M and N are flattened into one batch axis."""
        M, lead, n = x.shape[0], x.shape[1:-2], x.shape[-2]
        x = x.reshape(M, -1, n, x.shape[-1])
        B, last = x.shape[1], len(self.layers) - 1
        if self.shared:  # one (M, B * N, in + N) tensor through plain batched matmuls
            x = torch.cat([x, self.ids.expand(M, B, n, n)], dim=-1).reshape(M, B * n, -1)
            if M == 1:  # a single run: 2-D addmm's (bmm of one matrix is slower on CPUs), in place on their outputs
                x = x.squeeze(0)
                for k, layer in enumerate(self.layers):
                    x = torch.addmm(layer.bias.view(-1), x, layer.weight.squeeze(0).t())
                    if k < last:
                        x = x.relu_()  # in place: ReLU's backward needs only its output
                return x.reshape(1, *lead, n, -1)
            for k, layer in enumerate(self.layers):
                x = torch.baddbmm(layer.bias, x, layer.weight.transpose(1, 2))
                if k < last:
                    x = x.relu_()
            return x.reshape(M, *lead, n, -1)
        x = x.transpose(1, 2).reshape(M * n, B, -1)  # agents first, kept through the layers
        for k, layer in enumerate(self.layers):
            x = layer.forward_agents_first(x)
            if k < last:
                x = x.relu_()
        return x.reshape(M, n, B, -1).transpose(1, 2).reshape(M, *lead, n, -1)


class Mixer(nn.Module):
    """Eq. (9)'s decomposition weights: w(s) >= 0 (absolute value) and b(s) from the global state,
    one hidden ReLU layer as in the official OMIGA mixer."""

    def __init__(self, members: int, state_dim: int, n_agents: int, hidden: int = 64):
        super().__init__()
        self.hidden = MemberLinear(members, state_dim, hidden)
        self.w = MemberLinear(members, hidden, n_agents)
        self.b = MemberLinear(members, hidden, 1)

    def forward(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.hidden(state))
        return self.w(h).abs(), self.b(h)[..., 0]  # (M, B, N), (M, B)

    def total(self, state: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The mixed total sum_i w_i(s) values_i + b(s) of per-agent values (M, B, N) -> (M, B)."""
        w, b = self(state)
        return mix(w, values, b)


def mix(w: torch.Tensor, values: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. (9): sum_i w_i * values_i + b, over (..., N) -> (...)."""
    return (w * values).sum(-1) + b


# ----- policies -----------------------------------------------------------------------------------------------


class ActionBox(nn.Module):
    """Each agent's action box as buffers, and the map between it and the unit cube (-1, 1)^A.

    Padded action entries (agents with fewer action dimensions than the widest) are masked to 0.
    The box is the task's, shared by all members.
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

    def uniform(self, shape: tuple[int, ...], rng: MemberRandom) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform actions of shape (M, *shape, N, A) and their log-density (M, *shape, N) under the box."""
        u = rng.rand((*shape, *self.low.shape)) * 2 - 1
        log_density = -(torch.log((self.high - self.low).clamp(min=1e-8)) * self.mask).sum(-1)
        return self.from_unit(u), log_density.expand(len(rng), *shape, -1)


class TanhGaussianPolicy(nn.Module):
    """Per-agent tanh-squashed Gaussian over each agent's box (OMIGA's actor, batched over agents).

    Actions are mapped from (-1, 1) to [low, high]; padded action entries (agents with fewer action
    dimensions than the widest) are masked out of log-densities and set to 0.
    """

    def __init__(
        self,
        members: int,
        n_agents: int,
        obs_dim: int,
        action_dim: int,
        low: np.ndarray,
        high: np.ndarray,
        mask: np.ndarray,
        hidden: int = 256,
        shared: bool = True,
        censor_bounds: bool = False,
    ):
        super().__init__()
        self.net = AgentMLP(members, n_agents, obs_dim, 2 * action_dim, hidden, shared=shared)
        self.box = ActionBox(low, high, mask)
        self.censor_bounds = censor_bounds

    def _dist(self, obs):
        mean, log_std = self.net(obs).chunk(2, dim=-1)  # (M, B, N, A) each
        return mean.clamp(MEAN_MIN, MEAN_MAX), log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def _pre_tanh(self, a: torch.Tensor) -> torch.Tensor:
        """atanh of an action's unit-cube coordinates, pulled inside (-1, 1) first."""
        return torch.atanh(self.box.to_unit(a).clamp(-1 + ATANH_EPS, 1 - ATANH_EPS))

    @staticmethod
    def _entry_log_density(mean, log_std, pre_tanh):
        """log N(x; mean, std) minus the tanh Jacobian, per action entry (M, B, N, A)."""
        z = (pre_tanh - mean) / log_std.exp()
        gauss = -0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)
        return gauss - 2 * (math.log(2) - pre_tanh - F.softplus(-2 * pre_tanh))  # minus log(1 - tanh(x)^2), stable

    def _log_prob(self, mean, log_std, pre_tanh):
        """The log-density summed over each agent's own entries -> (M, B, N)."""
        return (self._entry_log_density(mean, log_std, pre_tanh) * self.box.mask).sum(-1)

    def _log_prob_data(self, mean, log_std, actions: torch.Tensor) -> torch.Tensor:
        """log pi(a | o) of dataset actions (M, B, N). With ``censor_bounds``, an entry on its bound (within
        1e-6) is scored by log P(x beyond atanh(1 - 1e-3)), the mass the policy puts on the range's last
        0.1% on that side: bounded above by 0, its gradient vanishes once the policy puts that mass there,
        where the density at atanh(1 - 1e-6) keeps pulling the mean towards 7.25 and the std towards 0."""
        if not self.censor_bounds:
            return self._log_prob(mean, log_std, self._pre_tanh(actions))
        unit = self.box.to_unit(actions)
        high, low = unit >= 1 - ATANH_EPS, unit <= -1 + ATANH_EPS
        density = self._entry_log_density(mean, log_std, self._pre_tanh(actions))
        std = log_std.exp()
        mass = torch.where(
            high,
            torch.special.log_ndtr((mean - CENSOR_EDGE) / std),  # log P(x > edge)
            torch.special.log_ndtr((-CENSOR_EDGE - mean) / std),  # log P(x < -edge)
        )
        return (torch.where(high | low, mass, density) * self.box.mask).sum(-1)

    def sample(self, obs: torch.Tensor, rng: MemberRandom):
        """Reparameterised sample: (actions in the box (M, B, N, A), log-probs (M, B, N))."""
        return self._draw(*self._dist(obs), rng)

    def sample_repeated(self, obs: torch.Tensor, k: int, rng: MemberRandom):
        """k reparameterised samples for each row of obs (M, B, N, O), in ``obs.repeat(1, k, 1, 1)``'s row
        order: actions (M, k B, N, A) and log-probs (M, k B, N). The same draws as
        ``sample(obs.repeat(1, k, 1, 1), rng)`` from one forward pass over the B rows, not k B."""
        return self._draw(*(x.repeat(1, k, 1, 1) for x in self._dist(obs)), rng)

    def _draw(self, mean, log_std, rng: MemberRandom):
        pre = mean + rng.randn(mean.shape[1:]) * log_std.exp()
        return self.box.from_unit(torch.tanh(pre)), self._log_prob(mean, log_std, pre)

    def sample_and_log_prob(self, obs: torch.Tensor, actions: torch.Tensor, rng: MemberRandom):
        """One forward pass for both: a reparameterised sample (M, B, N, A) and log pi(actions | o) (M, B, N)."""
        mean, log_std = self._dist(obs)
        pre = mean + rng.randn(mean.shape[1:]) * log_std.exp()
        return self.box.from_unit(torch.tanh(pre)), self._log_prob_data(mean, log_std, actions)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log pi(a | o) of dataset actions (M, B, N, A) -> (M, B, N)."""
        mean, log_std = self._dist(obs)
        return self._log_prob_data(mean, log_std, actions)

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        mean, _ = self._dist(obs)
        return self.box.from_unit(torch.tanh(mean))


class DeterministicPolicy(nn.Module):
    """Per-agent deterministic actor a_i = box(tanh(f_i(o_i))) (TD3's actor, batched over agents)."""

    def __init__(
        self, members: int, n_agents: int, obs_dim: int, box: ActionBox, hidden: int = 256, shared: bool = True
    ):
        super().__init__()
        self.net = AgentMLP(members, n_agents, obs_dim, box.low.shape[-1], hidden, shared=shared)
        self.box = box

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.box.from_unit(torch.tanh(self.net(obs)))

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return self(obs)


class TwinQ(nn.Module):
    """Two independent per-agent critics Q^1_i, Q^2_i over (o_i ++ a_i) or o_i (BCQ, TD3, OMAR)."""

    def __init__(self, members: int, n_agents: int, in_dim: int, out_dim: int, hidden: int = 256, shared: bool = True):
        super().__init__()
        self.q1 = AgentMLP(members, n_agents, in_dim, out_dim, hidden, shared=shared)
        self.q2 = AgentMLP(members, n_agents, in_dim, out_dim, hidden, shared=shared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Both critics' outputs stacked on a new last axis: (..., out, 2)."""
        return torch.stack([self.q1(x), self.q2(x)], dim=-1)


class AgentVAE(nn.Module):
    """Per-agent conditional VAE of behaviour actions, batched over agents (BCQ's generative model).

    Encoder (o_i, a_i) -> (mu, log sigma) of a latent of size ``latent``; decoder (o_i, z) -> an action in
    the unit cube via tanh, mapped into the agent's box.
    """

    def __init__(
        self,
        members: int,
        n_agents: int,
        obs_dim: int,
        box: ActionBox,
        latent: int,
        hidden: int = 256,
        shared: bool = True,
    ):
        super().__init__()
        A = box.low.shape[-1]
        self.latent, self.box = latent, box
        self.encoder = AgentMLP(members, n_agents, obs_dim + A, 2 * latent, hidden, shared=shared)
        self.decoder = AgentMLP(members, n_agents, obs_dim + latent, A, hidden, shared=shared)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, rng: MemberRandom):
        """(reconstruction in the box, latent mean, latent log-std) for dataset actions."""
        mean, log_std = self.encoder(torch.cat([obs, actions], -1)).chunk(2, dim=-1)
        log_std = log_std.clamp(-4.0, 15.0)  # as BCQ's reference implementation
        z = mean + log_std.exp() * rng.randn(mean.shape[1:])
        return self.decode(obs, rng, z), mean, log_std

    def decode(self, obs: torch.Tensor, rng: MemberRandom, z: torch.Tensor | None = None) -> torch.Tensor:
        """Actions for latents z; without z, latents drawn from N(0, 1) clipped to [-0.5, 0.5] (BCQ)."""
        if z is None:
            z = rng.randn((*obs.shape[1:-1], self.latent)).clamp(-0.5, 0.5)
        return self.box.from_unit(torch.tanh(self.decoder(torch.cat([obs, z], -1))))


class CategoricalPolicy(nn.Module):
    """Per-agent softmax over the available actions (masked logits)."""

    def __init__(
        self, members: int, n_agents: int, obs_dim: int, n_actions: int, hidden: int = 256, shared: bool = True
    ):
        super().__init__()
        self.net = AgentMLP(members, n_agents, obs_dim, n_actions, hidden, shared=shared)

    def log_probs(self, obs: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
        """log pi(. | o) over all actions (M, B, N, K); unavailable actions get a very negative value."""
        return F.log_softmax(self.net(obs).masked_fill(~avail, -1e9), dim=-1)

    def deterministic(self, obs: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
        return self.log_probs(obs, avail).argmax(-1)

    def sample(self, obs: torch.Tensor, avail: torch.Tensor, rng: MemberRandom):
        logp = self.log_probs(obs, avail)
        flat = logp.exp().reshape(logp.shape[0], -1, logp.shape[-1])
        return rng.multinomial(flat).reshape(logp.shape[:-1])


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel (one op per step instead of several per tensor: ~10% of a step here).
    Adam is elementwise, so over member-stacked parameters it is one independent Adam per member."""
    return torch.optim.Adam(params, lr=lr, fused=True)


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging: target <- tau * source + (1 - tau) * target."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def masked_max(q: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max, argmax) of per-action values (..., K) over the allowed actions only."""
    return q.masked_fill(~allowed, -torch.inf).max(-1)
