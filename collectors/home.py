"""What omgmg keeps in ``$OMGMG_HOME`` (default ``~/.omgmg``), listed and pruned by ``omgmg-data home``.

    for entry in home_entries():
        print(entry.kind, entry.name, human_bytes(entry.bytes))

Two kinds of things live there:

- **behaviour runs** (``runs/SUITE/TASK/BACKEND/ALGO/seedS-HASH``, :mod:`omgmg.collectors.runs`): the
  trained policy's checkpoints, its log and curve, and every episode it generated while training (the
  replay store, kept as an unfinished write so that a longer run can extend it). The replay is most of a
  run's size (a 5M-step SMAX run: about 2.4 GB) and is what the medium-replay level is collected from;
- **datasets** collected without ``--out`` (``datasets/NAME.zarr``), and collections interrupted before they
  finished (``datasets/.NAME.zarr.partial``), which the same command resumes.

Pruning removes whole entries, only ones omgmg wrote (a behaviour run's ``config.json``, an omgmg dataset's
metadata) and never one another process holds (its lock): a pruned run is trained again, from scratch, the
next time a collection needs it.
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass
from pathlib import Path

from omgmg.collectors.runs import checkpoint_paths
from omgmg.datakit.dataset import partial_path
from omgmg.datakit.errors import OutputError
from omgmg.datakit.outputs import OutputLock, data_home, is_omgmg_dataset, remove_output

KINDS = ("run", "dataset", "unfinished")
"""Behaviour runs, finished datasets, unfinished collections."""


@dataclass
class HomeEntry:
    kind: str  # one of KINDS
    path: Path
    name: str  # the path relative to the home folder
    bytes: int
    detail: str
    replay_bytes: int = 0  # a run's training episodes (medium-replay's source)

    def lock(self) -> OutputLock:
        """The lock the process that writes this entry holds (a run's directory, a dataset's final path)."""
        if self.kind == "run":
            return OutputLock(self.path, "behaviour run")
        target = self.path.with_name(self.path.name[1 : -len(".partial")]) if self.kind == "unfinished" else self.path
        return OutputLock(target, "dataset")

    def in_use(self) -> bool:
        try:
            with self.lock():
                return False
        except OutputError:
            return True


def folder_bytes(path: Path) -> int:
    """Bytes on disk of every file under ``path`` (links not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def is_behaviour_run(path: Path) -> bool:
    """A behaviour run's directory: ``config.json`` naming a behaviour algorithm and a task."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("algorithm") in ("mappo", "happo") and "task" in config


def run_summary(root: Path) -> tuple[str, int]:
    """(a line about the behaviour run at ``root``, the bytes of its training episodes)."""
    config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    checkpoints = checkpoint_paths(root)
    steps = int(checkpoints[-1].stem.split("_")[1]) if checkpoints else 0
    replay = partial_path(root / "replay.zarr")
    replay_bytes = folder_bytes(replay) if replay.exists() else 0
    line = f"{config['algorithm']}, seed {config['config'].get('seed')}, {steps:,} env steps trained"
    return line, replay_bytes


def home_entries(home: Path | None = None) -> list[HomeEntry]:
    """Every behaviour run and dataset in the home folder, runs first, each with its size."""
    home = Path(home or data_home())
    entries: list[HomeEntry] = []
    runs = home / "runs"
    if runs.is_dir():
        for config in sorted(runs.glob("*/*/*/*/*/config.json")):
            root = config.parent
            if not is_behaviour_run(root):
                continue
            detail, replay = run_summary(root)
            entries.append(HomeEntry("run", root, str(root.relative_to(home)), folder_bytes(root), detail, replay))
    datasets = home / "datasets"
    if datasets.is_dir():
        for path in sorted(datasets.iterdir()):
            if not path.is_dir() or not is_omgmg_dataset(path):
                continue
            unfinished = path.name.startswith(".") and path.name.endswith(".partial")
            kind = "unfinished" if unfinished else "dataset"
            detail = "an interrupted collection: the same command resumes it" if unfinished else "collected dataset"
            entries.append(HomeEntry(kind, path, str(path.relative_to(home)), folder_bytes(path), detail))
    return entries


def select(entries: list[HomeEntry], kinds=KINDS, patterns: tuple[str, ...] = ()) -> list[HomeEntry]:
    """The entries of ``kinds`` whose name matches one of the glob ``patterns`` (all when none is given; a
    pattern without wildcards matches anywhere in the name)."""
    globs = [p if any(c in p for c in "*?[") else f"*{p}*" for p in patterns]
    return [e for e in entries if e.kind in kinds and (not globs or any(fnmatch.fnmatch(e.name, g) for g in globs))]


def prune(entries: list[HomeEntry]) -> tuple[int, list[HomeEntry]]:
    """Remove ``entries`` (each under its lock, so nothing another process is writing); returns the bytes
    freed and the entries left because another process holds them."""
    freed, busy = 0, []
    for e in entries:
        try:
            with e.lock():
                remove_output(e.path)
        except OutputError:
            busy.append(e)
            continue
        freed += e.bytes
        if e.kind == "run":  # the empty seed/algorithm/... folders above it go too
            parent = e.path.parent
            while parent != e.path.parents[4] and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
    return freed, busy
