"""From nothing to a validated dataset: train (or reuse) a behaviour policy, roll it out at a level.

    ds = collect(CollectRequest("smacv2", "protoss_5v5", level="medium"))

Levels, as the offline-RL literature defines them (D4RL, OMIGA) and as written into every
dataset's metadata (``collection.level_definition``):
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from collectors.envs import TaskRef, make_vector_env, resolve
from collectors.training import (EpisodeRecorder, algorithm, data_home, file_sha256, load_agent, replay_episodes,
                                 score, train_behaviour)
from datakit.dataset import Dataset
from datakit.errors import DatasetError
from datakit.format import normalise_level
from datakit.spec import EnvSpec
from datakit.writer import DatasetWriter

LEVEL_DEFINITIONS = {
    "expert": "rollouts of the behaviour policy's best checkpoint (highest evaluation score)",
    "medium": "rollouts of the checkpoint whose evaluation score is closest to {fraction} x the expert's",
    "medium-replay": "every episode the behaviour policy generated while training, up to the medium checkpoint",
    "medium-expert": "medium and expert rollouts in equal parts (half of the budget each, medium first)",
    "random": "a uniformly random policy (uniform over the available actions where discrete)",
}
__doc__ += "\n".join(f"\n- ``{k}``: {v}." for k, v in LEVEL_DEFINITIONS.items()) + """

