"""Episodes in one flat stream of rows: the layout OMIGA's HDF5 files and OG-MARL's vaults share.

Such a file is a single time axis, episode after episode, with a done flag marking where each one ends.
Two conventions for that flag exist in the wild (:data:`ROW_CONVENTIONS`), and the data alone tell them
apart only where an episode runs to the time limit (:func:`detect_rows`); the importers ask otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from omgmg.datakit.errors import DatasetError, RequestError

ROW_CONVENTIONS = {
    "final-row": "each episode ends with an extra row, d = 1, holding its final observation (OMIGA's own "
    "files and OG-MARL's conversions of them)",
    "last-step": "d = 1 marks each episode's last real step; the file holds no final observations, so each "
    "episode's last observation stands in for it (only a time-limit truncation bootstraps from it)",
}


def team_values(name: str, x: np.ndarray, T: int, N: int) -> np.ndarray:
    """A per-step column, (T,), (T, 1) or per agent (T, N) with every agent equal, as (T,): omgmg stores one
    team value per step (a reward, a done flag)."""
    if x.shape in ((T,), (T, 1)):
        return x.reshape(T)
    if x.shape != (T, N):
        raise DatasetError(f"{name!r} has shape {x.shape}; expected ({T},), ({T}, 1) or ({T}, {N})")
    differ = np.flatnonzero((x != x[:, :1]).any(axis=1))
    if differ.size:
        raise DatasetError(
            f"{name!r} differs between agents at row {differ[0]}; omgmg stores one team value per step, "
            "so per-agent values cannot be imported"
        )
    return x[:, 0]


def choose_rows(rows: str | None, done: np.ndarray, episode_limit: int) -> str | None:
    """The row convention asked for (checked), else the one the d column shows (:func:`detect_rows`)."""
    if rows is not None and rows not in ROW_CONVENTIONS:
        raise RequestError(f"unknown row convention {rows!r}: choose {' or '.join(ROW_CONVENTIONS)}")
    return rows or detect_rows(done, episode_limit)


def detect_rows(done: np.ndarray, episode_limit: int) -> str | None:
    """The row convention the d column shows: a segment of ``episode_limit + 1`` rows is a full episode
    plus its final row, one of ``episode_limit`` rows and none longer is a full episode of last-step
    rows; None when no episode reaches the limit (every one terminated early: either fits)."""
    ends = np.flatnonzero(done)
    longest = int(np.diff(np.concatenate([[-1], ends])).max(initial=0))
    return {episode_limit + 1: "final-row", episode_limit: "last-step"}.get(longest)


def episode_bounds(done: np.ndarray, rows: str) -> list[tuple[int, int, int]]:
    """(first step row, end row exclusive, final-observation row) per episode from the d column."""
    finals = np.flatnonzero(done)
    bounds, start = [], 0
    for f in finals:
        if rows == "last-step":
            bounds.append((start, int(f) + 1, int(f)))
        elif f == start:
            raise DatasetError(f"row {f} has d=1 but the episode before it has no steps (two final rows in a row)")
        else:
            bounds.append((start, int(f), int(f)))
        start = int(f) + 1
    T = len(done)
    # trailing rows without a d = 1 row: a cut episode, its last row standing in as final observation
    # (final-row: the last row is not a step, so it takes two rows to hold one step)
    if start < T - (rows != "last-step"):
        bounds.append((start, T if rows == "last-step" else T - 1, T - 1))
    return bounds


def group_bounds(bounds: list[tuple[int, int, int]], block_rows: int) -> Iterator[list[tuple[int, int, int]]]:
    """Consecutive episodes grouped into reads of about ``block_rows`` rows."""
    group: list[tuple[int, int, int]] = []
    for b in bounds:
        if group and b[2] + 1 - group[0][0] > block_rows:
            yield group
            group = []
        group.append(b)
    if group:
        yield group
