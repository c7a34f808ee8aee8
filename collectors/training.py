"""The training loop behaviour policies share, and the run directory it keeps.

    run = train_behaviour(ref, "happo", seed=0, total_env_steps=1_000_000)

A run lives in ``$OMGMG_HOME/runs/SUITE/TASK/BACKEND/ALGO/seed{S}-{hash}`` (``OMGMG_HOME`` defaults
to ``~/.omgmg``; ``hash`` covers every hyperparameter except the worker count and the thread count,
and the step budget too when it is a whole number of evaluation segments: such runs share a
directory, a longer one extends a shorter one, and a shorter request is served by the longer
run's checkpoints up to its budget, all identical to a fresh run's. A budget that ends inside a
segment cuts that segment short, so it gets a directory of its own). It holds:

- ``config.json``: the resolved config;
- ``checkpoints/step_{env_steps}.pt``: self-contained checkpoints (weights, normaliser statistics,
  optimiser state, RNG state, config, evaluation, env steps), loadable with ``weights_only=True``;
- ``log.jsonl``: one line per iteration and per evaluation (``charts/``, ``losses/``, ``eval/``);
- ``curve.png``: evaluation score against environment steps;
- ``replay.zarr``: every episode the behaviour policy generated while training (for medium-replay).

The loop runs in segments of ``eval_every`` env steps. A segment starts by resetting all envs
with a seed derived from the segment index and ends by cutting unfinished episodes (stored as
truncated), evaluating, and checkpointing. A run interrupted anywhere resumes from its last good
checkpoint (a damaged last one is set aside as ``.damaged`` with a warning) and continues exactly as
an uninterrupted run would (same seed, same results, the log cut back to the checkpoint's step).
One process trains a run at a time: it holds an exclusive lock on the run directory.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from collectors.common import Rollout, gae
from collectors.envs import TaskRef, make_vector_env
from collectors.envs.base import VecStep, run_episodes
from datakit.checkpoints import load_checkpoint, save_checkpoint
from datakit.errors import CheckpointError, DatasetError
from datakit.outputs import OutputLock, append_jsonl, atomic_write_json, os_errors, read_jsonl, truncate_jsonl
from datakit.spec import EnvSpec
from datakit.writer import DatasetWriter


@dataclass
class LoopConfig:
    """Fields of the training loop shared by every behaviour-policy algorithm."""

    total_env_steps: int = 1_000_000
    """Environment steps to train for (summed over envs)."""
    num_envs: int = 16
    """Environments stepped together."""
    rollout_len: int = 250
    """Steps per env between updates (one update sees num_envs * rollout_len transitions)."""
    eval_every: int = 100_000
    """Env steps per segment: evaluation and a checkpoint after each."""
    seed: int = 0
    """Seed of network initialisation, environment resets and action sampling."""
    workers: int = 1
    """Processes for CPU simulators (MaMuJoCo); does not change results."""
    torch_threads: int = 1
    """Torch intra-op threads while training (these small networks run fastest on one, and it leaves
    the other core to the simulator)."""

    def __post_init__(self):
        for name in ("total_env_steps", "num_envs", "rollout_len", "eval_every"):
            if getattr(self, name) < 1:
                raise DatasetError(f"{name} must be >= 1, got {getattr(self, name)}")


NOT_IN_RUN_KEY = ("workers", "torch_threads")  # they do not change results


def run_key(cfg: LoopConfig) -> dict:
    """What names a run's directory: the config without the fields that do not change results, and
    without the budget when it is a whole number of segments (see the module docstring)."""
    key = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IN_RUN_KEY}
    if cfg.total_env_steps % cfg.eval_every == 0:
        del key["total_env_steps"]
    return key


def data_home() -> Path:
    return Path(os.environ.get("OMGMG_HOME", Path.home() / ".omgmg")).expanduser()


def algorithm(name: str):
    """(config class, agent class) of a behaviour-policy algorithm."""
    if name == "mappo":
        from collectors.mappo import MAPPOAgent, MAPPOConfig

        return MAPPOConfig, MAPPOAgent
    if name == "happo":
        from collectors.happo import HAPPOAgent, HAPPOConfig

        return HAPPOConfig, HAPPOAgent
    raise DatasetError(f"unknown behaviour algorithm {name!r}: mappo (discrete) or happo (continuous)")


# ----- run directory ------------------------------------------------------------------------------------------

class RunDir:
    """One training run on disk (see the module docstring). ``lock()`` holds it exclusively."""

    def __init__(self, ref: TaskRef, algo: str, cfg: LoopConfig, home: Path | None = None):
        key = run_key(cfg)
        key["options"] = ref.options
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
        self.root = (home or data_home()) / "runs" / ref.suite / ref.task / ref.backend / algo / f"seed{cfg.seed}-{digest}"
        self.ref, self.algo, self.cfg = ref, algo, cfg

    def lock(self) -> OutputLock:
        """Create the directory and take its lock (a context manager); writes ``config.json``."""
        with os_errors(self.root, "creating the behaviour run directory"):
            (self.root / "checkpoints").mkdir(parents=True, exist_ok=True)
        lock = OutputLock(self.root, "behaviour run").acquire()
        atomic_write_json(self.root / "config.json",
                          {"algorithm": self.algo, "task": self.ref.name, "backend": self.ref.backend,
                           "options": self.ref.options, "config": dataclasses.asdict(self.cfg)})
        return lock

    @property
    def replay_path(self) -> Path:
        return self.root / "replay.zarr"

    def checkpoints(self) -> list[Path]:
        return checkpoint_paths(self.root)

    def load(self, path: Path) -> dict:
        return load_checkpoint(path, fallback=False)

    def latest_good_checkpoint(self, warn=None) -> dict | None:
        """The newest checkpoint that loads and matches its checksum; damaged newer ones are renamed
        ``.damaged`` (with a warning), so the run continues from the last good one."""
        for path in reversed(self.checkpoints()):
            try:
                return self.load(path)
            except CheckpointError as e:
                if warn:
                    warn(f"{e}; it is set aside as {path.name}.damaged and the run continues from the one before")
                with os_errors(path, "setting aside a damaged checkpoint"):
                    path.rename(path.with_name(path.name + ".damaged"))
        return None

    def evaluations(self, up_to: int | None = None) -> list[dict]:
        """(env steps, eval dict, path) of every checkpoint (at most ``up_to`` env steps), in order."""
        return [e for e in checkpoint_evaluations(self.root) if up_to is None or e["env_steps"] <= up_to]

    def log(self, record: dict) -> None:
        append_jsonl(self.root / "log.jsonl", record)

    def truncate_log(self, env_steps: int, warn=None) -> None:
        """Drop log lines written after the checkpoint at ``env_steps`` (-1: before any checkpoint)."""
        truncate_jsonl(self.root / "log.jsonl", lambda r: r.get("env_steps", 0) <= env_steps, warn=warn)


def checkpoint_paths(root: Path) -> list[Path]:
    """The checkpoints of the run at ``root``, in env-step order."""
    return sorted(root.glob("checkpoints/step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))


def checkpoint_evaluations(root: Path) -> list[dict]:
    """(env steps, eval dict, path, replay episodes) of every checkpoint of the run at ``root``, in order."""
    out = []
    for p in checkpoint_paths(root):
        ck = load_checkpoint(p, fallback=False)
        out.append({"env_steps": int(ck["env_steps"]), "eval": ck["eval"], "path": p,
                    "replay_episodes": int(ck["replay_episodes"])})
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def score(evaluation: dict) -> float:
    """The number levels are defined by: win rate where the task reports wins, else mean return."""
    return evaluation["win_rate"] if evaluation.get("win_rate") is not None else evaluation["return"]


# ----- episodes out of vector steps ---------------------------------------------------------------------------

@dataclass
class EndedEpisode:
    """Where an ended episode lies in an :class:`EpisodeRecorder`, before its arrays are gathered."""

    env: int
    start: int  # step index of its first step
    end: int  # one past its last step
    final: tuple  # (final obs, final state, final avail or None)
    terminated: bool
    won: bool

    @property
    def length(self) -> int:
        return self.end - self.start


class EpisodeRecorder:
    """Turns vector steps into whole episodes for ``DatasetWriter.add_episode`` (raw observations,
    executed actions, final observations).

    Steps are copied into per-field arrays of shape (rows, E, ...) (one copy per field and step,
    whatever the number of envs), so an ended episode is one strided slice per field; rows no episode
    needs any more are dropped when the arrays fill up (or the arrays grow). ``add(..., gather=False)``
    only notes where ended episodes lie (cheap), and :meth:`gather` builds their arrays later, e.g.
    while the envs compute the next step.
    """

    def __init__(self, spec: EnvSpec, num_envs: int, rows: int = 256):
        self.spec, self.E, self.rows = spec, num_envs, rows

    def start(self, obs: np.ndarray, state: np.ndarray, avail: np.ndarray | None) -> None:
        self.buf: dict[str, np.ndarray] = {}  # field -> (rows, E, ...), allocated at the first step
        self.first = 0  # step index of row 0
        self.now = 0  # step index of the next step to be recorded
        self.begin = np.zeros(self.E, np.int64)  # step index at which each env's current episode began
        self.ungathered: dict[int, int] = {}  # id(EndedEpisode) -> its start, while its rows are still needed
        self.cur = (obs, state, avail)

    def add(self, actions: np.ndarray, step: VecStep, envs: np.ndarray | None = None, gather: bool = True):
        """Record one step of every env (or of the ``envs`` mask). Returns the recorded episodes that
        ended, in env order: (env, episode dict), or :class:`EndedEpisode` markers if not ``gather``."""
        obs, state, avail = self.cur
        t = self.now
        fields = {"obs": obs, "state": state, "actions": actions, "reward": step.reward}
        if avail is not None:
            fields["avail"] = avail
        if t - self.first == (len(self.buf["obs"]) if self.buf else 0):  # the arrays are full (or not made yet)
            self._make_room(fields)
        for name, value in fields.items():
            self.buf[name][t - self.first] = value
        self.now = t + 1
        ended = step.done if envs is None else step.done & envs
        marks = []
        for e in np.flatnonzero(ended):
            final = (step.final_obs[e], step.final_state[e], None if step.final_avail is None else step.final_avail[e])
            mark = EndedEpisode(int(e), int(self.begin[e]), t + 1, final, bool(step.terminated[e]), bool(step.won[e]))
            self.begin[e] = t + 1
            marks.append(mark)
        if envs is not None:
            self.begin[~envs] = t + 1  # an env not recorded now starts afresh when it is again
        self.cur = (step.obs, step.state, step.avail)
        if gather:
            return [(m.env, self.gather(m)) for m in marks]
        self.ungathered.update({id(m): m.start for m in marks})
        return marks

    def cut(self, e: int) -> dict | None:
        """End env e's episode now, as truncated (None if it has no steps yet)."""
        if self.now == self.begin[e]:
            return None
        obs, state, avail = self.cur
        mark = EndedEpisode(e, int(self.begin[e]), self.now, (obs[e], state[e], None if avail is None else avail[e]),
                            terminated=False, won=False)
        self.begin[e] = self.now
        return self.gather(mark)

    def gather(self, m: EndedEpisode) -> dict:
        """The arrays of an ended episode, as ``DatasetWriter.add_episode`` takes them."""
        self.ungathered.pop(id(m), None)
        rows, e = slice(m.start - self.first, m.end - self.first), m.env
        b = self.buf
        # copies: the rows are reused once no running episode needs them
        ep = {"obs": b["obs"][rows, e].copy(), "state": b["state"][rows, e].copy(),
              "actions": b["actions"][rows, e].copy(), "reward": b["reward"][rows, e].astype(np.float32),
              "final_obs": m.final[0], "final_state": m.final[1], "terminated": m.terminated,
              "truncated": not m.terminated}
        if self.spec.discrete:
            ep["avail"], ep["final_avail"] = b["avail"][rows, e].copy(), m.final[2]
            ep["actions"] = ep["actions"].astype(np.int32)
        if self.spec.reports_wins:
            ep["won"] = m.won
        return ep

    def _make_room(self, fields: dict[str, np.ndarray]) -> None:
        """The arrays are full: drop the rows before the oldest step still needed, and double the
        arrays if that frees less than half of them (amortised: each row moves O(1) times)."""
        if not self.buf:
            self.buf = {k: np.empty((self.rows, *np.shape(v)), np.asarray(v).dtype) for k, v in fields.items()}
            return
        oldest = min([int(self.begin.min()), *self.ungathered.values()])
        live = self.now - oldest
        size = len(self.buf["obs"])
        new_size = size * 2 if live > size // 2 else size
        for k, a in self.buf.items():
            out = a if new_size == size else np.empty((new_size, *a.shape[1:]), a.dtype)
            out[:live] = a[oldest - self.first: self.now - self.first]
            self.buf[k] = out
        self.first = oldest


