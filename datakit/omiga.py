"""Interop with the HDF5 layout of the public OMIGA MaMuJoCo datasets (``{Task}-{agent_conf}-{level}.hdf5``).

The OMIGA layout, as the official loader (``datasets/offline_dataset.py``) reads it:

- keys ``o`` (T, N, O) observations, ``s`` (T, N, S) state per agent, ``a`` (T, N, A) actions,
  ``r`` reward and ``d`` done, each (T,), (T, 1) or (T, N) (all agents equal);
- each episode is L + 1 rows: L steps with d = 0, then one row with d = 1 whose ``o``/``s`` is the
  final observation (its ``a``/``r`` are not used);
- the official loader gives every step before a d = 1 row mask 0, i.e. it treats *every* episode
  end as terminal, including the 1000-step time limit.

**Import assumption.** The file cannot tell termination from truncation. The importer assumes an
episode of exactly ``episode_limit`` steps (default 1000, MaMuJoCo's limit) was truncated by the
time limit and any shorter one terminated (a fall). Rows after the last d = 1 row are an episode
cut by the end of the file: truncated, its last row serving as final observation. Both rules are
recorded in the dataset's ``collection`` metadata.

**Export** writes the layout back (float32, ``r`` and ``d`` as (T, 1)) so OMIGA's code trains on our
data. It necessarily loses the termination/truncation distinction (OMIGA masks both).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from omgmg.datakit.dataset import Dataset, open_dataset
from omgmg.datakit.errors import DatasetError, OutputError, RequestError
from omgmg.datakit.loader import iter_episodes
from omgmg.datakit.outputs import (
    OutputLock,
    check_replaceable,
    fsync_dir,
    human_bytes,
    is_omgmg_export,
    make_parent,
    os_errors,
)
from omgmg.datakit.spec import Box, EnvSpec
from omgmg.datakit.writer import DatasetWriter

OMIGA_KEYS = ("s", "o", "a", "r", "d")
MAMUJOCO_EPISODE_LIMIT = 1000
STATE_FLATTENED = "per-agent s rows concatenated"


def _per_step(name: str, arr, T: int, N: int):
    """Accept (T,), (T, 1) or (T, N) for r and d; return a function reading rows as (rows,)."""
    shape = tuple(arr.shape)
    if shape == (T,):
        return lambda lo, hi: np.asarray(arr[lo:hi])
    if shape == (T, 1):
        return lambda lo, hi: np.asarray(arr[lo:hi])[:, 0]
    if shape == (T, N):

        def read(lo, hi):
            block = np.asarray(arr[lo:hi])
            if not np.all(block == block[:, :1]):
                row = lo + int(np.flatnonzero((block != block[:, :1]).any(axis=1))[0])
                raise DatasetError(
                    f"'{name}' differs between agents at row {row}; omgmg stores one team value "
                    "per step, so per-agent values cannot be imported"
                )
            return block[:, 0]

        return read
    raise DatasetError(f"'{name}' has shape {shape}; expected ({T},), ({T}, 1) or ({T}, {N})")


def _episode_bounds(done: np.ndarray) -> list[tuple[int, int, int]]:
    """(first step row, end row exclusive, final-observation row) per episode from the d column."""
    finals = np.flatnonzero(done)
    bounds, start = [], 0
    for f in finals:
        if f == start:
            raise DatasetError(f"row {f} has d=1 but the episode before it has no steps (two final rows in a row)")
        bounds.append((start, int(f), int(f)))
        start = int(f) + 1
    T = len(done)
    if start < T - 1:  # trailing rows without a final row: the last one is the final observation
        bounds.append((start, T - 1, T - 1))
    return bounds


def import_omiga(
    src,
    out,
    *,
    task: str,
    level: str,
    episode_limit: int = MAMUJOCO_EPISODE_LIMIT,
    action_bound: float = 1.0,
    overwrite: bool = False,
    block_rows: int = 200_000,
    progress: Callable[[int, int], None] | None = None,
) -> Dataset:
    """Convert one OMIGA HDF5 file to a format-v1 dataset at ``out``; see the module docstring."""
    import h5py

    src = Path(src)
    if not re.fullmatch(r"[A-Za-z0-9]+-[0-9A-Za-z|_]+", task):
        raise RequestError(f"task {task!r} is not a MaMuJoCo task name like HalfCheetah-6x1")
    if not src.is_file():
        raise RequestError(f"no file at {src}")
    try:
        f = h5py.File(src, "r")
    except OSError as e:
        raise DatasetError(f"{src} is not a readable HDF5 file ({e})") from None
    with f:
        missing = [k for k in OMIGA_KEYS if k not in f]
        if missing:
            raise DatasetError(
                f"{src} lacks the OMIGA keys {missing} (found {sorted(f.keys())}); "
                "expected s, o, a, r, d as in the OMIGA MaMuJoCo datasets"
            )
        not_arrays = [k for k in OMIGA_KEYS if not isinstance(f[k], h5py.Dataset)]
        if not_arrays:
            raise DatasetError(
                f"{src}: {', '.join(repr(k) for k in not_arrays)} must be arrays (HDF5 datasets), "
                "not groups; this is not an OMIGA file"
            )
        o, s, a = f["o"], f["s"], f["a"]
        if o.ndim != 3 or a.ndim != 3:
            raise DatasetError(f"'o' and 'a' must be (T, N, dim); got {o.shape} and {a.shape}")
        T, N, O = o.shape
        A = a.shape[2]
        if a.shape[:2] != (T, N) or s.shape[0] != T:
            raise DatasetError(f"row counts or agent counts disagree: o {o.shape}, a {a.shape}, s {s.shape}")
        if s.ndim == 3 and s.shape[1] == N:
            s_first = np.asarray(s[: min(T, 1000)])
            flatten = not np.all(s_first == s_first[:, :1])
            S = s.shape[2] * (N if flatten else 1)
            read_state = (
                (lambda lo, hi: np.asarray(s[lo:hi]).reshape(hi - lo, -1))
                if flatten
                else (lambda lo, hi: np.asarray(s[lo:hi, 0]))
            )
        elif s.ndim == 2:
            flatten, S = False, s.shape[1]
            read_state = lambda lo, hi: np.asarray(s[lo:hi])  # noqa: E731
        else:
            raise DatasetError(f"'s' has shape {s.shape}; expected ({T}, {N}, S) or ({T}, S)")
        read_r = _per_step("r", f["r"], T, N)
        done = _per_step("d", f["d"], T, N)(0, T) > 0.5  # (T,) small: read whole
        bounds = _episode_bounds(done)
        if not bounds:
            raise DatasetError(f"{src} holds no complete episode")
        spec = EnvSpec(
            suite="mamujoco",
            task=task,
            backend="omiga-hdf5",
            agent_ids=tuple(f"agent_{i}" for i in range(N)),
            obs_dims=(O,) * N,
            state_dim=S,
            action_spaces=tuple(Box((-action_bound,) * A, (action_bound,) * A) for _ in range(N)),
            episode_limit=episode_limit,
            options={"obs_mode": "omiga"},
            backend_versions={"h5py": h5py.__version__},
        )
        collection = {
            "source": "omiga-hdf5",
            "source_file": src.name,
            "source_rows": int(T),
            "termination_rule": (
                f"file has no truncation flag: episodes of exactly {episode_limit} steps are "
                "taken as time-limit truncations, shorter ones as terminations"
            ),
            "trailing_rows_rule": "rows after the last d=1 row form a truncated episode whose last row is its "
            "final observation",
            "stored_action": "as in the source file",
        }
        if flatten:
            collection["state_layout"] = STATE_FLATTENED
        writer = DatasetWriter(
            out,
            spec,
            level=level,
            behaviour_policy=None,
            collection=collection,
            overwrite=overwrite,
            resume=False,
            sources=(src,),
        )
        try:
            for group in _group_bounds(bounds, block_rows):
                lo, hi = group[0][0], group[-1][2] + 1
                block = {
                    "o": np.asarray(o[lo:hi], np.float32),
                    "s": read_state(lo, hi).astype(np.float32),
                    "a": np.asarray(a[lo:hi], np.float32),
                    "r": read_r(lo, hi).astype(np.float32),
                }
                worst = float(np.abs(block["a"]).max(initial=0.0))
                if worst > action_bound:
                    raise DatasetError(
                        f"{src}: actions reach {worst:.4g}, outside [-{action_bound}, {action_bound}]; "
                        "pass the task's real bound as <<action_bound=...>>"
                    )
                for start, stop, final in group:
                    i, j, k = start - lo, stop - lo, final - lo
                    L = stop - start
                    truncated = L >= episode_limit or not done[final]
                    writer.add_episode(
                        obs=block["o"][i:j],
                        state=block["s"][i:j],
                        actions=block["a"][i:j],
                        reward=block["r"][i:j],
                        final_obs=block["o"][k],
                        final_state=block["s"][k],
                        terminated=not truncated,
                        truncated=truncated,
                    )
                if progress:
                    progress(hi, T)
        except BaseException:
            writer.abort()  # an import is re-run from the source, never resumed
            raise
    return writer.close()


def _group_bounds(bounds: list[tuple[int, int, int]], block_rows: int) -> Iterator[list[tuple[int, int, int]]]:
    """Consecutive episodes grouped into reads of about ``block_rows`` rows."""
    group: list[tuple[int, int, int]] = []
    for b in bounds:
        if group and b[2] + 1 - group[0][0] > block_rows:
            yield group
            group = []
        group.append(b)
    if group:
        yield group


def export_omiga(dataset, out, *, overwrite: bool = False, progress: Callable[[int, int], None] | None = None) -> Path:
    """Write a continuous-action dataset in the OMIGA HDF5 layout (atomically: aside, then rename).

    ``overwrite`` replaces only a file omgmg exported (never the source, never anything else). The
    space the file needs is checked before writing; the partial file is removed on any failure.
    """

    ds = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
    out = Path(out)
    if ds.spec.discrete:
        raise RequestError(
            f"the OMIGA HDF5 layout is for MaMuJoCo (continuous actions); {ds.spec.name} has discrete actions"
        )
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise RequestError(f"{out} already exists; choose another path or pass <<overwrite=True>>")
        check_replaceable(out, owned=is_omgmg_export, what="a file omgmg exported", sources=(ds.path,))
    N, O, A = ds.spec.n_agents, ds.spec.obs_dim, ds.spec.action_dim
    flattened = ds.meta["collection"].get("state_layout") == STATE_FLATTENED
    S = ds.spec.state_dim // N if flattened else ds.spec.state_dim
    rows = ds.n_transitions + ds.n_episodes
    make_parent(out)
    need = rows * 4 * (N * (O + S + A) + 2) + (1 << 20)  # uncompressed float32 rows + headroom
    free = shutil.disk_usage(out.parent).free
    if free < need:
        raise OutputError(
            f"exporting to {out} needs about {human_bytes(need)}; its device has {human_bytes(free)} "
            "free: free some space or write somewhere else"
        )
    tmp = out.with_name(f".{out.name}.partial")
    with OutputLock(out, "export"), os_errors(out, "exporting to"):
        try:
            _write_omiga(ds, tmp, N, O, S, A, rows, flattened, progress)
            os.replace(tmp, out)  # atomic: a reader sees the old export or the new one
            fsync_dir(out.parent)
        finally:
            tmp.unlink(missing_ok=True)
    return out


def _write_omiga(ds: Dataset, tmp: Path, N: int, O: int, S: int, A: int, rows: int, flattened: bool, progress) -> None:
    import h5py

    with h5py.File(tmp, "w") as f:
        dsets = {
            "o": f.create_dataset("o", (rows, N, O), "float32", chunks=(min(rows, 4096), N, O)),
            "s": f.create_dataset("s", (rows, N, S), "float32", chunks=(min(rows, 4096), N, S)),
            "a": f.create_dataset("a", (rows, N, A), "float32", chunks=(min(rows, 4096), N, A)),
            "r": f.create_dataset("r", (rows, 1), "float32", chunks=(min(rows, 65536), 1)),
            "d": f.create_dataset("d", (rows, 1), "float32", chunks=(min(rows, 65536), 1)),
        }
        f.attrs["exported_by"] = "omgmg"
        f.attrs["task"] = ds.spec.task
        row = 0
        for ep in iter_episodes(ds):
            L = len(ep["reward"])
            state = np.concatenate([ep["state"], ep["final_state"][None]])  # (L + 1, S or N*S)
            state = state.reshape(L + 1, N, S) if flattened else np.broadcast_to(state[:, None], (L + 1, N, S))
            dsets["o"][row : row + L + 1] = np.concatenate([ep["obs"], ep["final_obs"][None]])
            dsets["s"][row : row + L + 1] = state
            dsets["a"][row : row + L] = ep["actions"]  # the final row's action stays 0 (unused by OMIGA)
            dsets["r"][row : row + L, 0] = ep["reward"]
            dsets["d"][row + L, 0] = 1.0
            row += L + 1
            if progress:
                progress(row, rows)
        f.flush()
        os.fsync(f.id.get_vfd_handle())
