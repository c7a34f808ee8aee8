"""Offline MARL algorithms, one file each, reading top to bottom against their papers.

``ALGORITHMS`` maps the names ``omgmg train --algo`` accepts to their classes.
"""
from __future__ import annotations


def algorithm_class(name: str):
    """The algorithm class for a name (imported lazily)."""
    from omgmg.algos.bc import BC
    from omgmg.algos.omgmg import OMGMG

    classes = {"omgmg": OMGMG, "bc": BC}
    if name not in classes:
        raise ValueError(f"unknown algorithm {name!r}: choose one of {', '.join(sorted(classes))}")
    return classes[name]


ALGORITHMS = ("bc", "omgmg")


def make_config(name: str, suite: str | None = None, **overrides):
    """An algorithm's config: dataclass defaults, then its per-suite defaults (``SUITE_DEFAULTS`` in
    the algorithm's file, if any), then ``overrides``."""
    import importlib

    cls = algorithm_class(name)
    table = getattr(importlib.import_module(cls.__module__), "SUITE_DEFAULTS", {})
    return cls.config_cls(**{**table.get(suite, {}), **overrides})
