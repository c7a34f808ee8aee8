"""Trainer speed: gradient steps/s, the loader's share of a step, and FLOP rate against this machine's peak.

    python benchmarks/train.py                      # OMGMG and BC, four task shapes, batch 128
    python benchmarks/train.py --compile            # also OMGMG with its update torch.compile'd (--compile)
    python benchmarks/train.py --algos all --shapes Hopper-3x1,protoss_5v5   # every algorithm
    python benchmarks/train.py --members 1,2,5,10,20 --device cuda --compile   # batched members, eager and graphed

Shapes follow the tasks (observation, state and action sizes of HalfCheetah-6x1, Hopper-3x1,
Ant-2x4 from gymnasium-robotics and protoss_5v5 from SMAX), with OMIGA's network sizes (hidden 256,
mixer 64). The peak is measured in the same run by a 4096^3 float32 matmul; FLOPs per step are
counted by torch's FlopCounterMode. For reference, the official OMIGA code measured on this
machine: 95 steps/s HalfCheetah-6x1, 175 Hopper-3x1, 185 Ant-2x4.

Each step's time is split three ways: the **fixed** cost (the same algorithm's step at toy sizes,
hidden 8 and batch 8, where every kernel is tiny: what PyTorch's dispatch, autograd and Python cost
for this sequence of operators), the **matmuls at peak** (the step's FLOPs at the measured peak),
and the **rest** (what is left: mostly the memory-bound elementwise, reduction and optimiser
kernels at the real sizes, plus matmuls running below peak). ``fixed + matmuls at peak`` bounds
what this operator sequence can reach in eager PyTorch.

``--members``: the member axis instead (M independent seeds trained as one batched program): for each
M, gradient steps/s of the batched program and member-steps/s (M times that), per shape and device; with
``--compile`` each M also with the update compiled (``OfflineAlgorithm.compile_update``: CUDA graphs on a
CUDA device), after its compilation and warm-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omgmg.algos import ALGORITHMS, algorithm_class  # noqa: E402
from omgmg.algos.omgmg import OMGMGConfig  # noqa: E402
from omgmg.collectors.fixtures import make_fixture  # noqa: E402
from omgmg.datakit import TransitionLoader  # noqa: E402
from omgmg.nets import AgentMLP  # noqa: E402
from omgmg.trainer import build  # noqa: E402

SHAPES = {
    "HalfCheetah-6x1": "halfcheetah-6x1",
    "Hopper-3x1": "hopper-3x1",
    "Ant-2x4": "ant-2x4",
    "protoss_5v5": "protoss-5v5",
}
OMIGA_STEPS_PER_S = {"HalfCheetah-6x1": 95, "Hopper-3x1": 175, "Ant-2x4": 185}


def peak_gflops() -> float:
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    a @ b
    t0 = time.perf_counter()
    for _ in range(5):
        a @ b
    return 2 * 4096**3 * 5 / (time.perf_counter() - t0) / 1e9


def measure(algo, loader, steps: int) -> tuple[float, float, float]:
    """(steps/s, loader share of a step, GFLOP per step)."""
    from torch.utils.flop_counter import FlopCounterMode

    step_s = seconds_per_step(algo, loader, steps)
    t0 = time.perf_counter()
    for _ in range(steps):
        algo.prepare(loader.sample_members())
    load_s = (time.perf_counter() - t0) / steps
    counter = FlopCounterMode(display=False)
    with counter:
        algo.step(loader)
    return 1 / step_s, load_s / step_s, counter.get_total_flops() / 1e9


def seconds_per_step(algo, loader, steps: int, device=None) -> float:
    sync = torch.cuda.synchronize if device is not None and torch.device(device).type == "cuda" else lambda: None
    for _ in range(20):
        algo.step(loader)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        algo.step(loader)
    sync()
    return (time.perf_counter() - t0) / steps


def fixed_cost_s(algo_name: str, ds, cfg, steps: int) -> float:
    """Seconds per step of the same algorithm at toy sizes (hidden 8, batch 8): its dispatch floor."""
    toy = {"hidden": 8, "batch_size": 8} | ({"mixer_hidden": 8} if hasattr(cfg, "mixer_hidden") else {})
    cfg = dataclasses.replace(cfg, **toy)
    torch.manual_seed(0)
    return seconds_per_step(build(algo_name, ds, cfg), TransitionLoader(ds, cfg.batch_size, seed=0), steps)


def mlp_ceiling(peak: float, batch: int = 128, n: int = 6, obs: int = 23) -> float:
    """Fraction of peak that one shared AgentMLP (hidden 256) reaches on its own, forward and backward
    at a trainer's batch: what a step made only of such passes could reach at best."""
    from torch.utils.flop_counter import FlopCounterMode

    net = AgentMLP(1, n, obs, 1, 256)
    x = torch.randn(1, batch, n, obs, requires_grad=True)
    for _ in range(20):
        net(x).sum().backward()
    t0 = time.perf_counter()
    for _ in range(200):
        net(x).sum().backward()
    seconds = (time.perf_counter() - t0) / 200
    counter = FlopCounterMode(display=False)
    with counter:
        net(x).sum().backward()
    return counter.get_total_flops() / seconds / 1e9 / peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also measure the update torch.compile'd (graphed on CUDA)")
    p.add_argument("--algos", default="omgmg,bc", help="comma-separated algorithm names, or 'all'")
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated task shapes")
    p.add_argument("--out", type=Path)
    p.add_argument("--members", help="comma-separated member counts (e.g. 1,2,5,10,20): the member-axis table")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:INDEX (--members only)")
    p.add_argument("--tf32", action="store_true", help="CUDA: float32 matmuls in TF32 (stated in every row)")
    args = p.parse_args()
    algos = list(ALGORITHMS) if args.algos == "all" else args.algos.split(",")
    for name, known in [*((a, ALGORITHMS) for a in algos), *((s, SHAPES) for s in args.shapes.split(","))]:
        if name not in known:
            p.error(f"unknown name {name!r}: choose from {', '.join(known)}")
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32  # omgmg itself leaves torch's default (off)
    if args.members:
        return members_table(args, algos)
    peak = peak_gflops()
    ceiling = mlp_ceiling(peak)
    print(json.dumps({"agent_mlp_forward_backward_fraction_of_peak": round(ceiling, 3)}), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for task in args.shapes.split(","):
            shape = SHAPES[task]
            ds = make_fixture(Path(d) / f"{shape}.zarr", shape, episodes=10, max_episode_len=200)
            variants = [(a, algorithm_class(a).config_cls(), False) for a in algos]
            if "omgmg" in algos:
                variants.insert(
                    algos.index("omgmg") + 1, ("omgmg (separate weights)", OMGMGConfig(shared_networks=False), False)
                )
            if args.compile:
                variants.append(("omgmg (torch.compile)", OMGMGConfig(), True))
            for label, cfg, compiled in variants:
                torch.manual_seed(0)
                name = label.split()[0]
                algo = build(name, ds, cfg)
                if compiled:
                    algo.compile_update()
                sps, load_share, gflop = measure(algo, TransitionLoader(ds, cfg.batch_size, seed=0), args.steps)
                fixed = fixed_cost_s(name, ds, cfg, args.steps) if not compiled else float("nan")
                at_peak = gflop / peak
                row = {
                    "task_shape": task,
                    "algorithm": label,
                    "steps_per_s": sps,
                    "loader_share": load_share,
                    "gflop_per_step": gflop,
                    "gflops": gflop * sps,
                    "fraction_of_peak": gflop * sps / peak,
                    "omiga_reference_steps_per_s": OMIGA_STEPS_PER_S.get(task),
                    "peak_gflops": peak,
                    "fixed_ms": 1e3 * fixed,
                    "matmuls_at_peak_ms": 1e3 * at_peak,
                    "rest_ms": 1e3 * (1 / sps - fixed - at_peak),
                    "eager_bound_steps_per_s": 1 / (fixed + at_peak),
                }
                rows.append(row)
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"gradient steps/s, batch 128, hidden 256, {args.threads} threads, peak {peak:.0f} GFLOP/s; "
        f"one AgentMLP forward+backward alone: {100 * ceiling:.0f}% of peak"
    )
    for col in (
        "shape",
        "algorithm",
        "steps/s",
        "OMIGA ref.",
        "loader share",
        "GFLOP/step",
        "% of peak",
        "ms/step",
        "fixed",
        "matmuls at peak",
        "rest",
        "bound steps/s",
    ):
        t.add_column(col, justify="right")
    for r in rows:
        ref = r["omiga_reference_steps_per_s"]
        t.add_row(
            r["task_shape"],
            r["algorithm"],
            f"{r['steps_per_s']:.1f}",
            "-" if ref is None else str(ref),
            f"{100 * r['loader_share']:.1f}%",
            f"{r['gflop_per_step']:.2f}",
            f"{100 * r['fraction_of_peak']:.0f}%",
            f"{1e3 / r['steps_per_s']:.2f}",
            f"{r['fixed_ms']:.2f}",
            f"{r['matmuls_at_peak_ms']:.2f}",
            f"{r['rest_ms']:.2f}",
            f"{r['eager_bound_steps_per_s']:.0f}",
        )
    Console(width=180).print(t)
    print(
        "ms per step = fixed (same step at hidden 8, batch 8) + matmuls at peak + rest; "
        "bound = 1000 / (fixed + matmuls at peak)"
    )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


