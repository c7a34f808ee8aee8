"""Running a sweep: generate the datasets a spec needs and train every cell not yet finished, in a
local process pool or as Ray tasks on a cluster.

A sweep directory holds ``sweep.json`` (the spec and budget it runs) and one directory per cell,
``cells/NAME-KEY/`` with ``cell.json``, the trainer's run directory ``run/`` and, once finished,
``result.json``. A cell is finished when its ``result.json`` exists and records no error (a cell that
failed, e.g. on a damaged checkpoint, is run again by the next sweep); its directory name carries
the hash of its resolved config, so editing a spec re-runs exactly the cells it changed, and a
crashed sweep resumes (unfinished cells also resume from their own last checkpoint). One sweep runs
in a sweep directory at a time and one process trains a cell at a time (exclusive locks); local
worker processes end when the sweep's process does, however it ends.

**Packed jobs** (``members_per_job`` > 1): cells that share a dataset and an algorithm and differ only
in their seed or in a hyperparameter the algorithm batches (``member_hyperparameters``) train as the
members of one batched program (``omgmg.members``), up to ``members_per_job`` per job, locally or as
one Ray task. Each cell still gets its own run directory and result, exactly as when it runs alone.
Cells that already hold checkpoints of one step (a packed job that was interrupted) resume together as
one job again; a started cell at any other step resumes on its own.

**Pipelined:** the sweep's process generates one source's datasets at a time (a task's levels share one
behaviour policy), in the spec's order, and its cells start training as soon as they are there, while the
next source's are generated; a source whose cells have all finished is not generated again.
Generated datasets live under ``$OMGMG_HOME/experiments/data-HASH/`` (HASH over the settings the
suite's datasets depend on), shared by every sweep with the same settings. With the Ray backend, the sweep directory
and ``OMGMG_HOME`` must be on storage every node sees, and omgmg installed on every node.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import hashlib
import json
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, wait
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path

from omgmg.datakit.errors import DatasetError, OutputError, RequestError
from omgmg.datakit.outputs import OutputLock, atomic_write_json, data_home, os_errors
from omgmg.datakit.remote import is_remote
from omgmg.experiments.spec import Cell, DatasetRef, ExperimentSpec


class SweepError(RequestError):
    """A sweep that cannot run as asked (a backend option that does not apply, Ray missing)."""


# ----- datasets ------------------------------------------------------------------------------------------------


def generation_settings(suite: str, data: dict) -> dict:
    """The settings a suite's generated dataset depends on (MaMuJoCo counts transitions, SMACv2 episodes)."""
    budget = "transitions" if suite == "mamujoco" else "episodes"
    return {budget: data.get(budget), "train_steps": data.get("train_steps"), "seed": data.get("seed", 0)}


def dataset_path(ref: DatasetRef, data: dict) -> Path | str:
    """Where a cell's dataset lives: its own path (absolute) or URL, or under $OMGMG_HOME/experiments/data-HASH/."""
    if ref.path:
        return ref.path if is_remote(ref.path) else Path(ref.path).absolute()
    if ref.known:  # fetched once, whatever the sweep's generation settings
        return data_home() / "experiments" / "known" / f"{ref.known.replace('/', '--')}.zarr"
    settings = generation_settings(ref.suite, data)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return data_home() / "experiments" / f"data-{digest}" / f"{ref.suite}-{ref.task}{ref.variant}-{ref.level}.zarr"


def reference_levels(ref: DatasetRef) -> list[DatasetRef]:
    """MaMuJoCo scores are normalised by the random and expert levels' mean returns: those datasets
    are generated alongside (a random level costs no training; expert reuses the behaviour run)."""
    if ref.path or ref.known or ref.suite != "mamujoco":
        return []
    # the expert data of the same behaviour run (one observation layout, one run), whatever the rollout seed
    return [
        DatasetRef(suite=ref.suite, task=ref.task, level=lvl, obs_mode=ref.obs_mode) for lvl in ("random", "expert")
    ]


def reference_returns(cell_json: dict) -> dict[str, float] | None:
    """{level: mean return} of a cell's normalisation references (random, expert), None where the suite has
    none or their datasets are not there."""
    from omgmg.datakit import open_dataset

    means = {}
    for ref in reference_levels(DatasetRef(**cell_json["dataset"])):
        path = dataset_path(ref, cell_json["data"])
        if not path.exists():
            return None
        means[ref.level] = open_dataset(path).meta["stats"]["return"]["mean"]
    return means or None


def prepare_datasets(cells: list[Cell], data: dict, workers: int, on_note: Callable[[str], None] = print) -> dict:
    """Generate every dataset the cells need (and the normalisation references); returns ref -> path."""
    from omgmg.collectors.collect import CollectRequest, collect
    from omgmg.datakit import open_dataset

    needed: dict[DatasetRef, Path] = {}
    for cell in cells:
        for ref in [cell.dataset, *reference_levels(cell.dataset)]:
            needed.setdefault(ref, dataset_path(ref, data))
    for ref, path in needed.items():
        if is_remote(path) or path.exists():
            open_dataset(path)  # the cheap check: a damaged store stops the sweep with a clear message
            continue
        if ref.path:
            raise SweepError(f"dataset {path} does not exist; fix its path in the spec")
        if ref.known:
            from omgmg.datakit.registry import get

            on_note(f"fetching {ref.known} -> {path}")
            path.parent.mkdir(parents=True, exist_ok=True)
            get(ref.known, path)  # checked against its publisher's statistics before it is written
            continue
        on_note(f"generating {ref.suite}/{ref.task} {ref.level} -> {path}")
        variant = {k: getattr(ref, k) for k in DatasetRef.VARIANT_KEYS if getattr(ref, k) is not None}
        collect(
            CollectRequest(
                ref.suite,
                ref.task,
                ref.level,
                out=path,
                workers=workers,
                **generation_settings(ref.suite, data),
                **variant,
            ),
            on_note=on_note,
        )
    return needed


