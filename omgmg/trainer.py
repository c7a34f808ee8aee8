"""Offline training and evaluation: the loop every algorithm in ``omgmg.algos`` runs in.

    result = train("omgmg", "hopper-medium.zarr", OMGMGConfig(steps=20_000), out="runs/hopper-omgmg")

A run directory holds ``config.json`` (the resolved config, the dataset and its identity hash),
``log.jsonl`` (one line per ``log_every`` steps and per evaluation: ``loss/*``, ``value/q_tot``,
``eval/return``, ``eval/win_rate``, ``time/steps_per_s``), ``checkpoints/latest.pt`` and
``best.pt`` (weights, normalisation, optimiser and RNG state, config; loadable with
``weights_only=True``), ``curves.png`` (evaluation score and Q_tot against steps) and
``results.json``. Running the same command again resumes from ``latest.pt`` and continues the same
metrics stream (log lines written after that checkpoint are dropped first, and the running means of
the next log line continue from the checkpoint, so a resumed run logs what an uninterrupted one
does). A run resumes only on the same data (the dataset's content fingerprint, not just its task)
with the same algorithm and hyperparameters; one process trains a run directory at a time (an
exclusive lock); checkpoints are atomic and checksummed, and a damaged ``latest.pt`` falls back to
``latest.previous.pt`` with a warning.

Evaluation runs the deterministic policy for ``eval_episodes`` episodes (one per environment, so
short episodes are not over-represented) in the environment the dataset came from
(``omgmg.collectors.envs.task_for_dataset``), after checking that its spec fits the dataset's.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from omgmg.algos import algorithm_class
from omgmg.algos.base import OfflineAlgorithm, OfflineConfig
from omgmg.datakit import TransitionLoader, open_dataset
from omgmg.datakit.checkpoints import load_checkpoint, save_checkpoint
from omgmg.datakit.dataset import Dataset
from omgmg.datakit.errors import OutputError, RequestError
from omgmg.datakit.format import identity_sha256
from omgmg.datakit.metrics import MetricLog
from omgmg.datakit.outputs import (
    OutputLock,
    atomic_write_json,
    is_omgmg_run,
    os_errors,
    read_jsonl,
)
from omgmg.diagnostics import returns_to_go

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
            sq[k] = sq[k] + (x**2).sum(0)
    out = []
    for k in ("obs", "state"):
        mean = sums[k] / T
        std = np.sqrt(np.maximum(sq[k] / T - mean**2, 0.0))
        out += [mean.astype(np.float32), np.maximum(std, STD_FLOOR).astype(np.float32)]
    return tuple(out)


# ----- evaluation --------------------------------------------------------------------------------------------


class Evaluator:
    """Runs a policy in the dataset's environment; the env is built once and reused."""

    def __init__(self, ds: Dataset, episodes: int, seed: int):
        from omgmg.collectors.envs import check_compatible, make_vector_env, task_for_dataset

        self.ref = task_for_dataset(ds.spec)
        self.vec = make_vector_env(self.ref, episodes)
        check_compatible(ds.spec, self.vec.spec)
        self.seed, self.episodes = seed, episodes

    @torch.no_grad()
    def __call__(self, algo: OfflineAlgorithm, round_: int = 0) -> dict:
        from omgmg.collectors.envs.base import run_episodes

        def act(obs, avail):
            o = algo.normalise_obs(torch.from_numpy(obs))
            return algo.act(o, None if avail is None else torch.from_numpy(avail)).cpu().numpy()

        res = run_episodes(self.vec, act, seed=self.seed * 1_000_003 + round_)
        wins = self.vec.spec.reports_wins
        return {
            "eval/return": float(res.returns.mean()),
            "eval/return_std": float(res.returns.std()),
            "eval/win_rate": float(res.won.mean()) if wins else None,
            "eval/episode_returns": [float(r) for r in res.returns],
            **({"eval/episode_wins": [int(w) for w in res.won]} if wins else {}),
        }

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


