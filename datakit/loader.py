"""The one loader every trainer uses: seeded, uniformly sampled minibatches of transitions.

    loader = TransitionLoader("hopper-medium.zarr", batch_size=256, seed=0)
    batch = loader.sample()          # Batch of torch tensors, batch first: obs (B, N, O), ...

    loader = TransitionLoader("hopper-medium.zarr", batch_size=256, seed=[0, 1, 2])
    batch = loader.sample_members()  # one minibatch per member seed, stacked: obs (3, B, N, O), ...

With several seeds (the members of a batched training run, ``omgmg.members``) each seed has its own
generator, and member k's minibatches are exactly those a loader with seed k alone draws (in memory;
streaming members share the resident blocks, ordered by the first seed).

Next observations come from the format's invariant 3: row ``t + 1`` inside an episode, the stored
``final_obs`` after an episode's last step. So a time-limit truncation bootstraps from the real
next state, and ``batch.terminated`` is 1 only for true terminal states:

    target = r + gamma * (1 - batch.terminated) * V(batch.next_obs)

**In-memory mode** (default) holds the steps once plus one final row per episode, ``(T + E, ...)``,
and an index ``next_index (T,)``, so no next-observation array is duplicated. The values it loads
are checked against the format's invariants on the way in (finite values, padding, bounds, end
flags: the checks of ``omgmg-data validate`` that need no second read), so a trainer never starts on
data that validation rejects; every chunk's checksum is verified as it is decoded.

**Streaming mode** (``streaming=True``) keeps a bounded set of resident blocks (whole chunks of
consecutive steps, next observations resolved) and samples uniformly among resident transitions;
every ``swap_every`` batches the oldest block is replaced by the next one of a seeded random
permutation of all blocks, read by a background thread while sampling continues. Over an epoch of
blocks every transition is equally likely to be drawn, and the batches are a pure function of the
seed, as in memory. Memory: ``resident_blocks + 1`` blocks, with observations and states held twice
(current and next).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np
import torch

from omgmg.datakit.dataset import Dataset, open_dataset
from omgmg.datakit.errors import DatasetError, InvalidDatasetError
from omgmg.datakit.validate import check_episodes, check_steps


@dataclass
class Batch:
    """A minibatch of transitions, batch first. Float tensors are float32."""

    obs: torch.Tensor  # (B, N, O)
    state: torch.Tensor  # (B, S)
    actions: torch.Tensor  # (B, N, A) float32 (continuous) or (B, N) int64 (discrete)
    reward: torch.Tensor  # (B,) team reward
    next_obs: torch.Tensor  # (B, N, O)
    next_state: torch.Tensor  # (B, S)
    next_actions: torch.Tensor  # dataset action at o' (zeros after the episode's last step: none was taken)
    terminated: torch.Tensor  # (B,) 1.0 only where the step reached a true terminal state
    truncated: torch.Tensor  # (B,) 1.0 where the episode was cut after this step (still bootstrap)
    episode_start: torch.Tensor  # (B,) 1.0 where the step is the first of its episode
    avail: torch.Tensor | None = None  # (B, N, K) bool, discrete tasks
    next_avail: torch.Tensor | None = None  # (B, N, K) bool, discrete tasks
    index: torch.Tensor | None = None  # (B,) int64: each transition's row in steps/ (its place in the dataset)
    behaviour_log_prob: torch.Tensor | None = None  # (B, N) log pi_beta(a_i | o_i), where the dataset stores it

    def to(self, device) -> Batch:
        return Batch(
            **{
                f.name: (None if (v := getattr(self, f.name)) is None else v.to(device, non_blocking=True))
                for f in fields(self)
            }
        )


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

    def __init__(
        self,
        steps: dict[str, np.ndarray],
        finals: dict[str, np.ndarray],
        next_index: np.ndarray,
        starts: np.ndarray,
        device,
        first_row: int = 0,
    ):
        self.n_steps = len(next_index)
        self.index = torch.arange(first_row, first_row + self.n_steps, dtype=torch.int64, device=device)  # (T,)
        cat = lambda a, b: torch.from_numpy(np.ascontiguousarray(np.concatenate([a, b]))).to(device)  # noqa: E731
        self.obs = cat(steps["obs"], finals["final_obs"])  # (T + E, N, O)
        self.state = cat(steps["state"], finals["final_state"])  # (T + E, S)
        self.avail = cat(steps["avail"], finals["final_avail"]) if "avail" in steps else None  # (T + E, N, K)
        actions = np.concatenate([steps["actions"], finals["final_actions"]])  # final rows: no action taken
        self.actions = torch.from_numpy(actions.astype(np.int64) if actions.dtype.kind == "i" else actions).to(device)
        self.reward = torch.from_numpy(steps["reward"]).to(device)  # (T,)
        logp = steps.get("behaviour_log_prob")
        self.behaviour_log_prob = None if logp is None else torch.from_numpy(logp).to(device)  # (T, N)
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
            obs=sel(self.obs, idx),
            state=sel(self.state, idx),
            actions=sel(self.actions, idx),
            reward=sel(self.reward, idx),
            next_obs=sel(self.obs, nxt),
            next_state=sel(self.state, nxt),
            next_actions=sel(self.actions, nxt),
            terminated=sel(self.terminated, idx),
            truncated=sel(self.truncated, idx),
            episode_start=sel(self.episode_start, idx),
            avail=None if self.avail is None else sel(self.avail, idx),
            next_avail=None if self.avail is None else sel(self.avail, nxt),
            index=sel(self.index, idx),
            behaviour_log_prob=None if self.behaviour_log_prob is None else sel(self.behaviour_log_prob, idx),
        )


def _step_keys(ds: Dataset) -> list[str]:
    keys = ["obs", "state", "actions", "reward", "terminated", "truncated"]
    keys += [a.name for a in ds.layout if a.name.startswith("behaviour_")]  # what the behaviour policy did
    return keys + (["avail"] if ds.spec.discrete else [])


def _final_keys(ds: Dataset) -> list[str]:
    return ["final_obs", "final_state"] + (["final_avail"] if ds.spec.discrete else [])


def _read_block(ds: Dataset, start: int, stop: int, ends: np.ndarray, device, check: bool = False) -> _Table:
    """A sampling table for steps ``start:stop``. Rows whose next observation lies past ``stop`` get
    it from one extra row read at ``stop``; episodes that end inside the block get their final rows.
    With ``check``, the values read are checked against the format's invariants first."""
    T = ds.n_transitions
    first_ep = int(np.searchsorted(ends, start))  # episode containing row `start`
    last_ep = int(np.searchsorted(ends, stop - 1))  # episode containing row `stop - 1`
    ends_in = ends[first_ep : last_ep + 1]
    ends_in = ends_in[ends_in < stop]  # episodes ending inside the block
    n_end = len(ends_in)
    steps = {k: ds.read(f"steps/{k}", start, stop) for k in _step_keys(ds)}
    finals = {k: ds.read(f"episodes/{k}", first_ep, first_ep + n_end) for k in _final_keys(ds)}
    if check:
        _check_values(ds, start, steps, finals, ends_in - start, first_ep)
    finals["final_actions"] = np.zeros((n_end, *steps["actions"].shape[1:]), steps["actions"].dtype)
    n = stop - start
    next_index = np.arange(1, n + 1, dtype=np.int64)
    local_ends = ends_in - start
    if stop < T and (n_end == 0 or local_ends[-1] != n - 1):
        # The block's last step continues into the next block: append row `stop` as its next obs.
        extra = {k: ds.read(f"steps/{k}", stop, stop + 1) for k in ("obs", "state", "actions")}
        if ds.spec.discrete:
            extra["avail"] = ds.read("steps/avail", stop, stop + 1)
        finals = {k: np.concatenate([finals[k], extra[k.removeprefix("final_")]]) for k in finals}
        next_index[n - 1] = n + n_end
    next_index[local_ends] = n + np.arange(n_end)
    starts = np.concatenate(
        [[0] if (first_ep == 0 and start == 0) or (start - 1) in ends else [], local_ends + 1]
    ).astype(np.int64)
    starts = starts[starts < n]
    return _Table(steps, finals, next_index, starts, device, first_row=start)


