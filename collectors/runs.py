"""A behaviour policy's training run on disk: its directory, checkpoints, log and learning curve.

A run lives in ``$OMGMG_HOME/runs/SUITE/TASK/BACKEND/ALGO/seed{S}-{hash}`` (``OMGMG_HOME`` defaults
to ``~/.omgmg``; ``hash`` covers every hyperparameter except the worker count and the thread count,
and the step budget too when it is a whole number of evaluation segments: such runs share a
directory, a longer one extends a shorter one, and a shorter request is served by the longer
run's checkpoints up to its budget, all identical to a fresh run's. A budget that ends inside a
segment cuts that segment short, so it gets a directory of its own). It holds:

- ``config.json``: the resolved config;
- ``checkpoints/step_{env_steps}.pt``: self-contained checkpoints (weights, normaliser statistics,
  optimiser state, RNG state, config, evaluation, env steps), loadable with ``weights_only=True``;
- ``log.jsonl``: one line per iteration and per evaluation (metric names: :mod:`omgmg.datakit.metrics`);
- ``curve.png``: evaluation score against environment steps;
- ``replay.zarr``: every episode the behaviour policy generated while training (for medium-replay),
  kept as an unfinished write so that a longer run can extend it.

One process trains a run at a time: it holds an exclusive lock on the run directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from omgmg.collectors.config import LoopConfig, run_key
from omgmg.collectors.envs import TaskRef
from omgmg.datakit.checkpoints import load_checkpoint
from omgmg.datakit.errors import CheckpointError
from omgmg.datakit.metrics import MetricLog
from omgmg.datakit.outputs import OutputLock, atomic_write_json, data_home, os_errors, read_jsonl


class RunDir:
    """One training run on disk (see the module docstring). ``lock()`` holds it exclusively."""

    def __init__(self, ref: TaskRef, algo: str, cfg: LoopConfig, home: Path | None = None):
        key = run_key(cfg)
        key["options"] = ref.options
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
        self.root = (
            (home or data_home()) / "runs" / ref.suite / ref.task / ref.backend / algo / f"seed{cfg.seed}-{digest}"
        )
        self.ref, self.algo, self.cfg = ref, algo, cfg

    def lock(self) -> OutputLock:
        """Create the directory and take its lock (a context manager); writes ``config.json``."""
        with os_errors(self.root, "creating the behaviour run directory"):
            (self.root / "checkpoints").mkdir(parents=True, exist_ok=True)
        lock = OutputLock(self.root, "behaviour run").acquire()
        atomic_write_json(
            self.root / "config.json",
            {
                "algorithm": self.algo,
                "task": self.ref.name,
                "backend": self.ref.backend,
                "options": self.ref.options,
                "config": dataclasses.asdict(self.cfg),
            },
        )
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

    def metric_log(self, resume_at: int, tensorboard: bool | None = None, warn=None) -> MetricLog:
        """The run's log, cut back to the checkpoint at ``resume_at`` env steps (-1: before any)."""
        return MetricLog(self.root, index="env_steps", resume_at=resume_at, tensorboard=tensorboard, warn=warn)


def checkpoint_paths(root: Path) -> list[Path]:
    """The checkpoints of the run at ``root``, in env-step order."""
    return sorted(root.glob("checkpoints/step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))


def checkpoint_evaluations(root: Path) -> list[dict]:
    """(env steps, eval dict, path, replay episodes) of every checkpoint of the run at ``root``, in order."""
    out = []
    for p in checkpoint_paths(root):
        ck = load_checkpoint(p, fallback=False)
        out.append(
            {
                "env_steps": int(ck["env_steps"]),
                "eval": ck["eval"],
                "path": p,
                "replay_episodes": int(ck["replay_episodes"]),
            }
        )
    return out


def score(evaluation: dict) -> float:
    """The number levels are defined by: win rate where the task reports wins, else mean return."""
    return evaluation["win_rate"] if evaluation.get("win_rate") is not None else evaluation["return"]


def plot_curve(run: RunDir) -> Path:
    """Evaluation score (and training episode return) against env steps, as PNG."""
    from matplotlib.figure import Figure  # no pyplot: no process-wide backend or state

    evals = run.evaluations()
    steps = [e["env_steps"] for e in evals]
    fig = Figure(figsize=(6, 3.5), dpi=110)
    ax = fig.subplots()
    wins = evals and evals[0]["eval"].get("win_rate") is not None
    ax.plot(steps, [score(e["eval"]) for e in evals], "o-", label="eval " + ("win rate" if wins else "return"))
    if not wins:
        train = [r for r in read_jsonl(run.root / "log.jsonl") if "charts/episode_return" in r]
        if train:
            ax.plot(
                [t["env_steps"] for t in train],
                [t["charts/episode_return"] for t in train],
                alpha=0.4,
                label="training episodes",
            )
    ax.set_xlabel("environment steps")
    ax.set_ylabel("win rate" if wins else "return")
    ax.set_title(f"{run.algo} on {run.ref.name} ({run.ref.backend}), seed {run.cfg.seed}", fontsize=10)
    ax.legend(frameon=False)
    fig.tight_layout()
    out = run.root / "curve.png"
    fig.savefig(out)
    return out