def by_data_source(cells: list[Cell]) -> list[list[Cell]]:
    """The cells grouped by where their datasets come from, in the spec's order: a task's generated
    levels share one behaviour policy (and its normalisation references), so they are generated
    together; a dataset given by path is a group of its own."""
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        if c.dataset.path or c.dataset.known:
            source = ("path", c.dataset.path) if c.dataset.path else ("known", c.dataset.known)
        else:
            source = (c.dataset.suite, c.dataset.task, c.dataset.obs_mode)
        groups.setdefault(source, []).append(c)
    return list(groups.values())


def evaluations(log: list[dict]) -> list[dict]:
    """A run log's evaluations, as a result records them: step, return and win rate (None without wins)."""
    return [
        {"step": e["step"], "return": e["eval/return"], "win_rate": e.get("eval/win_rate")}
        for e in log
        if e.get("eval/return") is not None
    ]


# ----- one cell --------------------------------------------------------------------------------------------------


def run_cells(
    cells_json: list[dict],
    cell_dirs: list[str],
    dataset: str,
    threads: int,
    device: str = "cpu",
    compile_update: bool = False,
    stores: list[str] | None = None,
) -> list:
    """Train cells that differ only in seed or in batchable hyperparameters as the members of one batched
    program (one cell: a single run), each into its own ``cell_dir``, and write each one's ``result.json``.
    With ``stores`` (a sweep at a URL: :mod:`omgmg.experiments.store`) each cell trains in a folder of this
    machine, fetched from and mirrored to its store folder.

    A cell another process holds is left to it (its result says ``skipped``); the others train."""
    import torch

    if stores:
        return _run_cells_in_store(cells_json, stores, dataset, threads, device, compile_update)
    torch.set_num_threads(threads)
    results: list[dict | None] = [None] * len(cells_json)
    held = []
    try:
        for i, (cell_json, cell_dir) in enumerate(zip(cells_json, cell_dirs, strict=True)):
            out = Path(cell_dir)
            with os_errors(out, "creating the cell directory"):
                out.mkdir(parents=True, exist_ok=True)
            try:
                held.append((i, OutputLock(out, "sweep cell").acquire()))
            except OutputError as e:  # another process trains this cell: leave it to that one, record nothing
                results[i] = {"key": Cell.from_json(cell_json).key, "cell": cell_json, "skipped": str(e)}
        for part in _by_resume_step([i for i, _ in held], cell_dirs):  # one program per step they resume at
            trained = _train_cells([cells_json[i] for i in part], [Path(cell_dirs[i]) for i in part], dataset,
                                   threads, device, compile_update)  # fmt: skip
            for i, result in zip(part, trained, strict=True):
                results[i] = result
    finally:
        for _, lock in held:
            lock.release()
    return results


def _by_resume_step(indices: list[int], cell_dirs: list[str]) -> list[list[int]]:
    """The cells of a job split into the parts that can run as one program: those whose runs resume at the
    same step (:func:`resume_step`; unstarted ones together), each unreadable one alone. A job normally is
    one part (:func:`pack_cells` packs it so); a sweep in a store packs before it sees the store's
    checkpoints, and a job mixing started and fresh cells would otherwise fail at every retry."""
    parts: dict[object, list[int]] = {}
    for i in indices:
        step = resume_step(Path(cell_dirs[i]) / "run")
        parts.setdefault(("alone", i) if step == UNREADABLE else step, []).append(i)
    return list(parts.values())


def _run_cells_in_store(cells_json, stores, dataset, threads, device, compile_update) -> list:
    """:func:`run_cells` for a sweep in a store: each cell's lease taken (or waited for), its run fetched, its
    checkpoints mirrored while it trains, its files put back and the lease let go."""
    from omgmg.experiments import store

    results: list[dict | None] = [None] * len(cells_json)
    held: list[tuple[int, store.Lease]] = []
    try:
        for i, url in enumerate(stores):
            lease = store.Lease(url)
            holder = lease.acquire(wait=1.5 * store.lease_seconds())  # a lost machine's lease runs out first
            if holder:  # trained by another machine now: left to it
                cell = Cell.from_json(cells_json[i])
                results[i] = {"key": cell.key, "cell": cells_json[i], "skipped": f"in use by {holder}"}
            else:
                held.append((i, lease))
        todo = [i for i, _ in held]
        local = {i: store.node_dir(stores[i]) for i in todo}
        for i in todo:
            store.pull_run(stores[i], local[i])  # a cell begun on a machine that was lost resumes here
        if todo:
            pairs = [(stores[i], local[i]) for i in todo]
            with store.CheckpointMirror(pairs, leases=[lease for _, lease in held]):
                trained = run_cells([cells_json[i] for i in todo], [str(local[i]) for i in todo], dataset, threads,
                                    device, compile_update)  # fmt: skip
            for i, result in zip(todo, trained, strict=True):
                results[i] = result
                if not result.get("skipped"):
                    store.push_cell(stores[i], local[i])
    finally:
        for _, lease in held:
            lease.release()
    return results


