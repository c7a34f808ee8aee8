"""Full validation of a dataset: every invariant of ``schemas/dataset-v3.md`` checked over every value.

The scan reads the store in blocks of whole chunks, so memory stays bounded whatever the dataset's
size. The same value checks (:func:`check_steps`, :func:`check_episodes`) are applied by the writer
to each episode as it arrives, so bad data is refused where it enters, not at the end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from omgmg.datakit import format as fmt
from omgmg.datakit import integrity
from omgmg.datakit.dataset import DamagedChunk, _open_zarr_group, read_rows
from omgmg.datakit.errors import Problem
from omgmg.datakit.remote import RemoteLocation, is_remote
from omgmg.datakit.spec import EnvSpec

RETURN_RTOL = 1e-5
RETURN_ATOL = 1e-3


def _rows_problem(key: str, bad: np.ndarray, offset: int, message: str, fix: str) -> list[Problem]:
    """One Problem naming the first bad row of a boolean row mask (and how many more there are)."""
    idx = np.flatnonzero(bad)
    if len(idx) == 0:
        return []
    more = f" ({len(idx) - 1} more rows)" if len(idx) > 1 else ""
    return [Problem(key, message + more, fix, index=int(idx[0]) + offset)]


def _any_rows(mask: np.ndarray) -> np.ndarray:
    """Reduce a (L, ...) boolean array to (L,) by any() over the trailing axes."""
    return mask.reshape(mask.shape[0], -1).any(axis=1) if mask.ndim > 1 else mask


def _pad_masks(spec: EnvSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """Boolean (N, O) mask of padded observation entries, and (N, A) of padded action entries."""
    obs_pad = np.arange(spec.obs_dim)[None, :] >= np.asarray(spec.obs_dims)[:, None]  # (N, O)
    if spec.discrete:
        return obs_pad, None
    dims = np.asarray([s.dim for s in spec.action_spaces])
    return obs_pad, np.arange(spec.action_dim)[None, :] >= dims[:, None]  # (N, A)


def check_observations(spec: EnvSpec, key: str, obs: np.ndarray, offset: int) -> list[Problem]:
    """obs (L, N, O): finite, and zero past each agent's own observation size."""
    problems = _rows_problem(
        key, _any_rows(~np.isfinite(obs)), offset, "non-finite value", "drop or repair the episode that produced it"
    )
    obs_pad, _ = _pad_masks(spec)
    if obs_pad.any():
        problems += _rows_problem(
            key,
            _any_rows((obs != 0) & obs_pad[None]),
            offset,
            "non-zero value in the padding past an agent's obs_dims",
            "pad observations with zeros (see EnvSpec.obs_dims)",
        )
    return problems


def check_avail(spec: EnvSpec, key: str, avail: np.ndarray, offset: int) -> list[Problem]:
    """avail (L, N, K): at least one available action per agent; none past an agent's own n."""
    problems = _rows_problem(
        key,
        ~avail.any(axis=2).all(axis=1),
        offset,
        "an agent has no available action",
        "every agent needs at least one available action (a no-op for dead agents)",
    )
    n = np.asarray([s.n for s in spec.action_spaces])
    pad = np.arange(spec.n_actions)[None, :] >= n[:, None]  # (N, K)
    if pad.any():
        problems += _rows_problem(
            key,
            _any_rows(avail & pad[None]),
            offset,
            "an action past the agent's action space is marked available",
            "mask actions >= the agent's n as unavailable",
        )
    return problems


