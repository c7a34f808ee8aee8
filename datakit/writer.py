"""Writing a dataset one whole episode at a time, atomically and resumably.

    with DatasetWriter("hopper-medium.zarr", spec, level="medium") as w:
        for ep in episodes:
            w.add_episode(**ep)
    # on leaving the block: stats computed, full validation, rename into place

The writer never holds the dataset in memory: episodes are buffered until a few chunks of steps
have arrived, then appended to the store, in order, by a background thread (compression and disk
writes overlap with the caller's work; ``sync``, ``truncate`` and ``close`` wait for them, and a
failed append raises at the next of these or of ``flush``). Everything goes into ``.NAME.partial`` beside the target
and is renamed to ``NAME`` only after the finished store validated, so a crash never leaves a
half dataset under the final name. After a crash, a new writer with ``resume=True`` (the default)
truncates the partial store to its last committed episode and continues from there;
``n_episodes`` tells the caller where to pick up, and ``progress`` returns whatever JSON the caller
saved with :meth:`set_progress` at the last commit (e.g. the seed of the next episode).

A write serves one *request*: a JSON dict of everything that shapes the data (level, seed, budget,
behaviour checkpoint, ...), recorded in the partial store and in the finished dataset's
``collection.request``. A writer resumes only a partial store of the same request and refuses any
other with one line naming what differs (``resume=False`` starts over). A crash after the finished
metadata was written but before the rename leaves a complete store at ``.NAME.partial``: the next
writer for the same request validates it, renames it into place and reports ``finished``.

One writer per output: the writer holds an exclusive lock (:class:`omgmg.datakit.outputs.OutputLock`)
from construction until ``close``/``abort``; a second one is refused at once. ``overwrite=True``
replaces only an omgmg dataset (:func:`omgmg.datakit.outputs.check_replaceable`), never anything else.
"""

from __future__ import annotations

import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from omgmg.datakit import format as fmt
from omgmg.datakit.dataset import Dataset, _open_zarr_group, open_dataset, partial_path
from omgmg.datakit.errors import DatasetError, InvalidDatasetError, OutputError, RequestError
from omgmg.datakit.outputs import OutputLock, check_replaceable, fsync_dir, is_omgmg_dataset, os_errors, remove_output
from omgmg.datakit.spec import EnvSpec
from omgmg.datakit.validate import check_episodes, check_steps, validate

FLUSH_CHUNKS = 8
"""Default commit size in chunks of steps (about 16 MiB of observations): measured on SMAX
protoss_5v5 rollouts, one chunk per commit spent 2.2 s of a 1000-episode collection in the writer,
8 chunks 0.5 s."""


