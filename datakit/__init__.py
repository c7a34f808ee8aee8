"""Offline MARL datasets: format 3 (chunked Zarr v3; 1 and 2 read), writer, validation, the shared loader, HDF5 interop.

The format is specified in ``schemas/dataset-v3.md``. Public API:

- :class:`EnvSpec`, :class:`Box`, :class:`Discrete`: what a task looks like (stored in metadata).
- :class:`DatasetWriter`: append whole episodes; atomic and resumable.
- :func:`open_dataset` (cheap check) and :func:`validate` (full scan).
- :class:`TransitionLoader`: seeded minibatches of transitions as torch tensors, in memory or streaming.
- :func:`iter_episodes`: whole episodes, for sequence models and statistics.
"""

from omgmg.datakit.dataset import Dataset, open_dataset, update_metadata
from omgmg.datakit.errors import DatasetError, InvalidDatasetError, Problem
from omgmg.datakit.format import FORMAT_VERSION
from omgmg.datakit.loader import Batch, TransitionLoader, iter_episodes
from omgmg.datakit.spec import Box, Discrete, EnvSpec
from omgmg.datakit.validate import validate
from omgmg.datakit.writer import DatasetWriter

__all__ = [
    "Batch",
    "Box",
    "Dataset",
    "DatasetError",
    "DatasetWriter",
    "Discrete",
    "EnvSpec",
    "FORMAT_VERSION",
    "InvalidDatasetError",
    "Problem",
    "TransitionLoader",
    "iter_episodes",
    "open_dataset",
    "update_metadata",
    "validate",
]