def _train_cells(
    cells_json: list[dict], outs: list[Path], dataset: str, threads: int, device: str, compile_update: bool
) -> list[dict]:
    from omgmg.algos import algorithm_class
    from omgmg.datakit import open_dataset
    from omgmg.diagnostics import divergence_bound, returns_to_go
    from omgmg.rundir import eval_score, read_log
    from omgmg.trainer import train

    cells = [Cell.from_json(c) for c in cells_json]
    for out, cell_json in zip(outs, cells_json, strict=True):
        atomic_write_json(out / "cell.json", cell_json)
    t0 = time.time()
    where = {"device": _device_name(device), "node": _node_name()}  # which machine and device trained it
    results = [
        {"key": c.key, "cell": j, "dataset_path": str(dataset), **where} for c, j in zip(cells, cells_json, strict=True)
    ]
    if len(cells) > 1:
        for r in results:
            r["packed_with"] = len(cells)  # members of one batched job (wall_s is the job's)
    warnings: list[str] = []  # e.g. a damaged checkpoint set aside: the sweep shows them, the result keeps them
    try:
        ds = open_dataset(dataset)
        content = ds.content_sha256()
        cls = algorithm_class(cells[0].algorithm).config_cls
        cfgs = [cls(**{**c.config, "torch_threads": threads}) for c in cells]
        runs = [out / "run" for out in outs]
        trained = train(cells[0].algorithm, ds, cfgs if len(cfgs) > 1 else cfgs[0], runs if len(runs) > 1 else runs[0],
                        device=device, compile_update=compile_update, warn=warnings.append,
                        evaluate=cells[0].dataset.evaluable)  # fmt: skip
        trained = trained if isinstance(trained, list) else [trained]
    except Exception as e:  # a job that crashes is recorded (and retried by the next sweep), the sweep goes on
        for r in results:  # failed: not diverged (the report counts the two apart)
            r.update(error=f"{type(e).__name__}: {e}", diverged=False, score=None)
    else:
        for cell, out, res, result in zip(cells, outs, trained, results, strict=True):
            # diverged: Q_tot beyond twice the largest discounted return any transition of the data collected
            bound = divergence_bound(returns_to_go(ds, cell.config.get("gamma", 0.99)))
            log = read_log(out / "run")
            q = [r["value/q_tot"] for r in log if "value/q_tot" in r]
            losses = [v for r in log for k, v in r.items() if k.startswith("loss/")]
            diverged = any(not math.isfinite(v) or abs(v) > bound for v in q) or any(
                not math.isfinite(v) for v in losses
            )
            final = res.final
            result.update(
                score=eval_score(final),
                eval_return=final.get("eval/return"),
                win_rate=final.get("eval/win_rate"),
                best_score=eval_score(res.best) if res.best else None,  # selected on evaluation returns
                best_win_rate=res.best.get("eval/win_rate") if res.best else None,
                best_step=res.best.get("step") if res.best else None,
                q_tot=q[-1] if q else None,
                q_bound=bound,
                diverged=diverged,
                steps=final.get("step"),
                resumed_from=res.resumed_from,  # > 0: continued from a checkpoint (after an interruption, a lost node)
                dataset_stats=ds.meta.get("stats"),
                dataset_content=content,  # what --reuse checks: the same request can make other data elsewhere
                reference_returns=reference_returns(cell.to_json()),  # so a report needs no dataset
                evals=evaluations(log),  # and no run log for its curves
                mechanism=mechanism(log),
            )
    for out, result in zip(outs, results, strict=True):
        result["wall_s"] = time.time() - t0
        own = [w for w in warnings if str(out) in w or not any(str(o) in w for o in outs)]  # its own, and the job's
        if own:
            result["warnings"] = own
        atomic_write_json(out / "result.json", result)
    return results


MECHANISM = ("policy/action_distance", "policy/action_differs", "policy/behaviour_log_prob",
             "policy/behaviour_log_prob_data")  # fmt: skip
"""Where a run's policy acts against the data (``docs/omgmg.md``, "The mechanism, measured"), kept in its result."""


def mechanism(log: list[dict], last: int = 10) -> dict[str, float]:
    """The mean of each :data:`MECHANISM` metric over the run's last ``last`` logged values (one value is a
    single diagnosed batch: noisy), for the algorithms that log them (OMGMG, OMIGA); empty otherwise."""
    out = {}
    for name in MECHANISM:
        values = [r[name] for r in log if r.get(name) is not None][-last:]
        if values:
            out[name] = sum(values) / len(values)
    return out


def _node_name() -> str:
    """This machine's name, and in a Ray task its Ray node (several nodes can share a machine)."""
    name = socket.gethostname()
    try:
        import ray

        if ray.is_initialized():
            return f"{name}/ray-node-{ray.get_runtime_context().get_node_id()[:8]}"
    except Exception:  # noqa: BLE001 - no Ray, or not in a task: the host name alone
        pass
    return name


