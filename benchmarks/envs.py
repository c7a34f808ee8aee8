"""Environment speed: env-steps/s of raw gymnasium-robotics, our single env and our vectorised runners.

    python benchmarks/envs.py                 # MaMuJoCo three tasks + SMAX at 1/16/64/256 envs
    python benchmarks/envs.py --skip-smax

Random actions are drawn before timing. "raw" is gymnasium-robotics' ``mamujoco_v1.parallel_env``
driven through its PettingZoo dict interface, as a user would; "single" is our ``make_env``;
"vector" is ``make_vector_env`` with worker processes (each worker steps its envs in turn per
message). Targets (issue 3): single within 10% of raw, vector >= 1.6x single on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omgmg.collectors.envs import make_env, make_vector_env  # noqa: E402
from omgmg.collectors.envs.mamujoco import parse_task  # noqa: E402

TASKS = ("HalfCheetah-6x1", "Hopper-3x1", "Ant-2x4")


def raw_steps_per_s(task: str, steps: int) -> float:
    with contextlib.redirect_stderr(io.StringIO()):
        from gymnasium_robotics import mamujoco_v1
    env = mamujoco_v1.parallel_env(*parse_task(task), agent_obsk=1)
    env.reset(seed=0)
    agents = env.possible_agents
    rng = np.random.default_rng(0)
    acts = [{a: rng.uniform(-1, 1, env.action_space(a).shape).astype(np.float32) for a in agents} for _ in range(1000)]
    t0 = time.perf_counter()
    for t in range(steps):
        _, _, term, trunc, _ = env.step(acts[t % 1000])
        env.state()  # our wrapper returns the state every step too
        if term[agents[0]] or trunc[agents[0]]:
            env.reset()
    return steps / (time.perf_counter() - t0)


def single_steps_per_s(task: str, steps: int) -> float:
    env = make_env(f"mamujoco/{task}")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    acts = rng.uniform(-1, 1, (1000, env.spec.n_agents, env.spec.action_dim)).astype(np.float32)
    t0 = time.perf_counter()
    for t in range(steps):
        s = env.step(acts[t % 1000])
        if s.terminated or s.truncated:
            env.reset()
    return steps / (time.perf_counter() - t0)


def vector_steps_per_s(name: str, num_envs: int, steps: int, workers: int = 1, backend: str | None = None) -> float:
    vec = make_vector_env(name, num_envs, workers=workers, backend=backend)
    r = vec.reset(seed=0)
    spec = vec.spec
    rng = np.random.default_rng(0)
    if spec.discrete:  # SMAX: no-op (always available) keeps the timing about the simulator
        acts = [np.full((num_envs, spec.n_agents), 4, np.int32)] * 2
    else:
        acts = [rng.uniform(-1, 1, (num_envs, spec.n_agents, spec.action_dim)).astype(np.float32) for _ in range(64)]
    for t in range(3):
        vec.step(acts[t % len(acts)])
    iters = max(1, steps // num_envs)
    t0 = time.perf_counter()
    for t in range(iters):
        vec.step(acts[t % len(acts)])
    rate = iters * num_envs / (time.perf_counter() - t0)
    vec.close()
    del r
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20000, help="env steps per MaMuJoCo measurement")
    p.add_argument("--num-envs", type=int, default=16, help="envs in the MaMuJoCo vector runner")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--skip-smax", action="store_true")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args()

    results = {"mamujoco": [], "smax": []}
    for task in TASKS:
        raw = raw_steps_per_s(task, args.steps)
        single = single_steps_per_s(task, args.steps)
        vec = vector_steps_per_s(f"mamujoco/{task}", args.num_envs, args.steps, workers=args.workers)
        row = {
            "task": task,
            "raw": raw,
            "single": single,
            "vector": vec,
            "single_vs_raw": single / raw,
            "vector_vs_single": vec / single,
            "num_envs": args.num_envs,
            "workers": args.workers,
        }
        results["mamujoco"].append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if not args.skip_smax:
        for n in (1, 16, 64, 256):
            rate = vector_steps_per_s("smacv2/protoss_5v5", n, steps=max(2000, 100 * n), backend="smax")
            results["smax"].append({"num_envs": n, "env_steps_per_s": rate})
            print(json.dumps({"smax_protoss_5v5_envs": n, "env_steps_per_s": round(rate)}), flush=True)

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"MaMuJoCo env-steps/s (vector: {args.num_envs} envs, {args.workers} workers)")
    for col in ("task", "raw", "ours, single", "single/raw", "ours, vector", "vector/single"):
        t.add_column(col, justify="right")
    for r in results["mamujoco"]:
        t.add_row(
            r["task"],
            f"{r['raw']:,.0f}",
            f"{r['single']:,.0f}",
            f"{r['single_vs_raw']:.2f}x",
            f"{r['vector']:,.0f}",
            f"{r['vector_vs_single']:.2f}x",
        )
    console = Console(width=120)
    console.print(t)
    if results["smax"]:
        s = Table(title="SMAX protoss_5v5 env-steps/s (one jitted vmap)")
        s.add_column("envs", justify="right")
        s.add_column("env-steps/s", justify="right")
        for r in results["smax"]:
            s.add_row(str(r["num_envs"]), f"{r['env_steps_per_s']:,.0f}")
        console.print(s)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
