"""From nothing to a validated dataset: train (or reuse) a behaviour policy, roll it out at a level.

    ds = collect(CollectRequest("smacv2", "protoss_5v5", level="medium"))

Levels are defined as the offline-RL literature defines them (D4RL, OMIGA), in
:data:`LEVEL_DEFINITIONS`, which every dataset's metadata repeats (``collection.level_definition``).

The behaviour policy acts stochastically while collecting (sampled actions), and the stored action
is the executed one (continuous samples clipped to the bounds). Every episode has its own seed
(see :func:`omgmg.collectors.rollout.rollout_episodes`), so the same seed and budgets give
byte-identical arrays, and an interrupted collection resumes at the first episode it had not
committed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from omgmg.collectors.behaviour import algorithm, algorithm_for, load_agent
from omgmg.collectors.common import RolloutPolicy, categorical_sample
from omgmg.collectors.envs import TaskRef, construction, make_vector_env, resolve, worthwhile_workers
from omgmg.collectors.rollout import rollout_episodes
from omgmg.collectors.runs import RunDir, score
from omgmg.collectors.training import train_behaviour
from omgmg.datakit.dataset import Dataset, open_dataset
from omgmg.datakit.errors import ConfigError, RequestError, render_options
from omgmg.datakit.format import LEVEL_NAMES, normalise_level
from omgmg.datakit.integrity import file_sha256
from omgmg.datakit.loader import iter_episodes
from omgmg.datakit.outputs import check_replaceable, data_home, home_relative, is_omgmg_dataset, make_parent
from omgmg.datakit.provenance import layouts, package_versions, seed_ranges
from omgmg.datakit.spec import EnvSpec
from omgmg.datakit.writer import DatasetWriter, episode_arguments, open_unfinished

LEVEL_DEFINITIONS = {
    "expert": "rollouts of the behaviour policy's best checkpoint (highest evaluation score)",
    "medium": "rollouts of the checkpoint whose evaluation score is closest to {fraction} x the expert's",
    "medium-replay": "every episode the behaviour policy generated while training, up to the medium checkpoint",
    "medium-expert": "medium and expert rollouts in equal parts (half of the budget each, medium first)",
    "random": "a uniformly random policy (uniform over the available actions where discrete)",
}

DEFAULT_BUDGET = {"mamujoco": ("transitions", 1_000_000), "smacv2": ("episodes", 1000), "fixture": ("episodes", 100)}
DEFAULT_TRAIN_STEPS = {"happo": 2_000_000, "mappo": 5_000_000}
# SMAX rolls its envs out in this many batches: JAX steps one while this process records the other's
# step and computes its actions (protoss_5v5 medium, 64 envs: 38-41% below the bare env rate in 2
# batches, 45-47% in one; 128 envs in 2 or 4 batches: 41-43%). CPU simulators ignore it.
ROLLOUT_PARTS = 2


@dataclass
class CollectRequest:
    """Everything ``omgmg-data collect`` can be asked."""

    suite: str
    """Environment suite: mamujoco, smacv2 (or fixture, for tests)."""
    task: str
    """Task within the suite, e.g. Hopper-3x1 or protoss_5v5."""
    level: str
    """The dataset's level: a name of ``datakit.format.LEVELS`` or an alias (what each holds: LEVEL_DEFINITIONS)."""
    transitions: int | None = None
    """Transition budget (default for MaMuJoCo: 1M). Exclusive with ``episodes``."""
    episodes: int | None = None
    """Episode budget (default for SMACv2: 1000)."""
    seed: int = 0
    """Seed of the behaviour policy's training and of the rollouts."""
    rollout_seed: int | None = None
    """Seed of the rollouts alone (their resets and action noise; default: seed). Another value gives an
    independent copy of the level: the same behaviour policy, no episode in common with the default one
    (medium-replay, the training episodes themselves, has no such copy: train another seed)."""
    backend: str | None = None
    """Simulator backend (SMACv2: sc2 or smax)."""
    obs_mode: str | None = None
    """MaMuJoCo observations: local (each agent's own joints, padded to the widest; the default) or
    omiga (the public OMIGA datasets' layout, which OMIGA's code trains on). Recorded in the dataset."""
    reward_scale: str | None = None
    """SMAX rewards: smacv2 (a won battle returns 20, as SMACv2's scaling gives; the default) or smax
    (SMAX's own reward, at most 2). Recorded in the dataset."""
    train_steps: int | None = None
    """Behaviour-policy training budget in env steps (default: happo 2M, mappo 5M)."""
    out: Path | None = None
    """Output path (default: $OMGMG_HOME/datasets/SUITE-TASK-BACKEND-LEVEL-seedS.zarr)."""
    workers: int = 2
    """Processes for CPU simulators."""
    num_envs: int = 64
    """Envs stepped together while rolling out (more envs spread the policy's per-step cost:
    Hopper-3x1 rollouts ran at 46% of the bare env speed with 16 envs, 69% with 64)."""
    medium_fraction: float = 0.5
    """The medium checkpoint is the one scoring closest to this fraction of the expert's score."""
    force: bool = False
    """Replace an existing dataset at ``out`` (only an omgmg dataset) and start over instead of
    resuming an unfinished write."""
    tensorboard: bool | None = None
    """Also write TensorBoard event files of behaviour training into its run directory (default: when
    the tensorboard package is installed)."""
    behaviour: dict = field(default_factory=dict)
    """Behaviour-policy settings to change from their defaults: fields of MAPPOConfig (discrete
    actions) or HAPPOConfig (continuous), e.g. ``{"actor_lr": 3e-4}``."""

    def __post_init__(self):
        if self.level is None:
            raise ConfigError(f"which level? give one of {LEVEL_NAMES}")
        self.level = normalise_level(self.level)
        for name in ("transitions", "episodes", "train_steps", "num_envs", "workers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be a positive number, got {value}")
        if self.transitions is not None and self.episodes is not None:
            raise ConfigError("give either a transition budget or an episode budget, not both")
        if not 0 < self.medium_fraction < 1:  # also refuses NaN
            raise ConfigError(f"medium_fraction must lie in (0, 1), got {self.medium_fraction}")
        if self.rollout_seed is not None and self.level == "medium-replay":
            raise ConfigError(
                "medium-replay is the behaviour run's own training episodes, so it has no copy with other rollout "
                "seeds: a behaviour run of another seed (<<seed=...>>) gives an independent medium-replay"
            )

    @property
    def rollouts_seed(self) -> int:
        """The seed the rollouts' resets and noise derive from (``rollout_seed``, else ``seed``)."""
        return self.seed if self.rollout_seed is None else self.rollout_seed

    def task_options(self) -> dict:
        """The environment options the request asks for (defaults: none; ``local`` observations and SMAX's
        ``smacv2`` reward scale are the defaults)."""
        options = {"obs_mode": self.obs_mode} if self.obs_mode not in (None, "local") else {}
        if self.reward_scale is not None:
            options["reward_scale"] = self.reward_scale
        return options

    def behaviour_config(self, algo: str):
        """The behaviour algorithm's config: its defaults, the request's budget, seed and workers, and
        the settings in ``behaviour``."""
        cfg_cls, _ = algorithm(algo)
        fixed = {
            "total_env_steps": self.train_steps or DEFAULT_TRAIN_STEPS[algo],
            "seed": self.seed,
            "workers": self.workers,
        }
        settable = [f.name for f in dataclasses.fields(cfg_cls) if f.name not in fixed]
        unknown = sorted(set(self.behaviour) - set(settable))
        if unknown:
            raise ConfigError(
                f"behaviour setting {', '.join(unknown)} is not one of {algo}'s (the behaviour "
                f"algorithm of this task): {', '.join(settable)}"
            )
        return cfg_cls(**fixed, **self.behaviour)