def _device_name(device: str) -> str:
    """The device a job trains on, as the report records it: cpu, or cuda:INDEX with the GPU's name."""
    try:
        from omgmg.machine import resolve_device

        dev = resolve_device(device)
    except Exception:  # noqa: BLE001 - the job reports the same error itself
        return str(device)
    if dev.type == "cuda":
        import torch

        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return dev.type


UNREADABLE = -1  # a started run whose checkpoint step cannot be read


def resume_step(run_dir: Path) -> int | None:
    """The step a run directory resumes from: None when it holds no checkpoint (it starts afresh),
    ``UNREADABLE`` when its checkpoints cannot be read here."""
    from omgmg.datakit.checkpoints import load_checkpoint
    from omgmg.datakit.errors import CheckpointError

    checkpoints = run_dir / "checkpoints"
    if not any(checkpoints.glob("latest*.pt")):
        return None
    try:
        return int(load_checkpoint(checkpoints / "latest.pt")["step"])
    except (CheckpointError, KeyError, TypeError, ValueError, OSError):
        return UNREADABLE


def pack_cells(cells: list[Cell], sweep_dir: Path, members_per_job: int) -> list[list[Cell]]:
    """Jobs of cells: those sharing a dataset, an algorithm and every setting but the seed and the
    algorithm's ``member_hyperparameters`` go together, up to ``members_per_job`` per job. Cells whose runs
    have started go together only with cells whose checkpoints hold the same step (:func:`resume_step`), so
    an interrupted job resumes as the one program it was; a started cell whose step cannot be read resumes
    alone (its own run then says what is wrong with it)."""
    from omgmg.algos import algorithm_class

    groups: dict[str, list[Cell]] = {}
    jobs: list[list[Cell]] = []
    for c in cells:
        step = resume_step(cell_dir(sweep_dir, c) / "run")
        if members_per_job <= 1 or step == UNREADABLE:
            jobs.append([c])
            continue
        free = {"seed", *algorithm_class(c.algorithm).member_hyperparameters}
        shared = {k: v for k, v in c.config.items() if k not in free}
        key = json.dumps([c.algorithm, dataclasses.asdict(c.dataset), c.data, shared, step], sort_keys=True)
        groups.setdefault(key, []).append(c)
    for group in groups.values():
        jobs += [group[i : i + members_per_job] for i in range(0, len(group), members_per_job)]
    return jobs


# ----- the sweep -------------------------------------------------------------------------------------------------


def cell_dir(sweep_dir: Path, cell: Cell) -> Path:
    return sweep_dir / "cells" / cell.dirname


def finished(sweep_dir: Path, cell: Cell) -> bool:
    """A cell is finished when it has a result that records no error."""
    path = cell_dir(sweep_dir, cell) / "result.json"
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):  # no result yet, or a damaged one: run the cell (again)
        return False
    return isinstance(result, dict) and "error" not in result  # valid JSON but not a result: damaged too


def pending_cells(sweep_dir: Path, cells: list[Cell]) -> list[Cell]:
    """Cells without a good result (a result written for another config lives under another name)."""
    return [c for c in cells if not finished(sweep_dir, c)]


def load_results(sweep_dir) -> tuple[dict, list[dict]]:
    """A sweep directory's ``sweep.json`` and the results of its current cells (what reports and ``--reuse``
    read)."""
    sweep_dir = Path(sweep_dir)
    meta_path = sweep_dir / "sweep.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{sweep_dir} is not a sweep directory (no sweep.json); run `omgmg sweep` first")
    meta = _read_json(meta_path, "run the sweep again to rewrite it")
    results = [
        _read_json(p, "delete it and run the sweep again to retrain that cell")
        for p in sorted((sweep_dir / "cells").glob("*/result.json"))
    ]
    if "cells" in meta:  # cells left from an earlier version of the spec are not part of this sweep
        current = set(meta["cells"])
        results = [r for r in results if r["key"] in current]
    return meta, results


def _read_json(path: Path, fix: str) -> dict:
    """A sweep's JSON file, or a one-line error naming it and the fix where it is damaged."""
    with os_errors(path, "reading"):
        text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise DatasetError(f"{path} is damaged (not a JSON object as omgmg writes it); {fix}")
    return data


def reusable_results(sweep_dir: Path, sources) -> dict[str, dict]:
    """The finished results that other sweeps offer this one: ``{cell key: {"sweep", "cell", "result"}}``.

    ``sources``: sweep directories, or results exported from one (``omgmg report --with-results``). A
    failed cell, or a result whose cell description does not hash to its key, is never offered."""
    offered: dict[str, dict] = {}
    for source in sources:
        if is_remote(str(source)):
            from omgmg.experiments.store import staging

            raise SweepError(f"--reuse {source}: name a sweep directory on this machine, e.g. this machine's copy "
                             f"of that sweep's results, {staging(str(source))} (`omgmg sweep SPEC --out {source} "
                             "--list` fetches it)")  # fmt: skip
        source = Path(source)
        if source.resolve() == Path(sweep_dir).resolve():
            raise SweepError(f"--reuse {source} is this sweep's own directory; name another sweep's")
        try:
            meta, results = load_results(source)
        except FileNotFoundError:
            raise SweepError(
                f"--reuse {source}: not a sweep's directory (no sweep.json); name a folder a sweep ran in or one "
                "that `omgmg report --with-results` wrote"
            ) from None
        for result in results:
            try:
                cell = Cell.from_json(result["cell"])
            except (KeyError, TypeError, ValueError):
                continue  # not a result this omgmg can read: never guessed at
            if result.get("error") or result.get("skipped") or cell.key != result.get("key"):
                continue
            offered.setdefault(cell.key, {"sweep": meta.get("name"), "cell": cell.dirname, "result": result})
    return offered


