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

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from omgmg.algos import algorithm_class
from omgmg.algos.base import OfflineAlgorithm, OfflineConfig
from omgmg.datakit import TransitionLoader, open_dataset
from omgmg.datakit.checkpoints import load_checkpoint, previous_path, save_checkpoint
from omgmg.datakit.dataset import Dataset
from omgmg.datakit.errors import ConfigError, OutputError, RequestError
from omgmg.datakit.format import identity_sha256
from omgmg.datakit.metrics import MetricLog
from omgmg.datakit.outputs import (
    HOME_PREFIX,
    OutputLock,
    atomic_write_json,
    from_home_relative,
    home_relative,
    is_omgmg_run,
    os_errors,
    read_jsonl,
    read_lock,
)
from omgmg.datakit.remote import is_remote
from omgmg.diagnostics import returns_to_go
from omgmg.members import MemberRandom, member_slice, stack_states

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
    algo = load_policy(path).to(resolve_device(device))
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


def eval_score(record: dict) -> float:
    return record["eval/win_rate"] if record.get("eval/win_rate") is not None else record["eval/return"]


# ----- the loop ------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    run_dir: Path
    final: dict
    best: dict | None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (or None): the first CUDA device when there is one, else the CPU; otherwise as given. A CUDA
    device on a machine without one is refused in a line."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"--device {device!r} is not a device: use auto, cpu or cuda[:INDEX]") from e
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(
            f"--device {device}: a {dev.type} device cannot train or evaluate a run; use auto, cpu or cuda"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: this machine (or this torch build) has no MPS device; use cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: this machine has no CUDA device that torch can use; use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA devices")
    return dev


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


def member_keys(algo: OfflineAlgorithm) -> set[str]:
    """The state-dict entries that carry the member axis: every parameter (targets included)."""
    return {name for name, _ in algo.named_parameters(remove_duplicate=False)}


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
) -> TrainResult | list[TrainResult]:
    """Train ``algo_name`` on a dataset into run directory ``out`` (resuming it if it holds a run).

    With a list of configs and a list of run directories, one per member (``omgmg.members``: seeds, and
    values of the algorithm's ``member_hyperparameters``), the members train as one batched program and
    each directory gets what a single run with that config would write; a list of results is returned.

    ``tensorboard``: also write TensorBoard event files to ``out/tensorboard`` (None: when installed;
    see :class:`omgmg.datakit.metrics.MetricLog`). ``device``: cpu, cuda[:i] or auto. ``compile_update``:
    :meth:`OfflineAlgorithm.compile_update` (CUDA graphs on a CUDA device; on this project's CPU slower)."""
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
                if o.is_dir() and not is_omgmg_run(o) and not _is_unstarted_run(o):
                    raise RequestError(
                        f"{o} is a folder with files that is not an omgmg run directory; choose another "
                        "output path (omgmg writes only into empty folders or its own run directories)"
                    )
            # the run directories are made once the data is read (_train): a command that fails or is killed
            # while opening or loading the dataset leaves no empty folder behind
            results = _train(
                algo_name, dataset, cfgs, outs, evaluate, progress, warn, tensorboard, device, compile_update
            )
    finally:
        torch.set_num_threads(threads)
    return results if several else results[0]


def _is_unstarted_run(path: Path) -> bool:
    """An empty folder, or one holding only the empty ``checkpoints/`` that earlier omgmg versions created before their
    ``config.json``: what a run killed while opening its dataset leaves behind, to be started again."""
    entries = list(path.iterdir())
    return not entries or (
        [e.name for e in entries] == ["checkpoints"] and entries[0].is_dir() and not any(entries[0].iterdir())
    )


def busy_cpu_note(torch_threads: int) -> str | None:
    """A warning when other work already keeps the cores a multi-threaded CPU run needs busy. PyTorch's OpenMP
    threads spin-wait for each other at every operator; with a thread descheduled the others spin, and a step
    gets many times slower (Hopper-3x1 OMGMG beside a niced sweep on 2 cores: 300 steps took 208 s with 2
    threads, 12 s with 1). Judged by what other processes use now (:func:`other_cpu_load`), not by the load
    average, which still counts this command's own work of the last minutes (collecting, loading)."""
    if torch_threads < 2:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = other_cpu_load()
    if load is None or load <= cores - torch_threads + 0.5:
        return None
    return (
        f"the CPU is busy (other processes keep {load:.1f} of {cores} cores busy) and training uses {torch_threads} "
        "threads, which wait on each other when one is descheduled (steps can get 10x slower): pass "
        "--torch-threads 1 while other work runs"
    )