def train(
    algo_name: str,
    dataset,
    cfg: OfflineConfig,
    out,
    *,
    evaluate: bool = True,
    progress: Callable[[int, int, dict | None], None] | None = None,
    warn: Callable[[str], None] | None = None,
    tensorboard: bool | None = None,
) -> TrainResult:
    """Train ``algo_name`` on a dataset into run directory ``out`` (resuming it if it holds a run).

    ``tensorboard``: also write TensorBoard event files to ``out/tensorboard`` (None: when installed;
    see :class:`omgmg.datakit.metrics.MetricLog`)."""
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file; a run directory is a folder: choose another output path")
    with os_errors(out, "creating the run directory's folder"):
        out.parent.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.torch_threads)
    try:
        # the lock first (its file lies beside the run directory): a run another process is starting
        # is reported as in use, not mistaken for a foreign folder before its config.json exists
        with OutputLock(out, "run directory"):
            if out.is_dir() and any(out.iterdir()) and not is_omgmg_run(out):
                raise RequestError(
                    f"{out} is a folder with files that is not an omgmg run directory; choose another "
                    "output path (omgmg writes only into empty folders or its own run directories)"
                )
            with os_errors(out, "creating the run directory"):
                (out / "checkpoints").mkdir(parents=True, exist_ok=True)
            return _train(algo_name, dataset, cfg, out, evaluate, progress, warn, tensorboard)
    finally:
        torch.set_num_threads(threads)


def run_identity(algo_name: str, ds: Dataset, cfg: OfflineConfig) -> dict:
    """What a run directory is for: the algorithm, the data (task and content) and the hyperparameters
    (all but the step budget, which a resumed run may extend)."""
    return {
        "algorithm": algo_name,
        "dataset_identity": identity_sha256(ds.spec, ds.format_version),
        "dataset_content": ds.content_sha256(),
        "config": dataclasses.asdict(cfg) | {"steps": None},
    }


def _check_resume(out: Path, state: dict, wanted: dict, ds: Dataset) -> None:
    """Refuse, in one line, to continue a run made for another algorithm, dataset or configuration."""
    held = {
        "algorithm": state["algorithm"],
        "dataset_identity": state["dataset_identity"],
        "dataset_content": state.get("dataset_content"),
        "config": state["config"] | {"steps": None},
    }
    if held == wanted:
        return
    if held["algorithm"] != wanted["algorithm"]:
        what = f"a {held['algorithm']} run, not {wanted['algorithm']}"
    elif held["dataset_identity"] != wanted["dataset_identity"]:
        what = "a run on a dataset of another task"
    elif held["dataset_content"] is None:
        what = "a run whose checkpoint does not record its data's content (written before omgmg checked it)"
    elif held["dataset_content"] != wanted["dataset_content"]:
        what = f"a run on other data than {ds.path} (same task, different content)"
    else:
        changed = sorted(k for k in wanted["config"] if held["config"].get(k) != wanted["config"][k])
        what = (
            "a run with other hyperparameters ("
            + ", ".join(f"{k}: {held['config'].get(k)!r} there vs {wanted['config'][k]!r} now" for k in changed)
            + ")"
        )
    raise RequestError(f"{out} holds {what}; choose another output path, or delete that run directory to start over")


