"""Offline training and evaluation: the loop every algorithm in ``omgmg.algos`` runs in.

    result = train("omgmg", "hopper-medium.zarr", OMGMGConfig(steps=20_000), out="runs/hopper-omgmg")

A run directory holds ``config.json`` (the resolved config, the dataset and its identity hash),
``log.jsonl`` (one line per ``log_every`` steps and per evaluation: ``loss/*``, ``value/q_tot``,
``eval/return``, ``eval/win_rate``, ``time/steps_per_s``), ``checkpoints/latest.pt`` and
``best.pt`` (weights, normalisation, optimiser and RNG state, config; loadable with
``weights_only=True``), ``curves.png`` (evaluation score and Q_tot against steps) and
``results.json``. Running the same command again resumes from ``latest.pt`` and continues the same
metrics stream (log lines written after that checkpoint are dropped first).

Evaluation runs the deterministic policy for ``eval_episodes`` episodes (one per environment, so
short episodes are not over-represented) in the environment the dataset came from
(``collectors.envs.task_for_dataset``), after checking that its spec fits the dataset's.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from datakit import TransitionLoader, open_dataset
from datakit.dataset import Dataset
from datakit.errors import DatasetError
from datakit.format import identity_sha256
from omgmg.algos import algorithm_class
from omgmg.algos.base import OfflineAlgorithm, OfflineConfig

STD_FLOOR = 1e-3


def dataset_statistics(ds: Dataset, block: int = 65536) -> tuple[np.ndarray, ...]:
    """Per-entry mean and std of observations (N, O) and states (S,), read in blocks."""
    T = ds.n_transitions
    sums = {k: 0.0 for k in ("obs", "state")}
    sq = {k: 0.0 for k in ("obs", "state")}
    for lo in range(0, T, block):
        for k in ("obs", "state"):
            x = ds.read(f"steps/{k}", lo, min(T, lo + block)).astype(np.float64)
            sums[k] = sums[k] + x.sum(0)
            sq[k] = sq[k] + (x ** 2).sum(0)
    out = []
    for k in ("obs", "state"):
        mean = sums[k] / T
        std = np.sqrt(np.maximum(sq[k] / T - mean ** 2, 0.0))
        out += [mean.astype(np.float32), np.maximum(std, STD_FLOOR).astype(np.float32)]
    return tuple(out)


# ----- evaluation --------------------------------------------------------------------------------------------

class Evaluator:
    """Runs a policy in the dataset's environment; the env is built once and reused."""

    def __init__(self, ds: Dataset, episodes: int, seed: int):
        from collectors.envs import check_compatible, make_vector_env, task_for_dataset

        self.ref = task_for_dataset(ds.spec)
        self.vec = make_vector_env(self.ref, episodes)
        check_compatible(ds.spec, self.vec.spec)
        self.seed, self.episodes = seed, episodes

    @torch.no_grad()
    def __call__(self, algo: OfflineAlgorithm, round_: int = 0) -> dict:
        from collectors.envs.base import run_episodes

        def act(obs, avail):
            o = algo.normalise_obs(torch.from_numpy(obs))
            return algo.act(o, None if avail is None else torch.from_numpy(avail)).cpu().numpy()

        res = run_episodes(self.vec, act, seed=self.seed * 1_000_003 + round_)
        return {"eval/return": float(res.returns.mean()), "eval/return_std": float(res.returns.std()),
                "eval/win_rate": float(res.won.mean()) if self.vec.spec.reports_wins else None}

    def close(self) -> None:
        self.vec.close()


def eval_score(record: dict) -> float:
    return record["eval/win_rate"] if record.get("eval/win_rate") is not None else record["eval/return"]


# ----- the loop ------------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    run_dir: Path
    final: dict
    best: dict | None


def build(algo_name: str, ds: Dataset, cfg: OfflineConfig) -> OfflineAlgorithm:
    cls = algorithm_class(algo_name)
    if not isinstance(cfg, cls.config_cls):
        raise TypeError(f"{algo_name} needs a {cls.config_cls.__name__}, got {type(cfg).__name__}")
    algo = cls(ds.spec, cfg)
    if cfg.normalize_obs:
        algo.set_normalisation(*dataset_statistics(ds))
    return algo


