"""Aggregate statistics over runs and tasks, as rliable defines them (Agarwal et al. 2021, "Deep RL at the
Edge of the Statistical Precipice") and marl-eval (Gorsane et al. 2022) reports them for MARL.

    scores = {"omgmg": array (runs, tasks), "omiga": array (runs, tasks)}   # normalised scores
    iqm(scores["omgmg"])                                   # interquartile mean over every run of every task
    interval(scores["omgmg"], iqm)                         # 95% stratified-bootstrap confidence interval
    probability_of_improvement(scores["omgmg"], scores["omiga"])   # P(X > Y), averaged over tasks

- **IQM**: the mean of the middle 50% of all runs' scores pooled over tasks (``scipy.stats.trim_mean`` with
  0.25 cut at each end, as ``rliable.metrics.aggregate_iqm`` computes it).
- **Stratified bootstrap**: runs are resampled with replacement within each task (a column), the statistic
  recomputed, and the 2.5% and 97.5% percentiles of its values are the interval (``rliable.library.
  get_interval_estimates`` with ``StratifiedIndependentBootstrap``, percentile method).
- **Probability of improvement** of X over Y: per task, the probability that a run of X scores higher than a
  run of Y (ties count half: the Mann-Whitney U statistic over n x m), averaged over tasks; its interval
  resamples X's and Y's runs independently within each task (``rliable.metrics.probability_of_improvement``).

marl-eval itself is not a dependency: its PyPI package (``id-marl-eval``) pins pandas 1.4.4, which has no
build for the Python versions omgmg supports. These functions follow rliable's definitions exactly and are
tested against values computed by hand.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

BOOTSTRAP_REPS = 2000
CONFIDENCE = 0.95


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of every run of every task, ``scores`` (runs, tasks): the sorted scores without the
    lowest and the highest ``int(0.25 n)`` of them, averaged (``scipy.stats.trim_mean(x, 0.25)``)."""
    x = np.sort(np.asarray(scores, np.float64).ravel())
    cut = int(0.25 * len(x))
    return float(x[cut : len(x) - cut].mean())


def mean(scores: np.ndarray) -> float:
    return float(np.mean(scores))


def interval(
    scores: np.ndarray, statistic: Callable[[np.ndarray], float], reps: int = BOOTSTRAP_REPS, seed: int = 0
) -> tuple[float, float]:
    """The 95% stratified-bootstrap interval of ``statistic(scores)``: runs resampled within each task."""
    scores = np.asarray(scores, np.float64)
    runs, tasks = scores.shape
    rng = np.random.default_rng(seed)
    values = np.empty(reps)
    for r in range(reps):
        rows = rng.integers(0, runs, size=(runs, tasks))
        values[r] = statistic(np.take_along_axis(scores, rows, axis=0))
    tail = 100 * (1 - CONFIDENCE) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(a run of X scores above a run of Y), ties counted half, per task (columns), averaged over tasks."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    per_task = []
    for t in range(x.shape[1]):
        a, b = x[:, t][:, None], y[:, t][None, :]
        per_task.append(float(np.mean((a > b) + 0.5 * (a == b))))
    return float(np.mean(per_task))


def improvement_interval(
    x: np.ndarray, y: np.ndarray, reps: int = BOOTSTRAP_REPS, seed: int = 0
) -> tuple[float, float]:
    """95% interval of :func:`probability_of_improvement`, X's and Y's runs resampled apart within each task."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    rng = np.random.default_rng(seed)
    values = np.empty(reps)
    for r in range(reps):
        xs = np.take_along_axis(x, rng.integers(0, x.shape[0], size=x.shape), axis=0)
        ys = np.take_along_axis(y, rng.integers(0, y.shape[0], size=y.shape), axis=0)
        values[r] = probability_of_improvement(xs, ys)
    tail = 100 * (1 - CONFIDENCE) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)