def reuses(sweep_dir: Path, cell: Cell, offered: dict[str, dict]) -> bool:
    """Whether ``cell``'s result is offered (:func:`reusable_results`) and this sweep has neither finished it
    nor started it (a started cell keeps its own run). The sweep takes it only if it was trained on the data
    this machine holds for the cell (:func:`trained_on`)."""
    return cell.key in offered and not finished(sweep_dir, cell) and not (cell_dir(sweep_dir, cell) / "run").exists()


class DataContent:
    """The content of the datasets at some paths, each read once: a fingerprint over the chunks' checksums
    (:meth:`Dataset.content_sha256`) and the statistics the dataset records."""

    def __init__(self):
        self._seen: dict[str, tuple[str, dict] | None] = {}

    def of(self, path) -> tuple[str, dict] | None:
        """(fingerprint, statistics) of the dataset at ``path``, None where there is none (yet)."""
        key = str(path)
        if key not in self._seen:
            from omgmg.datakit import open_dataset

            if not is_remote(key) and not Path(key).exists():
                return None  # not generated yet: asked again once it is
            ds = open_dataset(path)
            self._seen[key] = (ds.content_sha256(), ds.meta.get("stats"))
        return self._seen[key]


def trained_on(result: dict, path, content: DataContent) -> bool | None:
    """Whether ``result`` was trained on the data now at ``path``, None where that dataset is not here.

    A cell's key names its data by how it is made (the generation request, or the path), not by its bytes:
    the same request on another machine (another CPU, another MuJoCo release) trains another behaviour
    policy and collects other episodes. A result records the content fingerprint of the data it was trained
    on (``dataset_content``); one written before omgmg recorded it is judged by the dataset statistics it
    kept (episodes, transitions, returns: equal only for the same episodes)."""
    here = content.of(path)
    if here is None:
        return None
    fingerprint, stats = here
    if result.get("dataset_content") is not None:
        return result["dataset_content"] == fingerprint
    return result.get("dataset_stats") is not None and result["dataset_stats"] == stats


def reuse_results(
    sweep_dir: Path, cells: list[Cell], offered: dict[str, dict], paths: dict, on_note: Callable[[str], None] = print
) -> dict[str, dict]:
    """Record as this sweep's the results other sweeps offer (:func:`reusable_results`) for the same cells,
    instead of training them again.

    A cell is the same when its key is: the same algorithm, fully resolved config (seed and budget included)
    and dataset (for a generated one, the same generation request; for a path, the same path, as a sweep's
    own finished cells are), and its result was trained on the bytes this machine holds at ``paths[dataset]``
    (:func:`trained_on`): a result from other data is trained again, with a note. The default point of one
    knob's selection is such a cell in the next knob's. The result is copied with this sweep's cell
    description (its own grid label) and ``reused_from`` naming the source sweep and cell; runs and
    checkpoints stay where they are. Returns ``{cell key: reused_from}``."""
    reused, other_data = {}, {}
    content = DataContent()
    for c in cells:
        if not reuses(sweep_dir, c, offered):
            continue
        if not trained_on(offered[c.key]["result"], paths[c.dataset], content):
            other_data.setdefault(str(paths[c.dataset]), []).append(offered[c.key]["sweep"])
            continue
        where = {"sweep": offered[c.key]["sweep"], "cell": offered[c.key]["cell"]}
        out = cell_dir(sweep_dir, c)
        with os_errors(out, "recording a reused result in"):
            out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "cell.json", c.to_json())  # result.json last: the cell is finished only then
        atomic_write_json(out / "result.json", offered[c.key]["result"] | {"cell": c.to_json(), "reused_from": where})
        reused[c.key] = where
    for path, sources in other_data.items():
        what = "1 cell's result" if len(sources) == 1 else f"{len(sources)} cells' results"
        on_note(f"{what} offered by {', '.join(sorted(set(sources)))} not taken: trained on other data than "
                f"{path} holds (another fingerprint; made on another machine?): trained here")  # fmt: skip
    return reused


def cell_name(cell: Cell) -> str:
    """``SUITE/NAME-KEY``: what ``--only`` patterns match, e.g. ``smacv2/*`` or ``*-omgmg-seed0-*``."""
    return f"{cell.dataset.suite or 'dataset'}/{cell.dirname}"


def select_cells(cells: list[Cell], patterns: list[str] | tuple[str, ...] | None) -> list[Cell]:
    """The cells whose :func:`cell_name` matches any of the glob ``patterns`` (a pattern without wildcards
    matches anywhere in the name, e.g. ``zerg``; all cells when there are no patterns),
    so that one spec can be split across machines: each runs a part into its own directory, and their
    results merge into one report (``omgmg report --with-results``). A pattern that matches no cell is an
    error, not an empty sweep."""
    if not patterns:
        return list(cells)
    patterns = [p if any(ch in p for ch in "*?[") else f"*{p}*" for p in patterns]  # a plain word: anywhere
    matches = {p: {c.key for c in cells if fnmatch.fnmatchcase(cell_name(c), p)} for p in patterns}
    for pattern, keys in matches.items():
        if not keys:
            suites = sorted({f"'{c.dataset.suite or 'dataset'}/*'" for c in cells})
            examples = ", ".join([*suites, f"'*-{cells[0].algorithm}-seed{cells[0].seed}-*'"])
            raise SweepError(
                f"--only {pattern!r} matches none of the spec's {len(cells)} cells; patterns are globs over "
                f"SUITE/NAME as `omgmg sweep --list` prints them, e.g. {examples}"
            )
    selected = set().union(*matches.values())
    return [c for c in cells if c.key in selected]