def _check_values(ds: Dataset, start: int, steps: dict, finals: dict, local_ends: np.ndarray, first_ep: int) -> None:
    """The value checks of full validation on data already in memory; raises InvalidDatasetError."""
    is_last = np.zeros(len(steps["reward"]), bool)
    is_last[local_ends] = True
    problems = check_steps(ds.spec, steps, start, is_last)
    lengths = np.diff(np.concatenate([[-1], local_ends])).astype(np.int64)
    problems += check_episodes(ds.spec, {"length": lengths, **finals}, first_ep)
    if problems:
        raise InvalidDatasetError(ds.path, problems)


class _Slots:
    """Streaming's resident set: ``resident`` fixed slots of ``block_rows`` transitions each.

    Blocks arrive with their next observations already resolved (a Batch over the whole block), so a
    swap is one in-place copy into the oldest slot, and sampling is a plain gather.
    """

    def __init__(self, example: Batch, resident: int, block_rows: int, device):
        self.block_rows = block_rows
        self.names = [f.name for f in fields(Batch) if getattr(example, f.name) is not None]
        self.data = {
            n: torch.zeros(
                (resident * block_rows, *getattr(example, n).shape[1:]), dtype=getattr(example, n).dtype, device=device
            )
            for n in self.names
        }
        self.lengths = torch.zeros(resident, dtype=torch.long)

    def put(self, slot: int, block: Batch) -> None:
        n = block.reward.shape[0]
        lo = slot * self.block_rows
        for name in self.names:
            self.data[name][lo : lo + n].copy_(getattr(block, name), non_blocking=True)
        self.data["episode_start"][lo + n : lo + self.block_rows] = 0  # stale rows are never sampled
        self.lengths[slot] = n

    def rows(self, batch_size: int, gen: torch.Generator) -> torch.Tensor:
        """Uniformly drawn rows among the resident transitions."""
        slot = torch.multinomial(self.lengths.double(), batch_size, replacement=True, generator=gen)
        row = (torch.rand(batch_size, generator=gen, dtype=torch.float64) * self.lengths[slot]).long()
        return slot * self.block_rows + row

    def sample(self, batch_size: int, gen: torch.Generator) -> Batch:
        return self.gather(self.rows(batch_size, gen))

    def gather(self, idx: torch.Tensor) -> Batch:
        idx = idx.to(self.data["reward"].device)
        return Batch(**{n: torch.index_select(self.data[n], 0, idx) for n in self.names})

    def start_rows(self) -> torch.Tensor:
        return torch.nonzero(self.data["episode_start"]).flatten()