BEHAVIOUR_FIXED = ("total_env_steps", "seed", "workers")
"""Behaviour-config fields a CollectRequest sets itself (train_steps, seed, workers)."""


# ----- policies -------------------------------------------------------------------------------------------------


def random_policy(spec: EnvSpec) -> RolloutPolicy:
    """Uniform over each agent's action box, or over its available actions; it records the uniform
    density (probability) of what it chose."""
    if spec.discrete:

        def act(obs, avail: np.ndarray, noise: torch.Tensor) -> tuple[np.ndarray, dict[str, np.ndarray]]:
            scores = torch.zeros(avail.shape).masked_fill_(~torch.from_numpy(avail), -float("inf"))
            actions, log_prob = categorical_sample(scores, noise)
            return actions.to(torch.int32).numpy(), {"behaviour_log_prob": log_prob.numpy()}

        return RolloutPolicy(act, "uniform", (spec.n_agents, spec.n_actions))
    low, high, mask = (torch.from_numpy(b) for b in spec.action_bounds())
    # the box's uniform log-density per agent: -sum log(high - low) over its own entries
    log_density = -torch.where(mask > 0, torch.log(torch.where(mask > 0, high - low, 1.0)), 0.0).sum(-1)  # (N,)

    def act(obs, avail, noise: torch.Tensor) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        logp = log_density.expand(noise.shape[0], -1).numpy().copy()
        return (low + noise * (high - low)).numpy(), {"behaviour_log_prob": logp}

    return RolloutPolicy(act, "uniform", tuple(low.shape))