class DatasetWriter:
    """Append-only writer for one dataset; see the module docstring.

    ``chunk_rows`` overrides the chunk length shared by the ``steps/`` arrays (default: about 2 MiB
    of observations per chunk); ``flush_steps`` how many buffered steps trigger a commit (default:
    FLUSH_CHUNKS chunks: each append to a Zarr array costs a few milliseconds whatever its size, so
    appending a few large blocks is much faster than many small ones).
    """

    def __init__(
        self,
        path,
        spec: EnvSpec,
        *,
        level: str | None = None,
        behaviour_policy: dict | None = None,
        collection: dict | None = None,
        overwrite: bool = False,
        resume: bool = True,
        request: dict | None = None,
        flush_steps: int | None = None,
        chunk_rows: int | None = None,
        sources: tuple = (),
        behaviour_arrays: tuple[str, ...] = (),
    ):
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.spec = spec
        self.level = fmt.normalise_level(level)
        self.behaviour_policy = behaviour_policy
        self.request = _as_json(request)
        self.format_version = fmt.FORMAT_VERSION  # a resumed write keeps the format it was started in
        self.collection = dict(collection or {})
        if self.request is not None:
            self.collection["request"] = self.request
        self.overwrite, self.sources = overwrite, tuple(sources)
        self._check_target()
        fmt.check_behaviour_arrays(spec, behaviour_arrays)
        self.behaviour_arrays = tuple(behaviour_arrays)
        self._layout = fmt.array_layout(spec, self.behaviour_arrays)
        self._buffer: list[dict[str, np.ndarray]] = []
        self._buffered_steps = 0
        self.progress: dict = {}
        self._closed = False
        self.finished = False  # True when a finished write was found and moved into place: nothing to add
        self._io: ThreadPoolExecutor | None = None  # one thread: appends happen in order
        self._pending: list[Future] = []  # appends handed to the thread, oldest first
        self._lock = OutputLock(self.path, "dataset").acquire()
        try:
            with os_errors(self.partial, "preparing the unfinished write"):
                self._open(resume, chunk_rows)
        except BaseException:
            self._lock.release()
            raise
        if not self.finished:
            obs_chunk = self._group["steps/obs"].chunks[0]
            self.flush_steps = flush_steps or FLUSH_CHUNKS * obs_chunk

    def _check_target(self) -> None:
        if self.path.exists() or self.path.is_symlink():
            if not self.overwrite:
                raise RequestError(
                    f"{self.path} already exists; choose another path or replace it explicitly (<<overwrite=True>>)"
                )
            check_replaceable(self.path, owned=is_omgmg_dataset, what="an omgmg dataset", sources=self.sources)
        parent = self.path.parent
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"cannot write {self.path}: {parent} is a file, not a folder")
        if not parent.is_dir():
            raise OutputError(f"the folder {parent} does not exist; create it first")

    def _open(self, resume: bool, chunk_rows: int | None) -> None:
        import zarr

        if self.partial.exists() or self.partial.is_symlink():
            check_replaceable(self.partial, owned=is_omgmg_dataset, what="an unfinished omgmg write")
            if resume:
                self._group = _open_zarr_group(self.partial, mode="r+")
                self._resume()
                return
            remove_output(self.partial)
        self._group = zarr.open_group(store=str(self.partial), mode="w", zarr_format=3)
        step_chunk = chunk_rows or fmt.step_chunk_length(self.spec)
        for a in self._layout:
            rows = step_chunk if a.group == "steps" else fmt.chunk_length(a.tail, a.dtype)
            self._group.require_group(a.group).create_array(
                a.name,
                shape=(0, *a.tail),
                chunks=(rows, *a.tail),
                dtype=a.dtype,
                compressors=fmt.compressors(a.dtype),
                fill_value=0,
            )
        self.n_episodes, self.n_transitions = 0, 0
        self._commit()

    # ----- resume -------------------------------------------------------------------------------
    def _resume(self) -> None:
        attrs = dict(self._group.attrs)
        state = attrs.get(fmt.WRITER_ATTR)
        if not state:
            self._finish_interrupted_rename(attrs)
            return
        self.format_version = int(state.get("format_version", 1))
        if state["identity_sha256"] != fmt.identity_sha256(self.spec, self.format_version):
            raise RequestError(
                f"the unfinished write at {self.partial} is for another task or spec; start over (<<resume=False>>)"
            )
        differs = describe_difference(state.get("request"), self.request)
        if differs:
            raise RequestError(
                f"the unfinished write at {self.partial} was made for another request ({differs}); "
                "run that request again to finish it, or start over (<<resume=False>>)"
            )
        stored = fmt.behaviour_arrays(state)
        if stored != self.behaviour_arrays:
            if self.request is not None:
                raise RequestError(
                    f"the unfinished write at {self.partial} stores behaviour arrays {list(stored)}, this request "
                    f"{list(self.behaviour_arrays)} (an omgmg of another version began it); start over "
                    "(<<resume=False>>)"
                )
            # a store without a request (a behaviour run's training episodes) keeps the arrays it began with
            self.behaviour_arrays, self._layout = stored, fmt.array_layout(self.spec, stored)
        self.n_episodes, self.n_transitions = int(state["episodes"]), int(state["transitions"])
        self.progress = dict(state.get("progress", {}))
        for a in self._layout:  # drop rows a crash left behind after the last commit
            arr = self._group[a.key]
            rows = self.n_transitions if a.group == "steps" else self.n_episodes
            if arr.shape[0] != rows:
                arr.resize((rows, *a.tail))

    def _finish_interrupted_rename(self, meta: dict) -> None:
        """The partial store holds finished metadata: a crash came between the last metadata write and
        the rename. Same request and valid: move it into place; otherwise refuse."""
        if fmt.check_metadata(meta):
            raise DatasetError(
                f"{self.partial} is neither an unfinished nor a finished omgmg write; start over (<<resume=False>>)"
            )
        differs = describe_difference(meta.get("collection", {}).get("request"), self.request)
        if differs or meta["identity_sha256"] != fmt.identity_sha256(self.spec, meta["format_version"]):
            raise RequestError(
                f"{self.partial} holds a finished write for another request "
                f"({differs or 'another task or spec'}); start over (<<resume=False>>)"
            )
        problems = validate(self.partial)
        if problems:
            raise InvalidDatasetError(self.partial, problems)
        self._closed = self.finished = True
        _replace_atomically(self.partial, self.path, self.overwrite, self.sources)
        self._lock.release()

    def _commit_state(self) -> dict:
        return {
            "episodes": self.n_episodes,
            "transitions": self.n_transitions,
            "identity_sha256": fmt.identity_sha256(self.spec, self.format_version),
            "env": self.spec.to_json(),
            "progress": self.progress,
            "request": self.request,
            "format_version": self.format_version,
            **({"behaviour_arrays": list(self.behaviour_arrays)} if self.behaviour_arrays else {}),
        }

    def _commit(self) -> None:
        self._group.attrs[fmt.WRITER_ATTR] = self._commit_state()

    def _append(self, blocks: dict[str, np.ndarray], state: dict) -> None:
        """Append the blocks, then record them as committed (a crash in between leaves extra rows
        that the next resume drops)."""
        for key, block in blocks.items():
            # write_empty_chunks: store every chunk without first comparing it with the fill value
            # (episode data is rarely all zeros; the comparison cost 11-14% of the writer's CPU time)
            self._group[key].with_config({"write_empty_chunks": True}).append(block, axis=0)
        self._group.attrs[fmt.WRITER_ATTR] = state

    def _wait(self, keep: int = 0) -> None:
        """Block until at most ``keep`` background appends are left unfinished; re-raise the error
        of any that failed (an OSError as one line: the unfinished write stays resumable)."""
        while self._pending and (len(self._pending) > keep or self._pending[0].done()):
            with os_errors(self.partial, "appending episodes"):
                self._pending.pop(0).result()

    # ----- appending ----------------------------------------------------------------------------
    def add_episode(
        self,
        *,
        obs,
        state,
        actions,
        reward,
        final_obs,
        final_state,
        terminated: bool,
        truncated: bool,
        avail=None,
        final_avail=None,
        won: bool | None = None,
        behaviour_log_prob=None,
        behaviour_pre_clip=None,
    ) -> None:
        """Append one whole episode of L steps.

        obs (L, N, O), state (L, S), actions (L, N, A) or (L, N), reward (L,), avail (L, N, K) for
        discrete tasks; final_obs (N, O), final_state (S,), final_avail (N, K): what the environment
        returned after the last action. ``terminated``: the episode reached a terminal state;
        ``truncated``: it was cut (time limit) and bootstrapping through its end is correct.
        ``behaviour_log_prob`` (L, N) and ``behaviour_pre_clip`` (L, N, A): what the behaviour policy did,
        exactly when the writer's ``behaviour_arrays`` names them (``log_prob``, ``pre_clip``).
        """
        if self._closed:
            raise DatasetError(
                "this writer is closed" + (" (it found the write already finished)" if self.finished else "")
            )
        if not self._lock.held:
            raise DatasetError(f"this writer let go of {self.path} after an error; open a new DatasetWriter to resume")
        spec = self.spec
        if not (terminated or truncated):
            raise DatasetError(
                "an episode must end terminated or truncated; pass truncated=True for a time limit "
                "or an episode cut short by the collection budget"
            )
        if spec.discrete and (avail is None or final_avail is None):
            raise DatasetError(f"{spec.name} has discrete actions: pass avail and final_avail")
        if not spec.discrete and (avail is not None or final_avail is not None):
            raise DatasetError(f"{spec.name} has continuous actions: avail / final_avail do not apply")
        if spec.reports_wins and won is None:
            raise DatasetError(f"{spec.name} reports wins: pass won=True/False")
        L = int(np.shape(reward)[0]) if np.ndim(reward) else 0
        if L < 1:
            raise DatasetError("an episode needs at least one step (reward must have shape (L,) with L >= 1)")
        steps = {"obs": obs, "state": state, "actions": actions, "reward": reward}
        for name, value in (("log_prob", behaviour_log_prob), ("pre_clip", behaviour_pre_clip)):
            if (value is None) == (name in self.behaviour_arrays):
                raise DatasetError(
                    f"this writer stores behaviour arrays {list(self.behaviour_arrays) or 'none'}: pass "
                    f"behaviour_{name} exactly when they name {name}"
                )
            if value is not None:
                steps[f"behaviour_{name}"] = value
        if spec.discrete:
            steps["avail"] = avail
        ep = {"final_obs": final_obs, "final_state": final_state}
        if spec.discrete:
            ep["final_avail"] = final_avail
        row: dict[str, np.ndarray] = {}
        for a in self._layout:
            if a.group == "steps" and a.name in steps:
                row[a.key] = self._as(a, steps[a.name], (L, *a.tail))
            elif a.group == "episodes" and a.name in ep:
                row[a.key] = self._as(a, ep[a.name], (1, *a.tail), add_axis=True)
        flags_t = np.zeros(L, bool)
        flags_u = np.zeros(L, bool)
        flags_t[-1], flags_u[-1] = bool(terminated), bool(truncated)
        row["steps/terminated"], row["steps/truncated"] = flags_t, flags_u
        row["episodes/length"] = np.array([L], np.int64)
        row["episodes/return"] = np.array([row["steps/reward"].astype(np.float64).sum()])
        if spec.reports_wins:
            row["episodes/won"] = np.array([bool(won)])
        problems = check_steps(
            spec, {k.split("/")[1]: v for k, v in row.items() if k.startswith("steps/")}, is_last=np.arange(L) == L - 1
        )
        problems += check_episodes(spec, {k.split("/")[1]: v for k, v in row.items() if k.startswith("episodes/")})
        if problems:
            raise DatasetError(
                f"episode {self.n_episodes + len(self._buffer)} refused: " + "; ".join(str(p) for p in problems)
            )
        self._buffer.append(row)
        self._buffered_steps += L
        if self._buffered_steps >= self.flush_steps:
            self.flush()

    @staticmethod
    def _as(a: fmt.ArraySpec, value, shape: tuple[int, ...], add_axis: bool = False) -> np.ndarray:
        arr = np.asarray(value)
        if add_axis:
            arr = arr[None]
        if arr.shape != shape:
            want = shape[1:] if add_axis else shape
            got = arr.shape[1:] if add_axis else arr.shape
            raise DatasetError(f"{a.key} has shape {got}, expected {want} for this task")
        if a.dtype == np.bool_ and arr.dtype != np.bool_:
            raise DatasetError(f"{a.key} must be boolean, got {arr.dtype}")
        if np.issubdtype(a.dtype, np.integer) and not np.issubdtype(arr.dtype, np.integer):
            raise DatasetError(f"{a.key} must hold integer action indices, got {arr.dtype}")
        return np.ascontiguousarray(arr, dtype=a.dtype)

    @property
    def episodes_added(self) -> int:
        """Episodes added so far, flushed or still buffered (``n_episodes`` counts flushed ones)."""
        return self.n_episodes + len(self._buffer)

    @property
    def transitions_added(self) -> int:
        return self.n_transitions + self._buffered_steps

    def set_progress(self, progress: dict) -> None:
        """JSON-serialisable caller state saved with the next commit (returned as ``progress`` on resume)."""
        self.progress = dict(progress)

    def flush(self) -> None:
        """Hand the buffered episodes to the store and commit them (they survive a crash once the
        background append finishes; appends run in order, at most two wait behind the running one)."""
        blocks = (
            {a.key: np.concatenate([row[a.key] for row in self._buffer], axis=0) for a in self._layout}
            if self._buffer
            else {}
        )
        self.n_episodes += len(self._buffer)
        self.n_transitions += self._buffered_steps
        self._buffer, self._buffered_steps = [], 0
        state = self._commit_state()
        self._wait(keep=2)
        if self._io is None:
            self._io = ThreadPoolExecutor(1, thread_name_prefix="omgmg-writer")
        self._pending.append(self._io.submit(self._append, blocks, state))

    def sync(self) -> None:
        """Flush and wait until everything added so far is committed on disk."""
        self.flush()
        self._wait()

    def _finish_io(self) -> None:
        self._wait()
        if self._io is not None:
            self._io.shutdown()
            self._io = None

    def truncate(self, n_episodes: int) -> None:
        """Drop every episode after the first ``n_episodes`` (e.g. rows written after the checkpoint a
        training run resumes from) and commit."""
        self.sync()
        if not 0 <= n_episodes <= self.n_episodes:
            raise DatasetError(f"cannot truncate to {n_episodes} episodes: the store holds {self.n_episodes}")
        lengths = np.asarray(self._group["episodes/length"][:n_episodes])
        self.n_episodes, self.n_transitions = n_episodes, int(lengths.sum())
        for a in self._layout:
            rows = self.n_transitions if a.group == "steps" else self.n_episodes
            self._group[a.key].resize((rows, *a.tail))
        self._commit()

    # ----- finishing ----------------------------------------------------------------------------
    def close(self) -> Dataset:
        """Flush, write stats and metadata, validate fully, and rename into place. Returns the dataset."""
        if self._closed:
            return open_dataset(self.path)
        try:
            self.flush()
            self._finish_io()
            with os_errors(self.partial, "finishing the dataset"):
                g = self._group
                lengths = np.asarray(g["episodes/length"][:])
                returns = np.asarray(g["episodes/return"][:])
                won = np.asarray(g["episodes/won"][:]) if self.spec.reports_wins else None
                meta = fmt.build_metadata(
                    self.spec,
                    level=self.level,
                    behaviour_policy=self.behaviour_policy,
                    collection=self.collection,
                    stats=fmt.compute_stats(lengths, returns, won),
                    format_version=self.format_version,
                    behaviour=self.behaviour_arrays,
                )
                g.attrs.put(meta)  # replaces all attributes: the _writer marker goes away
                problems = validate(self.partial)
                if problems:
                    g.attrs[fmt.WRITER_ATTR] = self._commit_state()
                    raise InvalidDatasetError(self.partial, problems)
                self._closed = True
                _replace_atomically(self.partial, self.path, self.overwrite, self.sources)
        finally:  # finished or failed (the partial write is kept for a resume): let other writers at it
            self._lock.release()
        return open_dataset(self.path)

    def abort(self) -> None:
        """Throw the unfinished write away (for writers that cannot resume, e.g. a failed import)."""
        self._closed = True
        self._buffer = []
        try:
            self._finish_io()
        except Exception:  # noqa: BLE001 - the write is being thrown away anyway
            pass
        shutil.rmtree(self.partial, ignore_errors=True)
        self._lock.release()

    def release(self) -> None:
        """Keep the unfinished write for a later resume, and let other writers at it (after an error)."""
        if not self._closed:
            try:
                self._finish_io()
            finally:
                self._lock.release()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif not self._closed:
            # Interrupted: keep every whole episode received so far, so the write can resume.
            try:
                self.sync()
            finally:
                self._lock.release()


