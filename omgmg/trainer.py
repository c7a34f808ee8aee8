"""Offline training: the loop every algorithm in ``omgmg.algos`` runs in.

    result = train("omgmg", "hopper-medium.zarr", OMGMGConfig(steps=20_000), out="runs/hopper-omgmg")

Read it top to bottom: :func:`train` takes the run directories' locks and checks them; :func:`build` makes
the algorithm (one or several members) on its device, each member initialised as a single run with its seed;
the loop takes a step on a fresh minibatch per member, logs every ``log_every`` steps (with the diagnostics,
:mod:`omgmg.diagnostics`), evaluates every ``eval_every`` steps (:mod:`omgmg.evaluation`) and checkpoints
(:mod:`omgmg.rundir`), and checkpoints between evaluations too when ``checkpoint_minutes`` of wall time have
passed since the last one. Running the same command again resumes from ``latest.pt`` and continues the same
metrics stream (log lines written after that checkpoint are dropped first, and the running means of the
next log line continue from the checkpoint, so a resumed run logs what an uninterrupted one does); one
process trains a run directory at a time (an exclusive lock), and the dataset cannot be replaced while it
reads it (a shared lock).
"""

from __future__ import annotations

import contextlib
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
from omgmg.datakit.checkpoints import save_checkpoint
from omgmg.datakit.dataset import Dataset
from omgmg.datakit.errors import OutputError, RequestError
from omgmg.datakit.metrics import MetricLog
from omgmg.datakit.outputs import OutputLock, atomic_write_json, is_omgmg_run, os_errors, read_lock
from omgmg.diagnostics import returns_to_go
from omgmg.evaluation import Evaluator
from omgmg.machine import busy_cpu_note, resolve_device
from omgmg.members import MemberRandom, stack_states
from omgmg.rundir import (
    check_resume,
    dataset_reference,
    eval_score,
    is_unstarted_run,
    load_members,
    member_checkpoint,
    member_keys,
    plot_run,
    read_log,
    resume_states,
    run_identity,
)

STD_FLOOR = 1e-3
CHECKPOINT_MINUTES = 10.0
"""Wall time after which a run also checkpoints between evaluations (at its next log step)."""


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


@dataclass
class TrainResult:
    run_dir: Path
    final: dict
    best: dict | None
    resumed_from: int = 0
    """The step this call continued the run from (its checkpoint's); 0 when it began the run."""


def build(algo_name: str, ds: Dataset, cfg: OfflineConfig | list[OfflineConfig], device="cpu") -> OfflineAlgorithm:
    """The algorithm for one config, or for a list of members' configs (``omgmg.members``), on ``device``.

    Member k is initialised alone under ``torch.manual_seed(seed_k)``, exactly as a single run with that
    seed, and its random stream continues from where that initialisation left the generator: so member k
    of a batched run draws what the single run draws."""
    cls = algorithm_class(algo_name)
    cfgs = list(cfg) if isinstance(cfg, list | tuple) else [cfg]
    for c in cfgs:
        if not isinstance(c, cls.config_cls):
            raise TypeError(f"{algo_name} needs a {cls.config_cls.__name__}, got {type(c).__name__}")
    device = torch.device(device)
    singles, streams = [], []
    with torch.random.fork_rng(devices=[]):
        for c in cfgs:
            torch.manual_seed(c.seed)
            singles.append(cls(ds.spec, c))
            streams.append(torch.get_rng_state())
    algo = singles[0] if len(cfgs) == 1 else cls(ds.spec, cfgs)
    if len(cfgs) > 1:
        algo.load_state_dict(stack_states([s.state_dict() for s in singles], member_keys(algo)))
    if cfgs[0].normalize_obs:
        algo.set_normalisation(*dataset_statistics(ds))
    algo.to(device)
    if device.type == "cpu":
        algo.rng = MemberRandom([torch.Generator().set_state(s) for s in streams])
    else:  # a device generator cannot take a CPU state: seeded per member instead
        algo.rng = MemberRandom.seeded([c.seed for c in cfgs], device)
    return algo