def check_steps(
    spec: EnvSpec, block: dict[str, np.ndarray], offset: int = 0, is_last: np.ndarray | None = None
) -> list[Problem]:
    """Value checks for rows ``offset ..`` of the ``steps/`` arrays given in ``block`` (keyed by name).

    ``is_last`` (L,) marks rows that end an episode; when given, episode-boundary flags are checked.
    """
    problems = check_observations(spec, "steps/obs", block["obs"], offset)
    problems += _rows_problem(
        "steps/state",
        _any_rows(~np.isfinite(block["state"])),
        offset,
        "non-finite value",
        "drop or repair the episode that produced it",
    )
    problems += _rows_problem(
        "steps/reward",
        ~np.isfinite(block["reward"]),
        offset,
        "non-finite reward",
        "drop or repair the episode that produced it",
    )
    actions = block["actions"]
    if spec.discrete:
        avail = block["avail"]
        problems += check_avail(spec, "steps/avail", avail, offset)
        in_range = (actions >= 0) & (actions < spec.n_actions)  # (L, N)
        problems += _rows_problem(
            "steps/actions",
            ~in_range.all(axis=1),
            offset,
            f"action outside 0..{spec.n_actions - 1}",
            "store the executed action index",
        )
        safe = np.where(in_range, actions, 0)
        allowed = np.take_along_axis(avail, safe[..., None].astype(np.int64), axis=2)[..., 0]  # (L, N)
        problems += _rows_problem(
            "steps/actions",
            (in_range & ~allowed).any(axis=1),
            offset,
            "action is not available under steps/avail",
            "store the executed action and the mask the agent acted under",
        )
    else:
        finite = np.isfinite(actions)
        problems += _rows_problem(
            "steps/actions", _any_rows(~finite), offset, "non-finite action", "store the executed (clipped) action"
        )
        low, high, _ = spec.action_bounds()
        outside = finite & ((actions < low[None]) | (actions > high[None]))
        problems += _rows_problem(
            "steps/actions",
            _any_rows(outside),
            offset,
            "action outside the action space bounds",
            "store the executed action, clipped to the bounds in metadata.env.action_spaces",
        )
        _, act_pad = _pad_masks(spec)
        if act_pad is not None and act_pad.any():
            problems += _rows_problem(
                "steps/actions",
                _any_rows((actions != 0) & act_pad[None]),
                offset,
                "non-zero value in the padding past an agent's action dim",
                "pad actions with zeros",
            )
    problems += check_behaviour(spec, block, offset)
    if is_last is not None:
        ended = block["terminated"] | block["truncated"]
        problems += _rows_problem(
            "steps/terminated",
            ended & ~is_last,
            offset,
            "terminated or truncated set on a row that does not end its episode",
            "episodes/length and the end flags disagree; regenerate the dataset",
        )
        problems += _rows_problem(
            "steps/truncated",
            is_last & ~ended,
            offset,
            "episode ends with neither terminated nor truncated set",
            "mark the last step terminated (true end) or truncated (time limit / cut)",
        )
    return problems


def check_behaviour(spec: EnvSpec, block: dict[str, np.ndarray], offset: int = 0) -> list[Problem]:
    """The optional behaviour arrays of format 3, where ``block`` holds them: finite log-probabilities (at most
    0 for discrete actions), and pre-clip samples that clip to the stored actions with zero padding."""
    problems = []
    if "behaviour_log_prob" in block:
        logp = block["behaviour_log_prob"]
        problems += _rows_problem(
            "steps/behaviour_log_prob",
            _any_rows(~np.isfinite(logp)),
            offset,
            "non-finite log-probability",
            "store the behaviour policy's log-probability of the stored action",
        )
        if spec.discrete:
            problems += _rows_problem(
                "steps/behaviour_log_prob",
                _any_rows(logp > 1e-5),
                offset,
                "log-probability above 0 for a discrete action",
                "store log pi(a|o) under the available-action mask, not a density",
            )
    if "behaviour_pre_clip" in block:
        pre = block["behaviour_pre_clip"]
        low, high, _ = spec.action_bounds()
        _, act_pad = _pad_masks(spec)
        with np.errstate(invalid="ignore"):
            clipped = np.clip(pre, low[None], high[None])
        problems += _rows_problem(
            "steps/behaviour_pre_clip",
            _any_rows(~np.isfinite(pre) | (clipped != block["actions"]) | ((pre != 0) & act_pad[None])),
            offset,
            "clipped to the bounds it does not give the stored action (or is non-zero in the padding)",
            "store the sample before clipping and the clipped sample as the action",
        )
    return problems


def check_episodes(spec: EnvSpec, block: dict[str, np.ndarray], offset: int = 0) -> list[Problem]:
    """Value checks for rows ``offset ..`` of the ``episodes/`` arrays given in ``block``."""
    problems = _rows_problem(
        "episodes/length", block["length"] < 1, offset, "episode of length < 1", "episodes need at least one step"
    )
    problems += check_observations(spec, "episodes/final_obs", block["final_obs"], offset)
    problems += _rows_problem(
        "episodes/final_state",
        _any_rows(~np.isfinite(block["final_state"])),
        offset,
        "non-finite value",
        "drop or repair the episode that produced it",
    )
    if spec.discrete:
        problems += check_avail(spec, "episodes/final_avail", block["final_avail"], offset)
    return problems


