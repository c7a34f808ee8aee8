"""The member axis: M independent training runs (seeds, and grid points of a loss hyperparameter) that
share one dataset and one algorithm, trained as one batched program.

Every network parameter carries a leading axis M (``omgmg.nets``), every batch is ``(M, B, ...)``, and
each member has its own minibatch indices, random stream, optimiser state (Adam is elementwise, so
one optimiser over stacked parameters is M independent ones) and target networks. A single run is
M = 1. What makes member k of a batched run follow the single run with member k's seed:

- **initialisation**: member k's networks are built alone, under ``torch.manual_seed(seed_k)``, and
  stacked (:func:`stack_states`);
- **randomness**: :class:`MemberRandom` holds one generator per member, and each draw of shape ``s``
  is member k's generator drawing ``s``, stacked: the same numbers, in the same order, as alone;
- **losses**: each member's loss is its own mean (:func:`member_mean`), the members' losses are
  summed before ``backward`` (their gradients do not mix), and the gradient norm is clipped per
  member (:func:`clip_grad_norm_per_member`);
- **hyperparameters**: a value that differs between members is an ``(M,)`` tensor that
  :func:`per_member` broadcasts along the leading axis; one all members share stays a float.
"""

from __future__ import annotations

import torch


def member_mean(x: torch.Tensor) -> torch.Tensor:
    """Each member's mean over everything but the leading member axis: (M, ...) -> (M,)."""
    return x.reshape(x.shape[0], -1).mean(1)


def member_max(x: torch.Tensor) -> torch.Tensor:
    """Each member's max over everything but the leading member axis: (M, ...) -> (M,)."""
    return x.reshape(x.shape[0], -1).amax(1)


def per_member(value, like: torch.Tensor):
    """``value`` made to broadcast against ``like`` (M, ...) along the member axis: a float stays a float,
    an (M,) tensor becomes (M, 1, ..., 1)."""
    if not isinstance(value, torch.Tensor) or value.ndim == 0:
        return value
    return value.reshape(-1, *([1] * (like.ndim - 1)))


def clip_grad_norm_per_member(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for each member on its own: the norm over member k's slice of
    every gradient, each slice scaled by min(1, max_norm / (norm + 1e-6)). Returns the norms (M,)."""
    owners = [p for p in params if p.grad is not None]
    if not owners:
        return torch.zeros(0)
    if owners[0].shape[0] == 1:  # one member: torch's own clip, one fused norm over all the gradients
        return torch.nn.utils.clip_grad_norm_(owners, max_norm, foreach=True).reshape(1)
    grads = [p.grad for p in owners]
    per_tensor = torch.stack([torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1) for g in grads])
    norms = torch.linalg.vector_norm(per_tensor, dim=0)  # (M,)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, [scale.reshape(-1, *([1] * (g.ndim - 1))) for g in grads])
    return norms


class MemberRandom:
    """One ``torch.Generator`` per member; a draw of shape ``s`` returns ``(M, *s)``, member k's slice
    drawn by member k's generator alone (so it equals what a single run with that generator draws)."""

    def __init__(self, generators: list[torch.Generator]):
        self.generators = list(generators)

    @classmethod
    def seeded(cls, seeds: list[int], device="cpu") -> MemberRandom:
        return cls([torch.Generator(device=device).manual_seed(int(s)) for s in seeds])

    @property
    def device(self) -> torch.device:
        return self.generators[0].device

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape, dtype=torch.float32) -> torch.Tensor:
        return self._stack(
            [torch.randn(tuple(shape), generator=g, device=g.device, dtype=dtype) for g in self.generators]
        )

    def rand(self, shape, dtype=torch.float32) -> torch.Tensor:
        return self._stack(
            [torch.rand(tuple(shape), generator=g, device=g.device, dtype=dtype) for g in self.generators]
        )

    @staticmethod
    def _stack(draws: list[torch.Tensor]) -> torch.Tensor:
        return draws[0].unsqueeze(0) if len(draws) == 1 else torch.stack(draws)

    def multinomial(self, probs: torch.Tensor) -> torch.Tensor:
        """One draw from each row of each member's probabilities (M, R, K) -> (M, R)."""
        return torch.stack(
            [torch.multinomial(p, 1, generator=g)[:, 0] for p, g in zip(probs, self.generators, strict=True)]
        )

    def get_state(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self.generators]

    def set_state(self, states: list[torch.Tensor]) -> None:
        for g, s in zip(self.generators, states, strict=True):
            g.set_state(s)


def stack_states(states: list[dict[str, torch.Tensor]], member_keys: set[str]) -> dict[str, torch.Tensor]:
    """One state dict from M single-member ones (each member tensor shaped (1, ...)): member tensors
    concatenated on the leading axis, shared ones (normalisation, one-hot ids) taken from the first."""
    return {k: torch.cat([s[k] for s in states]) if k in member_keys else v for k, v in states[0].items()}


def member_slice(state: dict[str, torch.Tensor], member_keys: set[str], k: int) -> dict[str, torch.Tensor]:
    """Member k's single-member state dict (member tensors (1, ...)) out of an M-member one."""
    return {key: v[k : k + 1].clone() if key in member_keys else v for key, v in state.items()}
