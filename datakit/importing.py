"""Importing another format's dataset: what every source format tells (:class:`Imported`) and the one
tail that writes it (:func:`write_imported`).

An importer holds only knowledge of its format (:mod:`omgmg.datakit.omiga`, :mod:`omgmg.datakit.ogmarl`).
It reads and checks the source and says

- what task the data is from (an :class:`~omgmg.datakit.spec.EnvSpec`) and at what level;
- what it had to assume and where the data came from: the dataset's ``collection`` metadata (how rows
  make episodes, terminations vs truncations, the provenance with what the source cannot tell);
- the episodes, one at a time, as the arguments of :meth:`DatasetWriter.add_episode`.

:func:`write_imported` does the rest, the same for every format: the episodes are written aside,
validated and renamed into place; any failure, the source's included, throws the partial write away
(an import is re-run from its source, never resumed) and leaves whatever was at the output untouched.

    imported = Imported(spec, "medium", collection, source=path, source_rows=T, episodes=read_episodes())
    write_imported(imported, "hopper-medium.zarr")
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omgmg.datakit.dataset import Dataset
from omgmg.datakit.errors import DatasetError
from omgmg.datakit.provenance import layouts, package_versions
from omgmg.datakit.spec import EnvSpec
from omgmg.datakit.writer import DatasetWriter

NOT_RECORDED = (
    "the simulator and package versions the data was recorded with",
    "how the environment was built",
    "each episode's reset seed (the data cannot be replayed)",
    "the behaviour policy",
)
"""What no foreign source records, for the provenance's ``unknown`` list."""


@dataclass
class Imported:
    """One source, read and checked: everything the shared tail needs to write it as an omgmg dataset."""

    spec: EnvSpec
    level: str
    collection: dict
    """The dataset's ``collection`` metadata: the source, every assumption the importer made, the provenance."""
    source: Path
    """The file or folder imported (its outputs are checked not to overlap it)."""
    source_rows: int
    """How many rows the source holds, for progress."""
    episodes: Iterable[tuple[dict, int]]
    """Each episode's :meth:`DatasetWriter.add_episode` arguments, with how many source rows were read by then."""
    behaviour_arrays: tuple[str, ...] = ()
    """The format-3 behaviour arrays the episodes carry (only an omgmg export keeps them)."""


def write_imported(
    imported: Imported, out, *, overwrite: bool = False, progress: Callable[[int, int], None] | None = None
) -> Dataset:
    """Write an imported source's episodes as the dataset ``out``, atomically; see the module docstring."""
    writer = DatasetWriter(
        out,
        imported.spec,
        level=imported.level,
        behaviour_policy=None,
        collection=imported.collection,
        overwrite=overwrite,
        resume=False,
        sources=(imported.source,),
        behaviour_arrays=imported.behaviour_arrays,
    )
    try:
        for episode, rows_read in imported.episodes:
            writer.add_episode(**episode)
            if progress:
                progress(rows_read, imported.source_rows)
    except BaseException:
        writer.abort()  # an import is re-run from the source, never resumed
        raise
    return writer.close()


def foreign_provenance(spec: EnvSpec, packages: tuple[str, ...], source: dict, *, also_unknown=()) -> dict:
    """The provenance of data omgmg did not record: what the source says of itself, and what it cannot."""
    return {
        "packages": package_versions((*packages, "numpy", "omgmg")),
        "source": source,
        "layouts": layouts(spec),
        "episode_seeds": [],
        "unknown": [*NOT_RECORDED, *also_unknown],
    }


def check_action_bound(source, actions: np.ndarray, bound: float) -> None:
    """Refuse continuous actions outside the bound the spec will claim, naming the option that fixes it."""
    worst = float(np.abs(actions).max(initial=0.0))
    if worst > bound:
        raise DatasetError(
            f"{source}: actions reach {worst:.4g}, outside [-{bound}, {bound}]; "
            "pass the task's real bound as <<action_bound=...>>"
        )