class TransitionLoader:
    """Seeded uniform minibatches of transitions from one dataset. See the module docstring.

    Streaming options: ``block_rows`` steps per block (rounded to whole chunks, default 4 chunks),
    ``resident_blocks`` blocks held at once, and ``reuse``: how often, on average, each resident
    transition is drawn before its block is swapped out (``swap_every`` overrides the derived
    number of batches between swaps).
    """

    def __init__(
        self,
        dataset,
        batch_size: int = 256,
        *,
        seed: int | list[int] = 0,
        device="cpu",
        streaming: bool = False,
        block_rows: int | None = None,
        resident_blocks: int = 4,
        reuse: float = 8.0,
        swap_every: int | None = None,
    ):
        self.ds = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
        if self.ds.n_transitions == 0:
            raise DatasetError(f"{self.ds.path} holds no transitions; nothing to sample")
        if batch_size < 1:
            raise DatasetError(f"batch_size must be >= 1, got {batch_size}")
        self.spec = self.ds.spec
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.streaming = streaming
        seeds = [int(s) for s in seed] if isinstance(seed, list | tuple) else [int(seed)]
        self._gens = [torch.Generator().manual_seed(s) for s in seeds]  # one per member
        self._gen = self._gens[0]
        lengths = self.ds.episode_lengths()
        self._ends = np.cumsum(lengths) - 1  # (E,)
        if not streaming:
            self._table = _read_block(self.ds, 0, self.ds.n_transitions, self._ends, self.device, check=True)
            return
        # ----- streaming: bounded resident set of blocks, refreshed in the background ---------------
        T = self.ds.n_transitions
        chunk = self.ds.chunk_rows()
        self.block_rows = max(chunk, (block_rows or 4 * chunk) // chunk * chunk)
        self._blocks = [(a, min(T, a + self.block_rows)) for a in range(0, T, self.block_rows)]
        self.resident_blocks = max(1, min(resident_blocks, len(self._blocks)))
        self.swap_every = swap_every or max(1, round(reuse * self.block_rows / batch_size))
        self._rng = np.random.default_rng(seeds[0])
        self._order: list[int] = []
        first = self._load(self._next_block())
        self._slots = _Slots(first, self.resident_blocks, self.block_rows, self.device)
        self._slots.put(0, first)
        for k in range(1, self.resident_blocks):
            self._slots.put(k, self._load(self._next_block()))
        self._oldest = 0
        self._since_swap = 0
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._prefetch()

    # ----- streaming internals ------------------------------------------------------------------
    def _next_block(self) -> int:
        if not self._order:
            self._order = list(self._rng.permutation(len(self._blocks)))
        return self._order.pop()

    def _load(self, b: int) -> Batch:
        """Read block b and resolve every row's next observation: a Batch over the whole block."""
        start, stop = self._blocks[b]
        table = _read_block(self.ds, start, stop, self._ends, torch.device("cpu"))
        block = table.gather(torch.arange(table.n_steps))
        if self.device.type == "cuda":  # page-locked, so the swap's copy to the device runs asynchronously
            block = Batch(
                **{f.name: None if (v := getattr(block, f.name)) is None else v.pin_memory() for f in fields(block)}
            )
        return block

    def _prefetch(self) -> None:
        b = self._next_block()

        def read() -> None:
            try:
                self._queue.put(self._load(b))
            except BaseException as e:  # noqa: BLE001 - handed to the sampling thread, raised there
                self._queue.put(e)

        threading.Thread(target=read, daemon=True).start()

    def _maybe_swap(self) -> None:
        self._since_swap += 1
        if self._since_swap < self.swap_every or len(self._blocks) <= self.resident_blocks:
            return
        # The next block was read in the background while the last swap_every batches were drawn; waiting
        # for it (rarely needed) keeps the sequence of batches a pure function of the seed.
        block = self._queue.get()
        if isinstance(block, BaseException):  # e.g. a damaged chunk met by the background read
            raise block
        self._slots.put(self._oldest, block)
        self._oldest = (self._oldest + 1) % self.resident_blocks
        self._since_swap = 0
        self._prefetch()

    # ----- public -------------------------------------------------------------------------------
    def state_dict(self, member: int = 0) -> dict:
        """The sampling stream's position of one member's seed, for checkpoints: a loader given it back
        with :meth:`load_state_dict` draws the same batches as the one it was taken from (in memory; a
        streaming loader resumes its random stream but refills its resident blocks afresh)."""
        return {"generator": self._gens[member].get_state()}

    def load_state_dict(self, state: dict, member: int = 0) -> None:
        self._gens[member].set_state(state["generator"])

    @property
    def members(self) -> int:
        """How many seeds (members) the loader draws for."""
        return len(self._gens)

    @property
    def resident_transitions(self) -> int:
        """Transitions the loader can currently draw from (all of them in memory mode)."""
        return int(self._slots.lengths.sum()) if self.streaming else self._table.n_steps

    def sample(self, batch_size: int | None = None) -> Batch:
        """One minibatch of uniformly sampled transitions (the first seed's stream)."""
        batch_size = batch_size or self.batch_size
        if self.streaming:
            self._maybe_swap()
            return self._slots.sample(batch_size, self._gen)
        idx = torch.randint(self._table.n_steps, (batch_size,), generator=self._gen)
        return self._table.gather(idx.to(self.device))

    def sample_members(self, batch_size: int | None = None) -> Batch:
        """One minibatch per member seed, stacked: (M, B, ...), gathered in one op from memory."""
        batch_size = batch_size or self.batch_size
        M = len(self._gens)
        if self.streaming:
            self._maybe_swap()
            rows = torch.cat([self._slots.rows(batch_size, g) for g in self._gens])
            flat = self._slots.gather(rows)
        else:
            n = self._table.n_steps
            rows = torch.cat([torch.randint(n, (batch_size,), generator=g) for g in self._gens])
            flat = self._table.gather(rows.to(self.device))
        return Batch(
            **{f.name: None if (v := getattr(flat, f.name)) is None else v.reshape(M, batch_size, *v.shape[1:])
               for f in fields(Batch)}
        )  # fmt: skip

    def sample_initial(self, batch_size: int | None = None) -> InitialStates:
        """Observations at uniformly sampled episode starts (resident ones in streaming mode)."""
        return self._initial(batch_size or self.batch_size, self._gen)

    def sample_initial_members(self, batch_size: int | None = None) -> InitialStates:
        """:meth:`sample_initial` per member seed, stacked: (M, B, ...)."""
        parts = [self._initial(batch_size or self.batch_size, g) for g in self._gens]
        stack = lambda name: None if getattr(parts[0], name) is None else torch.stack([getattr(p, name) for p in parts])  # noqa: E731
        return InitialStates(obs=stack("obs"), state=stack("state"), avail=stack("avail"))

    def _initial(self, batch_size: int, gen: torch.Generator) -> InitialStates:
        if self.streaming:
            starts = self._slots.start_rows()
            if len(starts) == 0:  # every resident block lies inside one long episode
                raise DatasetError("no episode start is resident; use larger streaming blocks")
            pick = starts[torch.randint(len(starts), (batch_size,), generator=gen).to(starts.device)]
            b = self._slots.gather(pick)
            return InitialStates(obs=b.obs, state=b.state, avail=b.avail)
        t = self._table
        rows = t.starts[torch.randint(len(t.starts), (batch_size,), generator=gen).to(t.starts.device)]
        return InitialStates(obs=t.obs[rows], state=t.state[rows], avail=None if t.avail is None else t.avail[rows])

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.sample()


def iter_episodes(
    dataset, *, stop: int | None = None, block_rows: int = 65536, check: bool = False
) -> Iterator[dict[str, np.ndarray]]:
    """Whole episodes in order (the first ``stop`` only, if given), as dicts of numpy arrays (time
    first), read in blocks of whole episodes. ``dataset``: a path or a :class:`Dataset` (also the
    committed part of an unfinished write, :func:`omgmg.datakit.writer.open_unfinished`). With ``check``,
    every block's values are checked against the format's invariants first (InvalidDatasetError, with the
    lines ``validate`` gives): what exports use, so they never write what validation rejects.

    Each dict has the ``steps/`` arrays (``obs`` (L, N, O), ``state``, ``actions``, ``reward``,
    ``terminated``, ``truncated``, ``avail`` where discrete, ``behaviour_log_prob`` and ``behaviour_pre_clip``
    where stored), the episode's ``final_obs``,
    ``final_state`` (and ``final_avail``, ``won`` where present), ``return`` and ``index``.
    """
    ds = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
    lengths = ds.episode_lengths()[:stop]
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
        if check:
            local_ends = (starts[e:f] + lengths[e:f] - 1 - lo).astype(np.int64)
            finals = {k: v for k, v in eps.items() if k.startswith("final_")}
            _check_values(ds, lo, steps, finals, local_ends, e)
        for j in range(e, f):
            a, b = int(starts[j]) - lo, int(starts[j] + lengths[j]) - lo
            out = {k: v[a:b] for k, v in steps.items()}
            out.update({k: v[j - e] for k, v in eps.items()})
            out["index"] = j
            yield out
        e = f