def loader_device(ds: Dataset, device: torch.device) -> torch.device:
    """Where the in-memory loader keeps the data: on the training device when it fits in half of that
    device's free memory (minibatches are then gathered there, no copy per step), else in host memory."""
    if device.type != "cuda":
        return device
    spec = ds.spec
    per_row = 4 * (2 * spec.n_agents * spec.obs_dim + 2 * spec.state_dim + spec.n_agents * (spec.action_dim or 1) + 8)
    if spec.discrete:
        per_row += 2 * spec.n_agents * spec.n_actions  # availability masks, bool
    free, _ = torch.cuda.mem_get_info(device)
    return device if ds.n_transitions * per_row < 0.5 * free else torch.device("cpu")


def train(
    algo_name: str,
    dataset,
    cfg: OfflineConfig | list[OfflineConfig],
    out,
    *,
    evaluate: bool = True,
    progress: Callable[[int, int, list[dict] | None], None] | None = None,
    warn: Callable[[str], None] | None = None,
    tensorboard: bool | None = None,
    device: str | torch.device | None = "cpu",
    compile_update: bool = False,
    checkpoint_minutes: float = CHECKPOINT_MINUTES,
) -> TrainResult | list[TrainResult]:
    """Train ``algo_name`` on a dataset into run directory ``out`` (resuming it if it holds a run).

    With a list of configs and a list of run directories, one per member (``omgmg.members``: seeds, and
    values of the algorithm's ``member_hyperparameters``), the members train as one batched program and
    each directory gets what a single run with that config would write; a list of results is returned.

    ``tensorboard``: also write TensorBoard event files to ``out/tensorboard`` (None: when installed;
    see :class:`omgmg.datakit.metrics.MetricLog`). ``device``: cpu, cuda[:i] or auto. ``compile_update``:
    :meth:`OfflineAlgorithm.compile_update` (CUDA graphs on a CUDA device; on this project's CPU slower).
    ``checkpoint_minutes``: between evaluations, also checkpoint at the first log step this long after the last
    checkpoint, so an interruption loses at most about this much work (0: at every log step)."""
    if not checkpoint_minutes >= 0:
        raise RequestError(f"<<checkpoint_minutes={checkpoint_minutes}>> is not a number of minutes >= 0")
    several = isinstance(cfg, list | tuple)
    cfgs = list(cfg) if several else [cfg]
    outs = [Path(o).absolute() for o in (out if several else [out])]
    if len(outs) != len(cfgs):
        raise RequestError(f"{len(cfgs)} members need {len(cfgs)} run directories, got {len(outs)}")
    if len(set(outs)) < len(outs):
        raise RequestError("two members were given the same run directory; give each member its own")
    device = resolve_device(device)
    for o in outs:
        if o.exists() and not o.is_dir():
            raise OutputError(f"{o} is a file; a run directory is a folder: choose another output path")
        with os_errors(o, "creating the run directory's folder"):
            o.parent.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfgs[0].torch_threads)
    if warn and device.type == "cpu" and (note := busy_cpu_note(cfgs[0].torch_threads)):
        warn(note)
    try:
        with contextlib.ExitStack() as locks:
            # the locks first (their files lie beside the run directories): a run another process is starting
            # is reported as in use, not mistaken for a foreign folder before its config.json exists
            for o in outs:
                locks.enter_context(OutputLock(o, "run directory"))
            for o in outs:
                if o.is_dir() and not is_omgmg_run(o) and not is_unstarted_run(o):
                    raise RequestError(
                        f"{o} is a folder with files that is not an omgmg run directory; choose another "
                        "output path (omgmg writes only into empty folders or its own run directories)"
                    )
            # the run directories are made once the data is read (_train): a command that fails or is killed
            # while opening or loading the dataset leaves no empty folder behind
            results = _train(
                algo_name, dataset, cfgs, outs, evaluate, progress, warn, tensorboard, device, compile_update,
                checkpoint_minutes,
            )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return results if several else results[0]


