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

**Export** writes the layout OMIGA's training code takes (``{Scenario}-v2-{agent_conf}-{level}.hdf5``,
float32, ``r`` and ``d`` as (T, 1)). ``s`` is ``o``: OMIGA's environment returns each agent's
observation as its state (``get_state()`` is ``get_obs()``), and its code sizes the mixer from the
observation width (``Linear(N * O, ...)`` over ``s.reshape(-1, N * O)``), so any other ``s`` crashes
its first training step. Data collected in OMIGA's observation layout (``obs_mode="omiga"``) thus
export exactly as OMIGA's environment would have written them. Data with local observations export
the same way, by an explicit, recorded choice (attribute ``obs_mode: local``): OMIGA's mixer then
sees every agent's local observation, which together hold the robot's whole state; collect with
``obs_mode="omiga"`` to train OMIGA's code on its own layout. (A dataset imported from an OMIGA file whose ``s``
rows differ per agent exports that ``s`` as it came.) Our global state and each agent's
observation width are kept beside, in ``omgmg/state`` and the file's attributes, which OMIGA's
loader ignores and our importer reads back, so export and import round-trip exactly. The
termination/truncation distinction is lost in OMIGA's layout (OMIGA masks both).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omgmg.datakit.dataset import Dataset, open_dataset
from omgmg.datakit.errors import DatasetError, RequestError
from omgmg.datakit.format import BEHAVIOUR_ARRAYS
from omgmg.datakit.importing import Imported, check_action_bound, fetched, foreign_provenance, write_imported
from omgmg.datakit.loader import iter_episodes
from omgmg.datakit.outputs import (
    OutputLock,
    check_replaceable,
    check_room,
    fsync_dir,
    is_omgmg_export,
    make_parent,
    os_errors,
    read_lock,
)
from omgmg.datakit.rows import ROW_CONVENTIONS, choose_rows, episode_bounds, group_bounds, team_values
from omgmg.datakit.spec import EPISODE_LIMITS, Box, EnvSpec

OMIGA_KEYS = ("s", "o", "a", "r", "d")
OMGMG_STATE = "omgmg/state"  # our global state, (T, S), kept beside OMIGA's keys by our export
OMGMG_BEHAVIOUR = "omgmg/behaviour_{}"  # the format-3 behaviour arrays, (T, N) / (T, N, A), likewise
STATE_FLATTENED = "per-agent s rows concatenated"


def import_omiga(
    src,
    out,
    *,
    task: str,
    level: str,
    episode_limit: int = EPISODE_LIMITS["mamujoco"],
    rows: str | None = None,
    action_bound: float = 1.0,
    overwrite: bool = False,
    block_rows: int = 200_000,
    progress: Callable[[int, int], None] | None = None,
) -> Dataset:
    """Convert one OMIGA HDF5 file to an omgmg dataset at ``out``; see the module docstring."""
    import h5py

    if not re.fullmatch(r"[A-Za-z0-9]+-[0-9A-Za-z|_]+", task):
        raise RequestError(f"task {task!r} is not a MaMuJoCo task name like HalfCheetah-6x1")
    with fetched(src, out) as (path, origin):  # a URL's file fetched first (hf://: into the hub's cache)
        if not path.is_file():
            raise RequestError(f"no file at {src}")
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise DatasetError(f"{src} is not a readable HDF5 file ({e})") from None
        with f:
            imported = read_omiga(
                f, task=task, level=level, episode_limit=episode_limit, rows=rows, action_bound=action_bound,
                block_rows=block_rows,
            )  # fmt: skip
            return write_imported(imported, out, overwrite=overwrite, progress=progress, origin=origin)