def train(algo_name: str, dataset, cfg: OfflineConfig, out, *, evaluate: bool = True,
          progress: Callable[[int, int, dict | None], None] | None = None) -> TrainResult:
    """Train ``algo_name`` on a dataset into run directory ``out`` (resuming it if it holds a run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.torch_threads)
    try:
        return _train(algo_name, dataset, cfg, Path(out), evaluate, progress)
    finally:
        torch.set_num_threads(threads)


def _train(algo_name, dataset, cfg, out: Path, evaluate: bool, progress) -> TrainResult:
    ds = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
    torch.manual_seed(cfg.seed)
    algo = build(algo_name, ds, cfg)
    loader = TransitionLoader(ds, cfg.batch_size, seed=cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    config = {"algorithm": algo_name, "dataset": str(ds.path), "dataset_identity": identity_sha256(ds.spec),
              "dataset_level": ds.level, "config": dataclasses.asdict(cfg)}
    latest = out / "checkpoints" / "latest.pt"
    start, best = 0, None
    if latest.exists():
        state = torch.load(latest, map_location="cpu", weights_only=True)
        if state["algorithm"] != algo_name or state["dataset_identity"] != config["dataset_identity"]:
            raise DatasetError(f"{out} holds a {state['algorithm']} run on another dataset; choose another --out")
        if state["config"] != dataclasses.asdict(cfg) | {"steps": state["config"]["steps"]}:
            raise DatasetError(f"{out} holds a run with other hyperparameters; choose another --out")
        algo.load_state_dict(state["weights"])
        algo.load_optimizer_state(state["optim"])
        loader._gen.set_state(state["loader_rng"])
        torch.set_rng_state(state["torch_rng"])
        start, best = int(state["step"]), state.get("best")
        _truncate_log(out / "log.jsonl", start)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    evaluator = Evaluator(ds, cfg.eval_episodes, cfg.seed) if evaluate else None
    final = {}
    sums: dict[str, float] = {}
    n, t0 = 0, time.perf_counter()
    try:
        for step in range(start + 1, cfg.steps + 1):
            metrics = algo.step(loader)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                record = {"step": step, **{k: v / n for k, v in sums.items()},
                          "time/steps_per_s": n / (time.perf_counter() - t0)}
                _log(out, record)
                final.update(record)
                sums, n, t0 = {}, 0, time.perf_counter()
                if progress:
                    progress(step, cfg.steps, None)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                ev = {"step": step}
                if evaluator is not None:
                    ev.update(evaluator(algo, round_=step))
                    if best is None or eval_score(ev) > eval_score(best):
                        best = ev
                        _save(out / "checkpoints" / "best.pt", algo, algo_name, config, loader, step, best)
                _log(out, ev)
                final.update(ev)
                _save(latest, algo, algo_name, config, loader, step, best)
                if progress:
                    progress(step, cfg.steps, ev)
                t0 = time.perf_counter()
    finally:
        if evaluator is not None:
            evaluator.close()
    plot_run(out)
    result = {"final": final, "best": best, "algorithm": algo_name, "dataset": str(ds.path)}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    return TrainResult(out, final, best)


def _log(out: Path, record: dict) -> None:
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    if path.exists():
        keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in keep))


def _save(path: Path, algo, algo_name, config, loader, step, best) -> None:
    state = {"weights": algo.state_dict(), "optim": algo.optimizer_state(), "algorithm": algo_name,
             "config": dataclasses.asdict(algo.cfg), "env": algo.spec.to_json(),
             "dataset_identity": config["dataset_identity"], "step": step, "best": best,
             "loader_rng": loader._gen.get_state(), "torch_rng": torch.get_rng_state()}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.rename(path)


def load_policy(path) -> OfflineAlgorithm:
    """Rebuild a trained algorithm from a checkpoint (``weights_only=True``: nothing is unpickled)."""
    from datakit.spec import EnvSpec

    state = torch.load(path, map_location="cpu", weights_only=True)
    cls = algorithm_class(state["algorithm"])
    algo = cls(EnvSpec.from_json(state["env"]), cls.config_cls(**state["config"]))
    algo.load_state_dict(state["weights"])
    algo.eval()
    return algo


def read_log(run_dir) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def plot_run(run_dir) -> Path:
    """curves.png: evaluation score and Q_tot against gradient steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = read_log(run_dir)
    evals = [r for r in log if "eval/return" in r]
    qs = [r for r in log if "value/q_tot" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), dpi=110)
    if evals:
        wins = evals[0].get("eval/win_rate") is not None
        axes[0].plot([r["step"] for r in evals], [eval_score(r) for r in evals], "o-")
        axes[0].set_ylabel("win rate" if wins else "return")
    axes[0].set_title("evaluation")
    if qs:
        axes[1].plot([r["step"] for r in qs], [r["value/q_tot"] for r in qs])
    axes[1].set_title("Q_tot on dataset batches")
    for ax in axes:
        ax.set_xlabel("gradient steps")
    fig.tight_layout()
    out = Path(run_dir) / "curves.png"
    fig.savefig(out)
    plt.close(fig)
    return out
