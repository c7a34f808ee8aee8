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

from collectors.common import RolloutPolicy, gumbel_argmax
from collectors.envs import TaskRef, make_vector_env, resolve
from collectors.training import (EndedEpisode, EpisodeRecorder, algorithm, data_home, file_sha256, load_agent,
                                 replay_episodes, score, train_behaviour)
from datakit.dataset import Dataset, open_dataset
from datakit.errors import RequestError
from datakit.format import normalise_level
from datakit.outputs import check_replaceable, is_omgmg_dataset, make_parent
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
is the executed one (continuous samples clipped to the bounds). Every episode has its own seed
(see :func:`rollout_episodes`), so the same seed and budgets give byte-identical arrays, and an
interrupted collection resumes at the first episode it had not committed.
"""

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
    num_envs: int = 64
    """Envs stepped together while rolling out (more envs spread the policy's per-step cost:
    Hopper-3x1 rollouts ran at 46% of the bare env speed with 16 envs, 69% with 64)."""
    medium_fraction: float = 0.5
    """The medium checkpoint is the one scoring closest to this fraction of the expert's score."""
    force: bool = False
    """Replace an existing dataset at ``out`` (only an omgmg dataset) and start over instead of
    resuming an unfinished write."""

    def __post_init__(self):
        self.level = normalise_level(self.level)
        for name in ("transitions", "episodes", "train_steps", "num_envs", "workers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise RequestError(f"{name} must be a positive number, got {value}")
        if self.transitions is not None and self.episodes is not None:
            raise RequestError("give either a transition budget or an episode budget, not both")
        if not 0 < self.medium_fraction < 1:  # also refuses NaN
            raise RequestError(f"medium_fraction must lie in (0, 1), got {self.medium_fraction}")


# ----- policies -------------------------------------------------------------------------------------------------

def random_policy(spec: EnvSpec) -> RolloutPolicy:
    """Uniform over each agent's action box, or over its available actions."""
    if spec.discrete:
        def act(obs, avail: np.ndarray, noise: torch.Tensor) -> np.ndarray:
            scores = torch.zeros(avail.shape).masked_fill_(~torch.from_numpy(avail), -float("inf"))
            return gumbel_argmax(scores, noise).to(torch.int32).numpy()

        return RolloutPolicy(act, "uniform", (spec.n_agents, spec.n_actions))
    from datakit.validate import _action_bounds

    low, high = (torch.from_numpy(b) for b in _action_bounds(spec))

    def act(obs, avail, noise: torch.Tensor) -> np.ndarray:
        return (low + noise * (high - low)).numpy()

    return RolloutPolicy(act, "uniform", tuple(low.shape))


class NoiseStreams:
    """Each env's policy noise from its own generator, restarted with the seed of every episode the
    env starts and drawn in blocks: an episode's t-th draw depends only on its seed and t, never on
    the other envs or on when the env runs."""

    def __init__(self, num_envs: int, kind: str, shape: tuple[int, ...], block: int = 256):
        self.kind, self.shape, self.block = kind, shape, block
        self.gens = [torch.Generator() for _ in range(num_envs)]
        self.buf = torch.empty((num_envs, block, *shape))
        self._buf_np = self.buf.numpy()  # the same memory: numpy's fancy indexing costs a third of torch's
        self.used = np.zeros(num_envs, np.int64)

    def restart(self, seeds: np.ndarray, envs: np.ndarray) -> None:
        """Env e (where ``envs``) restarts its stream from ``seeds[e]``."""
        for e in np.flatnonzero(envs):
            self.gens[e].manual_seed(int(seeds[e]))
            self._refill(e)

    def _refill(self, e: int) -> None:
        shape = (self.block, *self.shape)
        self.buf[e] = torch.randn(shape, generator=self.gens[e]) if self.kind == "normal" else \
            torch.rand(shape, generator=self.gens[e])
        self.used[e] = 0

    def draw(self, envs: np.ndarray, rows: slice = slice(None)) -> torch.Tensor:
        """The next draw of the envs in ``rows`` (default all); only the streams where ``envs`` (a mask
        over those rows) advance, the others' rows are unused."""
        used = self.used[rows]  # a view: advancing it advances the streams
        lo = rows.start or 0
        for e in np.flatnonzero(used == self.block):
            self._refill(lo + int(e))
        out = torch.from_numpy(self._buf_np[rows][np.arange(len(used)), np.minimum(used, self.block - 1)])
        used += envs
        return out


# ----- episode slots ---------------------------------------------------------------------------------------------

def _phase_seed(seed: int, phase: int) -> int:
    """Episode j of a phase starts from seed ``_phase_seed + j`` (kept below 2**31 for JAX's int32,
    with room for 2**24 episodes)."""
    return (seed * 7_368_787 + phase * 1_000_003 + 17) % (2 ** 31 - 2 ** 24)


def rollout_episodes(writer: DatasetWriter, policy: RolloutPolicy, vec, *, phase: int, until: tuple[str, int],
                     seed: int, progress: Callable[[int, int], None] | None = None) -> None:
    """Append episodes of ``policy`` until the writer holds ``until`` = (kind, count).

    Episode j of a phase (its *slot*) starts from a reset seeded ``_phase_seed(seed, phase) + j`` and
    draws its policy noise from a stream seeded the same way, whichever env runs it. Each env is
    given its next slot when it starts one (so its auto-reset can start that slot at once), and no
    env waits for another: only the last episodes of a budget run alone. Episodes are appended in slot
    order as soon as every earlier slot has ended, until the budget is met (a transition budget cuts
    the last episode, stored as truncated).

    An episode depends on its slot's seed alone, so the data is a function of the seed and the
    budget: not of how long episodes run (slot j is kept whatever its length), nor of which env ran
    it, nor of the number of envs or worker processes; a smaller budget keeps a prefix of a larger
    one; an interrupted collection resumes at the first slot it had not committed.

    The vector env's independently stepping parts (``vec.groups()``: SMAX batches, worker
    processes) are pipelined: while one part steps, this process records the others' last step,
    computes their next actions and writes finished episodes; a part none of whose envs is still
    needed is not stepped at all.
    """
    kind, target = until
    count = lambda: writer.transitions_added if kind == "transitions" else writer.episodes_added  # noqa: E731
    prog = writer.progress
    if prog.get("phase") != phase:  # a new phase: remember where it starts in the dataset
        writer.set_progress({"phase": phase, "first_episode": writer.episodes_added})
        writer.flush()
    first_episode = writer.progress["first_episode"]
    base = _phase_seed(seed, phase)
    E = vec.num_envs
    append_slot = writer.episodes_added - first_episode  # on resume: the committed episodes are kept
    slot = append_slot + np.arange(E)  # the slot each env runs
    planned = slot + E  # the slot each env starts when its episode ends
    unassigned = append_slot + 2 * E
    ended: dict[int, dict] = {}  # slot -> an ended episode not yet appended
    to_gather: list[tuple[int, EpisodeRecorder, EndedEpisode]] = []  # episodes that ended, not yet gathered
    noise = NoiseStreams(E, policy.noise_kind, policy.noise_shape)
    r = vec.reset(base + append_slot)  # env e starts slot append_slot + e
    noise.restart(base + slot, np.ones(E, bool))
    obs, avail = r.obs, r.avail
    groups = vec.groups()
    recorders = []
    for g in groups:
        recorders.append(EpisodeRecorder(vec.spec, g.size))
        recorders[-1].start(obs[g.envs].copy(), r.state[g.envs].copy(), None if avail is None else avail[g.envs].copy())
    stepping: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(groups)  # (actions, active) in flight

    def append_ready() -> bool:
        """Gather the episodes that ended, append those whose turn has come; True if any was appended."""
        nonlocal append_slot
        for j, rec, m in to_gather:
            ended[j] = rec.gather(m)
        to_gather.clear()
        appended = False
        while count() < target and append_slot in ended:
            ep = ended.pop(append_slot)
            left = target - count()
            if kind == "transitions" and len(ep["reward"]) > left:
                ep = _cut(ep, left)
            writer.add_episode(**ep)
            append_slot += 1
            appended = True
            if progress:
                progress(min(count(), target), target)
        return appended

    def needed() -> np.ndarray:
        """Which envs run a slot the budget may still need (this decides what runs, never the data)."""
        if kind == "episodes":  # the slots below the number of episodes still to add
            return slot < append_slot + target - count()
        # a slot is needed while the slots before it may hold fewer transitions than the budget; a lower
        # bound of those: the ended ones' lengths, the running ones' steps so far, 1 for each other
        running = np.concatenate([rec.now - rec.begin for rec in recorders])  # steps so far
        ended_slots = np.array([*ended.keys(), *(j for j, _, _ in to_gather)], np.int64)
        ended_lengths = np.array([*(len(ep["reward"]) for ep in ended.values()), *(m.length for _, _, m in to_gather)],
                                 np.int64)
        before = slot[:, None] > np.concatenate([slot, ended_slots])[None, :]  # (E, E + ended)
        known = before @ np.concatenate([running, ended_lengths])
        unknown = slot - append_slot - before.sum(1)  # earlier slots neither running nor ended: >= 1 step each
        return count() + known + unknown < target

    def record(k: int) -> None:
        """Part k's step has come back: note ended episodes, move their envs on to their next slot."""
        nonlocal obs, avail, unassigned
        g, (actions, active) = groups[k], stepping[k]
        stepping[k] = None
        step = g.step_wait()
        for m in recorders[k].add(actions, step, envs=active, gather=False):
            e = g.envs.start + m.env
            to_gather.append((int(slot[e]), recorders[k], m))
            slot[e], planned[e], unassigned = planned[e], unassigned, unassigned + 1
        moved = np.zeros(E, bool)
        moved[g.envs] = step.done & active
        noise.restart(base + slot, moved)
        obs[g.envs] = step.obs
        if avail is not None:
            avail[g.envs] = step.avail

    while count() < target:
        for k, g in enumerate(groups):
            if stepping[k] is not None:
                record(k)
            active = needed()[g.envs]
            if active.any() and count() < target:
                actions = policy.act(obs[g.envs], None if avail is None else avail[g.envs], noise.draw(active, g.envs))
                g.step_async(actions, active=active, reseed=base + planned[g.envs])
                stepping[k] = (actions, active)
            append_ready()  # gather and write earlier episodes while the envs step
        if not any(s is not None for s in stepping) and count() < target:
            # every needed episode has ended: append them (the slot to append next has ended or runs)
            if not append_ready():
                raise RuntimeError(f"rollout stalled at episode slot {append_slot}; please report this")
    for k, s in enumerate(stepping):  # steps no episode needs: let them finish before the env is reused
        if s is not None:
            groups[k].step_wait()
    writer.set_progress({"phase": phase + 1, "first_episode": writer.episodes_added})  # where the next phase starts
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


def choose_checkpoints(evals: list[dict], fraction: float) -> dict[str, dict]:
    """The expert (best score) and medium (score closest to fraction x expert's) checkpoints among a
    run's evaluations (``RunDir.evaluations``)."""
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
    if out.exists() or out.is_symlink():
        if not req.force:
            raise RequestError(f"{out} already exists; pass --force to replace it or --out for another path")
        check_replaceable(out, owned=is_omgmg_dataset, what="an omgmg dataset")  # before hours of training
    make_parent(out)

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
        run = train_behaviour(ref, algo, cfg, progress=on_train, warn=on_note)
        picks = choose_checkpoints(run.evaluations(up_to=cfg.total_env_steps), req.medium_fraction)
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
    # everything that shapes the data: an unfinished write is resumed only for the same request
    request = {"task": ref.name, "backend": ref.backend, "options": ref.options, "level": req.level,
               "budget": {kind: target}, "seed": req.seed,
               "behaviour": None if run is None else {
                   "run": run.root.name, "train_steps": cfg.total_env_steps, "medium_fraction": req.medium_fraction,
                   "checkpoints": {name: c["sha256"] for name, c in collection["checkpoints"].items()}}}
    writer = DatasetWriter(out, spec, level=req.level, behaviour_policy=bp, collection=collection,
                           overwrite=req.force, resume=not req.force, request=request)
    if writer.finished:  # an earlier run had written everything; only its final rename was missing
        on_note(f"{out}: the earlier collection had finished; moved it into place")
        return open_dataset(out)
    with writer:  # an error keeps every whole episode written so far, for the next run to resume
        if req.level == "medium-replay":
            if req.transitions is not None or req.episodes is not None:
                on_note("medium-replay takes every training episode up to the medium checkpoint; the budget is "
                        "not used")
            count = picks["medium"]["replay_episodes"]
            if writer.n_episodes:
                writer.truncate(0)
            for k, ep in enumerate(replay_episodes(run, count)):
                writer.add_episode(**ep)
                if on_rollout:
                    on_rollout(k + 1, count)
        else:
            _roll_out_level(writer, req, spec, ref, picks, (kind, target), on_rollout)
    return writer.close()  # already closed by the block: the finished dataset


def _roll_out_level(writer: DatasetWriter, req: CollectRequest, spec: EnvSpec, ref: TaskRef, picks: dict,
                    until: tuple[str, int], on_rollout) -> None:
    kind, target = until
    vec = make_vector_env(ref, req.num_envs, workers=req.workers, parts=ROLLOUT_PARTS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the policy's small matmuls run fastest on one thread, next to the env workers
    try:
        if req.level == "medium-expert":
            if writer.progress.get("phase", 0) == 0:  # not past the medium half yet (fresh or resumed)
                rollout_episodes(writer, load_agent(picks["medium"]["path"])[0].sampler(), vec, phase=0,
                                 until=(kind, max(1, target // 2)), seed=req.seed, progress=on_rollout)
            rollout_episodes(writer, load_agent(picks["expert"]["path"])[0].sampler(), vec, phase=1,
                             until=(kind, target), seed=req.seed, progress=on_rollout)
        else:
            policy = random_policy(spec) if req.level == "random" else load_agent(picks[req.level]["path"])[0].sampler()
            rollout_episodes(writer, policy, vec, phase=0, until=(kind, target), seed=req.seed, progress=on_rollout)
    finally:
        torch.set_num_threads(threads)
        vec.close()