def read_omiga(f, *, task: str, level: str, episode_limit: int, rows: str | None, action_bound: float, block_rows: int):
    """An open OMIGA file (h5py) as an :class:`~omgmg.datakit.importing.Imported`: its episodes are read
    ``block_rows`` rows at a time while they are written."""
    import h5py

    src = Path(f.filename)
    _check_keys(f, src)
    o, a = f["o"], f["a"]
    if o.ndim != 3 or a.ndim != 3:
        raise DatasetError(f"'o' and 'a' must be (T, N, dim); got {o.shape} and {a.shape}")
    T, N, O = o.shape
    if a.shape[:2] != (T, N) or f["s"].shape[0] != T:
        raise DatasetError(f"row counts or agent counts disagree: o {o.shape}, a {a.shape}, s {f['s'].shape}")
    ours = f.attrs.get("exported_by") == "omgmg" and OMGMG_STATE in f
    state = _our_state(src, f, T, N, O) if ours else _their_state(f, T, N, O)
    reward = team_values("r", np.asarray(f["r"]), T, N)
    done = team_values("d", np.asarray(f["d"]), T, N) > 0.5
    rows = "final-row" if f.attrs.get("exported_by") == "omgmg" and rows is None else rows
    rows = choose_rows(rows, done, episode_limit)
    if rows is None:
        raise RequestError(
            f"{src}: no episode reaches the {episode_limit}-step limit, so the rows cannot tell whether each "
            "episode ends with an extra final row (<<rows=final-row>>, OMIGA's own files) or d = 1 marks its "
            "last step (<<rows=last-step>>); say which"
        )
    bounds = episode_bounds(done, rows)
    if not bounds:
        raise DatasetError(f"{src} holds no complete episode")
    A = a.shape[2]
    spec = EnvSpec(
        suite="mamujoco",
        task=task,
        backend="omiga-hdf5",
        agent_ids=tuple(f"agent_{i}" for i in range(N)),
        obs_dims=state.obs_dims,
        state_dim=state.dim,
        action_spaces=state.action_spaces or tuple(Box((-action_bound,) * A, (action_bound,) * A) for _ in range(N)),
        episode_limit=episode_limit,
        options=state.options,
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
        "row_convention": f"{rows}: {ROW_CONVENTIONS[rows]}",
        "trailing_rows_rule": "rows after the last d=1 row form a truncated episode whose last row is its "
        "final observation",
        "stored_action": "as in the source file",
        "provenance": foreign_provenance(
            spec,
            ("h5py",),
            {"format": "OMIGA HDF5", "file": src.name, "exported_by": str(f.attrs.get("exported_by", ""))},
            also_unknown=("terminations vs truncations (inferred by the termination rule)",),
        ),
        **state.notes,
    }
    # what the behaviour policy did, where an omgmg export carried it beside OMIGA's keys (OMIGA's own files
    # do not record it)
    behaviour = {n: f[OMGMG_BEHAVIOUR.format(n)] for n in BEHAVIOUR_ARRAYS if ours and OMGMG_BEHAVIOUR.format(n) in f}
    bound = None if state.action_spaces else action_bound  # an omgmg export recorded its own bounds

    def episodes():
        for group in group_bounds(bounds, block_rows):
            lo, hi = group[0][0], group[-1][2] + 1
            obs, actions = np.asarray(o[lo:hi], np.float32), np.asarray(a[lo:hi], np.float32)
            states, rewards = state.read(lo, hi).astype(np.float32), reward[lo:hi].astype(np.float32)
            kept = {n: np.asarray(arr[lo:hi], np.float32) for n, arr in behaviour.items()}
            if bound is not None:
                check_action_bound(src, actions, bound)
            for start, stop, final in group:
                i, j, k = start - lo, stop - lo, final - lo
                truncated = stop - start >= episode_limit or not done[final]
                episode = dict(
                    obs=obs[i:j],
                    state=states[i:j],
                    actions=actions[i:j],
                    reward=rewards[i:j],
                    final_obs=obs[k],
                    final_state=states[k],
                    terminated=not truncated,
                    truncated=truncated,
                    **{f"behaviour_{n}": arr[i:j] for n, arr in kept.items()},
                )
                yield episode, (hi if (start, stop, final) == group[-1] else stop)

    return Imported(spec, level, collection, src, int(T), episodes(), tuple(behaviour))


def _check_keys(f, src: Path) -> None:
    import h5py

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


@dataclass
class _State:
    """Where the global state comes from in one file, and what that says of its observations."""

    read: Callable[[int, int], np.ndarray]
    """Rows lo:hi of the state, (rows, dim)."""
    dim: int
    obs_dims: tuple[int, ...]
    options: dict
    notes: dict
    """What the dataset's ``collection`` records of the layouts (state_layout, observation_layout)."""
    action_spaces: tuple[Box, ...] | None = None


def _their_state(f, T: int, N: int, O: int) -> _State:
    """The state of a file OMIGA (or anyone but omgmg) wrote: ``s`` as (T, S), or per agent (T, N, S)
    kept once when every agent's row is the same and concatenated otherwise; where ``s`` is ``o`` in OMIGA's
    observation layout, the state OMIGA's environment computes from it."""
    s, o = f["s"], f["o"]
    head = min(T, 1000)
    if s.ndim == 3 and s.shape[1] == N:
        s_first = np.asarray(s[:head])
        if np.all(s_first == s_first[:, :1]):
            state = _State(lambda lo, hi: np.asarray(s[lo:hi, 0]), s.shape[2], (O,) * N, {"obs_mode": "omiga"}, {})
        else:
            read = lambda lo, hi: np.asarray(s[lo:hi]).reshape(hi - lo, -1)  # noqa: E731
            state = _State(read, s.shape[2] * N, (O,) * N, {"obs_mode": "omiga"}, {"state_layout": STATE_FLATTENED})
    elif s.ndim == 2:
        state = _State(lambda lo, hi: np.asarray(s[lo:hi]), s.shape[1], (O,) * N, {"obs_mode": "omiga"}, {})
    else:
        raise DatasetError(f"'s' has shape {s.shape}; expected ({T}, {N}, S) or ({T}, S)")
    if s.shape != o.shape or not np.array_equal(s[:head], o[:head]):
        return state
    if is_omiga_observations(np.asarray(o[:head])):  # as OMIGA's environment writes them
        return _State(
            lambda lo, hi: znorm(np.asarray(o[lo:hi, 0, : O - N], np.float64)),
            O - N,
            (O,) * N,
            {"obs_mode": "omiga"},
            {
                "observation_layout": "OMIGA's: o_i = znorm(concat(x, onehot(i))) and s = o; the state is "
                "znorm(o_0[:S]) = znorm(x), as the environment computes it"
            },
        )
    state.options = {}
    state.notes["observation_layout"] = "s equals o, but o is not OMIGA's znorm(concat(x, onehot(i))) layout"
    return state