def other_cpu_load(window: float = 0.25) -> float | None:
    """How many cores' worth of CPU time the other processes of the machine used over the next ``window``
    seconds (``/proc/stat``'s busy time less this process's and its children's); None where there is no
    ``/proc/stat``."""

    def sample() -> tuple[float, float]:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        own = sum(os.times()[:4])  # seconds: user, system, children's user and system
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), own

    try:
        busy0, own0 = sample()
        t0 = time.monotonic()
        time.sleep(window)
        busy1, own1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / (time.monotonic() - t0)


RELATIVE_TO_RUN = "run directory"


def dataset_reference(location, run_dir: Path) -> dict:
    """How a run's ``config.json`` names its dataset, so that the run is not tied to this machine: a URL as
    it is; a folder inside ``$OMGMG_HOME`` as ``$OMGMG_HOME/...``; any other folder relative to the run
    directory (a project copied or moved whole, runs and data together, keeps working), marked so."""
    if is_remote(str(location)):
        return {"dataset": str(location)}
    named = home_relative(location)
    if named.startswith(HOME_PREFIX):
        return {"dataset": named}
    return {"dataset": os.path.relpath(os.path.abspath(location), run_dir), "dataset_relative_to": RELATIVE_TO_RUN}


def run_dataset(run_dir: Path, config: dict):
    """The dataset a run's ``config.json`` names (see :func:`dataset_reference`), on this machine: a URL
    (``RemoteLocation``) or a path; a RequestError saying to pass the dataset where none can be told."""
    from omgmg.datakit.remote import RemoteLocation

    text = config.get("dataset")
    if not isinstance(text, str):
        raise RequestError(f"{run_dir / 'config.json'} does not name the run's dataset; pass --dataset")
    if is_remote(text):
        return RemoteLocation(text)
    if config.get("dataset_relative_to") == RELATIVE_TO_RUN:
        return Path(os.path.normpath(Path(run_dir).absolute() / text))
    path = from_home_relative(text)
    if not path.is_absolute():  # omgmg 0.1.0 wrote it relative to the folder it ran in, which is not recorded
        raise RequestError(f"{run_dir / 'config.json'} names the dataset by the relative path {text}; pass --dataset")
    return path


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


def _resume_states(outs: list[Path], warn, first_save: int) -> list[dict | None]:
    """Each member's checkpoint to resume from (None: it starts afresh), all at one step.

    Members save one after another at the same step, so an interruption in between leaves some a save
    ahead: those go back to their ``latest.previous.pt``, which holds the step the others are at. An
    interruption during the first round of saves (``first_save``: its step) leaves some members with a
    checkpoint and others none: then every member starts afresh, as it would have run uninterrupted."""
    states = []
    for o in outs:
        latest = o / "checkpoints" / "latest.pt"
        has = latest.exists() or (o / "checkpoints" / "latest.previous.pt").exists()
        states.append(load_checkpoint(latest, warn=warn) if has else None)
    started = [s for s in states if s is not None]
    if not started:
        return states
    if len(started) < len(states):
        fresh = [str(o) for o, s in zip(outs, states, strict=True) if s is None]
        first_round = all(int(s["step"]) == first_save for s in started) and not any(
            previous_path(o / "checkpoints" / "latest.pt").exists() for o in outs
        )
        if not first_round:
            raise RequestError(
                f"some members' run directories hold a run and others ({', '.join(fresh)}) do not: train the "
                "members that started together again, or the new ones as a batch of their own"
            )
        for o in outs:  # the interrupted first round is dropped: every member starts over from step 0
            for name in ("latest.pt", "best.pt"):
                (o / "checkpoints" / name).unlink(missing_ok=True)
        if warn:
            warn(
                f"the first checkpoints (step {first_save}) were being written when this batch stopped, for "
                f"{len(started)} of its {len(states)} members: every member starts over from step 0"
            )
        return [None] * len(states)
    step = min(int(s["step"]) for s in states)
    for i, (o, s) in enumerate(zip(outs, states, strict=True)):
        if int(s["step"]) != step:
            previous = previous_path(o / "checkpoints" / "latest.pt")
            older = load_checkpoint(previous, fallback=False) if previous.exists() else None
            if older is None or int(older["step"]) != step:
                raise RequestError(
                    f"{o} is at step {s['step']} and another member at step {step}, with no checkpoint of "
                    "that step to go back to: resume these members one at a time"
                )
            states[i] = older
    return states


