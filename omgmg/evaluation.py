"""Evaluating a policy in the environment its dataset came from.

    evaluator = Evaluator(dataset, episodes=32, seed=0)   # the environment is built once and reused
    result = evaluator(algo, round_=step, member=k)        # eval/return, eval/win_rate, every episode's return
    evaluate_run("runs/hopper-medium/omgmg-seed0")         # ``omgmg eval``: a run's checkpoint, its dataset

Evaluation runs the deterministic policy for ``episodes`` episodes (one per environment, so short episodes
are not over-represented) in the environment the dataset came from
(``omgmg.collectors.envs.task_for_dataset``), after checking that its spec fits the dataset's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from omgmg.algos.base import OfflineAlgorithm
from omgmg.datakit import open_dataset
from omgmg.datakit.checkpoints import load_checkpoint
from omgmg.datakit.dataset import Dataset
from omgmg.datakit.errors import RequestError
from omgmg.datakit.outputs import atomic_write_json
from omgmg.machine import resolve_device
from omgmg.rundir import policy_from_checkpoint, run_dataset


class Evaluator:
    """Runs a policy in the dataset's environment; the env is built once and reused."""

    def __init__(self, ds: Dataset, episodes: int, seed: int):
        from omgmg.collectors.envs import check_compatible, make_vector_env, task_for_dataset

        self.ref = task_for_dataset(ds.spec)
        self.vec = make_vector_env(self.ref, episodes)
        check_compatible(ds.spec, self.vec.spec)
        self.seed, self.episodes = seed, episodes

    @torch.no_grad()
    def __call__(self, algo: OfflineAlgorithm, round_: int = 0, member: int = 0, seed: int | None = None) -> dict:
        """Member ``member``'s deterministic policy for one episode per env; the episodes' seeds derive from
        ``seed`` (default: the evaluator's) and ``round_``, so a member sees what a single run with its
        seed sees."""
        from omgmg.collectors.envs.base import run_episodes

        device = algo.obs_mean.device

        def act(obs, avail):  # every member acts on the same observations; member ``member``'s actions are used
            o = algo.normalise_obs(torch.from_numpy(obs).to(device)).expand(algo.members, *obs.shape)
            a = None if avail is None else torch.from_numpy(avail).to(device).expand(algo.members, *avail.shape)
            return algo.act(o, a)[member].cpu().numpy()

        base = self.seed if seed is None else seed
        res = run_episodes(self.vec, act, seed=base * 1_000_003 + round_)
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


def checkpoint_path(run: Path, checkpoint: str = "final") -> Path:
    """A run directory's checkpoint file (``final`` = ``latest``: the end of training; ``best``: the one that
    scored highest in training's evaluations), or ``run`` itself when it is a checkpoint file."""
    run = Path(run)
    if run.is_file():
        return run
    path = run / "checkpoints" / ("best.pt" if checkpoint == "best" else "latest.pt")
    if not path.exists():
        raise RequestError(
            f"no checkpoint at {path}: {run} is not a trained run directory (`omgmg train --out {run}` trains one; "
            "a folder of --seeds or --grid runs is evaluated member by member)"
        )
    return path


def evaluate_run(run, dataset=None, *, episodes: int = 10, seed: int = 1234, device="cpu", checkpoint="final") -> dict:
    """Evaluate a trained run's policy (its ``checkpoint``) in the environment of its dataset (by default the
    one its ``config.json`` names) for ``episodes`` episodes; returns the evaluation with the checkpoint's step
    and the run's step budget, and writes it to the run directory as ``eval-CHECKPOINT.json``."""
    path = checkpoint_path(run, checkpoint)
    run_dir = path.parent.parent
    saved = load_checkpoint(path, fallback=False)
    if dataset is None:
        try:
            config = json.loads((run_dir / "config.json").read_text())
        except (OSError, ValueError):
            raise RequestError(f"{run_dir / 'config.json'} is missing or damaged; pass --dataset") from None
        dataset = run_dataset(run_dir, config)
    ds = open_dataset(dataset)
    algo = policy_from_checkpoint(saved).to(resolve_device(device))
    if algo.spec.identity() != ds.spec.identity():
        raise RequestError(
            f"the policy in {path} was trained on {algo.spec.name}, but {dataset} is "
            f"{ds.spec.name} ({ds.spec.backend}); pass the dataset the run was trained on"
        )
    evaluator = Evaluator(ds, episodes, seed)
    try:
        result = evaluator(algo)
    finally:
        evaluator.close()
    step, steps = int(saved["step"]), int(saved["config"].get("steps", saved["step"]))
    result |= {"checkpoint": checkpoint, "step": step, "steps": steps, "episodes": episodes, "path": str(path)}
    atomic_write_json(run_dir / f"eval-{checkpoint}.json", result)
    return result