def recorded_arrays(spec: EnvSpec, behaviour_config) -> tuple[str, ...]:
    """The behaviour arrays a behaviour policy's rollouts record (``RolloutPolicy.behaviour_arrays``)."""
    clips = not spec.discrete and behaviour_config.policy != "tanh"
    return ("log_prob", "pre_clip") if clips else ("log_prob",)


def stored_action(spec: EnvSpec, behaviour_config) -> str:
    """What a dataset's ``steps/actions`` hold, in words (``collection.stored_action``); ``behaviour_config``
    is None for the random level."""
    if spec.discrete:
        what = "uniformly random" if behaviour_config is None else "sampled"
        return f"the {what} action, one of the available ones"
    if behaviour_config is None:
        return "a uniform sample of the action box"
    if behaviour_config.policy == "tanh":
        return "the executed action: the Gaussian sample squashed by tanh into the bounds"
    return "the executed action: the Gaussian sample clipped to the bounds"


# ----- the command ---------------------------------------------------------------------------------------------


def default_out(ref: TaskRef, level: str, seed: int, rollout_seed: int | None = None) -> Path:
    # e.g. -omiga: another layout, another dataset (SMAX's default reward scale goes unnamed; the other is -smax)
    shown = {k: v for k, v in ref.options.items() if (k, v) != ("reward_scale", "smacv2")}
    layout = "".join(f"-{v}" for v in shown.values())
    copy = "" if rollout_seed is None else f"-rollouts{rollout_seed}"
    return data_home() / "datasets" / f"{ref.suite}-{ref.task}-{ref.backend}{layout}-{level}-seed{seed}{copy}.zarr"


def choose_checkpoints(evals: list[dict], fraction: float) -> dict[str, dict]:
    """The expert (best score) and medium (score closest to fraction x expert's) checkpoints among a
    run's evaluations (``RunDir.evaluations``)."""
    expert = max(evals, key=lambda e: (score(e["eval"]), e["env_steps"]))
    target = fraction * score(expert["eval"])
    medium = min(evals, key=lambda e: (abs(score(e["eval"]) - target), e["env_steps"]))
    return {"expert": expert, "medium": medium}