def held_defaults(path: Path, cells: list[str], today: dict) -> dict:
    """The defaults a selection holds its grid against: those its ``sweep.json`` recorded when this sweep
    (these ``cells``) first ran, so that resuming it after the defaults followed its own pick does not hold
    the winner against itself; ``today``'s for a new sweep or one whose cells changed."""
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        return today
    same = isinstance(before, dict) and before.get("cells") == cells
    return before["defaults"] if same and isinstance(before.get("defaults"), dict) else today


def run_sweep(
    spec: ExperimentSpec,
    sweep_dir,
    *,
    smoke: bool = False,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    on_note: Callable[[str], None] = print,
    on_start: Callable[[int, int, dict[str, float]], None] | None = None,
    on_done: Callable[[Cell, dict], None] | None = None,
    on_running: Callable[[list[tuple[Cell, int]]], None] | None = None,
    running_every: float = 30.0,
    members_per_job: int = 1,
    device: str = "cpu",
    compile_update: bool = False,
    threads: int | None = None,
    only: list[str] | tuple[str, ...] | None = None,
    gpus_per_job: float | None = None,
    reuse: list | tuple = (),
) -> list[dict]:
    """Run every unfinished cell of ``spec`` (of those ``only`` selects, :func:`select_cells`),
    ``members_per_job`` cells per batched job at most (see the module docstring), training on ``device``
    (``compile_update``: see :func:`omgmg.trainer.train`) with ``threads`` torch threads per job (default: the
    CPU count divided by ``workers``, on Ray 1); returns the results of the selected cells. ``sweep.json``
    lists all of the spec's cells either way, so a report of a part says that it is one. ``on_running`` is
    told every ``running_every`` seconds which cells are training and at what step (from their logs), so a
    long cell is never silent. ``on_start(cells, finished, started)`` is told before any training, with the
    share of its steps each interrupted cell resumes past (``{cell key: share}``), so progress counted in
    cells' steps does not mistake resumed work for speed. ``reuse``: other sweeps' directories whose results for
    the same cells are taken instead of training them (:func:`reuse_results`)."""
    if backend not in ("local", "ray"):
        raise SweepError(f"unknown backend {backend!r}: choose local or ray")
    if workers is not None and workers < 1:
        raise SweepError(f"workers must be a positive number, got {workers}")
    if members_per_job < 1:
        raise SweepError(f"members_per_job must be a positive number, got {members_per_job}")
    if threads is not None and threads < 1:
        raise SweepError(f"threads must be a positive number, got {threads}")
    gpus = ray_gpus(device, gpus_per_job, backend)
    if backend == "local":  # a device this machine lacks is one line now, not an error in every cell later
        from omgmg.machine import resolve_device

        resolve_device(device)
    all_cells = spec.cells(smoke)
    cells = select_cells(all_cells, only)  # a pattern that matches nothing stops here, before anything is written
    url = None
    if reuse and is_remote(str(sweep_dir)):
        raise SweepError("--reuse records results in a sweep directory on this machine; a sweep whose results go to "
                         "a URL does not take them (run it without --reuse)")  # fmt: skip
    offered = reusable_results(sweep_dir, reuse)  # a bad source stops here, before anything is written
    if is_remote(str(sweep_dir)):  # results and runs at a URL; this machine keeps a copy of the results
        from omgmg.experiments import store

        url = str(sweep_dir).rstrip("/")
        if not url.startswith(("s3://", "gs://")):
            raise SweepError(f"{url}: a sweep's results go to an object store (s3://, gs://); this location is "
                             "read-only for omgmg or commits every file (hf://)")  # fmt: skip
        try:
            store.lease_seconds()  # a bad setting is one line here, not an error in every cell
        except ValueError as e:
            raise SweepError(str(e)) from None
        sweep_dir = store.staging(url)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        store.pull_results(url, sweep_dir)
    sweep_dir = Path(sweep_dir).absolute()  # a job runs where its worker's cwd is: Ray's is not ours
    if url is None:
        _check_sweep_folder(sweep_dir)
    with os_errors(sweep_dir, "creating the sweep directory"):
        sweep_dir.mkdir(parents=True, exist_ok=True)
    with OutputLock(sweep_dir, "sweep"):
        seeds, budget, data = spec.resolved(smoke)
        meta = {
            "name": spec.name,
            "title": spec.title,
            "layout": spec.layout,
            "smoke": smoke,
            "seeds": seeds,
            "budget": budget,
            "data": data,
            "algorithms": spec.algorithms,
            "source": spec.source,
            "grid": spec.grid[0] if spec.grid else None,
            **({"published": spec.published} if spec.published else {}),
        }
        meta["cells"] = [c.key for c in all_cells]  # the report aggregates these only, not cells of an earlier edit
        if spec.layout == "selection":  # what the report's rule needs
            meta["defaults"] = held_defaults(sweep_dir / "sweep.json", meta["cells"], spec.knob_defaults())
            meta["suite_datasets"] = spec.suite_datasets()
        atomic_write_json(sweep_dir / "sweep.json", meta)
        if url:
            store.put(url, "sweep.json", (sweep_dir / "sweep.json").read_bytes())
        workers = workers or max(1, (os.cpu_count() or 1))
        threads = threads or (max(1, (os.cpu_count() or 1) // workers) if backend == "local" else 1)
        if backend == "local" and device == "cpu":
            from omgmg.machine import busy_cpu_note

            if note := busy_cpu_note(threads):  # judged before generating data, which loads the CPU itself
                on_note(note)
        if offered:  # their data is generated first: a result is taken only if trained on these bytes
            candidates = [c for c in cells if reuses(sweep_dir, c, offered)]
            paths = prepare_datasets(candidates, data, workers, on_note) if candidates else {}
            reused = reuse_results(sweep_dir, candidates, offered, paths, on_note)
            if reused:
                sources = sorted({where["sweep"] for where in reused.values()})
                what = "1 cell's result" if len(reused) == 1 else f"{len(reused)} cells' results"
                on_note(f"{what} taken from {', '.join(sources)} (the same algorithm, config, seed and data): not "
                        "trained again")  # fmt: skip
        todo = pending_cells(sweep_dir, cells)
        if on_start:
            on_start(len(cells), len(cells) - len(todo), _resumed_shares(sweep_dir, todo))

        prepare_datasets([c for c in todo if c.dataset.path], data, workers, on_note)  # a wrong path stops it now

        def ready_jobs():
            """One source's datasets generated at a time, here, each yielding the jobs it makes ready: they
            train while the next source's datasets are generated. Sources with nothing left to train are
            not generated (their finished cells recorded the references they need)."""
            for group in by_data_source(todo):
                paths = prepare_datasets(group, data, workers, on_note)
                yield [
                    ([c.to_json() for c in job], [str(cell_dir(sweep_dir, c)) for c in job],
                     str(paths[job[0].dataset]), threads, device, compile_update,
                     [f"{url}/cells/{c.dirname}" for c in job] if url else None)
                    for job in pack_cells(group, sweep_dir, members_per_job)
                ]  # fmt: skip

        def done(job, results) -> None:
            for cell_json, out, result in zip(job[0], job[1], results, strict=True):
                out = Path(out)
                if not (out / "result.json").exists():  # trained on a node that does not share this disk:
                    with os_errors(out, "recording a cell's result in"):  # its result came back with the task
                        out.mkdir(parents=True, exist_ok=True)
                        atomic_write_json(out / "cell.json", cell_json)
                        atomic_write_json(out / "result.json", result)
                if on_done:
                    on_done(Cell.from_json(cell_json), result)

        def trained_in(c: Cell) -> Path:  # where a cell's run grows (on this machine, at least)
            return store.node_dir(f"{url}/cells/{c.dirname}") if url else cell_dir(sweep_dir, c)

        with _watching(sweep_dir, todo, trained_in, on_running, running_every):
            if backend == "local":
                _run_local(ready_jobs(), workers, address, done)
            else:  # a packed job fills one device
                _run_ray(ready_jobs(), workers, address, done, gpus=gpus)
        return [
            json.loads((cell_dir(sweep_dir, c) / "result.json").read_text())
            for c in cells
            if (cell_dir(sweep_dir, c) / "result.json").exists()
        ]


def _check_sweep_folder(path: Path) -> None:
    """A sweep writes into a new or empty folder, or into one a sweep wrote (it holds ``sweep.json``, written
    before anything else, or at least its ``cells``): its reports would replace a file of the same name in
    someone else's folder."""
    if not path.is_dir() or (path / "sweep.json").exists():
        return
    theirs = sorted(e.name for e in path.iterdir() if not _a_sweeps_own(e.name))
    if theirs:
        listed = ", ".join(theirs[:3]) + (f" and {len(theirs) - 3} more" if len(theirs) > 3 else "")
        raise SweepError(f"{path} holds files no sweep wrote ({listed}) and no sweep.json: give --out a new or "
                         "empty folder, or the folder of an earlier run of this sweep")  # fmt: skip


def _a_sweeps_own(name: str) -> bool:
    """Whether a sweep folder's entry ``name`` is one a sweep writes before its ``sweep.json`` or without it:
    its cells, or the temporary file of an interrupted write of ``sweep.json``."""
    return name == "cells" or (name.startswith(".sweep.json.") and name.endswith(".tmp"))


def _resumed_shares(sweep_dir: Path, cells: list[Cell]) -> dict[str, float]:
    """``{cell key: share of its steps}`` of the cells whose runs resume part-way."""
    shares = {}
    for c in cells:
        step = resume_step(cell_dir(sweep_dir, c) / "run")
        if step is not None and step > 0:
            shares[c.key] = min(1.0, step / c.config["steps"])
    return shares


@contextmanager
def _watching(sweep_dir: Path, cells: list[Cell], trained_in, on_running, every: float):
    """While the body runs, tell ``on_running`` every ``every`` seconds [(cell, step)] of the cells that are
    training: no result yet and a run log (in ``trained_in(cell)``) written since the sweep began, whichever
    process trains them (a cell started by an earlier sweep and waiting for its turn is not training)."""
    if on_running is None:
        yield
        return
    stop = threading.Event()
    began = time.time() - 1.0  # file times may be rounded down

    def watch():
        while not stop.wait(every):
            running = []
            for c in cells:
                log = trained_in(c) / "run" / "log.jsonl"
                done = (cell_dir(sweep_dir, c) / "result.json").exists()
                step = None if done or _written_before(log, began) else last_step(log)
                if step is not None:
                    running.append((c, step))
            if running:
                on_running(running)

    thread = threading.Thread(target=watch, daemon=True, name="sweep-progress")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _written_before(path: Path, when: float) -> bool:
    """Whether ``path`` was last written before the time ``when`` (False where it cannot be told)."""
    try:
        return path.stat().st_mtime < when
    except OSError:
        return False


def last_step(log: Path) -> int | None:
    """The step of a run log's last complete line (its tail only is read), None where there is none yet."""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            start = max(0, f.tell() - 65536)
            f.seek(start)
            lines = f.read().split(b"\n")
    except OSError:
        return None
    for line in reversed(lines[1:] if start > 0 else lines):  # a tail's first line may be cut
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def _run_local(stages, workers, address, done) -> None:
    if address:
        raise SweepError("<<address=...>> applies to the ray backend only (<<backend=ray>>)")
    if workers == 1:  # in this process: each source's datasets, then its cells
        for jobs in stages:
            for job in jobs:
                done(job, run_cells(*job))
        return
    context = get_context("spawn")
    stop = context.Event()
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_stop_with_sweep, initargs=(os.getpid(), stop)
    ) as pool:
        try:
            _pipeline(stages, lambda job: pool.submit(run_cells, *job), done)
        except BaseException:  # interrupted or failed: the running cells stop now (each resumes from its last
            stop.set()  # checkpoint), instead of the pool's shutdown waiting for them to finish
            raise


def _pipeline(stages, submit: Callable, done: Callable) -> None:
    """Submit each stage's jobs (``submit(job)`` -> a future) as soon as the stage is ready, i.e. while this
    process generates the next stage's datasets; report each job the moment it finishes (``done`` runs in
    the thread that sees it finish, one call at a time). The first failure, a job's or ``done``'s, cancels
    the jobs not yet started and is raised here at once (the local backend then stops the running ones)."""
    lock = threading.Lock()
    futures: list = []
    failures: list[BaseException] = []

    def report(job, future) -> None:
        with lock:
            if failures or future.cancelled():
                return
            try:
                done(job, future.result())
            except BaseException as e:  # noqa: BLE001 - re-raised in the sweep's thread below
                failures.append(e)

    try:
        for jobs in stages:
            for job in jobs:
                future = submit(job)
                future.add_done_callback(functools.partial(report, job))
                futures.append(future)
            if failures:
                break
        remaining = set(futures)
        while remaining and not failures:  # a failure stops the sweep now, not when every job has run
            _, remaining = wait(remaining, timeout=1.0)
        if failures:
            raise failures[0]
    except BaseException:
        for f in futures:
            f.cancel()
        raise


def _stop_with_sweep(parent: int, stop) -> None:
    """In a pool worker: exit as soon as the sweep's process is gone (killed, however) or sets ``stop``
    (interrupted), so no orphan keeps training a cell beside the rerun and an interrupted sweep does not
    wait for its cells to finish. Whatever the worker was writing is crash-safe."""

    def watch() -> None:
        while os.getppid() == parent and not stop.is_set():
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="omgmg-sweep-watch", daemon=True).start()


