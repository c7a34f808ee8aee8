"""What a sweep will cost before it runs: its unfinished jobs' gradient steps over measured speeds.

    device-hours = sum over jobs of  steps / (the job's batched program's gradient steps/s)

The speeds are a ``benchmarks/train.py --members ... --out RATES.json`` measurement on the device the
sweep will use (one row per task shape, algorithm, member count M and mode: gradient steps/s of the batched
program). A job of M cells trains ``steps`` batched steps, so at M members it costs ``steps / steps_per_s``
seconds of one device however many members it holds: that is what ``--members-per-job`` buys on a GPU.
Evaluation episodes and dataset generation are not counted (the estimate says so).

A job whose exact (shape, algorithm, M) was not measured takes the measured M nearest to its own of that
shape and algorithm, on the slow side (a larger job at that M's member-steps/s, a smaller one at its steps/s:
an upper bound on the cost), and a task with no measured shape takes its suite's measured shape (SMACv2's three 5v5
races have protoss_5v5's sizes exactly on SMAX; another MaMuJoCo task is only roughly HalfCheetah-6x1's);
each such stand-in is listed, never silent.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

from omgmg.experiments.spec import Cell

SUITE_SHAPES = {"mamujoco": "HalfCheetah-6x1", "smacv2": "protoss_5v5"}


class RatesError(ValueError):
    """The speed file is missing, unreadable, or holds no rows of the update mode asked for."""


@dataclass
class Rates:
    """Measured gradient steps/s of batched programs: ``(shape, algorithm, members) -> steps/s``."""

    table: dict[tuple[str, str, int], float]
    devices: set[str]
    source: str

    @property
    def shapes(self) -> set[str]:
        return {s for s, _, _ in self.table}


@dataclass
class Estimate:
    jobs: int = 0
    cells: int = 0
    member_steps: int = 0
    device_seconds: float = 0.0
    by_algorithm: dict[str, float] = field(default_factory=dict)  # algorithm -> device-seconds
    stand_ins: set[str] = field(default_factory=set)  # which measurement stood in for which job
    unmeasured: dict[str, set[str]] = field(default_factory=dict)  # algorithm -> shapes with no row: not counted

    @property
    def device_hours(self) -> float:
        return self.device_seconds / 3600


def load_rates(path: Path, *, compiled: bool = False) -> Rates:
    """The rows of one mode (eager, or compiled for a sweep run with ``--compile``) of a speed file."""
    mode = "compiled" if compiled else "eager"
    try:
        rows = json.loads(Path(path).read_text())
        table = {
            (r["task_shape"], r["algorithm"], int(r["members"])): float(r["steps_per_s"])
            for r in rows
            if r.get("mode", "eager") == mode and float(r["steps_per_s"]) > 0
        }
        devices = {str(r.get("device", "?")) for r in rows if r.get("mode", "eager") == mode}
    except FileNotFoundError:
        raise RatesError(
            f"{path}: no such file; measure one with `python benchmarks/train.py --members 1,10 --out {path}`"
        ) from None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        what = f"{e.__class__.__name__}: {e}"
        raise RatesError(f"{path}: not a `benchmarks/train.py --members` result ({what})") from None
    if not table:
        flag = " --compile" if compiled else ""
        how = f"`python benchmarks/train.py{flag} --members 1,10`"
        raise RatesError(f"{path} holds no {mode} rows; measure them with {how}")
    return Rates(table, devices, str(path))


def _rate(rates: Rates, shape: str, algorithm: str, members: int, est: Estimate) -> float | None:
    measured = sorted(m for s, a, m in rates.table if s == shape and a == algorithm)
    if not measured:
        est.unmeasured.setdefault(algorithm, set()).add(shape)
        return None
    m = min(measured, key=lambda k: (abs(k - members), -k))
    if m == members:
        return rates.table[shape, algorithm, m]
    # a stand-in errs on the slow side: a larger job gains nothing more from batching than M = m did (its
    # member-steps/s stay m's), a smaller one is no faster than the m-member program
    est.stand_ins.add(f"M = {m} for jobs of {members} ({algorithm}, {shape}; an upper bound)")
    return rates.table[shape, algorithm, m] * min(1.0, m / members)


@functools.cache
def _stored_env(path: str) -> tuple[str, str]:
    from omgmg.datakit import open_dataset

    env = open_dataset(path).spec
    return env.suite, env.task


def shape_of(cell: Cell, shapes: set[str]) -> tuple[str | None, str | None]:
    """The measured shape a cell's task trains at, and a note when it stands in for the task's own."""
    suite, task = cell.dataset.suite, cell.dataset.task
    if task is None and cell.dataset.path is not None:  # a dataset given by path: its metadata names the task
        suite, task = _stored_env(cell.dataset.path)
    if task in shapes:
        return task, None
    fallback = SUITE_SHAPES.get(suite or "")
    if fallback in shapes:
        return fallback, f"{fallback} for {task or cell.dataset.name}"
    return None, None


def estimate(jobs: list[list[Cell]], rates: Rates, done_steps=lambda cell: 0) -> Estimate:
    """Device-seconds of ``jobs`` (lists of cells trained as one batched program each) at ``rates``, for the
    steps each job has left (``done_steps(cell)``: the step its first cell resumes at; a job's cells resume
    at one step)."""
    est = Estimate()
    for job in jobs:
        head = job[0]
        shape, note = shape_of(head, rates.shapes)
        if shape is None:
            est.unmeasured.setdefault(head.algorithm, set()).add(head.dataset.task or head.dataset.name)
            continue
        if note:
            est.stand_ins.add(note)
        rate = _rate(rates, shape, head.algorithm, len(job), est)
        if rate is None:
            continue
        steps = max(0, int(head.config["steps"]) - done_steps(head))
        est.jobs += 1
        est.cells += len(job)
        est.member_steps += steps * len(job)
        est.device_seconds += steps / rate
        est.by_algorithm[head.algorithm] = est.by_algorithm.get(head.algorithm, 0.0) + steps / rate
    return est
