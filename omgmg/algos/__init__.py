"""Offline MARL algorithms, one file each, reading top to bottom against their papers.

``ALGORITHMS`` lists the names ``omgmg train --algo`` accepts; ``algorithm_class`` maps each to its
class (imported lazily, so that listing names costs nothing).
"""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np

from omgmg.datakit.errors import ConfigError

_CLASSES = {  # name -> (module, class)
    "bc": ("omgmg.algos.bc", "BC"),
    "mabcq": ("omgmg.algos.mabcq", "MABCQ"),
    "macql": ("omgmg.algos.macql", "MACQL"),
    "icq": ("omgmg.algos.icq", "ICQ"),
    "omar": ("omgmg.algos.omar", "OMAR"),
    "omiga": ("omgmg.algos.omiga", "OMIGA"),
    "comadice": ("omgmg.algos.comadice", "ComaDICE"),
    "omgmg": ("omgmg.algos.omgmg", "OMGMG"),
}

ALGORITHMS = tuple(_CLASSES)


def algorithm_class(name: str):
    """The algorithm class for a name."""
    if name not in _CLASSES:
        raise ConfigError(f"unknown algorithm {name!r}: choose one of {', '.join(ALGORITHMS)}")
    module, cls = _CLASSES[name]
    return getattr(importlib.import_module(module), cls)


def suite_defaults(name: str) -> dict[str, dict]:
    """suite -> {field: value}: an algorithm's per-suite defaults (``SUITE_DEFAULTS`` in its file)."""
    cls = algorithm_class(name)
    return getattr(importlib.import_module(cls.__module__), "SUITE_DEFAULTS", {})


def make_config(name: str, suite: str | None = None, **overrides):
    """An algorithm's config: dataclass defaults, then its per-suite defaults (:func:`suite_defaults`),
    then ``overrides``. A name the config does not have raises a ConfigError that lists the ones it has."""
    config_cls = algorithm_class(name).config_cls
    fields = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        named = ", ".join(f"<<{k}=...>>" for k in unknown)
        raise ConfigError(
            f"{named} {'does' if len(unknown) == 1 else 'do'} not apply to {name}; its settings: {', '.join(fields)}"
        )
    return config_cls(**{**suite_defaults(name).get(suite, {}), **overrides})


MAX_MEMBERS = 1000
"""Runs one batched program trains at most (seeds x grid values): each member holds its own networks."""


def member_configs(
    name: str, suite: str | None, base: dict, seeds: list[int] | None, grid: dict[str, list[float]]
) -> list[tuple[str, object]]:
    """The members of a batched run (``omgmg train --seeds ... --grid ...``): every seed x every combination
    of the ``grid`` values, each (its run directory's name, its config: ``make_config`` with ``base``, the
    combination and the seed). ``grid`` may hold only the algorithm's ``member_hyperparameters``."""
    import itertools

    batchable = algorithm_class(name).member_hyperparameters
    for key in grid:
        if key not in batchable:
            raise ConfigError(
                f"{name} batches only {', '.join(batchable) or 'seeds'}, not {key}: train other values of {key} "
                "as separate runs"
            )
    seeds = seeds or [base.get("seed", 0)]
    count = len(seeds) * int(np.prod([len(v) for v in grid.values()], dtype=np.int64))
    if count > MAX_MEMBERS:
        raise ConfigError(f"{count} members (seeds x grid values) are more than {MAX_MEMBERS} in one program")
    members = []
    for values in itertools.product(*grid.values()):
        combo = dict(zip(grid, values, strict=True))
        for seed in seeds:
            run = f"{name}-seed{seed}" + "".join(f"-{k}{v:g}" for k, v in combo.items())
            members.append((run, make_config(name, suite, **(base | combo | {"seed": seed}))))
    return members