def _our_state(src: Path, f, T: int, N: int, O: int) -> _State:
    """An omgmg export: its own state, observation widths, action bounds and layout come back."""
    kept, obs_dims = _our_export_extras(src, f, T, N, O)
    source_s = str(f.attrs.get("s", "")).startswith("the source file's per-agent s")
    return _State(
        lambda lo, hi: np.asarray(kept[lo:hi]),
        kept.shape[1],
        obs_dims,
        {"obs_mode": "omiga"} if f.attrs.get("obs_mode") == "omiga" else {},
        # the state omgmg's export kept; still the source's per-agent s rows if it came from one
        {"state_layout": STATE_FLATTENED if source_s else f"kept by omgmg's export in {OMGMG_STATE}"},
        _our_action_spaces(f, N, f["a"].shape[2]),
    )


def _our_export_extras(src: Path, f, T: int, N: int, O: int):
    """The state array and observation widths an omgmg export keeps beside OMIGA's keys, checked:
    damage there is one line, not a traceback or a dataset of the wrong shape."""
    import h5py

    kept, widths = f[OMGMG_STATE], f.attrs.get("obs_dims")
    problem = None
    if not isinstance(kept, h5py.Dataset) or kept.ndim != 2 or kept.shape[0] != T:
        problem = f"{OMGMG_STATE} has shape {getattr(kept, 'shape', None)}, expected ({T}, S)"
    elif widths is None or len(widths) != N or not all(0 < int(w) <= O for w in widths):
        shown = None if widths is None else [int(w) for w in widths]
        problem = f"its obs_dims attribute is {shown}, expected {N} widths in 1..{O}"
    if problem:
        raise DatasetError(
            f"{src} says omgmg exported it, but {problem}: the file is damaged; export it again from its dataset"
        )
    return kept, tuple(int(w) for w in widths)


def _our_action_spaces(f, N: int, A: int) -> tuple[Box, ...] | None:
    """Each agent's action bounds as omgmg's export recorded them (exports before they were recorded: None)."""
    if "action_low" not in f.attrs:
        return None
    low, high = np.asarray(f.attrs["action_low"], float), np.asarray(f.attrs["action_high"], float)
    dims = np.asarray(f.attrs.get("action_dims", [A] * N), int)
    if low.shape != (N, A) or high.shape != (N, A) or dims.shape != (N,) or not all(0 < d <= A for d in dims):
        raise DatasetError(
            f"{f.filename} says omgmg exported it, but its action_low/action_high/action_dims attributes do not fit "
            f"{N} agents with {A} action entries: the file is damaged; export it again from its dataset"
        )
    return tuple(Box(tuple(low[i, :d]), tuple(high[i, :d])) for i, d in enumerate(dims))


def znorm(x: np.ndarray) -> np.ndarray:
    """Each row minus its own mean, over its own std (OMIGA's environment's normalisation). (rows, S)"""
    return (x - x.mean(axis=-1, keepdims=True)) / x.std(axis=-1, keepdims=True)


def is_omiga_observations(o: np.ndarray) -> bool:
    """Whether rows of o (T, N, O) are OMIGA's znorm(concat(x, onehot(i))): each agent's last N entries
    peak at its own index and are equal elsewhere, and every row has mean 0 and std 1."""
    T, N, O = o.shape
    if O <= N:
        return False
    tail = o[:, :, O - N :]  # (T, N, N)
    own = tail[:, np.arange(N), np.arange(N)]  # (T, N)
    others = np.where(np.eye(N, dtype=bool)[None], np.nan, tail)
    flat = np.nanmax(others, axis=2) - np.nanmin(others, axis=2) if N > 1 else np.zeros((T, N))
    return bool(
        np.all(own > np.nanmax(others, axis=2) if N > 1 else True)
        and np.allclose(flat, 0, atol=1e-5)
        and np.allclose(o.mean(axis=2), 0, atol=1e-4)
        and np.allclose(o.std(axis=2), 1, atol=1e-3)
    )