# ----- evaluation ---------------------------------------------------------------------------------------------

def evaluate(agent, vec, seed: int, deterministic: bool = True) -> dict:
    """One episode in each env of ``vec`` (so short episodes are not over-represented)."""
    gen = torch.Generator().manual_seed(seed)

    def act(obs, avail):
        o = agent.obs_norm.normalise(torch.from_numpy(obs))
        actions, _ = agent.act(o, None if avail is None else torch.from_numpy(avail), deterministic, gen)
        return agent.executed(actions)

    res = run_episodes(vec, act, seed)
    return {"return": float(res.returns.mean()), "return_std": float(res.returns.std()),
            "win_rate": float(res.won.mean()) if vec.spec.reports_wins else None,
            "episode_length": float(res.lengths.mean()), "episodes": int(vec.num_envs)}


# ----- the loop -------------------------------------------------------------------------------------------------

def _segment_seed(seed: int, segment: int) -> int:
    return (seed * 1_000_003 + segment * 7919) % (2 ** 31)


def train_behaviour(ref: TaskRef, algo: str, cfg: LoopConfig, *, home: Path | None = None,
                    progress: Callable[[int, int, float | None], None] | None = None,
                    warn: Callable[[str], None] | None = None) -> RunDir:
    """Train (or resume, or extend) a behaviour policy; returns its run directory."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.torch_threads)
    run = RunDir(ref, algo, cfg, home)
    try:
        with run.lock():
            return _train(run, progress, warn)
    finally:
        torch.set_num_threads(threads)


def _train(run: RunDir, progress, warn) -> RunDir:
    ref, algo, cfg = run.ref, run.algo, run.cfg
    _, agent_cls = algorithm(algo)
    torch.manual_seed(cfg.seed)
    vec = make_vector_env(ref, cfg.num_envs, workers=cfg.workers)
    spec = vec.spec
    if spec.discrete != (algo == "mappo"):
        raise DatasetError(f"{algo} does not fit {ref.name}: use mappo for discrete and happo for continuous actions")
    agent = agent_cls(spec, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    env_steps, segment = 0, 0
    replay = DatasetWriter(run.replay_path, spec, level=None, behaviour_policy={"algorithm": algo, "seed": cfg.seed},
                           collection={"source": "training rollouts", "run": str(run.root)}, resume=True,
                           overwrite=True)
    state = run.latest_good_checkpoint(warn)
    if state is not None:
        agent.load_state_dict(state["weights"])
        agent.load_optimizer_state(state["optim"])
        gen.set_state(state["rng"])
        env_steps, segment = int(state["env_steps"]), int(state["segment"])
        replay.truncate(int(state["replay_episodes"]))
        run.truncate_log(env_steps, warn)
    else:
        run.truncate_log(-1, warn)
        if replay.n_episodes:
            replay.truncate(0)
        _checkpoint(run, agent, gen, replay, env_steps, segment, evaluate(agent, vec, seed=10 ** 9), spec)
    if progress:
        progress(env_steps, cfg.total_env_steps, score(run.evaluations()[-1]["eval"]))
    try:
        while env_steps < cfg.total_env_steps:
            segment_end = min(cfg.total_env_steps, (env_steps // cfg.eval_every + 1) * cfg.eval_every)
            recorder = EpisodeRecorder(spec, cfg.num_envs)
            r = vec.reset(seed=_segment_seed(cfg.seed, segment))
            recorder.start(*r)
            while env_steps < segment_end:
                t0 = time.perf_counter()
                ro, finished = _rollout(agent, vec, recorder, cfg, gen)
                for _, ep in finished:
                    replay.add_episode(**ep)
                env_steps += cfg.num_envs * cfg.rollout_len
                adv, ret = gae(ro.rewards, ro.values, ro.next_values, ro.terminated, ro.done, agent.cfg.gamma,
                               agent.cfg.gae_lambda)
                stats = agent.update(ro, adv, ret, gen)
                record = {"env_steps": env_steps, "time/sps": cfg.num_envs * cfg.rollout_len / (time.perf_counter() - t0),
                          **stats}
                if finished:
                    record["charts/episode_return"] = float(np.mean([ep["reward"].sum() for _, ep in finished]))
                    if spec.reports_wins:
                        record["charts/win_rate"] = float(np.mean([ep["won"] for _, ep in finished]))
                run.log(record)
                if progress:
                    progress(env_steps, cfg.total_env_steps, None)
            for e in range(cfg.num_envs):  # the segment ends: unfinished episodes are cut (truncated)
                ep = recorder.cut(e)
                if ep is not None:
                    replay.add_episode(**ep)
            segment += 1
            ev = evaluate(agent, vec, seed=10 ** 9 + segment)
            _checkpoint(run, agent, gen, replay, env_steps, segment, ev, spec)
            if progress:
                progress(env_steps, cfg.total_env_steps, score(ev))
    finally:
        try:
            replay.sync()
        finally:
            replay.release()
            vec.close()
    plot_curve(run)
    return run


def _rollout(agent, vec, recorder: EpisodeRecorder, cfg: LoopConfig, gen) -> tuple[Rollout, list]:
    """cfg.rollout_len steps of every env with the current stochastic policy."""
    obs_raw, state_raw, avail = recorder.cur
    buf = {k: [] for k in ("obs", "state", "actions", "log_probs", "values", "next_values", "rewards", "terminated",
                           "done", "avail")}
    raw_obs, raw_states = [], []
    finished = []
    for _ in range(cfg.rollout_len):
        obs_n = agent.obs_norm.normalise(torch.from_numpy(obs_raw))  # (E, N, O)
        state_n = agent.state_norm.normalise(torch.from_numpy(state_raw))  # (E, S)
        av = None if avail is None else torch.from_numpy(avail)
        actions, log_probs = agent.act(obs_n, av, False, gen)
        executed = agent.executed(actions)
        step = vec.step(executed)
        done = step.done
        bootstrap = np.where(done[:, None], step.final_state, step.state)  # V of the real next state
        buf["next_values"].append(agent.value(agent.state_norm.normalise(torch.from_numpy(bootstrap))))
        buf["values"].append(agent.value(state_n))
        for k, v in (("obs", obs_n), ("state", state_n), ("actions", actions), ("log_probs", log_probs),
                     ("rewards", torch.from_numpy(step.reward)),
                     ("terminated", torch.from_numpy(step.terminated.astype(np.float32))),
                     ("done", torch.from_numpy(done.astype(np.float32)))):
            buf[k].append(v)
        if av is not None:
            buf["avail"].append(av)
        raw_obs.append(obs_raw)
        raw_states.append(state_raw)
        finished += recorder.add(executed, step)
        obs_raw, state_raw, avail = step.obs, step.state, step.avail
    agent.obs_norm.update(torch.from_numpy(np.stack(raw_obs)))
    agent.state_norm.update(torch.from_numpy(np.stack(raw_states)))
    ro = Rollout(**{k: torch.stack(v) for k, v in buf.items() if k != "avail"},
                 avail=torch.stack(buf["avail"]) if buf["avail"] else None)
    return ro, finished


def _checkpoint(run: RunDir, agent, gen, replay: DatasetWriter, env_steps: int, segment: int, ev: dict,
                spec: EnvSpec) -> Path:
    replay.sync()  # the replay stream on disk and the checkpoint agree on how many episodes exist
    state = {"weights": agent.state_dict(), "optim": agent.optimizer_state(), "rng": gen.get_state(),
             "config": dataclasses.asdict(agent.cfg), "algorithm": run.algo, "env": spec.to_json(),
             "eval": ev, "env_steps": env_steps, "segment": segment, "replay_episodes": replay.n_episodes}
    # the log line first: a crash before the checkpoint lands cuts the log back to the previous one
    run.log({"env_steps": env_steps, **{f"eval/{k}": v for k, v in ev.items()}})
    return save_checkpoint(state, run.root / "checkpoints" / f"step_{env_steps:010d}.pt")


def replay_episodes(run: RunDir, count: int):
    """The first ``count`` training episodes of a run, as dicts for ``DatasetWriter.add_episode``.

    The replay store stays an unfinished write (so a finished run can be extended); it is read
    here directly, up to the episode count a checkpoint recorded.
    """
    import zarr

    from datakit.dataset import partial_path

    group = zarr.open_group(str(partial_path(run.replay_path)), mode="r")
    spec = EnvSpec.from_json(dict(group.attrs)["_writer"]["env"])
    lengths = np.asarray(group["episodes/length"][:count])
    starts = np.cumsum(lengths) - lengths
    step_keys = ["obs", "state", "actions", "reward"] + (["avail"] if spec.discrete else [])
    ep_keys = ["final_obs", "final_state"] + (["final_avail"] if spec.discrete else []) + \
        (["won"] if spec.reports_wins else [])
    block = 64
    for lo in range(0, count, block):
        hi = min(count, lo + block)
        a, b = int(starts[lo]), int(starts[hi - 1] + lengths[hi - 1])
        steps = {k: np.asarray(group[f"steps/{k}"][a:b]) for k in step_keys + ["terminated"]}
        eps = {k: np.asarray(group[f"episodes/{k}"][lo:hi]) for k in ep_keys}
        for j in range(lo, hi):
            s, t = int(starts[j]) - a, int(starts[j] + lengths[j]) - a
            ep = {k: steps[k][s:t] for k in step_keys}
            ep.update({k: v[j - lo] for k, v in eps.items()})
            if "won" in ep:
                ep["won"] = bool(ep["won"])
            ep["terminated"] = bool(steps["terminated"][t - 1])
            ep["truncated"] = not ep["terminated"]
            yield ep


def load_agent(path: Path):
    """Rebuild a behaviour agent from a checkpoint (weights_only: no code is unpickled)."""
    state = load_checkpoint(path, fallback=False)
    cfg_cls, agent_cls = algorithm(state["algorithm"])
    cfg = cfg_cls(**state["config"])
    agent = agent_cls(EnvSpec.from_json(state["env"]), cfg)
    agent.load_state_dict(state["weights"])
    agent.eval()
    return agent, state


def plot_curve(run: RunDir) -> Path:
    """Evaluation score (and training episode return) against env steps, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = run.evaluations()
    steps = [e["env_steps"] for e in evals]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    wins = evals and evals[0]["eval"].get("win_rate") is not None
    ax.plot(steps, [score(e["eval"]) for e in evals], "o-", label="eval " + ("win rate" if wins else "return"))
    if not wins:
        train = [r for r in read_jsonl(run.root / "log.jsonl") if "charts/episode_return" in r]
        if train:
            ax.plot([t["env_steps"] for t in train], [t["charts/episode_return"] for t in train], alpha=0.4,
                    label="training episodes")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("win rate" if wins else "return")
    ax.set_title(f"{run.algo} on {run.ref.name} ({run.ref.backend}), seed {run.cfg.seed}", fontsize=10)
    ax.legend(frameon=False)
    fig.tight_layout()
    out = run.root / "curve.png"
    fig.savefig(out)
    plt.close(fig)
    return out