The behaviour policy acts stochastically while collecting (sampled actions), and the stored action
is the executed one (continuous samples clipped to the bounds). Rollouts run in *waves*: every env
starts one episode from a seed derived from (seed, wave), all of them run to their end, and the
wave's episodes are appended in env order (the last one cut, as a truncation, where it crosses a
transition budget). So the same seed and budgets give byte-identical arrays, and an interrupted
collection resumes at the wave it was in.
"""

DEFAULT_BUDGET = {"mamujoco": ("transitions", 1_000_000), "smacv2": ("episodes", 1000), "fixture": ("episodes", 100)}
DEFAULT_TRAIN_STEPS = {"happo": 2_000_000, "mappo": 5_000_000}


@dataclass
class CollectRequest:
    """Everything ``omgmg-data collect`` can be asked."""

    suite: str
    task: str
    level: str
    transitions: int | None = None
    """Transition budget (default for MaMuJoCo: 1M). Exclusive with ``episodes``."""
    episodes: int | None = None
    """Episode budget (default for SMACv2: 1000)."""
    seed: int = 0
    """Seed of the behaviour policy's training and of the rollouts."""
    backend: str | None = None
    """Simulator backend (SMACv2: sc2 or smax)."""
    train_steps: int | None = None
    """Behaviour-policy training budget in env steps (default: happo 2M, mappo 5M)."""
    out: Path | None = None
    """Output path (default: $OMGMG_HOME/datasets/SUITE-TASK-BACKEND-LEVEL-seedS.zarr)."""
    workers: int = 2
    """Processes for CPU simulators."""
    num_envs: int | None = None
    """Envs per rollout wave (default: the algorithm's training num_envs)."""
    medium_fraction: float = 0.5
    """The medium checkpoint is the one scoring closest to this fraction of the expert's score."""
    force: bool = False
    """Replace an existing dataset at ``out``."""

    def __post_init__(self):
        self.level = normalise_level(self.level)
        for name in ("transitions", "episodes", "train_steps", "num_envs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DatasetError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
        if self.transitions is not None and self.episodes is not None:
            raise DatasetError("give either --transitions or --episodes, not both")
        if not 0 < self.medium_fraction < 1:
            raise DatasetError(f"medium fraction must lie in (0, 1), got {self.medium_fraction}")


# ----- policies -------------------------------------------------------------------------------------------------

class AgentPolicy:
    """A trained behaviour agent acting stochastically on raw observations."""

    stochastic = True

    def __init__(self, agent):
        self.agent = agent

    @torch.no_grad()
    def act(self, obs: np.ndarray, avail: np.ndarray | None, gen: torch.Generator) -> np.ndarray:
        o = self.agent.obs_norm.normalise(torch.from_numpy(obs))
        actions, _ = self.agent.act(o, None if avail is None else torch.from_numpy(avail), False, gen)
        return self.agent.executed(actions)


class RandomPolicy:
    """Uniform over each agent's box, or over its available actions."""

    stochastic = True

    def __init__(self, spec: EnvSpec):
        self.spec = spec
        if not spec.discrete:
            from datakit.validate import _action_bounds

            self.low, self.high = (torch.from_numpy(b) for b in _action_bounds(spec))

    def act(self, obs: np.ndarray, avail: np.ndarray | None, gen: torch.Generator) -> np.ndarray:
        E = obs.shape[0]
        if self.spec.discrete:
            weights = torch.from_numpy(avail.reshape(-1, avail.shape[-1]).astype(np.float32))
            return torch.multinomial(weights, 1, generator=gen).reshape(E, self.spec.n_agents).numpy().astype(np.int32)
        u = torch.rand((E, *self.low.shape), generator=gen)
        return (self.low + u * (self.high - self.low)).numpy()


# ----- waves ---------------------------------------------------------------------------------------------------

def _wave_seed(seed: int, phase: int, wave: int) -> int:
    return (seed * 7_368_787 + phase * 1_000_003 + wave * 104_729 + 17) % (2 ** 31)


def rollout_waves(writer: DatasetWriter, policy, vec, *, phase: int, until: tuple[str, int], seed: int,
                  progress: Callable[[int, int], None] | None = None) -> None:
    """Append waves of episodes from ``policy`` until the writer holds ``until`` = (kind, count)."""
    kind, target = until
    count = lambda: writer.transitions_added if kind == "transitions" else writer.episodes_added  # noqa: E731
    prog = writer.progress
    if prog.get("phase") == phase and "episodes_before" in prog:
        writer.truncate(prog["episodes_before"])  # redo the wave a crash interrupted
        wave = prog["wave"]
    else:
        wave = 0
    recorder = EpisodeRecorder(vec.spec, vec.num_envs)
    while count() < target:
        writer.set_progress({"phase": phase, "wave": wave, "episodes_before": writer.episodes_added})
        writer.flush()
        wave_seed = _wave_seed(seed, phase, wave)
        gen = torch.Generator().manual_seed(wave_seed)
        r = vec.reset(seed=wave_seed)
        recorder.start(*r)
        obs, avail = r.obs, r.avail
        running = np.ones(vec.num_envs, bool)
        episodes: list[dict | None] = [None] * vec.num_envs
        while running.any():
            actions = policy.act(obs, avail, gen)
            step = vec.step(actions)
            for e, ep in recorder.add(actions, step, envs=np.flatnonzero(running)):
                episodes[e] = ep
            running &= ~step.done
            obs, avail = step.obs, step.avail
        for ep in episodes:
            left = target - count()
            if left <= 0:
                break
            if kind == "transitions" and len(ep["reward"]) > left:
                ep = _cut(ep, left)
            writer.add_episode(**ep)
        wave += 1
        if progress:
            progress(min(count(), target), target)
    writer.set_progress({"phase": phase + 1})
    writer.flush()


def _cut(ep: dict, keep: int) -> dict:
    """The first ``keep`` steps of an episode, truncated (the budget ran out), with a real next obs."""
    out = {k: v[:keep] for k, v in ep.items() if k in ("obs", "state", "actions", "reward", "avail")}
    out["final_obs"], out["final_state"] = ep["obs"][keep], ep["state"][keep]
    if "avail" in ep:
        out["final_avail"] = ep["avail"][keep]
    if "won" in ep:
        out["won"] = False
    out["terminated"], out["truncated"] = False, True
    return out


# ----- the command ---------------------------------------------------------------------------------------------

def default_out(ref: TaskRef, level: str, seed: int) -> Path:
    return data_home() / "datasets" / f"{ref.suite}-{ref.task}-{ref.backend}-{level}-seed{seed}.zarr"


def choose_checkpoints(run, fraction: float) -> dict[str, dict]:
    """The expert (best score) and medium (score closest to fraction x expert's) checkpoints."""
    evals = run.evaluations()
    expert = max(evals, key=lambda e: (score(e["eval"]), e["env_steps"]))
    target = fraction * score(expert["eval"])
    medium = min(evals, key=lambda e: (abs(score(e["eval"]) - target), e["env_steps"]))
    return {"expert": expert, "medium": medium}


def collect(req: CollectRequest, *, on_note: Callable[[str], None] = print,
            on_train: Callable[[int, int, float | None], None] | None = None,
            on_rollout: Callable[[int, int], None] | None = None) -> Dataset:
    """Train or reuse the behaviour policy, roll it out at ``req.level``, validate, move into place."""
    ref = resolve(req.suite, req.task, backend=req.backend)
    if ref.note:
        on_note(ref.note)
    kind, target = DEFAULT_BUDGET[ref.suite]
    if req.transitions is not None:
        kind, target = "transitions", req.transitions
    elif req.episodes is not None:
        kind, target = "episodes", req.episodes
    out = Path(req.out) if req.out else default_out(ref, req.level, req.seed)
    if out.exists() and not req.force:
        raise DatasetError(f"{out} already exists; pass --force to replace it or --out for another path")
    out.parent.mkdir(parents=True, exist_ok=True)

    probe = make_vector_env(ref, 1)
    spec = probe.spec
    probe.close()
    algo = "mappo" if spec.discrete else "happo"
    definition = LEVEL_DEFINITIONS[req.level].format(fraction=req.medium_fraction)
    collection = {"level_definition": definition, "stored_action": "executed (continuous samples clipped to bounds)",
                  "budget": {kind: target}, "collector": "omgmg-data collect", "seed": req.seed}

    run, picks = None, {}
    if req.level != "random":
        cfg_cls, _ = algorithm(algo)
        cfg = cfg_cls(total_env_steps=req.train_steps or DEFAULT_TRAIN_STEPS[algo], seed=req.seed, workers=req.workers)
        run = train_behaviour(ref, algo, cfg, progress=on_train)
        picks = choose_checkpoints(run, req.medium_fraction)
        collection["behaviour_run"] = str(run.root)
        collection["checkpoints"] = {name: {"env_steps": p["env_steps"], "sha256": file_sha256(p["path"]),
                                            "eval_score": score(p["eval"])} for name, p in picks.items()}

    def behaviour(name: str | None) -> dict:
        if name is None:
            return {"algorithm": "uniform-random", "checkpoint_sha256": None, "seed": req.seed, "noise": None,
                    "stochastic": True, "eval_score": None}
        p = picks[name]
        return {"algorithm": algo, "checkpoint_sha256": file_sha256(p["path"]), "seed": req.seed, "noise": None,
                "stochastic": True, "eval_score": score(p["eval"])}

    single = {"expert": "expert", "medium": "medium", "medium-replay": "medium", "random": None}
    bp = behaviour(single[req.level]) if req.level in single else {
        "algorithm": algo, "checkpoint_sha256": None, "seed": req.seed, "noise": None, "stochastic": True,
        "eval_score": None}
    writer = DatasetWriter(out, spec, level=req.level, behaviour_policy=bp, collection=collection,
                           overwrite=req.force, resume=True)
    if req.level == "medium-replay":
        if req.transitions is not None or req.episodes is not None:
            on_note("medium-replay takes every training episode up to the medium checkpoint; the budget is not used")
        count = picks["medium"]["replay_episodes"]
        if writer.n_episodes:
            writer.truncate(0)
        for k, ep in enumerate(replay_episodes(run, count)):
            writer.add_episode(**ep)
            if on_rollout:
                on_rollout(k + 1, count)
        return writer.close()

    num_envs = req.num_envs or algorithm(algo)[0]().num_envs
    vec = make_vector_env(ref, num_envs, workers=req.workers)
    try:
        if req.level == "medium-expert":
            if writer.progress.get("phase", 0) == 0:  # not past the medium half yet (fresh or resumed)
                rollout_waves(writer, AgentPolicy(load_agent(picks["medium"]["path"])[0]), vec, phase=0,
                              until=(kind, max(1, target // 2)), seed=req.seed, progress=on_rollout)
            rollout_waves(writer, AgentPolicy(load_agent(picks["expert"]["path"])[0]), vec, phase=1,
                          until=(kind, target), seed=req.seed, progress=on_rollout)
        else:
            policy = RandomPolicy(spec) if req.level == "random" else AgentPolicy(load_agent(picks[req.level]["path"])[0])
            rollout_waves(writer, policy, vec, phase=0, until=(kind, target), seed=req.seed, progress=on_rollout)
    finally:
        vec.close()
    return writer.close()
