"""The one loader every trainer uses: seeded, uniformly sampled minibatches of transitions.

    loader = TransitionLoader("hopper-medium.zarr", batch_size=256, seed=0)
    batch = loader.sample()          # Batch of torch tensors, batch first: obs (B, N, O), ...

Next observations come from the format's invariant 3: row ``t + 1`` inside an episode, the stored
``final_obs`` after an episode's last step. So a time-limit truncation bootstraps from the real
next state, and ``batch.terminated`` is 1 only for true terminal states:

    target = r + gamma * (1 - batch.terminated) * V(batch.next_obs)

**In-memory mode** (default) holds the steps once plus one final row per episode, ``(T + E, ...)``,
and an index ``next_index (T,)``, so no next-observation array is duplicated.

**Streaming mode** (``streaming=True``) keeps a bounded set of resident blocks (whole chunks of
consecutive steps) and samples uniformly among resident transitions; every ``swap_every`` batches
the oldest block is replaced by the next one of a seeded random permutation of all blocks, read by
a background thread while sampling continues. Over an epoch of blocks every transition is equally
likely to be drawn. Memory is about ``(resident_blocks + 1) * block_rows`` steps.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from datakit.dataset import Dataset, open_dataset
from datakit.errors import DatasetError


@dataclass
class Batch:
    """A minibatch of transitions, batch first. Float tensors are float32."""

    obs: torch.Tensor  # (B, N, O)
    state: torch.Tensor  # (B, S)
    actions: torch.Tensor  # (B, N, A) float32 (continuous) or (B, N) int64 (discrete)
    reward: torch.Tensor  # (B,) team reward
    next_obs: torch.Tensor  # (B, N, O)
    next_state: torch.Tensor  # (B, S)
    terminated: torch.Tensor  # (B,) 1.0 only where the step reached a true terminal state
    truncated: torch.Tensor  # (B,) 1.0 where the episode was cut after this step (still bootstrap)
    episode_start: torch.Tensor  # (B,) 1.0 where the step is the first of its episode
    avail: torch.Tensor | None = None  # (B, N, K) bool, discrete tasks
    next_avail: torch.Tensor | None = None  # (B, N, K) bool, discrete tasks

    def to(self, device) -> "Batch":
        return Batch(**{f.name: (None if (v := getattr(self, f.name)) is None else v.to(device, non_blocking=True))
                        for f in fields(self)})


@dataclass
class InitialStates:
    """Observations at episode starts (for objectives with an initial-state term, e.g. ComaDICE)."""

    obs: torch.Tensor  # (B, N, O)
    state: torch.Tensor  # (B, S)
    avail: torch.Tensor | None = None  # (B, N, K)


class _Table:
    """Steps plus one final row per episode, as tensors: the sampling table of either mode.

    Rows ``0 .. n_steps-1`` are steps; rows ``n_steps ..`` are final observations. ``next_index[t]``
    is the row holding step t's next observation/state/mask.
    """

    def __init__(self, steps: dict[str, np.ndarray], finals: dict[str, np.ndarray], next_index: np.ndarray,
                 starts: np.ndarray, device):
        self.n_steps = len(next_index)
        cat = lambda a, b: torch.from_numpy(np.ascontiguousarray(np.concatenate([a, b]))).to(device)  # noqa: E731
        self.obs = cat(steps["obs"], finals["final_obs"])  # (T + E, N, O)
        self.state = cat(steps["state"], finals["final_state"])  # (T + E, S)
        self.avail = cat(steps["avail"], finals["final_avail"]) if "avail" in steps else None  # (T + E, N, K)
        actions = steps["actions"]
        self.actions = torch.from_numpy(actions.astype(np.int64) if actions.dtype.kind == "i" else actions).to(device)
        self.reward = torch.from_numpy(steps["reward"]).to(device)  # (T,)
        self.terminated = torch.from_numpy(steps["terminated"].astype(np.float32)).to(device)  # (T,)
        self.truncated = torch.from_numpy((steps["truncated"] & ~steps["terminated"]).astype(np.float32)).to(device)
        start_flag = np.zeros(self.n_steps, np.float32)
        start_flag[starts] = 1.0
        self.episode_start = torch.from_numpy(start_flag).to(device)  # (T,)
        self.next_index = torch.from_numpy(next_index).to(device)  # (T,)
        self.starts = torch.from_numpy(starts.astype(np.int64)).to(device)  # (E_starts,)

    def gather(self, idx: torch.Tensor) -> Batch:
        nxt = self.next_index[idx]
        sel = lambda t, i: torch.index_select(t, 0, i)  # noqa: E731
        return Batch(
            obs=sel(self.obs, idx), state=sel(self.state, idx), actions=sel(self.actions, idx),
            reward=sel(self.reward, idx), next_obs=sel(self.obs, nxt), next_state=sel(self.state, nxt),
            terminated=sel(self.terminated, idx), truncated=sel(self.truncated, idx),
            episode_start=sel(self.episode_start, idx),
            avail=None if self.avail is None else sel(self.avail, idx),
            next_avail=None if self.avail is None else sel(self.avail, nxt),
        )


def _step_keys(ds: Dataset) -> list[str]:
    keys = ["obs", "state", "actions", "reward", "terminated", "truncated"]
    return keys + (["avail"] if ds.spec.discrete else [])


def _final_keys(ds: Dataset) -> list[str]:
    return ["final_obs", "final_state"] + (["final_avail"] if ds.spec.discrete else [])


def _read_block(ds: Dataset, start: int, stop: int, ends: np.ndarray, device) -> _Table:
    """A sampling table for steps ``start:stop``. Rows whose next observation lies past ``stop`` get
    it from one extra row read at ``stop``; episodes that end inside the block get their final rows."""
    T = ds.n_transitions
    first_ep = int(np.searchsorted(ends, start))  # episode containing row `start`
    last_ep = int(np.searchsorted(ends, stop - 1))  # episode containing row `stop - 1`
    ends_in = ends[first_ep:last_ep + 1]
    ends_in = ends_in[ends_in < stop]  # episodes ending inside the block
    n_end = len(ends_in)
    steps = {k: ds.read(f"steps/{k}", start, stop) for k in _step_keys(ds)}
    finals = {k: ds.read(f"episodes/{k}", first_ep, first_ep + n_end) for k in _final_keys(ds)}
    n = stop - start
    next_index = np.arange(1, n + 1, dtype=np.int64)
    local_ends = ends_in - start
    if stop < T and (n_end == 0 or local_ends[-1] != n - 1):
        # The block's last step continues into the next block: append row `stop` as its next obs.
        extra = {k: ds.read(f"steps/{k}", stop, stop + 1) for k in ("obs", "state")}
        if ds.spec.discrete:
            extra["avail"] = ds.read("steps/avail", stop, stop + 1)
        finals = {k: np.concatenate([finals[k], extra[k.removeprefix("final_")]]) for k in finals}
        next_index[n - 1] = n + n_end
    next_index[local_ends] = n + np.arange(n_end)
    starts = np.concatenate([[0] if (first_ep == 0 and start == 0) or (start - 1) in ends else [],
                             local_ends + 1]).astype(np.int64)
    starts = starts[starts < n]
    return _Table(steps, finals, next_index, starts, device)


class TransitionLoader:
    """Seeded uniform minibatches of transitions from one dataset. See the module docstring."""

    def __init__(self, dataset, batch_size: int = 256, *, seed: int = 0, device="cpu", streaming: bool = False,
                 block_rows: int | None = None, resident_blocks: int = 4, swap_every: int | None = None):
        self.ds = dataset if isinstance(dataset, Dataset) else open_dataset(Path(dataset))
        if self.ds.n_transitions == 0:
            raise DatasetError(f"{self.ds.path} holds no transitions; nothing to sample")
        if batch_size < 1:
            raise DatasetError(f"batch_size must be >= 1, got {batch_size}")
        self.spec = self.ds.spec
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.streaming = streaming
        self._gen = torch.Generator().manual_seed(seed)
        lengths = self.ds.episode_lengths()
        self._ends = np.cumsum(lengths) - 1  # (E,)
        if not streaming:
            self._table = _read_block(self.ds, 0, self.ds.n_transitions, self._ends, self.device)
            return
        # ----- streaming: bounded resident set of blocks, refreshed in the background ---------------
        T = self.ds.n_transitions
        chunk = self.ds.chunk_rows()
        self.block_rows = max(chunk, (block_rows or 4 * chunk) // chunk * chunk)
        self._blocks = [(a, min(T, a + self.block_rows)) for a in range(0, T, self.block_rows)]
        self.resident_blocks = max(1, min(resident_blocks, len(self._blocks)))
        self.swap_every = swap_every or max(1, self.block_rows // batch_size)
        self._rng = np.random.default_rng(seed)
        self._order: list[int] = []
        self._resident: list[_Table] = [self._load(self._next_block()) for _ in range(self.resident_blocks)]
        self._merge()
        self._since_swap = 0
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._prefetch()

    # ----- streaming internals ------------------------------------------------------------------
    def _next_block(self) -> int:
        if not self._order:
            self._order = list(self._rng.permutation(len(self._blocks)))
        return self._order.pop()

    def _load(self, b: int) -> _Table:
        start, stop = self._blocks[b]
        return _read_block(self.ds, start, stop, self._ends, torch.device("cpu"))

    def _prefetch(self) -> None:
        b = self._next_block()
        thread = threading.Thread(target=lambda: self._queue.put(self._load(b)), daemon=True)
        thread.start()

    def _merge(self) -> None:
        """One table over all resident blocks (row indices shifted per block)."""
        tabs = self._resident
        if len(tabs) == 1:
            self._table = _to_device(tabs[0], self.device)
            return
        merged = object.__new__(_Table)
        step_offsets = np.cumsum([0] + [t.n_steps for t in tabs])
        total_steps = int(step_offsets[-1])
        final_counts = [t.obs.shape[0] - t.n_steps for t in tabs]
        final_offsets = total_steps + np.cumsum([0] + final_counts)
        remap = []
        for t, so, fo in zip(tabs, step_offsets, final_offsets):
            ni = t.next_index.clone()
            is_final = ni >= t.n_steps
            ni[~is_final] += int(so)
            ni[is_final] += int(fo) - t.n_steps
            remap.append(ni)
        split = lambda name: [getattr(t, name) for t in tabs]  # noqa: E731
        both = lambda name: torch.cat(  # noqa: E731
            [getattr(t, name)[: t.n_steps] for t in tabs] + [getattr(t, name)[t.n_steps:] for t in tabs])
        merged.n_steps = total_steps
        merged.obs, merged.state = both("obs"), both("state")
        merged.avail = both("avail") if tabs[0].avail is not None else None
        for name in ("actions", "reward", "terminated", "truncated", "episode_start"):
            setattr(merged, name, torch.cat(split(name)))
        merged.next_index = torch.cat(remap)
        merged.starts = torch.cat([t.starts + int(so) for t, so in zip(tabs, step_offsets)])
        self._table = _to_device(merged, self.device)

    def _maybe_swap(self) -> None:
        self._since_swap += 1
        if self._since_swap < self.swap_every or len(self._blocks) <= self.resident_blocks:
            return
        try:
            fresh = self._queue.get_nowait()  # never wait on I/O if the next block is not ready yet
        except queue.Empty:
            return
        self._resident = self._resident[1:] + [fresh]
        self._merge()
        self._since_swap = 0
        self._prefetch()

    # ----- public -------------------------------------------------------------------------------
    def sample(self, batch_size: int | None = None) -> Batch:
        """One minibatch of uniformly sampled transitions."""
        if self.streaming:
            self._maybe_swap()
        idx = torch.randint(self._table.n_steps, (batch_size or self.batch_size,), generator=self._gen)
        return self._table.gather(idx.to(self.device))

    def sample_initial(self, batch_size: int | None = None) -> InitialStates:
        """Observations at uniformly sampled episode starts (resident ones in streaming mode)."""
        starts = self._table.starts
        if len(starts) == 0:  # streaming block inside one long episode: no start resident
            starts = torch.zeros(1, dtype=torch.long, device=self.device)
        pick = torch.randint(len(starts), (batch_size or self.batch_size,), generator=self._gen)
        rows = starts[pick.to(starts.device)]
        t = self._table
        return InitialStates(obs=t.obs[rows], state=t.state[rows], avail=None if t.avail is None else t.avail[rows])

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.sample()


def _to_device(table: _Table, device) -> _Table:
    if device.type == "cpu":
        return table
    for name in ("obs", "state", "avail", "actions", "reward", "terminated", "truncated", "episode_start",
                 "next_index", "starts"):
        v = getattr(table, name)
        if v is not None:
            setattr(table, name, v.to(device))
    return table


def iter_episodes(dataset, *, block_rows: int = 65536) -> Iterator[dict[str, np.ndarray]]:
    """Whole episodes in order, as dicts of numpy arrays (time first), read in blocks of whole episodes.

    Each dict has the ``steps/`` arrays (``obs`` (L, N, O), ``state``, ``actions``, ``reward``,
    ``terminated``, ``truncated``, ``avail`` where discrete), the episode's ``final_obs``,
    ``final_state`` (and ``final_avail``, ``won`` where present), ``return`` and ``index``.
    """
    ds = dataset if isinstance(dataset, Dataset) else open_dataset(Path(dataset))
    lengths = ds.episode_lengths()
    starts = np.cumsum(lengths) - lengths
    ep_keys = _final_keys(ds) + ["return"] + (["won"] if ds.spec.reports_wins else [])
    e = 0
    while e < len(lengths):
        # Group consecutive episodes until about block_rows steps, then read them in one go.
        f = e + 1
        while f < len(lengths) and starts[f] + lengths[f] - starts[e] <= block_rows:
            f += 1
        lo, hi = int(starts[e]), int(starts[f - 1] + lengths[f - 1])
        steps = {k: ds.read(f"steps/{k}", lo, hi) for k in _step_keys(ds)}
        eps = {k: ds.read(f"episodes/{k}", e, f) for k in ep_keys}
        for j in range(e, f):
            a, b = int(starts[j]) - lo, int(starts[j] + lengths[j]) - lo
            out = {k: v[a:b] for k, v in steps.items()}
            out.update({k: v[j - e] for k, v in eps.items()})
            out["index"] = j
            yield out
        e = f
