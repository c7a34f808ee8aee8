"""``omgmg-data verify``: re-simulate stored episodes and compare them with the data, step by step.

The environment is rebuilt from the dataset's metadata (its task, backend and options; the recorded
construction and package versions in ``collection.provenance``), each chosen episode is reset from its
recorded seed and driven by its stored actions, and every step's reward, end flags and next
observation, state and action mask are compared with what the dataset holds. MaMuJoCo and SMAX are
deterministic given the seed and the actions, so on the recorded package versions the replay is exact
(the default tolerance is 0); elsewhere ``atol`` states the tolerance used.

SMAX is replayed in a vector env of as many envs as one simulator call stepped during collection
(``provenance.rollout.envs_per_simulator_call``; 32 for the default collection), the episode in its
first lane: JAX compiles the step once per batch size, and a step compiled for one env rounds some
floats differently (by ~1e-7) from one compiled for 32.

An episode's replay stops at its first mismatching step (every later step follows from it); each
mismatching field there is one :class:`Mismatch`. A seeded episode cut by the collection budget ends
truncated in the data while the environment runs on: accepted where it is the last episode of its
seed range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from omgmg.collectors.envs import check_compatible, make_vector_env, task_for_dataset
from omgmg.datakit.dataset import Dataset, open_dataset
from omgmg.datakit.errors import RequestError
from omgmg.datakit.provenance import episode_seed, seeded_episodes, version_differences


@dataclass(frozen=True)
class Mismatch:
    episode: int
    step: int
    field: str
    detail: str

    def __str__(self) -> str:
        return f"episode {self.episode}, step {self.step}: {self.field} {self.detail}"


@dataclass
class VerifyReport:
    episodes: list[int]
    """The episodes replayed."""
    mismatches: list[Mismatch] = field(default_factory=list)
    version_warnings: list[str] = field(default_factory=list)
    atol: float = 0.0
    unseeded: int = 0
    """Episodes the dataset holds without a recorded seed (not replayable)."""
    seeded: int = 0
    """Episodes with a recorded seed (of which ``episodes`` were replayed)."""

    @property
    def ok(self) -> bool:
        return not self.mismatches


def verify(
    dataset,
    episodes: int | None = 10,
    *,
    atol: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Replay ``episodes`` seeded episodes (spread evenly over the dataset; None: all of them)."""
    ds = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
    provenance = ds.meta.get("collection", {}).get("provenance") or {}
    seeded = seeded_episodes(provenance)
    if not seeded:
        source = ds.meta.get("collection", {}).get("source")
        raise RequestError(
            f"{ds.path} cannot be replayed: no seeds (its episodes have no recorded reset seed"
            + (f"; it was imported from {source}" if source else "; it predates recorded seeds or was not rolled out")
            + ")"
        )
    if episodes is not None and episodes < len(seeded):
        seeded = [seeded[int(i)] for i in np.linspace(0, len(seeded) - 1, episodes).round()]
    report = VerifyReport(
        seeded=len(seeded_episodes(provenance)),
        episodes=seeded,
        version_warnings=version_differences(provenance.get("packages", {})),
        atol=atol,
        unseeded=ds.n_episodes - len(seeded_episodes(provenance)),
    )
    ref = task_for_dataset(ds.spec)
    lanes = (
        provenance.get("rollout", {}).get("envs_per_simulator_call", DEFAULT_SMAX_LANES) if ref.backend == "smax" else 1
    )
    vec = make_vector_env(ref, lanes)
    try:
        check_compatible(ds.spec, vec.spec)
        range_ends = {first + count - 1 for first, count, _ in provenance["episode_seeds"]}
        bounds = (ds.episode_starts(), ds.episode_lengths())  # read once, not once per episode
        for k, e in enumerate(seeded):
            report.mismatches += _replay(ds, vec, e, episode_seed(provenance, e), atol, e in range_ends, bounds)
            if progress:
                progress(k + 1, len(seeded))
    finally:
        vec.close()
    return report