def _train(
    algo_name, dataset, cfgs, outs, evaluate: bool, progress, warn, tensorboard, device, compile_update: bool = False
) -> list[TrainResult]:
    ds = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
    with read_lock(ds.path):  # nothing replaces the dataset while the run reads it
        return _train_on(ds, algo_name, cfgs, outs, evaluate, progress, warn, tensorboard, device, compile_update)


def _train_on(
    ds: Dataset, algo_name, cfgs, outs, evaluate: bool, progress, warn, tensorboard, device, compile_update: bool
) -> list[TrainResult]:
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
    states = _resume_states(outs, warn, first_save=min(cfg.eval_every, cfg.steps))
    if states[0] is not None:
        for o, state, ident in zip(outs, states, identities, strict=True):
            _check_resume(o, state, ident, ds)
        load_members(algo, loader, states)
        start, bests = int(states[0]["step"]), [s.get("best") for s in states]
        n = int(states[0].get("log_n", 0))
        names = states[0].get("log_sums", {}).keys()
        sums = {k: torch.tensor([float(s["log_sums"][k]) for s in states], device=device) for k in names}
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
    t0 = time.perf_counter()
    try:
        for step in range(start + 1, cfg.steps + 1):
            metrics = algo.step(loader)  # (M,) tensors on the device: no host sync here
            for k, v in metrics.items():
                sums[k] = sums[k] + v if k in sums else v.clone()
            n += 1
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
                sums, n, t0 = {}, 0, time.perf_counter()
                if progress:
                    progress(step, cfg.steps, None)
            if step % cfg.eval_every == 0 or step == cfg.steps:
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
                for k in range(M):
                    ckpt = member_checkpoint(algo, loader, k, algo_name, configs[k], step, bests[k], sums, n)
                    save_checkpoint(ckpt, outs[k] / "checkpoints" / "latest.pt", keep_previous=True)
                if progress:
                    progress(step, cfg.steps, evs)
                t0 = time.perf_counter()
    finally:
        for log in logs:
            log.close()
        if evaluator is not None:
            evaluator.close()
    results = []
    for o, config, final, best in zip(outs, configs, finals, bests, strict=True):
        plot_run(o)
        names = {k: config[k] for k in ("dataset", "dataset_relative_to") if k in config}
        result = {"final": final, "best": best, "algorithm": algo_name, **names}
        atomic_write_json(o / "results.json", result)
        results.append(TrainResult(o, final, best))
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


# ----- checkpoints: one per member, each a single run's --------------------------------------------------------


def member_checkpoint(algo, loader, k: int, algo_name: str, config: dict, step: int, best, sums: dict, n: int) -> dict:
    """Member k's checkpoint, exactly what a single run with its config writes (member tensors (1, ...))."""
    return {
        "weights": member_slice(algo.state_dict(), member_keys(algo), k),
        "optim": {name: _optimizer_slice(o.state_dict(), k) for name, o in algo.optimizers.items()},
        "algorithm": algo_name,
        "config": dataclasses.asdict(algo.cfgs[k]),
        "env": algo.spec.to_json(),
        "dataset_identity": config["dataset_identity"],
        "dataset_content": config["dataset_content"],
        "step": step,
        "best": best,
        "loader": loader.state_dict(member=k),
        "torch_rng": algo.rng.generators[k].get_state(),
        "log_sums": {name: float(v[k]) for name, v in sums.items()},
        "log_n": n,
    }


def _optimizer_slice(state: dict, k: int) -> dict:
    """Member k's slice of an optimiser state over member-stacked parameters (Adam's moments are shaped as
    their parameters; its step count is shared)."""
    return {
        "state": {
            i: {key: v[k : k + 1].clone() if torch.is_tensor(v) and v.ndim > 0 else v for key, v in per_param.items()}
            for i, per_param in state["state"].items()
        },
        "param_groups": state["param_groups"],
    }


def load_members(algo, loader, states: list[dict]) -> None:
    """Stack members' checkpoints (each a single run's) into ``algo``, ``loader`` and the random streams."""
    keys = member_keys(algo)
    weights = [upgrade_weights(algo, s["weights"]) for s in states]
    algo.load_state_dict(stack_states(weights, keys))
    params = dict(algo.named_parameters(remove_duplicate=False))
    for name, opt in algo.optimizers.items():
        parts = [s["optim"][name] for s in states]
        stacked = {
            "state": {
                i: {
                    key: torch.cat([p["state"][i][key] for p in parts]) if torch.is_tensor(v) and v.ndim > 0 else v
                    for key, v in per_param.items()
                }
                for i, per_param in parts[0]["state"].items()
            },
            "param_groups": parts[0]["param_groups"],
        }
        _upgrade_optimizer(opt, stacked, params)
        opt.load_state_dict(stacked)
    for k, s in enumerate(states):
        loader.load_state_dict(s.get("loader") or {"generator": s["loader_rng"]}, member=k)  # or a 0.1.0 checkpoint
    if algo.rng.device.type == "cpu":
        algo.rng.set_state([s["torch_rng"] for s in states])
    # a CUDA run resumes its random streams seeded afresh: a CPU generator's state does not carry over


