"""What a dataset covers, and how two datasets overlap (``omgmg-data inspect``, ``omgmg-data compare``).

**Coverage**, as OG-MARL measures it (``og_marl/vault_utils/analyse_vault.py``), so the numbers compare
with its dataset cards:

- ``joint_saco``: distinct (state, joint action) pairs over transitions, each value rounded to 4
  decimals (OG-MARL's ``get_saco``);
- ``oaco``: per agent, distinct (observation, action) pairs over transitions, averaged over agents,
  with the same rounding (OG-MARL's ``get_average_oaco`` does not round; with continuous values the
  difference is nil).

Rounding to 4 decimals is the only discretisation: for continuous simulators (MaMuJoCo) nearly every
pair is then distinct and coverage sits near 1 whatever the data, so it tells datasets apart mainly on
discrete tasks (SMACv2) and for duplicated data. Pairs are counted by a 64-bit hash of each rounded
row (two distinct rows share a hash with probability below 1e-7 in a million rows).

**Actions on a bound** (:func:`bound_share`): per agent, the share of its own continuous action
entries within 1e-6 of a bound. A behaviour policy whose samples were clipped stores many (a learner
with a tanh-Gaussian likelihood then fits atanh(+-1)); tanh-squashed policies store almost none.

**Overlap** (:func:`compare`): episodes are matched by the sha256 of their observations, actions and
rewards; two datasets of one task whose episodes are mostly shared (more than half of each), or whose
return distributions barely differ, are flagged: the "expert and mixed datasets that turned out
identical" failure. One dataset lying mostly inside the other (a medium dataset inside the
medium-expert one collected from the same policies and seeds, as that level is defined) is noted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omgmg.datakit.dataset import Dataset

DECIMALS = 4
BLOCK_ROWS = 65536
SAME_EPISODES = 0.5  # share of shared episodes above which two datasets are flagged
SAME_RETURNS = 0.05  # Kolmogorov-Smirnov distance of the returns below which two levels are flagged


def _row_hashes(rows: np.ndarray) -> np.ndarray:
    """A 64-bit hash per row of a (T, D) float array after rounding to DECIMALS. (T,) uint64"""
    ints = np.round(rows.astype(np.float64) * 10**DECIMALS).astype(np.int64).view(np.uint64)  # (T, D)
    salt = np.random.default_rng(12345).integers(1, 2**62, size=rows.shape[1]).astype(np.uint64) * np.uint64(2) + 1
    with np.errstate(over="ignore"):
        mixed = (ints ^ (ints >> np.uint64(29))) * salt  # (T, D)
        h = np.zeros(len(rows), np.uint64)
        for d in range(rows.shape[1]):  # order-dependent combination, wrapping mod 2^64
            h = (h * np.uint64(0x100000001B3)) ^ mixed[:, d]
    return h


def coverage(ds: Dataset) -> dict:
    """``joint_saco`` and ``oaco`` (see the module docstring), read in blocks."""
    T, N = ds.n_transitions, ds.spec.n_agents
    if T == 0:
        return {"joint_saco": None, "oaco": None, "decimals": DECIMALS}
    joint, per_agent = [], [[] for _ in range(N)]
    for lo in range(0, T, BLOCK_ROWS):
        hi = min(T, lo + BLOCK_ROWS)
        state = ds.read("steps/state", lo, hi)
        obs = ds.read("steps/obs", lo, hi)  # (B, N, O)
        actions = ds.read("steps/actions", lo, hi).reshape(hi - lo, N, -1).astype(np.float64)  # (B, N, A or 1)
        joint.append(_row_hashes(np.concatenate([state, actions.reshape(hi - lo, -1)], axis=1)))
        for i in range(N):
            per_agent[i].append(_row_hashes(np.concatenate([obs[:, i], actions[:, i]], axis=1)))
    joint_saco = len(np.unique(np.concatenate(joint))) / T
    oaco = float(np.mean([len(np.unique(np.concatenate(h))) / T for h in per_agent]))
    return {"joint_saco": float(joint_saco), "oaco": oaco, "decimals": DECIMALS}


BOUND_ATOL = 1e-6
BOUND_SHARE_WARNING = 0.02  # the card warns above this share of action entries on a bound


def bound_share(ds: Dataset, atol: float = BOUND_ATOL) -> list[float] | None:
    """Per agent, the share of its own action entries within ``atol`` of a bound of its action box, read
    in blocks; None for discrete actions or an empty dataset."""
    spec = ds.spec
    if spec.discrete or ds.n_transitions == 0:
        return None
    low, high, mask = spec.action_bounds()  # (N, A); mask 1 on each agent's own entries
    on_bound = np.zeros(spec.n_agents, np.int64)
    for lo in range(0, ds.n_transitions, BLOCK_ROWS):
        a = ds.read("steps/actions", lo, min(ds.n_transitions, lo + BLOCK_ROWS))  # (T, N, A)
        hit = (np.abs(a - low) <= atol) | (np.abs(a - high) <= atol)
        on_bound += (hit & (mask > 0)).sum(axis=(0, 2))
    return (on_bound / (ds.n_transitions * mask.sum(1))).tolist()


def episode_hashes(ds: Dataset) -> list[str]:
    """The sha256 of each episode's observations, states, actions, rewards, end flags and final observation
    and state (equal episodes, equal hashes; a copy differing anywhere in them, its final rows included,
    is another episode)."""
    out = []
    starts, lengths = ds.episode_starts(), ds.episode_lengths()
    e = 0
    while e < len(lengths):
        f = e + 1  # whole episodes, about BLOCK_ROWS rows per read
        while f < len(lengths) and starts[f] + lengths[f] - starts[e] <= BLOCK_ROWS:
            f += 1
        lo, hi = int(starts[e]), int(starts[f - 1] + lengths[f - 1])
        keys = ("obs", "state", "actions", "reward", "terminated", "truncated")
        block = {k: ds.read(f"steps/{k}", lo, hi) for k in keys}
        finals = {k: ds.read(f"episodes/{k}", e, f) for k in ("final_obs", "final_state")}
        for j in range(e, f):
            a, b = int(starts[j]) - lo, int(starts[j] + lengths[j]) - lo
            h = hashlib.sha256()
            for k in keys:
                h.update(np.ascontiguousarray(block[k][a:b]).tobytes())
            for v in finals.values():
                h.update(np.ascontiguousarray(v[j - e]).tobytes())
            out.append(h.hexdigest())
        e = f
    return out


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Kolmogorov-Smirnov distance between two samples' empirical distributions."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    if len(a) == 0 or len(b) == 0:
        return 1.0
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)).max())


@dataclass
class Comparison:
    names: tuple[str, str]
    same_task: bool
    episodes: tuple[int, int]
    shared: int
    """Distinct episodes found in both."""
    shared_share: tuple[float, float]
    """The share of each dataset's episodes also found in the other."""
    returns: tuple[np.ndarray, np.ndarray]
    ks: float
    coverage: tuple[dict, dict]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Overlap worth knowing that is not a warning: one dataset inside the other."""


def compare(a: Dataset, b: Dataset) -> Comparison:
    ha, hb = episode_hashes(a), episode_hashes(b)
    common = set(ha) & set(hb)
    share = (
        sum(h in common for h in ha) / max(len(ha), 1),
        sum(h in common for h in hb) / max(len(hb), 1),
    )
    ra, rb = a.read("episodes/return"), b.read("episodes/return")
    same_task = a.spec.identity() == b.spec.identity()
    c = Comparison(
        names=(a.path.name, b.path.name),
        same_task=same_task,
        episodes=(len(ha), len(hb)),
        shared=len(common),
        shared_share=share,
        returns=(ra, rb),
        ks=ks_distance(ra, rb),
        coverage=(coverage(a), coverage(b)),
    )
    levels = f"{a.level or '?'} and {b.level or '?'}"
    if not same_task:
        c.warnings.append(
            f"{c.names[0]} and {c.names[1]} are datasets of different tasks ({a.spec.name} on {a.spec.backend}, "
            f"{b.spec.name} on {b.spec.backend}): their returns are on different scales and they share no episode "
            "by construction"
        )
    if min(share) > SAME_EPISODES:  # each is mostly the other
        counts = [sum(h in common for h in x) for x in (ha, hb)]
        c.warnings.append(
            f"{levels} share {counts[0]} of {len(ha)} / {counts[1]} of {len(hb)} of their episodes: "
            + ("identical data" if min(share) == 1.0 else "largely the same data")
            + (" under two level names" if a.level != b.level else "")
        )
    elif max(share) > SAME_EPISODES:  # one lies inside the other (medium inside medium-expert, by definition)
        inner, outer = (0, 1) if share[0] >= share[1] else (1, 0)
        shared = round(share[inner] * c.episodes[inner])
        c.notes.append(
            f"{shared} of {c.names[inner]}'s {c.episodes[inner]} episodes are also in {c.names[outer]} "
            f"(which holds {c.episodes[outer]} episodes)"
        )
    if same_task and a.level != b.level and c.ks < SAME_RETURNS:
        c.warnings.append(
            f"{levels} of {a.spec.name} have nearly the same return distribution (KS distance {c.ks:.3f} < "
            f"{SAME_RETURNS}): the levels do not differ as their names say"
        )
    return c


def plot_comparison(c: Comparison, out) -> Path:
    """Both return distributions side by side (one PNG)."""
    from matplotlib.figure import Figure  # no pyplot: no process-wide backend or state

    out = Path(out)

    def bins(*returns):
        lo = float(min(r.min(initial=np.inf) for r in returns))
        hi = float(max(r.max(initial=-np.inf) for r in returns))
        return np.linspace(lo, hi if hi > lo else lo + 1, 41)

    # one return axis for two datasets of one task; each its own where the tasks (and return scales) differ
    shared = bins(*c.returns) if c.same_task else None
    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 2, sharex=c.same_task, sharey=c.same_task)
    for ax, name, r, colour in zip(axes, c.names, c.returns, ("tab:blue", "tab:orange")):
        ax.hist(r, bins=shared if c.same_task else bins(r), color=colour, alpha=0.85)
        ax.set_title(f"{name}\n{len(r)} episodes, mean {np.mean(r):.4g}", fontsize=9)
        ax.set_xlabel("episode return")
    axes[0].set_ylabel("episodes")
    fig.suptitle(f"shared episodes: {c.shared}   KS distance of returns: {c.ks:.3f}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out
