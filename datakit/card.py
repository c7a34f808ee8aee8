"""The dataset card: what ``omgmg-data inspect`` shows, as a dict, a rich renderable and a histogram."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from omgmg.datakit.coverage import BLOCK_ROWS, BOUND_ATOL, BOUND_SHARE_WARNING, bound_share, coverage
from omgmg.datakit.dataset import Dataset


def card(ds: Dataset) -> dict:
    """Everything the card shows, JSON-serialisable. Flat keys first, then nested detail."""
    m, spec = ds.meta, ds.spec
    ret = m["stats"]["return"] or {}
    length = m["stats"]["episode_length"] or {}
    arrays = []
    for a in ds.layout:
        arr = ds.array(a.key)
        arrays.append(
            {
                "name": a.key,
                "shape": list(arr.shape),
                "dtype": str(arr.dtype),
                "chunks": list(arr.chunks),
                "stored_bytes": int(arr.nbytes_stored()),
                "bytes": int(arr.nbytes),
            }
        )
    return {
        "path": str(ds.path),
        "format_version": m["format_version"],
        "suite": spec.suite,
        "task": spec.task,
        "backend": spec.backend,
        "level": m["level"],
        "n_agents": spec.n_agents,
        "action_type": "discrete" if spec.discrete else "continuous",
        "obs_dim": spec.obs_dim,
        "state_dim": spec.state_dim,
        "action_dim": spec.n_actions if spec.discrete else spec.action_dim,
        "n_episodes": m["stats"]["episodes"],
        "n_transitions": m["stats"]["transitions"],
        "return_mean": ret.get("mean"),
        "return_std": ret.get("std"),
        "return_min": ret.get("min"),
        "return_max": ret.get("max"),
        "episode_length_mean": length.get("mean"),
        "episode_length_min": length.get("min"),
        "episode_length_max": length.get("max"),
        "win_rate": m["stats"]["win_rate"],
        "terminated_episodes": int(np.asarray(ds.read("steps/terminated")).sum()),
        "stored_bytes": sum(a["stored_bytes"] for a in arrays),
        "created": m["created"],
        "omgmg_version": m["omgmg_version"],
        "env": spec.to_json(),
        "behaviour_policy": m["behaviour_policy"],
        "coverage": coverage(ds),
        "bound_share": bound_share(ds),
        "behaviour_arrays": behaviour_summary(ds),
        "collection": m["collection"],
        "arrays": arrays,
    }


def behaviour_summary(ds: Dataset) -> dict:
    """What the stored behaviour arrays say, read in blocks: the mean log-probability per agent, and the
    share of own action entries a clipping policy clipped."""
    out = {}
    T = ds.n_transitions
    if "log_prob" in ds.behaviour_arrays and T:
        total = np.zeros(ds.spec.n_agents)
        for lo in range(0, T, BLOCK_ROWS):
            total += ds.read("steps/behaviour_log_prob", lo, min(T, lo + BLOCK_ROWS)).astype(np.float64).sum(0)
        out["log_prob_mean"] = (total / T).tolist()
    if "pre_clip" in ds.behaviour_arrays and T:
        _, _, mask = ds.spec.action_bounds()
        clipped = 0
        for lo in range(0, T, BLOCK_ROWS):
            hi = min(T, lo + BLOCK_ROWS)
            differs = ds.read("steps/behaviour_pre_clip", lo, hi) != ds.read("steps/actions", lo, hi)
            clipped += int((differs & (mask > 0)).sum())
        out["clipped_share"] = clipped / (T * mask.sum())
    return out


def bound_share_line(shares: list[float] | None) -> tuple[str, str | None]:
    """The card's line about actions on a bound, and a warning above :data:`BOUND_SHARE_WARNING`."""
    if shares is None:
        return "-", None
    mean = float(np.mean(shares))
    per_agent = ", ".join(f"{100 * x:.2f}%" for x in shares)
    line = f"{100 * mean:.2f}% of action entries within {BOUND_ATOL:g} of a bound (per agent {per_agent})"
    worst = max(shares)
    if worst <= BOUND_SHARE_WARNING:
        return line, None
    return line, (
        f"{100 * worst:.1f}% of an agent's action entries sit on a bound (over {100 * BOUND_SHARE_WARNING:.0f}%): a "
        "learner with a tanh-Gaussian likelihood (OMGMG, OMIGA, BC, ...) fits atanh(+-1) there, and its behaviour "
        "term then swamps the rest (docs/collecting.md); `omgmg train --censor-bound-actions` treats it"
    )


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _num(x) -> str:
    return "-" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))


def _provenance_rows(p: dict | None, n_episodes: int) -> list[tuple[str, str]]:
    """The card's lines for ``collection.provenance`` (omgmg.datakit.provenance)."""
    if not p:
        return [("provenance", "not recorded (a dataset made before omgmg recorded it)")]
    rows = [("provenance", "")]
    if p.get("packages"):
        rows.append(("  packages", "  ".join(f"{k} {v}" for k, v in p["packages"].items())))
    env = p.get("environment")
    if env:
        args = ", ".join(f"{k}={v!r}" for k, v in env.get("arguments", {}).items())
        extra = "  ".join(f"{k} {v}" for k, v in env.items() if k not in ("constructor", "arguments", "task"))
        rows.append(("  environment", f"{env.get('constructor', '?')}({args})" + (f"  {extra}" if extra else "")))
    lay = p.get("layouts")
    if lay:
        widths = ", ".join(str(o["width"]) for o in lay["observations"])
        padded = lay["observations"][0]["padded_to"] if lay["observations"] else "-"
        rows.append(("  layouts", f"observations {widths} (padded to {padded})  state {lay['state']['width']}"))
    if "episode_seeds" in p:
        ranges = p["episode_seeds"]
        seeded = sum(count for _, count, _ in ranges)
        # the reset seeds, which the collection seed derives (omgmg.collectors.rollout.phase_seed), one per episode
        where = "  ".join(f"episodes {f}-{f + n - 1} reset with seeds {s}-{s + n - 1}" for f, n, s in ranges)
        rows.append(("  episode seeds", f"{seeded} of {n_episodes} episodes" + (f"  ({where})" if where else "")))
    if p.get("unknown"):
        rows.append(("  unknown", "; ".join(p["unknown"])))
    return rows