def upgrade_weights(algo, weights: dict) -> dict:
    """A single run's weights written before the member axis (omgmg < 0.3) reshaped to carry it: every
    parameter gains a leading axis of 1 (same numbers; a bias (out,) becomes (1, 1, out))."""
    expected = algo.state_dict()
    out = dict(weights)
    for key in member_keys(algo):
        v, want = weights.get(key), expected[key]
        if v is not None and v.shape[1:] != want.shape[1:] and v.numel() * algo.members == want.numel():
            out[key] = v.reshape(1, *want.shape[1:])
    return out


def _upgrade_optimizer(opt, state: dict, params: dict) -> None:
    """Adam moments of a checkpoint written before the member axis, reshaped like their parameters."""
    ordered = [p for group in opt.param_groups for p in group["params"]]
    for i, per_param in state["state"].items():
        p = ordered[int(i)]
        for key, v in per_param.items():
            if torch.is_tensor(v) and v.ndim > 0 and v.shape != p.shape and v.numel() == p.numel():
                per_param[key] = v.reshape(p.shape)


def load_policy(path) -> OfflineAlgorithm:
    """Rebuild a trained algorithm from a checkpoint (``weights_only=True``: nothing is unpickled)."""
    from omgmg.datakit.spec import EnvSpec

    state = load_checkpoint(path, fallback=False)
    cls = algorithm_class(state["algorithm"])
    algo = cls(EnvSpec.from_json(state["env"]), cls.config_cls(**state["config"]))
    algo.load_state_dict(upgrade_weights(algo, state["weights"]))
    algo.eval()
    return algo


def read_log(run_dir) -> list[dict]:
    """The run's log records (a torn last line, from a crash or a full disk, is left out)."""
    return read_jsonl(Path(run_dir) / "log.jsonl")


def plot_run(run_dir) -> Path:
    """curves.png: evaluation score and Q_tot against gradient steps, and where the run logged it, the
    mechanism (omgmg.diagnostics): how far the policy's actions sit from the data's, and how likely the
    behaviour policy finds them beside its own actions."""
    from matplotlib.figure import Figure

    log = read_log(run_dir)
    evals = [r for r in log if "eval/return" in r]
    qs = [r for r in log if "value/q_tot" in r]
    distance = next((k for k in ("policy/action_distance", "policy/action_differs") if any(k in r for r in log)), None)
    fig = Figure(figsize=(15 if distance else 10, 3.5), dpi=110)
    axes = fig.subplots(1, 3 if distance else 2)
    if evals:
        wins = evals[0].get("eval/win_rate") is not None
        axes[0].plot([r["step"] for r in evals], [eval_score(r) for r in evals], "o-")
        axes[0].set_ylabel("win rate" if wins else "return")
    axes[0].set_title("evaluation")
    if qs:
        axes[1].plot([r["step"] for r in qs], [r["value/q_tot"] for r in qs])
    axes[1].set_title("Q_tot on dataset batches")
    if distance:
        rows = [r for r in log if distance in r]
        ax = axes[2]
        label = "a' off the data (RMS / action range)" if distance.endswith("distance") else "share of a' != a"
        ax.plot([r["step"] for r in rows], [r[distance] for r in rows], color="tab:blue", label=label)
        ax.set_ylabel(label, color="tab:blue")
        ax.set_title("where the policy's actions sit")
        if any("policy/behaviour_log_prob" in r for r in rows):
            twin = ax.twinx()
            steps = [r["step"] for r in rows]
            twin.plot(steps, [r.get("policy/behaviour_log_prob") for r in rows], color="tab:red", label="log beta(a')")
            twin.plot(
                steps,
                [r.get("policy/behaviour_log_prob_data") for r in rows],
                "--",
                color="tab:red",
                label="log beta(a)",
            )
            twin.set_ylabel("behaviour log-probability", color="tab:red")
            twin.legend(fontsize=7, loc="lower right")
    for ax in axes:
        ax.set_xlabel("gradient steps")
    fig.tight_layout()
    out = Path(run_dir) / "curves.png"
    fig.savefig(out)
    return out
