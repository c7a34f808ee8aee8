"""The training loop behaviour policies share.

    run = train_behaviour(ref, "happo", HAPPOConfig(total_env_steps=1_000_000, seed=0))

The loop runs in segments of ``eval_every`` env steps. A segment starts by resetting all envs
with a seed derived from the segment index and ends by cutting unfinished episodes (stored as
truncated), evaluating, and checkpointing. A run interrupted anywhere resumes from its last good
checkpoint (a damaged last one is set aside as ``.damaged`` with a warning) and continues exactly as
an uninterrupted run would (same seed, same results, the log cut back to the checkpoint's step).
Where a run keeps its files: :mod:`omgmg.collectors.runs`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from omgmg.collectors.behaviour import algorithm, algorithm_for
from omgmg.collectors.common import Rollout, gae
from omgmg.collectors.config import LoopConfig
from omgmg.collectors.envs import TaskRef, make_vector_env, worthwhile_workers
from omgmg.collectors.envs.base import run_episodes
from omgmg.collectors.recorder import EpisodeRecorder
from omgmg.collectors.runs import RunDir, plot_curve, score
from omgmg.datakit.checkpoints import save_checkpoint
from omgmg.datakit.errors import ConfigError
from omgmg.datakit.metrics import MetricLog
from omgmg.datakit.outputs import home_relative
from omgmg.datakit.spec import EnvSpec
from omgmg.datakit.writer import DatasetWriter

# ----- evaluation ---------------------------------------------------------------------------------------------


def evaluate(agent, vec, seed: int, deterministic: bool = True) -> dict:
    """One episode in each env of ``vec`` (so short episodes are not over-represented)."""
    gen = torch.Generator().manual_seed(seed)

    def act(obs, avail):
        o = agent.obs_norm.normalise(torch.from_numpy(obs))
        actions, _ = agent.act(o, None if avail is None else torch.from_numpy(avail), deterministic, gen)
        return agent.executed(actions)

    res = run_episodes(vec, act, seed)
    return {
        "return": float(res.returns.mean()),
        "return_std": float(res.returns.std()),
        "win_rate": float(res.won.mean()) if vec.spec.reports_wins else None,
        "episode_length": float(res.lengths.mean()),
        "episodes": int(vec.num_envs),
    }


# ----- the loop -------------------------------------------------------------------------------------------------


def _segment_seed(seed: int, segment: int) -> int:
    return (seed * 1_000_003 + segment * 7919) % (2**31)


def train_behaviour(
    ref: TaskRef,
    algo: str,
    cfg: LoopConfig,
    *,
    home: Path | None = None,
    progress: Callable[[int, int, float | None], None] | None = None,
    warn: Callable[[str], None] | None = None,
    tensorboard: bool | None = None,
) -> RunDir:
    """Train (or resume, or extend) a behaviour policy; returns its run directory. ``tensorboard``:
    also write TensorBoard event files (None: when installed; :class:`omgmg.datakit.metrics.MetricLog`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.torch_threads)
    run = RunDir(ref, algo, cfg, home)
    try:
        with run.lock():
            return _train(run, progress, warn, tensorboard)
    finally:
        torch.set_num_threads(threads)


