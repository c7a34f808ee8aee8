"""Offline MARL algorithms, one file each, reading top to bottom against their papers.

``ALGORITHMS`` lists the names ``omgmg train --algo`` accepts; ``algorithm_class`` maps each to its
class (imported lazily, so that listing names costs nothing).
"""

from __future__ import annotations

import dataclasses
import importlib

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
