"""The dataset format as code: array layout, codecs, metadata and the cheap structural check.

The specification is ``schemas/dataset-v3.md`` (format 2, written now; format 1 is read); this
module is its single implementation, used by the writer, the reader, the validator and the importers.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import jsonschema
import numpy as np

from omgmg import schemas
from omgmg.datakit.errors import Problem
from omgmg.datakit.spec import EnvSpec

FORMAT_VERSION = 3
"""Written by this omgmg. 3: optional arrays of what the behaviour policy did (:data:`BEHAVIOUR_ARRAYS`);
2: every chunk stored and ending in a crc32c checksum (see the spec's version history); 1: the same
arrays and metadata without checksums."""
SUPPORTED_FORMAT_VERSIONS = (1, 2, 3)
SCHEMA_FILE = "dataset-v3.schema.json"  # the metadata of formats 1 to 3 (3 added one optional key)
WRITER_ATTR = "_writer"  # present only on partial (unfinished) stores
CHUNK_TARGET_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class ArraySpec:
    """One array of the layout: its group (``steps`` or ``episodes``), name, trailing shape and dtype."""

    group: str
    name: str
    tail: tuple[int, ...]
    dtype: np.dtype

    @property
    def key(self) -> str:
        return f"{self.group}/{self.name}"


BEHAVIOUR_ARRAYS = {
    "log_prob": "steps/behaviour_log_prob: each agent's log-probability of its stored action under the behaviour "
    "policy that acted (a density for continuous actions, of the executed action: the squashed one for a tanh "
    "policy, the pre-clip sample for a clipping one; a probability under the available-action mask for "
    "discrete ones)",
    "pre_clip": "steps/behaviour_pre_clip: the Gaussian sample before it was clipped to the bounds (continuous "
    "policies that clip)",
}
"""The optional arrays of format 3, by the name ``metadata.behaviour_arrays`` lists them under."""


def array_layout(spec: EnvSpec, behaviour: tuple[str, ...] | list[str] = ()) -> list[ArraySpec]:
    """Every array a dataset of this task holds, in a fixed order; ``behaviour``: the optional arrays of
    :data:`BEHAVIOUR_ARRAYS` it holds (``metadata.behaviour_arrays``)."""
    n, o, s = spec.n_agents, spec.obs_dim, spec.state_dim
    f32, b = np.dtype("float32"), np.dtype("bool")
    actions = (
        ArraySpec("steps", "actions", (n,), np.dtype("int32"))
        if spec.discrete
        else ArraySpec("steps", "actions", (n, spec.action_dim), f32)
    )
    layout = [
        ArraySpec("steps", "obs", (n, o), f32),
        ArraySpec("steps", "state", (s,), f32),
        actions,
        ArraySpec("steps", "reward", (), f32),
        ArraySpec("steps", "terminated", (), b),
        ArraySpec("steps", "truncated", (), b),
        ArraySpec("episodes", "length", (), np.dtype("int64")),
        ArraySpec("episodes", "return", (), np.dtype("float64")),
        ArraySpec("episodes", "final_obs", (n, o), f32),
        ArraySpec("episodes", "final_state", (s,), f32),
    ]
    if spec.discrete:
        k = spec.n_actions
        layout.insert(3, ArraySpec("steps", "avail", (n, k), b))
        layout.append(ArraySpec("episodes", "final_avail", (n, k), b))
    if spec.reports_wins:
        layout.append(ArraySpec("episodes", "won", (), b))
    if "log_prob" in behaviour:
        layout.append(ArraySpec("steps", "behaviour_log_prob", (n,), f32))
    if "pre_clip" in behaviour:
        layout.append(ArraySpec("steps", "behaviour_pre_clip", (n, spec.action_dim), f32))
    return layout


def behaviour_arrays(meta: dict) -> tuple[str, ...]:
    """The optional behaviour arrays a store's metadata (or its writer state) says it holds."""
    return tuple(meta.get("behaviour_arrays") or ())


def check_behaviour_arrays(spec: EnvSpec, names) -> None:
    """Refuse (DatasetError) behaviour arrays that are unknown or do not apply to the task."""
    from omgmg.datakit.errors import DatasetError

    unknown = sorted(set(names) - set(BEHAVIOUR_ARRAYS))
    if unknown:
        raise DatasetError(f"unknown behaviour array(s) {unknown}: choose from {sorted(BEHAVIOUR_ARRAYS)}")
    if "pre_clip" in names and spec.discrete:
        raise DatasetError(f"{spec.name} has discrete actions: behaviour_pre_clip applies to continuous ones")


def chunk_length(tail: tuple[int, ...], dtype: np.dtype, target_bytes: int = CHUNK_TARGET_BYTES) -> int:
    """Rows per chunk along the leading axis: a power of two near ``target_bytes`` uncompressed."""
    row_bytes = max(1, int(np.prod(tail, dtype=np.int64)) * dtype.itemsize)
    rows = max(1, target_bytes // row_bytes)
    return int(2 ** max(10, min(20, int(math.log2(rows)))))


def step_chunk_length(spec: EnvSpec) -> int:
    """One chunk length shared by every ``steps/`` array, sized by the widest row (observations), so a
    range of time maps to the same chunks in every array and a block read decodes nothing extra."""
    return chunk_length((spec.n_agents, spec.obs_dim), np.dtype("float32"))


def compressors(dtype: np.dtype) -> list:
    """Blosc/zstd level 1, then a crc32c checksum of the compressed chunk (format 2).

    Bit shuffle for booleans (1 bit of information per byte), byte shuffle otherwise. Level 1 rather
    than 3: measured on SMAX protoss_5v5 rollouts (66,826 steps, 213 MB raw), the writer spends 1.7
    instead of 2.3 CPU seconds for a store of 30 instead of 28 MB, and during collection every CPU
    second the writer spends is taken from the simulator (see docs/collecting.md). The checksum is
    verified before Blosc decodes a chunk, so a damaged chunk is reported, never decoded."""
    import zarr.codecs as zc

    shuffle = zc.BloscShuffle.bitshuffle if dtype == np.bool_ else zc.BloscShuffle.shuffle
    return [zc.BloscCodec(cname="zstd", clevel=1, shuffle=shuffle), zc.Crc32cCodec()]


def identity_sha256(spec: EnvSpec, format_version: int = FORMAT_VERSION) -> str:
    """sha256 of the canonical JSON of the identity keys (invariant 8 of the spec)."""
    payload = {"format_version": format_version, "env": spec.identity()}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def summary(values: np.ndarray) -> dict | None:
    """mean/std/min/max of a 1-D array (population std), or None when empty."""
    if len(values) == 0:
        return None
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}


def compute_stats(lengths: np.ndarray, returns: np.ndarray, won: np.ndarray | None) -> dict:
    """The ``stats`` block of the metadata, from per-episode arrays."""
    return {
        "episodes": int(len(lengths)),
        "transitions": int(np.sum(lengths, dtype=np.int64)),
        "return": summary(returns),
        "episode_length": summary(lengths),
        "win_rate": None if won is None or len(won) == 0 else float(np.mean(won)),
    }


def package_version() -> str:
    """The installed omgmg's version, from the package metadata (datakit imports nothing above it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("omgmg")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def build_metadata(
    spec: EnvSpec,
    *,
    level: str | None,
    behaviour_policy: dict | None,
    collection: dict | None,
    stats: dict,
    format_version: int = FORMAT_VERSION,
    behaviour: tuple[str, ...] = (),
) -> dict:
    """A complete metadata dict for a finished dataset."""
    optional = {"behaviour_arrays": list(behaviour)} if behaviour else {}
    return {
        "format_version": format_version,
        **optional,
        "env": spec.to_json(),
        "level": level,
        "behaviour_policy": behaviour_policy,
        "collection": dict(collection or {}),
        "stats": stats,
        "identity_sha256": identity_sha256(spec, format_version),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "omgmg_version": package_version(),
    }


LEVELS = ("expert", "medium", "medium-replay", "medium-expert", "random")
"""The dataset levels, in the order tables list them (what each holds: ``collectors.collect.LEVEL_DEFINITIONS``)."""
LEVEL_NAMES = f"{', '.join(LEVELS[:-1])} or {LEVELS[-1]}"
"""The levels as a sentence names them, for help texts and errors."""

LEVEL_ALIASES = {
    **{level: level for level in LEVELS},
    "medium_expert": "medium-expert",
    "m-expert": "medium-expert",
    "mediumexpert": "medium-expert",
    "medium_replay": "medium-replay",
    "m-replay": "medium-replay",
    "mediumreplay": "medium-replay",
}


def normalise_level(level: str | None) -> str | None:
    """Canonical level name (accepts ``m-expert``, ``medium_replay``, ...); raises on unknown names."""
    from omgmg.datakit.errors import RequestError

    if level is None:
        return None
    key = level.strip().lower()
    if key not in LEVEL_ALIASES:
        raise RequestError(f"unknown level {level!r}: choose {LEVEL_NAMES}")
    return LEVEL_ALIASES[key]


# ----- checks shared by open (cheap) and validate (full) ---------------------------------------------


def check_metadata(meta: Any) -> list[Problem]:
    """Schema, format version and identity hash. Returns problems; never raises."""
    if not isinstance(meta, dict) or not meta:
        return [
            Problem(
                "metadata",
                "the root group has no omgmg metadata",
                "this is not an omgmg dataset; create it with the omgmg writer or `omgmg-data import`",
            )
        ]
    version = meta.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        return [
            Problem(
                "metadata.format_version",
                f"format_version {version!r} is not supported",
                f"this omgmg reads format_version {list(SUPPORTED_FORMAT_VERSIONS)}; "
                "upgrade omgmg (pip install -U omgmg) to read newer datasets",
            )
        ]
    problems = []
    if meta.get("behaviour_arrays") and version < 3:
        problems.append(
            Problem(
                "metadata.behaviour_arrays",
                f"format {version} has no behaviour arrays (format 3 added them)",
                "the metadata was edited by hand: restore it or regenerate the dataset",
            )
        )
    validator = jsonschema.Draft202012Validator(schemas.load_json(SCHEMA_FILE))
    for err in sorted(validator.iter_errors(meta), key=lambda e: list(e.absolute_path)):
        where = "metadata" + "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in err.absolute_path)
        problems.append(Problem(where, err.message, f"see schemas/{SCHEMA_FILE}"))
    if problems:
        return problems
    try:
        spec = EnvSpec.from_json(meta["env"])
    except Exception as e:  # DatasetError from spec checks
        return [Problem("metadata.env", str(e), "rewrite the dataset with a consistent env spec")]
    if identity_sha256(spec, version) != meta["identity_sha256"]:
        problems.append(
            Problem(
                "metadata.identity_sha256",
                "identity keys (suite, task, backend, options, agents, spaces) were changed after writing",
                "identity keys are immutable: restore them or regenerate the dataset",
            )
        )
    return problems


def check_structure(group, spec: EnvSpec, meta: dict | None) -> list[Problem]:
    """Array presence, dtypes, trailing shapes and lengths against the spec and the counts."""
    problems: list[Problem] = []
    lengths: dict[str, int] = {}
    expected = array_layout(spec, behaviour_arrays(meta or {}))
    expected_keys = {a.key for a in expected}
    for a in expected:
        try:
            arr = group[a.key]
        except KeyError:
            problems.append(Problem(a.key, "array is missing", "regenerate or re-import the dataset"))
            continue
        if np.dtype(arr.dtype) != a.dtype:
            problems.append(Problem(a.key, f"dtype is {arr.dtype}, expected {a.dtype}", f"store {a.key} as {a.dtype}"))
        if tuple(arr.shape[1:]) != a.tail:
            problems.append(
                Problem(
                    a.key,
                    f"shape {tuple(arr.shape)} does not match the env spec: "
                    f"expected (*, {', '.join(map(str, a.tail))})",
                    "the arrays and metadata.env disagree; regenerate the dataset",
                )
            )
        lengths.setdefault(a.group, arr.shape[0])
        if arr.shape[0] != lengths[a.group]:
            problems.append(
                Problem(
                    a.key,
                    f"has {arr.shape[0]} rows but {a.group}/ arrays have {lengths[a.group]}",
                    "all arrays of a group must have the same length",
                )
            )
    for sub in ("steps", "episodes"):
        try:
            extra = set(f"{sub}/{k}" for k in group[sub].array_keys()) - expected_keys
        except KeyError:
            continue
        for key in sorted(extra):
            problems.append(Problem(key, "unexpected array for this task", "remove it or fix metadata.env"))
    if meta is not None and not problems:
        stats = meta["stats"]
        if lengths.get("steps") != stats["transitions"]:
            problems.append(
                Problem(
                    "steps",
                    f"{lengths.get('steps')} rows but metadata.stats.transitions is {stats['transitions']}",
                    "run `omgmg-data validate` for details",
                )
            )
        if lengths.get("episodes") != stats["episodes"]:
            problems.append(
                Problem(
                    "episodes",
                    f"{lengths.get('episodes')} rows but metadata.stats.episodes is {stats['episodes']}",
                    "run `omgmg-data validate` for details",
                )
            )
    return problems
