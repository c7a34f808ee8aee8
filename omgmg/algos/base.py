"""What every offline algorithm shares: the loop's config fields, input normalisation from dataset
statistics (kept in the checkpoint), the member axis, optimiser state, and evaluation-time acting.

An algorithm subclasses :class:`OfflineAlgorithm`, sets ``name`` and ``config_cls``, builds its
networks (``self.members`` of each, ``omgmg.nets``) and ``self.optimizers`` (a dict) in ``__init__``,
and implements ``update(batch)`` (one gradient step on a batch ``(M, B, ...)``, returning metrics as
``(M,)`` tensors that stay on the device); ``act(obs, avail)`` (deterministic actions on normalised
obs) defaults to the deterministic action of ``self.actor``.

**Members** (``omgmg.members``): an algorithm is built from one config (a single run, M = 1) or a
list of M configs that differ in their seed and in the fields the class lists in
``member_hyperparameters`` (the loss hyperparameters it reads through :meth:`hp`). Every loss is a
per-member mean (``member_mean``), so each member's gradients are its own; random draws come from
``self.rng``, one generator per member.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from omgmg.datakit.errors import ConfigError
from omgmg.datakit.loader import Batch, InitialStates
from omgmg.datakit.spec import EnvSpec
from omgmg.diagnostics import action_distance, actions_on_bounds
from omgmg.members import MemberRandom, clip_grad_norm_per_member, member_mean
from omgmg.nets import AgentMLP, CategoricalPolicy, Mixer, TanhGaussianPolicy, TwinQ, mix


@dataclass
class OfflineConfig:
    """Fields of the offline training loop shared by every algorithm."""

    steps: int = 100_000
    """Gradient steps to train for."""
    batch_size: int = 128
    """Transitions per gradient step."""
    seed: int = 0
    """Seed of network initialisation, minibatch sampling and evaluation."""
    eval_every: int = 5_000
    """Gradient steps between evaluations in the environment (and checkpoints)."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    log_every: int = 100
    """Gradient steps between log lines (step-indexed, JSONL)."""
    normalize_obs: bool = True
    """Standardise observations and states by the dataset's mean and std (stored in checkpoints)."""
    torch_threads: int = 2
    """Torch intra-op threads for training."""
    lr: float = 5e-4
    """Adam learning rate of every network (OMIGA's)."""
    hidden: int = 256
    """Hidden width of the per-agent networks (two hidden layers)."""
    shared_networks: bool = True
    """One network for all agents with a one-hot id input (True) or separate stacked weights (False)."""
    grad_norm_clip: float = 1.0
    """Gradient-norm clip of every update."""
    censor_bound_actions: bool = False
    """Deviation, off by default: score a dataset action entry on its bound by the probability the
    tanh-Gaussian actor puts on the last 0.1% of the range (a censored likelihood) instead of the density at
    atanh(1 - 1e-6); for every likelihood of dataset actions (BC, ICQ, OMIGA, ComaDICE, OMGMG's Eq. 10)."""

    def __post_init__(self):
        # every number of every algorithm's config must be finite (a NaN passes any comparison below)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value}")
        for name in ("steps", "batch_size", "eval_every", "eval_episodes", "log_every", "torch_threads", "hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.grad_norm_clip <= 0:
            raise ConfigError(f"grad_norm_clip must be > 0, got {self.grad_norm_clip}")


@dataclass
class TDConfig(OfflineConfig):
    """Fields shared by the algorithms that learn values by temporal differences."""

    gamma: float = 0.99
    """Discount."""
    tau: float = 0.005
    """Polyak rate of the target networks."""
    mixer_hidden: int = 64
    """Hidden width of the mixer (value decomposition Q_tot = sum_i w_i(s) Q_i + b(s))."""

    def __post_init__(self):
        super().__post_init__()
        if not (0 <= self.gamma <= 1 and 0 < self.tau <= 1):
            raise ConfigError(f"gamma must lie in [0, 1] and tau in (0, 1], got gamma={self.gamma}, tau={self.tau}")


def check_members(cls, cfgs: list[OfflineConfig]) -> None:
    """Refuse, naming the fields, members that differ in anything but the seed and ``cls``'s
    ``member_hyperparameters`` (those need separate runs), or that repeat a (seed, setting)."""
    if not cfgs:
        raise ConfigError("an algorithm needs at least one member's config")
    batchable = {"seed", *cls.member_hyperparameters}
    first = dataclasses.asdict(cfgs[0])
    for c in cfgs[1:]:
        other = dataclasses.asdict(c)
        differ = sorted(k for k in first if k not in batchable and other[k] != first[k])
        if differ:
            can = ", ".join(cls.member_hyperparameters) or "none"
            raise ConfigError(
                f"members of one {cls.name} run may differ only in seed and {can}; these differ: "
                f"{', '.join(differ)} (train those as separate runs)"
            )
    keys = [tuple(sorted(dataclasses.asdict(c).items())) for c in cfgs]
    if len(set(keys)) < len(keys):
        raise ConfigError("two members have the same seed and settings; give each member its own seed or value")


def action_bounds(spec: EnvSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The spec's (low, high, mask) (:meth:`EnvSpec.action_bounds`), with a unit range [0, 1] on padded
    entries: the tanh squash and the CEM sampling divide by high - low (padded entries are masked out)."""
    low, high, mask = spec.action_bounds()
    return low, np.where(mask > 0, high, 1.0).astype(np.float32), mask


class OfflineAlgorithm(nn.Module):
    name = "base"
    config_cls = OfflineConfig
    member_hyperparameters: tuple[str, ...] = ()
    """Config fields that may differ between members (read through :meth:`hp`); the seed always may."""

    def __init__(self, spec: EnvSpec, cfg: OfflineConfig | list[OfflineConfig]):
        super().__init__()
        cfgs = list(cfg) if isinstance(cfg, list | tuple) else [cfg]
        self.spec, self.cfg, self.cfgs, self.members = spec, cfgs[0], cfgs, len(cfgs)
        check_members(type(self), cfgs)
        for name in self.member_hyperparameters:  # (M,) where members differ: moved with .to(device)
            values = [getattr(c, name) for c in cfgs]
            if len(set(values)) > 1:
                self.register_buffer(f"hp_{name}", torch.tensor(values, dtype=torch.float32), persistent=False)
        self.rng = MemberRandom.seeded([c.seed for c in cfgs])  # the trainer hands each member its own stream
        self.register_buffer("obs_mean", torch.zeros(spec.n_agents, spec.obs_dim))
        self.register_buffer("obs_std", torch.ones(spec.n_agents, spec.obs_dim))
        self.register_buffer("state_mean", torch.zeros(spec.state_dim))
        self.register_buffer("state_std", torch.ones(spec.state_dim))
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    def hp(self, name: str):
        """Hyperparameter ``name`` (one of ``member_hyperparameters``): a float when every member has the
        same value, else an (M,) tensor (broadcast it with ``omgmg.members.per_member``)."""
        return getattr(self, f"hp_{name}") if f"hp_{name}" in self._buffers else getattr(self.cfg, name)

    # ----- normalisation ------------------------------------------------------------------------------------
    def set_normalisation(self, obs_mean, obs_std, state_mean, state_std) -> None:
        for name, value in (
            ("obs_mean", obs_mean),
            ("obs_std", obs_std),
            ("state_mean", state_mean),
            ("state_std", state_std),
        ):
            getattr(self, name).copy_(torch.as_tensor(value, dtype=torch.float32))

    def normalise_obs(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def normalise_state(self, state: torch.Tensor) -> torch.Tensor:
        return (state - self.state_mean) / self.state_std

    def prepare(self, b: Batch) -> Batch:
        """A batch with normalised observations and states (what ``update`` sees)."""
        return dataclasses.replace(
            b,
            obs=self.normalise_obs(b.obs),
            state=self.normalise_state(b.state),
            next_obs=self.normalise_obs(b.next_obs),
            next_state=self.normalise_state(b.next_state),
        )

    def prepare_initial(self, initial: InitialStates) -> InitialStates:
        """Episode-start observations and states, normalised like ``prepare``'s batches."""
        return dataclasses.replace(
            initial, obs=self.normalise_obs(initial.obs), state=self.normalise_state(initial.state)
        )

    # ----- networks most algorithms build --------------------------------------------------------------------
    def stochastic_actor(self) -> nn.Module:
        """pi_i: a masked softmax over the available actions (discrete), or a tanh-Gaussian over each agent's
        box (continuous), batched over agents."""
        spec, cfg = self.spec, self.cfg
        M = self.members
        if spec.discrete:
            return CategoricalPolicy(M, spec.n_agents, spec.obs_dim, spec.n_actions, cfg.hidden, cfg.shared_networks)
        return TanhGaussianPolicy(
            M,
            spec.n_agents,
            spec.obs_dim,
            spec.action_dim,
            *action_bounds(spec),
            cfg.hidden,
            cfg.shared_networks,
            censor_bounds=cfg.censor_bound_actions,
        )

    def local_q(self, twin: bool = False) -> nn.Module:
        """Q_i: Q_i(o_i, .) over all actions (discrete) or Q_i(o_i ++ a_i) (continuous), as ``q_at`` reads
        it; ``twin`` gives two independent critics (``TwinQ``)."""
        spec, cfg = self.spec, self.cfg
        in_dim, out_dim = (spec.obs_dim, spec.n_actions) if spec.discrete else (spec.obs_dim + spec.action_dim, 1)
        return (TwinQ if twin else AgentMLP)(
            self.members, spec.n_agents, in_dim, out_dim, cfg.hidden, shared=cfg.shared_networks
        )

    def agent_mlp(self, in_dim: int, out_dim: int) -> AgentMLP:
        """A per-agent MLP of the config's width and sharing, one per member (V_i, nu_i, ...)."""
        cfg = self.cfg
        return AgentMLP(self.members, self.spec.n_agents, in_dim, out_dim, cfg.hidden, shared=cfg.shared_networks)

    def make_mixer(self) -> Mixer:
        """Eq. (9)'s mixer w(s) >= 0, b(s) over the global state, one per member."""
        return Mixer(self.members, self.spec.state_dim, self.spec.n_agents, self.cfg.mixer_hidden)

    # ----- pieces every update uses -------------------------------------------------------------------------
    def optimize(self, name: str, loss: torch.Tensor, params) -> None:
        """One step of optimiser ``name`` on the members' losses ``loss`` (M,), with each member's gradient
        norm over ``params`` clipped to ``cfg.grad_norm_clip`` (every algorithm here clips, as the OMIGA
        code does). The losses are summed: a member's parameters get only its own loss's gradient."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        params = list(params.parameters()) if isinstance(params, nn.Module) else list(params)
        clip_grad_norm_per_member(params, self.cfg.grad_norm_clip)
        opt.step()

    def q_at(self, q_net: nn.Module, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q_i(o_i, a_i) -> (B, N): a gather from Q_i(o_i, .) for discrete actions, Q_i(o_i ++ a_i) otherwise."""
        if self.spec.discrete:
            return q_net(obs).gather(-1, actions[..., None])[..., 0]
        return q_net(torch.cat([obs, actions], dim=-1))[..., 0]

    def compile_update(self) -> None:
        """Run :meth:`update` through ``torch.compile`` from now on: Inductor fuses its kernels, and on a CUDA
        device mode "reduce-overhead" records them as CUDA graphs and replays them, so a step costs a few
        launches instead of hundreds. Minibatch sampling (:meth:`step`) stays eager. Code the backend cannot
        compile (no C++ compiler, an unsupported op) runs eagerly, frame by frame, with a warning from torch,
        never half-applied. The losses equal eager's to float tolerance (tests/test_members.py)."""
        import warnings

        import torch._dynamo

        with warnings.catch_warnings():  # torch's own Inductor still imports TorchScript methods (torch.utils.mkldnn)
            warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated", DeprecationWarning)
            import torch._inductor.compile_fx  # noqa: F401  (imported once, here, instead of at the first step)
        torch._dynamo.config.suppress_errors = True  # a frame that fails to compile runs eagerly
        cuda = self.obs_mean.device.type == "cuda"
        self.update = torch.compile(self.update, mode="reduce-overhead" if cuda else None)

    # ----- to implement -------------------------------------------------------------------------------------
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def step(self, loader) -> dict[str, torch.Tensor]:
        """One gradient step on a fresh minibatch per member from ``loader`` (the trainer's entry point;
        its seeds are the members'). Algorithms that need more than a batch of transitions (ComaDICE:
        initial states) override this."""
        self.last_batch = self.prepare(loader.sample_members().to(self.obs_mean.device))
        return self.update(self.last_batch)

    # ----- diagnostics (omgmg.diagnostics), on one batch every log_every steps -------------------------------
    def diagnostics(self, b: Batch, mc_return: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """What can go wrong, measured on batch ``b`` without changing anything, per member (M,): the share
        of actions on their bounds (continuous), and Q_tot against ``mc_return``, the data's discounted
        return-to-go of each transition (algorithms with a mixed Q_tot). Algorithms add their own (OMGMG,
        OMIGA)."""
        out = {}
        if not self.spec.discrete:
            low, high, mask = (torch.as_tensor(x, device=b.actions.device) for x in self.spec.action_bounds())
            out["policy/actions_on_bounds"] = actions_on_bounds(b.actions, low, high, mask)
        if mc_return is not None:
            with torch.no_grad():
                q_tot = self.q_tot(b)
            if q_tot is not None:
                q, g = member_mean(q_tot), member_mean(mc_return)
                out |= {"value/q_tot_batch": q, "value/mc_return": g, "value/q_tot_over_mc": q - g}
        return out

    mixed_q_tot = False
    """Whether Q_tot is the mixer's sum of ``self.q``'s Q_i (Eq. 9): ``q_tot`` then reads it off (OMGMG, OMIGA)."""

    def q_tot(self, b: Batch) -> torch.Tensor | None:
        """Q_tot(s, a) of the batch's transitions, (M, B), for algorithms that mix one; None otherwise."""
        if not self.mixed_q_tot:
            return None
        w, bias = self.mixer(b.state)
        return mix(w, self.q_at(self.q, b.obs, b.actions), bias)

    behaviour_log_prob = None
    """log pi_beta(a | o) of raw observations under the policy that collected the data (:mod:`omgmg.behaviour`),
    set by the trainer where it is at hand: :meth:`generalisation` then measures the policy's actions with it."""

    @torch.no_grad()
    def generalisation(self, b: Batch, actor: nn.Module) -> dict[str, torch.Tensor]:
        """How far ``actor``'s actions a' ~ actor(o) sit from the data's actions at the same o, per member (M,):
        ``policy/action_distance`` or ``policy/action_differs``, and the behaviour policy's log-probability
        of a' beside that of the data's actions where the behaviour policy is known (omgmg.diagnostics)."""
        if self.spec.discrete:
            a_pi = actor.sample(b.obs, b.avail, self.rng)
            out = {"policy/action_differs": member_mean((a_pi != b.actions).float())}
        else:
            a_pi = actor.sample(b.obs, self.rng)[0]
            low, high, mask = (torch.as_tensor(x, device=b.actions.device) for x in self.spec.action_bounds())
            out = {"policy/action_distance": action_distance(a_pi, b.actions, low, high, mask)}
        if self.behaviour_log_prob is not None:
            raw = b.obs * self.obs_std + self.obs_mean  # the behaviour policy reads the environment's observations
            out["policy/behaviour_log_prob"] = member_mean(self.behaviour_log_prob(raw, a_pi, b.avail))
            out["policy/behaviour_log_prob_data"] = member_mean(self.behaviour_log_prob(raw, b.actions, b.avail))
        return out

    def log_prob_data(self, b: Batch) -> torch.Tensor:
        """log pi_i(a_i | o_i) of the dataset actions under ``self.actor`` (masked softmax or tanh-Gaussian),
        (M, B, N)."""
        if self.spec.discrete:
            return self.actor.log_probs(b.obs, b.avail).gather(-1, b.actions[..., None])[..., 0]
        return self.actor.log_prob(b.obs, b.actions)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, avail: torch.Tensor | None) -> torch.Tensor:
        """Deterministic evaluation actions of ``self.actor`` for each member's observations (M, E, N, O):
        tanh of the Gaussian mean, or the most probable available action. Algorithms without an actor
        (greedy in Q) override this."""
        return self.actor.deterministic(obs, avail) if self.spec.discrete else self.actor.deterministic(obs)

    # ----- checkpoints --------------------------------------------------------------------------------------
    def optimizer_state(self) -> dict:
        return {k: o.state_dict() for k, o in self.optimizers.items()}

    def load_optimizer_state(self, state: dict) -> None:
        for k, o in self.optimizers.items():
            o.load_state_dict(state[k])