def members_table(args, algos: list[str]) -> None:
    """Steps/s of M members batched, per shape, algorithm and M, on one device."""
    from rich.console import Console
    from rich.table import Table

    from omgmg.machine import resolve_device

    device = resolve_device(args.device)
    counts = [int(m) for m in args.members.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for task in args.shapes.split(","):
            ds = make_fixture(Path(d) / f"{SHAPES[task]}.zarr", SHAPES[task], episodes=10, max_episode_len=200)
            for name in algos:
                cls = algorithm_class(name).config_cls
                for M in counts:
                    for mode in ("eager", "compiled") if args.compile else ("eager",):
                        cfgs = [cls(seed=s) for s in range(M)]
                        algo = build(name, ds, cfgs if M > 1 else cfgs[0], device)
                        if mode == "compiled":
                            algo.compile_update()
                        loader = TransitionLoader(ds, cfgs[0].batch_size, seed=list(range(M)), device=device)
                        sps = 1 / seconds_per_step(algo, loader, args.steps, device)
                        row = {"task_shape": task, "algorithm": name, "members": M, "mode": mode,
                               "device": str(device), "tf32": args.tf32 and device.type == "cuda", "steps_per_s": sps,
                               "member_steps_per_s": M * sps}  # fmt: skip
                        rows.append(row)
                        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}),
                              flush=True)  # fmt: skip
    tf32 = ", TF32 matmuls" if args.tf32 and device.type == "cuda" else ""
    t = Table(title=f"members batched on {device} ({args.threads} CPU threads{tf32}), batch 128, hidden 256")
    for col in ("shape", "algorithm", "M", "update", "steps/s", "member-steps/s", "ms per member-step"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r["task_shape"], r["algorithm"], str(r["members"]), r["mode"], f"{r['steps_per_s']:.1f}",
                  f"{r['member_steps_per_s']:.0f}", f"{1e3 / r['member_steps_per_s']:.2f}")  # fmt: skip
    Console(width=140).print(t)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