def open_unfinished(path) -> Dataset:
    """The episodes an unfinished write at ``path`` has committed so far, read-only, as a :class:`Dataset`
    (for :func:`omgmg.datakit.loader.iter_episodes`). A behaviour run's replay store stays unfinished
    so that the run can be extended, and collection reads it this way."""
    partial = partial_path(Path(path))
    group = _open_zarr_group(partial)
    state = dict(group.attrs).get(fmt.WRITER_ATTR)
    if not state or "episodes" not in state:
        raise DatasetError(f"{partial} is not an unfinished omgmg write")
    meta = {
        "format_version": int(state.get("format_version", 1)),
        **({"behaviour_arrays": state["behaviour_arrays"]} if state.get("behaviour_arrays") else {}),
        "level": None,
        "stats": {"episodes": int(state["episodes"]), "transitions": int(state["transitions"])},
    }
    return Dataset(partial, group, meta, EnvSpec.from_json(state["env"]))


def episode_arguments(episode: dict) -> dict:
    """The :meth:`DatasetWriter.add_episode` keywords of an episode from
    :func:`omgmg.datakit.loader.iter_episodes`: copies an episode from one store into another."""
    out = {k: episode[k] for k in ("obs", "state", "actions", "reward", "final_obs", "final_state")}
    out["terminated"], out["truncated"] = bool(episode["terminated"][-1]), bool(episode["truncated"][-1])
    if "avail" in episode:
        out["avail"], out["final_avail"] = episode["avail"], episode["final_avail"]
    if "won" in episode:
        out["won"] = bool(episode["won"])
    for name in ("behaviour_log_prob", "behaviour_pre_clip"):
        if name in episode:
            out[name] = episode[name]
    return out


