"""Collection speed: env-steps/s of rollouts with the behaviour policy vs the bare vectorised env,
and of behaviour-policy training.

    python benchmarks/collect.py              # Hopper-3x1, HalfCheetah-6x1 (HAPPO), SMAX protoss_5v5 (MAPPO)

"bare" steps the same vector env with actions drawn before timing, before and after the rollout
(the mean of both: the machine's speed drifts; SMAX: all envs in one vmapped batch, its fastest
form); "rollout" runs the real collection loop (policy inference on raw observations, action
sampling, episode recording into a dataset writer up to its last append on disk, as `omgmg-data
collect` runs them, SMAX in ``ROLLOUT_PARTS`` batches) for collect's default budgets (1M transitions,
1000 SMACv2 episodes). The policy is a freshly initialised agent (short, varied episodes on Hopper:
the hardest case for per-episode costs), or with ``--runs HOME`` the medium checkpoint of the
behaviour runs cached under HOME (an ``OMGMG_HOME``). The rollout runs twice: once storing the
dataset, once with a writer that checks, buffers and concatenates every episode like the real one
but throws the blocks away, which splits the cost into policy inference + recording and writing
(compression and disk). Target (issue 4): policy inference costs <= 25% of the bare rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omgmg.collectors.behaviour import algorithm, load_agent  # noqa: E402
from omgmg.collectors.collect import ROLLOUT_PARTS, choose_checkpoints  # noqa: E402
from omgmg.collectors.envs import make_vector_env, resolve  # noqa: E402
from omgmg.collectors.rollout import rollout_episodes  # noqa: E402
from omgmg.collectors.runs import checkpoint_evaluations  # noqa: E402
from omgmg.collectors.training import train_behaviour  # noqa: E402
from omgmg.datakit.writer import DatasetWriter  # noqa: E402

CASES = [
    ("mamujoco/Hopper-3x1", None, 64, 2),
    ("mamujoco/HalfCheetah-6x1", None, 64, 2),
    ("smacv2/protoss_5v5", "smax", 64, 1),
]  # num_envs as `omgmg-data collect` rolls out by default


def bare(vec, steps: int) -> float:
    spec = vec.spec
    r = vec.reset(seed=0)
    rng = np.random.default_rng(0)
    if spec.discrete:
        actions = [np.full((vec.num_envs, spec.n_agents), 4, np.int32)]
    else:
        actions = [
            rng.uniform(-1, 1, (vec.num_envs, spec.n_agents, spec.action_dim)).astype(np.float32) for _ in range(16)
        ]
    n = max(1, steps // vec.num_envs)
    t0 = time.perf_counter()
    for t in range(n):
        vec.step(actions[t % len(actions)])
    del r
    return n * vec.num_envs / (time.perf_counter() - t0)


class DiscardingWriter(DatasetWriter):
    """The real writer up to the store: episodes are checked, buffered and concatenated into blocks,
    which are then dropped instead of compressed and written."""

    def _append(self, blocks, state) -> None:
        pass


def rollout(vec, agent, until: tuple[str, int], workdir: Path, writer_cls=DatasetWriter) -> float:
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        policy = agent.sampler()
        writer = writer_cls(Path(d) / "b.zarr", vec.spec, behaviour_arrays=policy.behaviour_arrays)
        t0 = time.perf_counter()
        rollout_episodes(writer, policy, vec, phase=0, until=until, seed=0)
        writer.sync()  # the last appends run in the background: count them
        rate = writer.transitions_added / (time.perf_counter() - t0)
        writer.abort()
    return rate


def medium_agent(home: Path, ref, algo: str, policy: str | None = None):
    """The medium checkpoint (as `omgmg-data collect` picks it) of the first cached run of a task (of a
    HAPPO ``policy``, where given: runs made before the setting are clip runs)."""
    runs = sorted((home / "runs" / ref.suite / ref.task / ref.backend / algo).glob("seed*"))
    if policy is not None and algo == "happo":
        kind = lambda r: json.loads((r / "config.json").read_text())["config"].get("policy", "clip")  # noqa: E731
        runs = [r for r in runs if kind(r) == policy]
    if not runs:
        raise SystemExit(f"no cached {algo} run of {ref.name} under {home}")
    return load_agent(choose_checkpoints(checkpoint_evaluations(runs[0]), 0.5)["medium"]["path"])[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30_000, help="env steps of the bare measurement")
    p.add_argument(
        "--transitions",
        type=int,
        default=1_000_000,
        help="transitions of the MaMuJoCo rollout measurement (default: collect's default budget)",
    )
    p.add_argument("--smax-episodes", type=int, default=1000, help="episodes of the SMAX rollout measurement")
    p.add_argument("--train-steps", type=int, default=40_000, help="env steps of the training measurement")
    p.add_argument("--skip-training", action="store_true", help="measure rollouts only")
    p.add_argument("--runs", type=Path, help="roll out the medium checkpoints of the runs cached under this home")
    p.add_argument("--policy", help="with --runs: only HAPPO runs of this policy (tanh, capped, clip)")
    p.add_argument("--tasks", help="comma-separated task names to measure (default: all three)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as home:
        import os

        os.environ["OMGMG_HOME"] = home
        for name, backend, num_envs, workers in CASES:
            if args.tasks and name.split("/")[1] not in args.tasks.split(","):
                continue
            ref = resolve(name, backend=backend)
            vec = make_vector_env(ref, num_envs, workers=workers)  # SMAX: all envs in one vmapped batch
            algo = "mappo" if vec.spec.discrete else "happo"
            cfg_cls, agent_cls = algorithm(algo)
            if args.runs is None:
                agent = agent_cls(vec.spec, cfg_cls())
            else:
                agent = medium_agent(args.runs, ref, algo, args.policy)
            roll_vec = vec
            if ROLLOUT_PARTS > 1 and ref.backend == "smax":  # as collect rolls out; compiled before timing
                roll_vec = make_vector_env(ref, num_envs, workers=workers, parts=ROLLOUT_PARTS)
                roll_vec.reset(seed=0)
            before = bare(vec, args.steps)
            until = ("episodes", args.smax_episodes) if vec.spec.discrete else ("transitions", args.transitions)
            roll_rate = rollout(roll_vec, agent, until, workdir=Path(home))
            unstored_rate = rollout(roll_vec, agent, until, workdir=Path(home), writer_cls=DiscardingWriter)
            bare_rate = (before + bare(vec, args.steps)) / 2  # before and after: the machine's speed drifts
            for v in {vec, roll_vec}:
                v.close()
            train_rate = float("nan")
            if not args.skip_training:
                cfg = cfg_cls(total_env_steps=args.train_steps, workers=workers, eval_every=args.train_steps)
                t0 = time.perf_counter()
                train_behaviour(ref, algo, cfg)
                train_rate = args.train_steps / (time.perf_counter() - t0)
            row = {
                "task": name,
                "backend": ref.backend,
                "num_envs": num_envs,
                "workers": workers,
                "bare_env_steps_per_s": bare_rate,
                "rollout_env_steps_per_s": roll_rate,
                "rollout_not_stored_env_steps_per_s": unstored_rate,
                "policy_and_recording_share": 1 - unstored_rate / bare_rate,
                "writing_share": unstored_rate / bare_rate - roll_rate / bare_rate,
                "total_share": 1 - roll_rate / bare_rate,
                "training_env_steps_per_s": train_rate,
            }
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    from rich.console import Console
    from rich.table import Table

    t = Table(title="collection speed (env-steps/s)")
    for col in (
        "task",
        "envs",
        "bare vector env",
        "rollout, not stored",
        "rollout, stored",
        "policy + recording",
        "+ writing",
        "= total",
        "training",
    ):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(
            f"{r['task']} ({r['backend']})",
            str(r["num_envs"]),
            f"{r['bare_env_steps_per_s']:,.0f}",
            f"{r['rollout_not_stored_env_steps_per_s']:,.0f}",
            f"{r['rollout_env_steps_per_s']:,.0f}",
            *(f"{100 * r[k]:.0f}%" for k in ("policy_and_recording_share", "writing_share", "total_share")),
            f"{r['training_env_steps_per_s']:,.0f}",
        )
    Console(width=150).print(t)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