def card_rows(c: dict) -> list[tuple[str, str]]:
    """The card's (label, value) lines, in the order it shows them (the terminal's panel, a published README)."""
    rows = [
        ("task", f"{c['suite']}/{c['task']}  (backend {c['backend']})"),
        ("level", c["level"] or "-"),
        (
            "agents",
            f"{c['n_agents']}  obs {c['obs_dim']}  state {c['state_dim']}  "
            f"{c['action_type']} actions {c['action_dim']}",
        ),
        (
            "episodes",
            f"{c['n_episodes']}  ({c['terminated_episodes']} terminated, "
            f"{c['n_episodes'] - c['terminated_episodes']} truncated)",
        ),
        ("transitions", str(c["n_transitions"])),
        (
            "return",
            f"mean {_num(c['return_mean'])}  std {_num(c['return_std'])}  "
            f"min {_num(c['return_min'])}  max {_num(c['return_max'])}",
        ),
        (
            "episode length",
            f"mean {_num(c['episode_length_mean'])}  min {_num(c['episode_length_min'])}  "
            f"max {_num(c['episode_length_max'])}",
        ),
    ]
    if c["win_rate"] is not None:
        rows.append(("win rate", f"{100 * c['win_rate']:.1f}%"))
    cov = c["coverage"]
    if cov["joint_saco"] is not None:
        rows.append(
            (
                "coverage",
                f"joint SACo {cov['joint_saco']:.3f}  per-agent OACo {cov['oaco']:.3f}  "
                f"(distinct pairs / transitions, values rounded to {cov['decimals']} decimals, as OG-MARL)",
            )
        )
    if c["bound_share"] is not None:
        rows.append(("actions on a bound", bound_share_line(c["bound_share"])[0]))
    b = c["behaviour_arrays"]
    if b:
        parts = []
        if "log_prob_mean" in b:
            per_agent = ", ".join(f"{x:.3g}" for x in b["log_prob_mean"])
            parts.append(f"log-probability of the stored actions, mean per agent {per_agent}")
        if "clipped_share" in b:
            parts.append(f"pre-clip samples ({100 * b['clipped_share']:.1f}% of action entries were clipped)")
        rows.append(("behaviour arrays", "; ".join(parts)))
    bp = c["behaviour_policy"]
    if bp:
        detail = ", ".join(f"{k} {v}" for k, v in bp.items() if k not in ("algorithm", "eval_score") and v is not None)
        rows.append(("behaviour policy", f"{bp['algorithm']}" + (f"  ({detail})" if detail else "")))
        if bp.get("eval_score") is not None:
            unit = "win rate" if c["win_rate"] is not None else "mean return"
            rows.append(
                (
                    "  checkpoint score",
                    f"{_num(bp['eval_score'])}: the checkpoint's {unit} in its training's evaluation (deterministic "
                    "actions); this data's rollouts sample actions, so its own score above differs (usually lower)",
                )
            )
    for k, v in c["collection"].items():
        if k != "provenance":
            rows.append((f"  {k}", str(v)))
    rows += _provenance_rows(c["collection"].get("provenance"), c["n_episodes"])
    rows += [
        ("format", f"v{c['format_version']}, written by omgmg {c['omgmg_version']} at {c['created']}"),
        ("stored", _size(c["stored_bytes"])),
    ]
    return rows


def render(c: dict):
    """A rich renderable of the card."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold cyan")
    head.add_column()
    for k, v in card_rows(c):
        head.add_row(k, v)

    arrays = Table(title="arrays", title_justify="left", show_edge=False)
    for col in ("name", "shape", "dtype", "chunks", "stored", "ratio"):
        arrays.add_column(col, justify="right" if col in ("stored", "ratio") else "left")
    for a in c["arrays"]:
        ratio = a["bytes"] / a["stored_bytes"] if a["stored_bytes"] else float("nan")
        arrays.add_row(
            a["name"],
            str(tuple(a["shape"])),
            a["dtype"],
            str(tuple(a["chunks"])),
            _size(a["stored_bytes"]),
            f"{ratio:.1f}x",
        )
    return Panel(Group(head, "", arrays), title=f"[bold]{Path(c['path']).name}", expand=False)


def plot_returns(ds: Dataset, out) -> Path:
    """A histogram of per-episode returns (PNG)."""
    from matplotlib.figure import Figure  # no pyplot: no process-wide backend or state

    returns = np.asarray(ds.read("episodes/return"))
    fig = Figure(figsize=(6, 3.5), dpi=110)
    ax = fig.subplots()
    ax.hist(returns, bins=min(50, max(5, len(returns) // 5)), color="#3b7dd8", edgecolor="white")
    ax.axvline(returns.mean(), color="k", ls="--", lw=1, label=f"mean {returns.mean():.4g}")
    ax.set_xlabel("episode return")
    ax.set_ylabel("episodes")
    ax.set_title(f"{ds.spec.name} · {ds.level or 'no level'} · {len(returns)} episodes", fontsize=10)
    ax.legend(frameon=False)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    return out