def collect(
    req: CollectRequest,
    *,
    on_note: Callable[[str], None] = lambda m: print(render_options(m)),
    on_train: Callable[[int, int, float | None], None] | None = None,
    on_rollout: Callable[[int, int], None] | None = None,
) -> Dataset:
    """Train or reuse the behaviour policy, roll it out at ``req.level``, validate, move into place."""
    ref = resolve(req.suite, req.task, backend=req.backend, **req.task_options())
    if req.level == "random" and req.behaviour:
        raise ConfigError("the random level trains no behaviour policy; behaviour settings do not apply")
    if ref.note:
        on_note(ref.note)
    kind, target = DEFAULT_BUDGET[ref.suite]
    if req.transitions is not None:
        kind, target = "transitions", req.transitions
    elif req.episodes is not None:
        kind, target = "episodes", req.episodes
    out = Path(req.out) if req.out else default_out(ref, req.level, req.seed, req.rollout_seed)
    if out.exists() or out.is_symlink():
        if not req.force:
            raise RequestError(
                f"{out} already exists; pass <<force=True>> to replace it or <<out=...>> for another path"
            )
        check_replaceable(out, owned=is_omgmg_dataset, what="an omgmg dataset")  # before hours of training
    make_parent(out)

    probe = make_vector_env(ref, 1)
    spec = probe.spec
    probe.close()
    algo = algorithm_for(spec)
    definition = LEVEL_DEFINITIONS[req.level].format(fraction=req.medium_fraction)
    cfg = None if req.level == "random" else req.behaviour_config(algo)
    collection = {
        "level_definition": definition,
        "stored_action": stored_action(spec, cfg),
        "budget": {kind: target},
        "collector": "omgmg-data collect",
        "seed": req.seed,
        **({} if req.rollout_seed is None else {"rollout_seed": req.rollout_seed}),
        "provenance": {  # omgmg.datakit.provenance; episode_seeds is filled in when the rollout ends
            "packages": package_versions(),
            "environment": {"task": ref.name, "backend": ref.backend, **construction(ref)},
            "layouts": layouts(spec),
            "episode_seeds": [],
        },
    }

    run, picks = None, {}
    if cfg is not None:
        run = train_behaviour(ref, algo, cfg, progress=on_train, warn=on_note, tensorboard=req.tensorboard)
        picks = choose_checkpoints(run.evaluations(up_to=cfg.total_env_steps), req.medium_fraction)
        collection["behaviour_run"] = home_relative(run.root)
        collection["checkpoints"] = {
            name: {"env_steps": p["env_steps"], "sha256": file_sha256(p["path"]), "eval_score": score(p["eval"])}
            for name, p in picks.items()
        }

    def behaviour(name: str | None) -> dict:
        if name is None:
            return {
                "algorithm": "uniform-random",
                "checkpoint_sha256": None,
                "seed": req.seed,
                "noise": None,
                "stochastic": True,
                "eval_score": None,
            }
        p = picks[name]
        return {
            "algorithm": algo,
            "checkpoint_sha256": file_sha256(p["path"]),
            "seed": req.seed,
            "noise": None,
            "stochastic": True,
            "eval_score": score(p["eval"]),
        }

    single = {"expert": "expert", "medium": "medium", "medium-replay": "medium", "random": None}
    bp = (
        behaviour(single[req.level])
        if req.level in single
        else {
            "algorithm": algo,
            "checkpoint_sha256": None,
            "seed": req.seed,
            "noise": None,
            "stochastic": True,
            "eval_score": None,
        }
    )
    # everything that shapes the data: an unfinished write is resumed only for the same request
    request = {
        "task": ref.name,
        "backend": ref.backend,
        "options": ref.options,
        "level": req.level,
        "budget": {kind: target},
        "seed": req.seed,
        **({} if req.rollout_seed is None else {"rollout_seed": req.rollout_seed}),
        "behaviour": None
        if run is None
        else {
            "run": run.root.name,
            "train_steps": cfg.total_env_steps,
            "medium_fraction": req.medium_fraction,
            "checkpoints": {name: c["sha256"] for name, c in collection["checkpoints"].items()},
        },
    }
    if req.level == "medium-replay":  # what the training episodes recorded (runs made before format 3: none)
        arrays = open_unfinished(run.replay_path).behaviour_arrays
    else:
        arrays = ("log_prob",) if cfg is None else recorded_arrays(spec, cfg)
    writer = DatasetWriter(
        out,
        spec,
        level=req.level,
        behaviour_policy=bp,
        collection=collection,
        overwrite=req.force,
        resume=not req.force,
        request=request,
        behaviour_arrays=arrays,
    )
    if writer.finished:  # an earlier run had written everything; only its final rename was missing
        on_note(f"{out}: the earlier collection had finished; moved it into place")
        return open_dataset(out)
    with writer:  # an error keeps every whole episode written so far, for the next run to resume
        if req.level == "medium-replay":
            if req.transitions is not None or req.episodes is not None:
                on_note(
                    "medium-replay takes every training episode up to the medium checkpoint; the budget is not used"
                )
            count = picks["medium"]["replay_episodes"]
            if writer.n_episodes:
                writer.truncate(0)
            for k, ep in enumerate(replay_episodes(run, count)):
                writer.add_episode(**ep)
                if on_rollout:
                    on_rollout(k + 1, count)
        else:
            _roll_out_level(writer, req, spec, ref, picks, (kind, target), on_rollout)
            seeded = [tuple(x) for _, x in sorted(writer.progress.get("seeded", {}).items(), key=lambda i: int(i[0]))]
            writer.collection["provenance"]["episode_seeds"] = seed_ranges(seeded, writer.episodes_added)
            # how many envs one simulator call stepped: JAX compiles SMAX's step per batch size, and its floats
            # agree bit for bit only between runs of one batch size (omgmg.collectors.verify replays at it)
            parts = ROLLOUT_PARTS if ref.backend == "smax" else 1
            writer.collection["provenance"]["rollout"] = {
                "num_envs": req.num_envs,
                "envs_per_simulator_call": int(np.ceil(req.num_envs / max(1, min(parts, req.num_envs)))),
            }
    return writer.close()  # already closed by the block: the finished dataset


