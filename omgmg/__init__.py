"""OMGMG: Offline Multi-Agent RL with Global Moderate Generalization, and its baselines.

One installed package with five parts, layered bottom to top (``tests/test_layers.py`` keeps it so):

- ``omgmg.schemas``: the versioned dataset schema (package data);
- ``omgmg.datakit``: the dataset format, writer, validation, loader, HDF5 interop, safe outputs;
- ``omgmg.collectors``: environments, behaviour policies (MAPPO, HAPPO) and dataset collection;
- ``omgmg.algos``, ``omgmg.trainer``, ``omgmg.experiments``: OMGMG, the baselines, training, sweeps;
- ``omgmg.cli``: the ``omgmg-data`` and ``omgmg`` commands.

In the repository, ``datakit/``, ``collectors/``, ``cli/`` and ``schemas/`` sit beside this folder
(pyproject's ``package-dir`` installs them inside it); run from a checkout, they are found there.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "datakit" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # a source checkout: omgmg.datakit is ../datakit (installed: ./datakit)