def omiga_file_name(dataset: Dataset) -> str:
    """The file name OMIGA's code loads a dataset from (``data_dir + f"{scenario}-{agent_conf}-{data_type}.hdf5"``
    with scenarios named like ``HalfCheetah-v2``): ``HalfCheetah-v2-6x1-medium.hdf5``."""
    scenario, _, conf = dataset.spec.task.partition("-")
    return f"{scenario}-v2-{conf}-{dataset.level or 'unknown'}.hdf5"


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
    N, O, A, S = ds.spec.n_agents, ds.spec.obs_dim, ds.spec.action_dim, ds.spec.state_dim
    rows = ds.n_transitions + ds.n_episodes
    make_parent(out)
    need = rows * 4 * (N * (2 * O + A) + S + 2) + (1 << 20)  # uncompressed float32 rows + headroom
    check_room(out.parent, need, out)
    tmp = out.with_name(f".{out.name}.partial")
    with OutputLock(out, "export"), read_lock(ds.path), os_errors(out, "exporting to"):
        try:
            # a file imported from OMIGA's layout with per-agent s rows goes back as it came
            source_s = ds.meta["collection"].get("state_layout") == STATE_FLATTENED and S == N * O
            _write_omiga(ds, tmp, N, O, S, A, rows, source_s, progress)
            os.replace(tmp, out)  # atomic: a reader sees the old export or the new one
            fsync_dir(out.parent)
        finally:
            tmp.unlink(missing_ok=True)
    return out


def _write_omiga(ds: Dataset, tmp: Path, N: int, O: int, S: int, A: int, rows: int, source_s: bool, progress) -> None:
    import h5py

    with h5py.File(tmp, "w") as f:
        dsets = {
            "o": f.create_dataset("o", (rows, N, O), "float32", chunks=(min(rows, 4096), N, O)),
            "s": f.create_dataset("s", (rows, N, O), "float32", chunks=(min(rows, 4096), N, O)),
            "a": f.create_dataset("a", (rows, N, A), "float32", chunks=(min(rows, 4096), N, A)),
            "r": f.create_dataset("r", (rows, 1), "float32", chunks=(min(rows, 65536), 1)),
            "d": f.create_dataset("d", (rows, 1), "float32", chunks=(min(rows, 65536), 1)),
            "state": f.create_dataset(OMGMG_STATE, (rows, S), "float32", chunks=(min(rows, 4096), S)),
        }
        for name in ds.behaviour_arrays:  # OMIGA's layout has no room for them: kept beside, as the state is
            tail = (N,) if name == "log_prob" else (N, A)
            dsets[name] = f.create_dataset(
                OMGMG_BEHAVIOUR.format(name), (rows, *tail), "float32", chunks=(min(rows, 4096), *tail)
            )
        f.attrs["exported_by"] = "omgmg"
        f.attrs["task"] = ds.spec.task
        f.attrs["obs_mode"] = ds.spec.options.get("obs_mode", "local")
        f.attrs["obs_dims"] = list(ds.spec.obs_dims)
        low, high, _ = ds.spec.action_bounds()  # each agent's bounds, (N, A), padded with 0
        f.attrs["action_low"], f.attrs["action_high"] = low, high
        f.attrs["action_dims"] = [space.dim for space in ds.spec.action_spaces]
        f.attrs["s"] = (
            "the source file's per-agent s"
            if source_s
            else "o: OMIGA's environment gives each agent's observation as its state (see omgmg.datakit.omiga)"
        )
        row = 0
        for ep in iter_episodes(ds, check=True):  # never write what validation rejects
            L = len(ep["reward"])
            obs = np.concatenate([ep["obs"], ep["final_obs"][None]])  # (L + 1, N, O)
            state = np.concatenate([ep["state"], ep["final_state"][None]])  # (L + 1, S)
            dsets["o"][row : row + L + 1] = obs
            dsets["s"][row : row + L + 1] = state.reshape(L + 1, N, O) if source_s else obs
            dsets["state"][row : row + L + 1] = state
            dsets["a"][row : row + L] = ep["actions"]  # the final row's action stays 0 (unused by OMIGA)
            dsets["r"][row : row + L, 0] = ep["reward"]
            dsets["d"][row + L, 0] = 1.0
            for name in ds.behaviour_arrays:  # the final row took no action: its entries stay 0
                dsets[name][row : row + L] = ep[f"behaviour_{name}"]
            row += L + 1
            if progress:
                progress(row, rows)
        f.flush()
        os.fsync(f.id.get_vfd_handle())