def _read_episode(ds: Dataset, e: int, starts: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
    start = int(starts[e])
    stop = start + int(lengths[e])
    out = {}
    for a in ds.layout:
        out[a.name] = ds.read(a.key, start, stop) if a.group == "steps" else ds.read(a.key, e, e + 1)[0]
    return out


def _replay(ds: Dataset, vec, e: int, seed: int, atol: float, cut_ok: bool, bounds) -> list[Mismatch]:
    """Episode e in the vector env's first lane (the others wait, inactive); ``bounds``: (starts, lengths)."""
    ep = _read_episode(ds, e, *bounds)
    L = len(ep["reward"])
    r = vec.reset(seed)  # env 0 starts from the seed itself
    found = _compare(e, 0, "at reset", ep["obs"][0], ep["state"][0], ep.get("avail", [None])[0], _lane(r), atol)
    if found:
        return found
    active = np.zeros(vec.num_envs, bool)
    active[0] = True
    actions = np.zeros((vec.num_envs, *ep["actions"].shape[1:]), ep["actions"].dtype)
    for t in range(L):
        actions[0] = ep["actions"][t]
        s = _Step(vec.step(actions, active=active))
        last = t == L - 1
        found = []
        if not np.isclose(np.float32(s.reward), ep["reward"][t], rtol=0, atol=atol):
            found.append(Mismatch(e, t, "reward", f"stored {ep['reward'][t]:.9g}, replayed {np.float32(s.reward):.9g}"))
        done = s.terminated or s.truncated
        if not last:
            if done:
                found.append(Mismatch(e, t, "episode end", f"the data goes on; the replay {_ended(s)} here"))
            else:
                found += _compare(e, t, "next", ep["obs"][t + 1], ep["state"][t + 1], _row(ep, "avail", t + 1), s, atol)
        else:
            stored_t, stored_u = bool(ep["terminated"][t]), bool(ep["truncated"][t])
            if stored_t != bool(s.terminated):
                found.append(Mismatch(e, t, "terminated", f"stored {stored_t}, replayed {bool(s.terminated)}"))
            elif not stored_t and stored_u and not s.truncated and not (cut_ok and not done):
                found.append(Mismatch(e, t, "truncated", f"stored True, replayed {bool(s.truncated)}"))
            found += _compare(e, t, "final", ep["final_obs"], ep["final_state"], ep.get("final_avail"), s, atol)
            if ds.spec.reports_wins and bool(ep["won"]) != bool(s.info.get("won", False)):
                found.append(Mismatch(e, t, "won", f"stored {bool(ep['won'])}, replayed {bool(s.info.get('won'))}"))
        if found:
            return found
    return []


DEFAULT_SMAX_LANES = 32  # the default collection: 64 envs in 2 parts


class _Lane:
    """obs/state/avail of lane 0 of a vector reset."""

    def __init__(self, obs, state, avail):
        self.obs, self.state, self.avail = obs, state, avail


def _lane(r) -> _Lane:
    return _Lane(r.obs[0], r.state[0], None if r.avail is None else r.avail[0])


class _Step(_Lane):
    """Lane 0 of a vector step as a single env's step: at an episode end, the final observation."""

    def __init__(self, v):
        self.reward, self.terminated, self.truncated = float(v.reward[0]), bool(v.terminated[0]), bool(v.truncated[0])
        done = self.terminated or self.truncated
        obs, state, avail = (v.final_obs, v.final_state, v.final_avail) if done else (v.obs, v.state, v.avail)
        super().__init__(obs[0], state[0], None if avail is None else avail[0])
        self.info = {"won": bool(v.won[0])}


def _row(ep: dict, key: str, t: int):
    return ep[key][t] if key in ep else None


def _ended(s) -> str:
    return "terminated" if s.terminated else "was truncated"


def _compare(e: int, t: int, which: str, obs, state, avail, got, atol: float) -> list[Mismatch]:
    out = []
    for name, stored, replayed in (("obs", obs, got.obs), ("state", state, got.state), ("avail", avail, got.avail)):
        if stored is None:
            continue
        stored, replayed = np.asarray(stored), np.asarray(replayed)
        if stored.shape != replayed.shape:
            out.append(Mismatch(e, t, f"{which} {name}", f"shape stored {stored.shape}, replayed {replayed.shape}"))
            continue
        if stored.dtype == bool:
            bad = stored != replayed
        else:
            bad = ~np.isclose(stored.astype(np.float64), replayed.astype(np.float64), rtol=0, atol=atol)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            if stored.dtype == bool:
                detail = f"differs in {int(bad.sum())} entries (first at {where})"
            else:
                diff = np.abs(stored.astype(np.float64) - replayed.astype(np.float64))
                detail = f"differs in {int(bad.sum())} entries, by up to {diff.max():.3g} (first at {where})"
            out.append(Mismatch(e, t, f"{which} {name}", detail))
    return out
