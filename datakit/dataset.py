"""Opening a dataset: ``open_dataset(path)`` returns a read-only :class:`Dataset` after a cheap check.

The cheap check (metadata schema, format version, identity hash, array presence, dtypes, shapes,
lengths, and every chunk file present and as long as its header says) reads no array data, so
opening a 1M-transition dataset takes milliseconds. The full scan over every value and every chunk
checksum is :func:`omgmg.datakit.validate.validate`. Reads through :meth:`Dataset.read` verify each
chunk's checksum (format 2) and report a damaged chunk as a :class:`DatasetError`, never as zeros
or a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omgmg.datakit import format as fmt
from omgmg.datakit import integrity
from omgmg.datakit.errors import DatasetError, InvalidDatasetError, Problem, RequestError
from omgmg.datakit.hub import is_hub, pin
from omgmg.datakit.remote import RemoteLocation, is_remote, open_group
from omgmg.datakit.spec import EnvSpec


def _open_zarr_group(path: Path, mode: str = "r"):
    import zarr

    if is_remote(path):
        if mode != "r":
            raise RequestError(f"{path} is a remote dataset: omgmg only reads it (download it to change it)")
        return open_group(path)
    if not path.exists():
        partial = partial_path(path)
        hint = (
            f"; an unfinished write exists at {partial}: resume the command that wrote it" if partial.exists() else ""
        )
        raise DatasetError(f"no dataset at {path}{hint}")
    if not (path / "zarr.json").is_file():
        raise DatasetError(
            f"{path} is not a Zarr v3 store (no zarr.json); omgmg datasets are Zarr v3 groups, "
            "convert HDF5 files with `omgmg-data import`"
        )
    try:
        return zarr.open_group(store=str(path), mode=mode, zarr_format=3)
    except Exception as e:  # zarr raises several types for damaged metadata
        raise DatasetError(
            f"{path} could not be opened as a Zarr v3 group ({type(e).__name__}: {e}); "
            "the store is damaged: regenerate it"
        ) from None


def partial_path(path: Path) -> Path:
    """Where a dataset is written before it is renamed into place: ``.NAME.partial`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


@dataclass
class Dataset:
    """A read-only handle on a dataset: metadata, spec and lazily read arrays."""

    path: Path
    group: object  # zarr.Group
    meta: dict
    spec: EnvSpec
    _content_sha256: str | None = field(default=None, init=False, repr=False, compare=False)

    # ----- metadata shortcuts -------------------------------------------------------------------
    @property
    def n_episodes(self) -> int:
        return self.meta["stats"]["episodes"]

    @property
    def n_transitions(self) -> int:
        return self.meta["stats"]["transitions"]

    @property
    def level(self) -> str | None:
        return self.meta["level"]

    # ----- arrays -------------------------------------------------------------------------------
    def array(self, key: str):
        """The zarr array ``steps/NAME`` or ``episodes/NAME`` (lazy; slice it to read)."""
        return self.group[key]

    @property
    def behaviour_arrays(self) -> tuple[str, ...]:
        """The optional arrays of what the behaviour policy did that this store holds (format 3)."""
        return fmt.behaviour_arrays(self.meta)

    @property
    def layout(self) -> list[fmt.ArraySpec]:
        """Every array this store holds (:func:`omgmg.datakit.format.array_layout`)."""
        return fmt.array_layout(self.spec, self.behaviour_arrays)

    def has(self, key: str) -> bool:
        return key in {a.key for a in self.layout}

    def episode_lengths(self) -> np.ndarray:
        return np.asarray(self.group["episodes/length"][: self.n_episodes], dtype=np.int64)  # (E,)

    def episode_starts(self) -> np.ndarray:
        lengths = self.episode_lengths()
        return np.cumsum(lengths) - lengths  # (E,)

    @property
    def format_version(self) -> int:
        return int(self.meta["format_version"])

    def read(self, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of an array; a chunk that fails its checksum (format 2 on) or cannot be decoded
        (a format-1 store, which has no checksums, altered in place) raises a DatasetError naming the rows."""
        arr = self.group[key]
        stop = arr.shape[0] if stop is None else stop
        return read_rows(arr, key, start, stop, self.path)

    def content_sha256(self) -> str:
        """Fingerprint of the data (see :func:`omgmg.datakit.integrity.content_sha256`): equal for copies of
        one dataset, different for any other data of the same task. Computed once per opened dataset (a
        remote store's chunks are read whole for it; a packed job asks once per member)."""
        if self._content_sha256 is None:
            keys = [a.key for a in self.layout]
            self._content_sha256 = integrity.content_sha256(self.group, keys, self.format_version)
        return self._content_sha256

    def chunk_rows(self) -> int:
        """Chunk length of ``steps/obs`` along time (the natural unit for streaming reads)."""
        return int(self.group["steps/obs"].chunks[0])


def read_rows(arr, key: str, start: int, stop: int, path) -> np.ndarray:
    """``arr[start:stop]``, with a damaged chunk as one DatasetError naming the store, the array and the rows."""
    try:
        return np.asarray(arr[start:stop])
    except (ValueError, RuntimeError) as e:
        text = str(e)
        if "checksum" in text:
            what = "is damaged (its checksum does not match)"
        elif "decompress" in text or "blosc" in text.lower():
            what = "cannot be decoded (damaged; a format-1 store has no checksums to catch it sooner)"
        else:
            raise
        raise DamagedChunk(path, key, start, stop, what) from None


class DamagedChunk(DatasetError):
    """A chunk of ``key`` within rows ``start:stop`` is damaged (``what``); :func:`read_rows` raises it."""

    def __init__(self, path, key: str, start: int, stop: int, what: str):
        self.key, self.rows, self.what = key, f"{start}-{stop - 1}", what
        super().__init__(
            f"{path}: a chunk of {key} within rows {self.rows} {what}; run `omgmg-data validate {path}` for the "
            "list, and restore or regenerate the dataset"
        )

    def problem(self) -> Problem:
        return Problem(self.key, f"a chunk within rows {self.rows} {self.what}", "restore or regenerate the dataset")


def open_dataset(path, *, check: bool = True) -> Dataset:
    """Open a dataset read-only (a folder, or a URL: :mod:`omgmg.datakit.remote`). With ``check`` (default)
    run the cheap structural check."""
    if is_hub(path):
        path = pin(path)  # a branch moves: the dataset is read, and recorded, at the commit it names now
    path = RemoteLocation(path) if is_remote(path) else Path(path)
    group = _open_zarr_group(path)
    meta = dict(group.attrs)
    if fmt.WRITER_ATTR in meta:
        raise DatasetError(f"{path} is an unfinished write; resume the command that wrote it")
    problems = fmt.check_metadata(meta)
    if problems:
        raise InvalidDatasetError(path, problems)
    spec = EnvSpec.from_json(meta["env"])
    if check:
        problems = fmt.check_structure(group, spec, meta)
        if not problems:
            keys = [a.key for a in fmt.array_layout(spec, fmt.behaviour_arrays(meta))]
            problems = integrity.check_chunks(group, keys, meta["format_version"], checksums=False)
        if problems:
            raise InvalidDatasetError(path, problems)
    return Dataset(path=path, group=group, meta=meta, spec=spec)


IDENTITY_KEYS = ("format_version", "env", "identity_sha256")
MUTABLE_KEYS = ("collection", "behaviour_policy", "level")


def update_metadata(path, **changes) -> dict:
    """Change descriptive metadata (``collection``, ``behaviour_policy``, ``level``) of a finished dataset.

    Identity keys (format version, env spec) cannot be changed: a dataset of another task is another
    dataset. Counts and stats follow from the arrays and are not editable either.
    """
    path = Path(path)
    frozen = [k for k in changes if k not in MUTABLE_KEYS]
    if frozen:
        raise RequestError(
            f"cannot change {', '.join(frozen)} of {path}: only {', '.join(MUTABLE_KEYS)} may be "
            "edited; identity keys and stats are fixed once written"
        )
    ds = open_dataset(path)
    meta = dict(ds.meta)
    if "level" in changes:
        changes["level"] = fmt.normalise_level(changes["level"])
    meta.update(changes)
    problems = fmt.check_metadata(meta)
    if problems:
        raise InvalidDatasetError(path, problems)
    group = _open_zarr_group(path, mode="r+")
    group.attrs.update({k: meta[k] for k in changes})
    return meta