def _train(run: RunDir, progress, warn, tensorboard) -> RunDir:
    ref, algo, cfg = run.ref, run.algo, run.cfg
    _, agent_cls = algorithm(algo)
    torch.manual_seed(cfg.seed)
    vec = make_vector_env(ref, cfg.num_envs, workers=worthwhile_workers(ref, cfg.workers))
    spec = vec.spec
    if algo != algorithm_for(spec):
        raise ConfigError(f"{algo} does not fit {ref.name}: use mappo for discrete and happo for continuous actions")
    agent = agent_cls(spec, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    env_steps, segment = 0, 0
    replay = DatasetWriter(
        run.replay_path,
        spec,
        level=None,
        behaviour_policy={"algorithm": algo, "seed": cfg.seed},
        collection={"source": "training rollouts", "run": home_relative(run.root)},
        resume=True,
        overwrite=True,
        behaviour_arrays=agent.behaviour_arrays,  # a run begun before format 3 keeps recording none
    )
    state = run.latest_good_checkpoint(warn)
    if state is not None:
        agent.load_state_dict(state["weights"])
        agent.load_optimizer_state(state["optim"])
        gen.set_state(state["rng"])
        env_steps, segment = int(state["env_steps"]), int(state["segment"])
        replay.truncate(int(state["replay_episodes"]))
        log = run.metric_log(env_steps, tensorboard, warn)
    else:
        log = run.metric_log(-1, tensorboard, warn)
        if replay.n_episodes:
            replay.truncate(0)
        _checkpoint(run, log, agent, gen, replay, env_steps, segment, evaluate(agent, vec, seed=10**9), spec)
    if progress:  # a run trained past this request's budget serves it from the evaluations within the budget
        within = run.evaluations(up_to=cfg.total_env_steps)
        progress(min(env_steps, cfg.total_env_steps), cfg.total_env_steps, score(within[-1]["eval"]))
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
                    replay.add_episode(**_kept(ep, replay))
                t_rollout = time.perf_counter() - t0
                env_steps += cfg.num_envs * cfg.rollout_len
                adv, ret = gae(
                    ro.rewards, ro.values, ro.next_values, ro.terminated, ro.done, agent.cfg.gamma, agent.cfg.gae_lambda
                )
                stats = agent.update(ro, adv, ret, gen)
                record = {
                    "env_steps": env_steps,
                    "time/steps_per_s": cfg.num_envs * cfg.rollout_len / (time.perf_counter() - t0),
                    "time/rollout_share": t_rollout / (time.perf_counter() - t0),
                    **stats,
                }
                if finished:
                    record["charts/episode_return"] = float(np.mean([ep["reward"].sum() for _, ep in finished]))
                    if spec.reports_wins:
                        record["charts/win_rate"] = float(np.mean([ep["won"] for _, ep in finished]))
                log.write(record)
                if progress:
                    progress(env_steps, cfg.total_env_steps, None)
            for e in range(cfg.num_envs):  # the segment ends: unfinished episodes are cut (truncated)
                ep = recorder.cut(e)
                if ep is not None:
                    replay.add_episode(**_kept(ep, replay))
            segment += 1
            ev = evaluate(agent, vec, seed=10**9 + segment)
            _checkpoint(run, log, agent, gen, replay, env_steps, segment, ev, spec)
            if progress:
                progress(env_steps, cfg.total_env_steps, score(ev))
    finally:
        try:
            replay.sync()
        finally:
            replay.release()
            vec.close()
            log.close()
    plot_curve(run)
    return run


def _rollout(agent, vec, recorder: EpisodeRecorder, cfg: LoopConfig, gen) -> tuple[Rollout, list]:
    """cfg.rollout_len steps of every env with the current stochastic policy."""
    obs_raw, state_raw, avail = recorder.cur
    buf = {
        k: []
        for k in (
            "obs",
            "state",
            "actions",
            "log_probs",
            "values",
            "next_values",
            "rewards",
            "terminated",
            "done",
            "avail",
        )
    }
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
        for k, v in (
            ("obs", obs_n),
            ("state", state_n),
            ("actions", actions),
            ("log_probs", log_probs),
            ("rewards", torch.from_numpy(step.reward)),
            ("terminated", torch.from_numpy(step.terminated.astype(np.float32))),
            ("done", torch.from_numpy(done.astype(np.float32))),
        ):
            buf[k].append(v)
        if av is not None:
            buf["avail"].append(av)
        raw_obs.append(obs_raw)
        raw_states.append(state_raw)
        finished += recorder.add(executed, step, behaviour=agent.behaviour_record(actions, log_probs))
        obs_raw, state_raw, avail = step.obs, step.state, step.avail
    agent.obs_norm.update(torch.from_numpy(np.stack(raw_obs)))
    agent.state_norm.update(torch.from_numpy(np.stack(raw_states)))
    ro = Rollout(
        **{k: torch.stack(v) for k, v in buf.items() if k != "avail"},
        avail=torch.stack(buf["avail"]) if buf["avail"] else None,
    )
    return ro, finished


def _kept(episode: dict, replay: DatasetWriter) -> dict:
    """An episode without the behaviour arrays a replay store begun by an earlier omgmg does not hold."""
    return {
        k: v
        for k, v in episode.items()
        if not k.startswith("behaviour_") or k.removeprefix("behaviour_") in replay.behaviour_arrays
    }


def _checkpoint(
    run: RunDir,
    log: MetricLog,
    agent,
    gen,
    replay: DatasetWriter,
    env_steps: int,
    segment: int,
    ev: dict,
    spec: EnvSpec,
) -> Path:
    replay.sync()  # the replay stream on disk and the checkpoint agree on how many episodes exist
    state = {
        "weights": agent.state_dict(),
        "optim": agent.optimizer_state(),
        "rng": gen.get_state(),
        "config": dataclasses.asdict(agent.cfg),
        "algorithm": run.algo,
        "env": spec.to_json(),
        "eval": ev,
        "env_steps": env_steps,
        "segment": segment,
        "replay_episodes": replay.n_episodes,
    }
    # the log line first: a crash before the checkpoint lands cuts the log back to the previous one
    log.write({"env_steps": env_steps, **{f"eval/{k}": v for k, v in ev.items()}})
    return save_checkpoint(state, run.root / "checkpoints" / f"step_{env_steps:010d}.pt")