def _train(algo_name, dataset, cfg, out: Path, evaluate: bool, progress, warn, tensorboard) -> TrainResult:
    ds = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
    torch.manual_seed(cfg.seed)
    algo = build(algo_name, ds, cfg)
    loader = TransitionLoader(ds, cfg.batch_size, seed=cfg.seed)
    identity = run_identity(algo_name, ds, cfg)
    config = {
        "algorithm": algo_name,
        "dataset": str(ds.path.absolute()),  # a folder, or a URL (omgmg.datakit.remote)
        "dataset_identity": identity["dataset_identity"],
        "dataset_content": identity["dataset_content"],
        "dataset_level": ds.level,
        "config": dataclasses.asdict(cfg),
    }
    latest = out / "checkpoints" / "latest.pt"
    start, best = 0, None
    sums: dict[str, float] = {}  # running means of the next log line
    n = 0
    if latest.exists() or (out / "checkpoints" / "latest.previous.pt").exists():
        state = load_checkpoint(latest, warn=warn)
        _check_resume(out, state, identity, ds)
        algo.load_state_dict(state["weights"])
        algo.load_optimizer_state(state["optim"])
        loader.load_state_dict(state.get("loader") or {"generator": state["loader_rng"]})  # or a 0.1.0 checkpoint
        torch.set_rng_state(state["torch_rng"])
        start, best = int(state["step"]), state.get("best")
        sums, n = dict(state.get("log_sums", {})), int(state.get("log_n", 0))
    atomic_write_json(out / "config.json", config)
    # lines after the checkpoint are dropped (and TensorBoard events after it purged)
    log = MetricLog(out, index="step", resume_at=start, tensorboard=tensorboard, warn=warn)
    evaluator = Evaluator(ds, cfg.eval_episodes, cfg.seed) if evaluate else None
    rtg = torch.from_numpy(returns_to_go(ds, getattr(cfg, "gamma", 0.99)))  # Q_tot's yardstick (omgmg.diagnostics)
    final = {}
    t0 = time.perf_counter()
    try:
        for step in range(start + 1, cfg.steps + 1):
            metrics = algo.step(loader)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                record = {
                    "step": step,
                    **{k: v / n for k, v in sums.items()},
                    "time/steps_per_s": n / (time.perf_counter() - t0),
                }
                batch = getattr(algo, "last_batch", None)
                if batch is not None and batch.index is not None:  # after the throughput: not counted in it
                    with torch.random.fork_rng(devices=[]):  # sampling here leaves training's random stream alone
                        record |= algo.diagnostics(batch, rtg[batch.index.cpu()].to(batch.reward.device))
                log.write(record)
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
                        _save(out / "checkpoints" / "best.pt", algo, algo_name, config, loader, step, best, sums, n)
                log.write(ev)  # before the checkpoint: a crash in between cuts the log back
                final.update(ev)
                _save(latest, algo, algo_name, config, loader, step, best, sums, n)
                if progress:
                    progress(step, cfg.steps, ev)
                t0 = time.perf_counter()
    finally:
        log.close()
        if evaluator is not None:
            evaluator.close()
    plot_run(out)
    result = {"final": final, "best": best, "algorithm": algo_name, "dataset": config["dataset"]}
    atomic_write_json(out / "results.json", result)
    return TrainResult(out, final, best)


def _save(path: Path, algo, algo_name, config, loader, step, best, log_sums, log_n) -> None:
    state = {
        "weights": algo.state_dict(),
        "optim": algo.optimizer_state(),
        "algorithm": algo_name,
        "config": dataclasses.asdict(algo.cfg),
        "env": algo.spec.to_json(),
        "dataset_identity": config["dataset_identity"],
        "dataset_content": config["dataset_content"],
        "step": step,
        "best": best,
        "loader": loader.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "log_sums": dict(log_sums),
        "log_n": log_n,
    }
    save_checkpoint(state, path, keep_previous=path.name == "latest.pt")


def load_policy(path) -> OfflineAlgorithm:
    """Rebuild a trained algorithm from a checkpoint (``weights_only=True``: nothing is unpickled)."""
    from omgmg.datakit.spec import EnvSpec

    state = load_checkpoint(path, fallback=False)
    cls = algorithm_class(state["algorithm"])
    algo = cls(EnvSpec.from_json(state["env"]), cls.config_cls(**state["config"]))
    algo.load_state_dict(state["weights"])
    algo.eval()
    return algo


def read_log(run_dir) -> list[dict]:
    """The run's log records (a torn last line, from a crash or a full disk, is left out)."""
    return read_jsonl(Path(run_dir) / "log.jsonl")


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