def ray_gpus(device: str, gpus_per_job: float | None, backend: str) -> float:
    """The GPUs a Ray job asks for: none on the CPU; on CUDA one per job, or ``gpus_per_job`` (a fraction
    lets several packed jobs share a GPU, e.g. 0.5: two per GPU; Ray places them)."""
    cuda = str(device).startswith("cuda")
    if gpus_per_job is None:
        return 1.0 if cuda else 0.0
    if backend != "ray":
        raise SweepError("<<gpus_per_job=...>> applies to the ray backend only (<<backend=ray>>)")
    if not cuda:
        raise SweepError("<<gpus_per_job=...>> needs a CUDA device: add <<device=cuda>>")
    if not (0 < gpus_per_job <= 1 or float(gpus_per_job).is_integer() and gpus_per_job > 0):
        raise SweepError(f"gpus_per_job is a fraction of one GPU (0 < x <= 1) or a whole number, got {gpus_per_job}")
    return float(gpus_per_job)


def _run_ray(stages, workers, address, done, gpus: float) -> None:
    try:
        import ray
    except ImportError:
        raise SweepError("the ray backend needs Ray: pip install 'omgmg[ray]'") from None
    started = not ray.is_initialized()
    if started:
        import warnings

        with warnings.catch_warnings():
            # Ray starts its processes with subprocess (fork, then exec at once), which JAX's fork hook, loaded
            # when the driver generated SMAX data, cannot tell from a bare fork: its deadlock warning is moot
            warnings.filterwarnings("ignore", r"os\.fork\(\) was called", RuntimeWarning)
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1, num_gpus=gpus)(run_cells)
        _pipeline(stages, lambda job: remote.remote(*job).future(), done)
    finally:
        if started:
            ray.shutdown()