def _roll_out_level(
    writer: DatasetWriter,
    req: CollectRequest,
    spec: EnvSpec,
    ref: TaskRef,
    picks: dict,
    until: tuple[str, int],
    on_rollout,
) -> None:
    kind, target = until
    vec = make_vector_env(ref, req.num_envs, workers=worthwhile_workers(ref, req.workers), parts=ROLLOUT_PARTS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the policy's small matmuls run fastest on one thread, next to the env workers
    try:
        if req.level == "medium-expert":
            if writer.progress.get("phase", 0) == 0:  # not past the medium half yet (fresh or resumed)
                rollout_episodes(
                    writer,
                    load_agent(picks["medium"]["path"])[0].sampler(),
                    vec,
                    phase=0,
                    until=(kind, max(1, target // 2)),
                    seed=req.rollouts_seed,
                    progress=on_rollout,
                )
            rollout_episodes(
                writer,
                load_agent(picks["expert"]["path"])[0].sampler(),
                vec,
                phase=1,
                until=(kind, target),
                seed=req.rollouts_seed,
                progress=on_rollout,
            )
        else:
            policy = random_policy(spec) if req.level == "random" else load_agent(picks[req.level]["path"])[0].sampler()
            rollout_episodes(
                writer, policy, vec, phase=0, until=(kind, target), seed=req.rollouts_seed, progress=on_rollout
            )
    finally:
        torch.set_num_threads(threads)
        vec.close()


def replay_episodes(run: RunDir, count: int):
    """The first ``count`` episodes a behaviour run generated while training, as ``add_episode``
    keywords (its replay store stays an unfinished write, so that the run can be extended)."""
    for ep in iter_episodes(open_unfinished(run.replay_path), stop=count):
        yield episode_arguments(ep)
