"""Offline MARL algorithms, one file each, reading top to bottom against their papers.

``ALGORITHMS`` lists the names ``omgmg train --algo`` accepts; ``algorithm_class`` maps each to its
class (imported lazily, so that listing names costs nothing).
"""
from __future__ import annotations

import importlib

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
        raise ValueError(f"unknown algorithm {name!r}: choose one of {', '.join(ALGORITHMS)}")
    module, cls = _CLASSES[name]
    return getattr(importlib.import_module(module), cls)


def make_config(name: str, suite: str | None = None, **overrides):
    """An algorithm's config: dataclass defaults, then its per-suite defaults (``SUITE_DEFAULTS`` in
    the algorithm's file, if any), then ``overrides``."""
    cls = algorithm_class(name)
    table = getattr(importlib.import_module(cls.__module__), "SUITE_DEFAULTS", {})
    return cls.config_cls(**{**table.get(suite, {}), **overrides})