def _as_json(value):
    """A JSON round trip, so a request compares equal to the one read back from the store."""
    import json

    return None if value is None else json.loads(json.dumps(value, sort_keys=True))


def describe_difference(stored: dict | None, wanted: dict | None) -> str:
    """'' when two requests agree, else "level: 'medium' (unfinished) vs 'random' (now); ..." over their
    flattened keys (``behaviour.train_steps``), top-level keys first, long hashes shortened."""
    if stored == wanted:
        return ""
    if stored is None or wanted is None:
        return "one of them records no request"
    a, b = _flatten(stored), _flatten(wanted)
    keys = sorted(set(a) | set(b), key=lambda k: (k.count("."), k))
    short = lambda v: repr(v[:12] + "...") if isinstance(v, str) and len(v) > 16 else repr(v)  # noqa: E731
    return "; ".join(
        f"{k}: {short(a.get(k))} (unfinished) vs {short(b.get(k))} (now)" for k in keys if a.get(k) != b.get(k)
    )


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _replace_atomically(src: Path, dst: Path, overwrite: bool, sources: tuple = ()) -> None:
    """Rename ``src`` to ``dst``; an existing ``dst`` (only with overwrite, and only an omgmg dataset)
    is moved aside first and deleted after the rename."""
    with os_errors(dst, "moving the finished dataset into place at"):
        if dst.exists() or dst.is_symlink():
            if not overwrite:
                raise RequestError(f"{dst} appeared while writing; the new data is kept at {src}")
            check_replaceable(dst, owned=is_omgmg_dataset, what="an omgmg dataset", sources=sources)
            trash = dst.with_name(f".{dst.name}.replaced")
            if trash.exists():
                shutil.rmtree(trash)
            dst.rename(trash)
            src.rename(dst)
            shutil.rmtree(trash)
        else:
            src.rename(dst)
        fsync_dir(dst.parent)