def _train(
    algo_name, dataset, cfgs, outs, evaluate: bool, progress, warn, tensorboard, device, compile_update: bool,
    checkpoint_minutes: float,
) -> list[TrainResult]:  # fmt: skip
    ds = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
    with read_lock(ds.path):  # nothing replaces the dataset while the run reads it
        return _train_on(
            ds, algo_name, cfgs, outs, evaluate, progress, warn, tensorboard, device, compile_update,
            checkpoint_minutes,
        )  # fmt: skip


def _train_on(
    ds: Dataset, algo_name, cfgs, outs, evaluate: bool, progress, warn, tensorboard, device, compile_update: bool,
    checkpoint_minutes: float,
) -> list[TrainResult]:  # fmt: skip
    M, cfg = len(cfgs), cfgs[0]
    algo = build(algo_name, ds, cfgs, device)
    algo.behaviour_log_prob = _behaviour_density(ds, warn)  # for the mechanism metrics (omgmg.diagnostics)
    if compile_update:
        algo.compile_update()
    loader = TransitionLoader(ds, cfg.batch_size, seed=[c.seed for c in cfgs], device=loader_device(ds, device))
    identities = [run_identity(algo_name, ds, c) for c in cfgs]
    configs = [
        {
            "algorithm": algo_name,
            **dataset_reference(ds.path, o),
            "dataset_identity": ident["dataset_identity"],
            "dataset_content": ident["dataset_content"],
            "dataset_level": ds.level,
            "config": dataclasses.asdict(c),
        }
        for c, ident, o in zip(cfgs, identities, outs, strict=True)
    ]
    start, bests = 0, [None] * M
    sums: dict[str, torch.Tensor] = {}  # running sums (M,) of the next log line, on the device
    n = 0
    states = resume_states(outs, warn)
    if states[0] is not None:
        for o, state, ident in zip(outs, states, identities, strict=True):
            check_resume(o, state, ident, ds)
        load_members(algo, loader, states)
        start, bests = int(states[0]["step"]), [s.get("best") for s in states]
        n = int(states[0].get("log_n", 0))
        names = states[0].get("log_sums", {}).keys()
        sums = {k: torch.tensor([float(s["log_sums"][k]) for s in states], device=device) for k in names}
        if progress and start < cfg.steps:
            progress(start, cfg.steps, None)  # a resumed run's progress starts where it resumes
    for o, config in zip(outs, configs, strict=True):
        with os_errors(o, "creating the run directory"):
            o.mkdir(exist_ok=True)
        atomic_write_json(o / "config.json", config)  # first: from here on the folder is an omgmg run
        with os_errors(o, "creating the run directory"):
            (o / "checkpoints").mkdir(exist_ok=True)
    # lines after the checkpoint are dropped (and TensorBoard events after it purged)
    logs = [MetricLog(o, index="step", resume_at=start, tensorboard=tensorboard, warn=warn) for o in outs]
    evaluator = Evaluator(ds, cfg.eval_episodes, cfg.seed) if evaluate else None
    rtg = torch.from_numpy(returns_to_go(ds, getattr(cfg, "gamma", 0.99))).to(device)  # Q_tot's yardstick
    finals: list[dict] = [{} for _ in range(M)]

    def save_latest(step: int) -> float:
        """Every member's latest.pt at this step (the previous one kept); returns when it was written."""
        for k in range(M):
            ckpt = member_checkpoint(algo, loader, k, algo_name, configs[k], step, bests[k], sums, n)
            save_checkpoint(ckpt, outs[k] / "checkpoints" / "latest.pt", keep_previous=True)
        return time.monotonic()

    t0, saved_at = time.perf_counter(), time.monotonic()
    try:
        for step in range(start + 1, cfg.steps + 1):
            metrics = algo.step(loader)  # (M,) tensors on the device: no host sync here
            for k, v in metrics.items():
                sums[k] = sums[k] + v if k in sums else v.clone()
            n += 1
            evaluates = step % cfg.eval_every == 0 or step == cfg.steps
            if step % cfg.log_every == 0 or step == cfg.steps:
                rate = n / (time.perf_counter() - t0)
                records = _per_member({k: v / n for k, v in sums.items()}, M)
                batch = getattr(algo, "last_batch", None)
                if batch is not None and batch.index is not None:  # after the throughput: not counted in it
                    with torch.random.fork_rng(devices=[]):  # sampling here leaves training's random streams alone
                        saved = algo.rng.get_state()
                        diagnostics = _per_member(algo.diagnostics(batch, rtg[batch.index]), M)
                        algo.rng.set_state(saved)
                    records = [r | d for r, d in zip(records, diagnostics, strict=True)]
                for log, final, record in zip(logs, finals, records, strict=True):
                    record = {"step": step, **record, "time/steps_per_s": rate}
                    log.write(record)
                    final.update(record)
                sums, n = {}, 0
                if not evaluates and time.monotonic() - saved_at >= 60 * checkpoint_minutes:
                    saved_at = save_latest(step)  # a long gap between evaluations: an interruption loses less
                t0 = time.perf_counter()
                if progress:
                    progress(step, cfg.steps, None)
            if evaluates:
                evs = [{"step": step} for _ in range(M)]
                for k in range(M):
                    if evaluator is not None:
                        evs[k].update(evaluator(algo, round_=step, member=k, seed=cfgs[k].seed))
                        if bests[k] is None or eval_score(evs[k]) > eval_score(bests[k]):
                            bests[k] = evs[k]
                            ckpt = member_checkpoint(algo, loader, k, algo_name, configs[k], step, bests[k], sums, n)
                            save_checkpoint(ckpt, outs[k] / "checkpoints" / "best.pt", keep_previous=False)
                    logs[k].write(evs[k])  # before the checkpoint: a crash in between cuts the log back
                    finals[k].update(evs[k])
                saved_at = save_latest(step)
                if progress:
                    progress(step, cfg.steps, evs)
                t0 = time.perf_counter()
    finally:
        for log in logs:
            log.close()
        if evaluator is not None:
            evaluator.close()
    if start >= cfg.steps:  # finished before (its result lost with the process that wrote it): its last records
        for o, final in zip(outs, finals, strict=True):
            log = read_log(o)
            last = max((r["step"] for r in log if "step" in r), default=None)
            for record in log:
                if record.get("step") == last:
                    final.update(record)
    results = []
    for o, config, final, best in zip(outs, configs, finals, bests, strict=True):
        plot_run(o)
        names = {k: config[k] for k in ("dataset", "dataset_relative_to") if k in config}
        result = {"final": final, "best": best, "algorithm": algo_name, **names}
        atomic_write_json(o / "results.json", result)
        results.append(TrainResult(o, final, best, resumed_from=start))
    return results


def _behaviour_density(ds: Dataset, warn):
    """log pi_beta of the policy that collected ``ds`` (:mod:`omgmg.behaviour`), None where it is not at hand
    (or cannot be loaded: said in a warning, and training goes on without it)."""
    from omgmg.behaviour import behaviour_density
    from omgmg.datakit.errors import DatasetError

    try:
        return behaviour_density(ds)
    except DatasetError as e:
        if warn:
            warn(f"the behaviour policy of {ds.path} could not be loaded ({e}); training goes on without it")
        return None


def _per_member(metrics: dict[str, torch.Tensor], members: int) -> list[dict[str, float]]:
    """{name: (M,) tensor} -> M dicts of floats, with one read from the device for all of them."""
    if not metrics:
        return [{} for _ in range(members)]
    names = list(metrics)
    values = torch.stack([metrics[k].detach().float().reshape(-1) for k in names]).cpu().tolist()  # (K, M)
    return [{k: values[i][m] for i, k in enumerate(names)} for m in range(len(values[0]))]