def validate(path, *, block_rows: int | None = None) -> list[Problem]:
    """Every check of the spec over every value; returns the problems found (empty when valid)."""
    path = RemoteLocation(path) if is_remote(path) else Path(path)
    group = _open_zarr_group(path)
    meta = dict(group.attrs)
    if fmt.WRITER_ATTR in meta and "stats" not in meta:
        return [
            Problem("metadata", "this is an unfinished write", "resume the command that wrote it, or delete the folder")
        ]
    problems = fmt.check_metadata(meta)
    if problems:
        return problems
    spec = EnvSpec.from_json(meta["env"])
    problems = fmt.check_structure(group, spec, meta)
    if problems:
        return problems
    # every chunk present, whole and (format 2) matching its checksum, before anything is decoded
    layout = fmt.array_layout(spec, fmt.behaviour_arrays(meta))
    problems = integrity.check_chunks(group, [a.key for a in layout], meta["format_version"], checksums=True)
    if problems:
        return problems

    def whole(key: str) -> np.ndarray:
        return read_rows(group[key], key, 0, group[key].shape[0], path)

    try:
        ep = {name: whole(f"episodes/{name}") for name in ("length", "return")}
        won = whole("episodes/won") if spec.reports_wins else None
    except DamagedChunk as e:  # a format-1 chunk altered in place
        return [e.problem()]
    lengths = ep["length"].astype(np.int64)  # (E,)
    E, T = len(lengths), int(group["steps/obs"].shape[0])
    if int(lengths.sum()) != T or (lengths < 1).any():
        problems.append(
            Problem(
                "episodes/length",
                f"episode lengths sum to {int(lengths.sum())} "
                f"(min {int(lengths.min()) if E else 0}) but steps/ has {T} rows",
                "episode lengths must be >= 1 and sum to the number of steps",
            )
        )
        return problems
    ends = np.cumsum(lengths) - 1  # (E,) row index of each episode's last step
    episode_of_row_returns = np.zeros(E, np.float64)

    steps = [a for a in layout if a.group == "steps"]
    block = block_rows or max(group["steps/obs"].chunks[0], 1) * 4
    for start in range(0, T, block):
        stop = min(T, start + block)
        try:
            data = {a.name: read_rows(group[a.key], a.key, start, stop, path) for a in steps}
        except DamagedChunk as e:  # a format-1 chunk altered in place: it cannot be decoded
            return problems + [e.problem()]
        is_last = np.zeros(stop - start, bool)
        in_block = ends[(ends >= start) & (ends < stop)]
        is_last[in_block - start] = True
        problems += check_steps(spec, data, start, is_last)
        # per-episode return sums: episode index of each row in this block
        first_ep = int(np.searchsorted(ends, start))
        ep_idx = first_ep + np.concatenate([[0], np.cumsum(is_last[:-1])]).astype(np.int64)
        episode_of_row_returns += np.bincount(ep_idx, weights=data["reward"].astype(np.float64), minlength=E)[:E]

    ep_arrays = [a for a in layout if a.group == "episodes"]
    eblock = 65536
    for start in range(0, E, eblock):
        try:
            data = {a.name: read_rows(group[a.key], a.key, start, min(E, start + eblock), path) for a in ep_arrays}
        except DamagedChunk as e:
            return problems + [e.problem()]
        problems += check_episodes(spec, data, start)

    mismatch = ~np.isclose(ep["return"], episode_of_row_returns, rtol=RETURN_RTOL, atol=RETURN_ATOL)
    problems += _rows_problem(
        "episodes/return",
        mismatch,
        0,
        "does not equal the sum of the episode's steps/reward",
        "recompute episodes/return from the rewards",
    )
    problems += _check_stats(meta["stats"], fmt.compute_stats(lengths, ep["return"], won))
    return problems


def _check_stats(stored: dict, actual: dict) -> list[Problem]:
    problems = []
    for key in ("episodes", "transitions"):
        if stored[key] != actual[key]:
            problems.append(
                Problem(
                    f"metadata.stats.{key}",
                    f"is {stored[key]} but the arrays hold {actual[key]}",
                    "rewrite the stats from the data",
                )
            )
    for key in ("return", "episode_length"):
        s, a = stored[key], actual[key]
        if (s is None) != (a is None) or (
            a is not None
            and not all(
                np.isclose(s[k], a[k], rtol=RETURN_RTOL, atol=RETURN_ATOL) for k in ("mean", "std", "min", "max")
            )
        ):
            problems.append(
                Problem(f"metadata.stats.{key}", f"is {s} but the data gives {a}", "rewrite the stats from the data")
            )
    s, a = stored["win_rate"], actual["win_rate"]
    if (s is None) != (a is None) or (a is not None and not np.isclose(s, a)):
        problems.append(
            Problem("metadata.stats.win_rate", f"is {s} but episodes/won gives {a}", "rewrite the stats from the data")
        )
    return problems
