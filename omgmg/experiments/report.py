"""``omgmg report SWEEP_DIR``: the paper's tables and ablation figures from a sweep's cell results.

- Scores are the final evaluation (return for MaMuJoCo, win rate in % for SMACv2), mean ± std over
  seeds (population std, as numpy's default), best mean per row in bold.
- MaMuJoCo scores also get a normalised score, 100 * (score - random) / (expert - random), with
  random and expert the mean episode returns of that task's random and expert datasets (from their
  metadata; the sweep generates both); left out where the expert data does not beat the random data.
- The best score of each run (its highest evaluation during training, i.e. selected on evaluation
  returns: optimistic) is shown beside the final one, in brackets, never instead of it.
- Ablations (a spec with a [grid]): final score and final Q_tot against the grid value, one panel per
  dataset, a red cross where any seed diverged: Q_tot non-finite or beyond twice the largest discounted
  return-to-go in the data (``omgmg.diagnostics.divergence_bound``), or a non-finite loss.
- Every table says in one line how the benchmark differs from the paper's (:data:`BENCHMARK_NOTES`).
"""

from __future__ import annotations

import csv
import json
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np

from omgmg.datakit.format import LEVELS
from omgmg.datakit.outputs import OutputLock, atomic_write_json, os_errors
from omgmg.experiments.spec import DatasetRef
from omgmg.experiments.sweep import MECHANISM, load_results, reference_returns

BENCHMARK_NOTES = {
    "mamujoco": "MaMuJoCo runs on gymnasium-robotics v5 with omgmg's own HAPPO datasets (the paper: OMIGA's v2 "
    "datasets); a task marked -omiga has OMIGA's observation layout (each agent sees the z-normalised full state "
    "and its id), others local observations (Ant always: its v5 observation differs from v2's)",
    "smacv2": "SMACv2 tasks run on JaxMARL's SMAX with omgmg's own MAPPO datasets, not on StarCraft II",
}


def benchmark_note(suites) -> str:
    """One line: how this benchmark differs from the paper's, for the suites a table holds."""
    suites = set(suites)
    parts = [BENCHMARK_NOTES[s] for s in ("mamujoco", "smacv2") if s in suites]
    return "Not the paper's benchmark: " + "; ".join(parts) + "." if parts else ""


def mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std())


def budget_label(meta: dict, agg: dict | None = None) -> str:
    """The spec's budget, and each task whose cells (``agg``: :func:`aggregate`) ran another one (a dataset's
    own ``steps`` or ``eval_episodes``, e.g. SMAX's 20k steps and 128 episodes)."""
    b = meta["budget"]
    kind = "SMOKE budget (a quick check, not the paper's setting)" if meta["smoke"] else "full budget"
    label = (
        f"{kind}: {b['steps']} gradient steps, {len(meta['seeds'])} seed(s), {b['eval_episodes']} evaluation "
        f"episodes; datasets {json.dumps(meta['data'])}"
    )
    own = {}
    for key, entry in (agg or {}).items():
        parts = []
        if entry["steps"] and entry["steps"] != [b["steps"]]:
            parts.append(f"{' / '.join(map(str, entry['steps']))} gradient steps")
        if entry["eval_episodes"] and entry["eval_episodes"] != [b["eval_episodes"]]:
            parts.append(f"{' / '.join(map(str, entry['eval_episodes']))} evaluation episodes")
        if parts:
            own[key[0]] = ", ".join(parts)
    return label + "".join(f"; {task}: {text}" for task, text in sorted(own.items()))


def _score(result: dict, which: str = "") -> float | None:
    """The final score (``which=""``) or the best one (``"best_"``) in the table's unit: return, or win rate in %."""
    if result.get(f"{which}score") is None:
        return None
    win_rate = result.get(f"{which}win_rate")
    return 100 * win_rate if win_rate is not None else result[f"{which}score"]


def _reference_returns(result: dict) -> tuple[float, float] | None:
    """(random, expert) mean returns of the result's task, for the normalised score: as the cell recorded
    them when it finished (a report then needs no dataset), else read from the reference datasets."""
    refs = result.get("reference_returns") or reference_returns(result["cell"])
    return (refs["random"], refs["expert"]) if refs else None


def normalised(score: float, random: float, expert: float) -> float | None:
    """100 (score - random) / (expert - random); None unless the expert data beats the random data by more
    than 10% of the larger return (an under-trained behaviour barely does, and the score then explodes)."""
    if expert - random <= 0.1 * max(abs(expert), abs(random)):
        return None
    return 100.0 * (score - random) / (expert - random)


def aggregate(results: list[dict]) -> dict:
    """(task, level, algorithm, grid value) -> {mean, std, n, diverged, normalised, q_tot, mechanism}."""
    groups = defaultdict(list)
    for r in results:
        c = r["cell"]
        ds = DatasetRef(**c["dataset"])
        groups[(*ds.row, c["algorithm"], c["grid"][1] if c["grid"] else None)].append(r)
    out = {}
    for key, rs in groups.items():
        scores = [s for s in map(_score, rs) if s is not None]
        q = [r["q_tot"] for r in rs if r.get("q_tot") is not None]
        best = [s for s in (_score(r, "best_") for r in rs) if s is not None]
        entry = {
            "n": len(rs),
            "diverged": sum(bool(r.get("diverged")) for r in rs),
            "errors": [r["error"] for r in rs if r.get("error")],
            "suite": rs[0]["cell"]["dataset"].get("suite"),
            "steps": sorted({r["cell"]["config"].get("steps") for r in rs} - {None}),
            "eval_episodes": sorted({r["cell"]["config"].get("eval_episodes") for r in rs} - {None}),
        }
        if scores:
            entry["mean"], entry["std"], entry["scored"] = *mean_std(scores), len(scores)
            refs = _reference_returns(rs[0])
            # undefined unless the expert data clearly beats the random data (an under-trained behaviour may not)
            if refs and normalised(0.0, *refs) is not None and rs[0].get("win_rate") is None:
                entry["normalised"] = mean_std([normalised(s, *refs) for s in scores])
        if best and len(best) == len(scores):
            entry["best"] = mean_std(best)
        if q:
            entry["q_tot"] = mean_std(q)
        for name in MECHANISM:
            values = [r["mechanism"][name] for r in rs if name in (r.get("mechanism") or {})]
            if values:
                entry.setdefault("mechanism", {})[name] = mean_std(values)
        out[key] = entry
    return out


def _fmt(entry: dict, seeds: int) -> str:
    """mean ± std (normalised) [best] ×diverged, and how many of the spec's ``seeds`` it holds if not all;
    failed cells (an error, no score) are said apart from diverged ones."""
    if "mean" not in entry:
        return f"failed ({len(entry['errors'])} of {entry['n']})" if entry["errors"] else "error"
    text = f"{entry['mean']:.1f} ± {entry['std']:.1f}"
    if entry["scored"] < seeds:
        text += f" ({entry['scored']} of {seeds} seeds)"
    if "normalised" in entry:
        text += f" ({entry['normalised'][0]:.0f})"
    if "best" in entry:
        text += f" [{entry['best'][0]:.1f}]"
    if entry["diverged"]:
        text += f" ×{entry['diverged']}"
    if entry["errors"]:
        text += f" ({len(entry['errors'])} failed)"
    return text


def table(meta: dict, agg: dict) -> tuple[str, list[list[str]]]:
    """Markdown (best mean per row in bold) and CSV rows in the paper's layout: rows task x level,
    columns algorithms."""
    algos = meta["algorithms"]
    rows = sorted({k[:2] for k in agg}, key=lambda r: (r[0], LEVELS.index(r[1]) if r[1] in LEVELS else len(LEVELS)))
    md = [
        f"## {meta['title']}",
        "",
        f"_{budget_label(meta, agg)}_",
        "",
        "Final evaluation score, mean ± std over seeds (MaMuJoCo: return, with the normalised score in "
        "parentheses; SMACv2: win rate in %); in brackets the mean best score, selected on evaluation returns "
        "(optimistic). ×n: n seeds diverged.",
        "",
        benchmark_note(e.get("suite") for e in agg.values()),
        "",
        "| task | dataset | " + " | ".join(algos) + " |",
        "|" + "---|" * (len(algos) + 2),
    ]
    csv_rows = [["task", "dataset", *[f"{a}_{s}" for a in algos for s in ("mean", "std", "normalised")]]]
    for task, level in rows:
        entries = {a: agg.get((task, level, a, None)) for a in algos}
        means = {a: e["mean"] for a, e in entries.items() if e and "mean" in e}
        best = max(means.values()) if len(means) > 1 else None  # bold only against another algorithm
        cells, flat = [], []
        for a in algos:
            e = entries[a]
            text = "-" if e is None else _fmt(e, len(meta["seeds"]))
            if e and "mean" in e and e["mean"] == best:
                text = f"**{text}**"
            cells.append(text)
            flat += [
                f"{e['mean']:.4g}" if e and "mean" in e else "",
                f"{e['std']:.4g}" if e and "mean" in e else "",
                f"{e['normalised'][0]:.4g}" if e and "normalised" in e else "",
            ]
        steps = sorted({n for e in entries.values() if e for n in e["steps"]})
        if steps and steps != [meta["budget"]["steps"]]:  # a [[datasets]] entry with its own budget
            level = f"{level} ({', '.join(f'{n:,}' for n in steps)} steps)"
        md.append(f"| {task} | {level} | " + " | ".join(cells) + " |")
        csv_rows.append([task, level, *flat])
    return "\n".join(md) + "\n", csv_rows


def published_section(meta: dict, agg: dict) -> str:
    """Ours beside a published table (the spec's ``published``): for every row and algorithm both hold, the two
    means ± stds and the gap, (ours - published) in units of the published std across seeds."""
    from omgmg.experiments.spec import load_published

    pub = load_published(meta["published"])
    lines = [
        f"## Beside the published numbers: {pub['title']}",
        "",
        f"Source: {pub['source']}. {pub['citation']}",
        "",
        f"Their protocol: {pub['protocol']}",
        "",
        "Gap: (ours - published) / published std. Ours is evaluated on gymnasium-robotics v5 in OMIGA's "
        "observation layout, theirs on the v2 environments the data was recorded on (docs/interop.md); a row "
        "without live evaluation has no score of ours.",
        "",
        "| task | dataset | algorithm | ours | published | gap (published std) |",
        "|---|---|---|---|---|---|",
    ]
    for (task, level, algo, point), entry in sorted(agg.items(), key=lambda kv: tuple(map(str, kv[0]))):
        theirs = pub["rows"].get(f"{task}|{level}", {}).get(algo)
        if point is not None or theirs is None:
            continue
        ours = f"{entry['mean']:.1f} ± {entry['std']:.1f}" if "mean" in entry else "-"
        gap = (entry["mean"] - theirs[0]) / theirs[1] if "mean" in entry and theirs[1] > 0 else None
        lines.append(
            f"| {task} | {level} | {algo} | {ours} | {theirs[0]:.1f} ± {theirs[1]:.1f} | "
            + (f"{gap:+.1f}" if gap is not None else "-")
            + " |"
        )
    return "\n".join(lines) + "\n"


SUITE_UNITS = {"mamujoco": "normalised score", "smacv2": "win rate %"}
"""The unit each suite's scores are compared in across datasets (:func:`suite_scores`)."""


def suite_scores(results: list[dict]) -> dict[tuple, dict[tuple, float]]:
    """(suite, task, level) -> (algorithm, grid value or None, seed) -> the final score in the suite's unit
    (:data:`SUITE_UNITS`): MaMuJoCo's normalised score (cells without one left out), SMACv2's win rate in %."""
    cells: dict = defaultdict(dict)
    for r in results:
        c, score = r["cell"], _score(r)
        if score is None:
            continue
        suite = c["dataset"].get("suite")
        if suite == "mamujoco":
            refs = _reference_returns(r)
            if not refs or normalised(0.0, *refs) is None:
                continue
            score = normalised(score, *refs)
        value = c["grid"][1] if c.get("grid") else None
        cells[(suite, *DatasetRef(**c["dataset"]).row)][(c["algorithm"], value, c["seed"])] = score
    return cells


def selection_section(meta: dict, results: list[dict]) -> str:
    """The selection rule's pick of a ``layout = "selection"`` spec's knob, per suite (docs/omgmg.md, "The
    selection protocol, without a leak"): each value's suite score per seed (the mean over the suite's
    datasets, in :data:`SUITE_UNITS`); the value with the highest mean wins unless it beats the default the
    sweep ran with (``meta["defaults"]``) by less than one standard error of the difference (over seeds,
    the two values' sample variances: sqrt(s_w^2 / n_w + s_d^2 / n_d)); a winner on the edge of a grid of
    three or more values asks for the grid to be extended past it."""
    knob, (algo,) = meta["grid"], meta["algorithms"]
    defaults = meta.get("defaults") or {}
    cells = suite_scores(results)
    values = sorted({v for scores in cells.values() for (a, v, _) in scores if a == algo and v is not None})
    out = [
        f'### The selection rule\'s pick of {knob} (docs/omgmg.md, "The selection protocol, without a leak")',
        "",
        "Suite score per seed: the mean over the suite's datasets (MaMuJoCo: normalised score; SMACv2: win "
        "rate %). The best mean wins unless it beats the default by less than one standard error of the "
        "difference, in which case the default stays.",
        "",
        f"| suite | {knob} | suite score per seed | mean ± std |",
        "|---|---|---|---|",
    ]
    picks = []
    for suite in SUITE_UNITS:
        datasets = sorted(k for k in cells if k[0] == suite)
        if not datasets:
            continue
        per_value = {}
        for v in values:
            seeds = sorted({s for k in datasets for (a, x, s) in cells[k] if (a, x) == (algo, v)})
            complete = [s for s in seeds if all((algo, v, s) in cells[k] for k in datasets)]
            if complete:
                per_value[v] = np.array([np.mean([cells[k][(algo, v, s)] for k in datasets]) for s in complete])
                text = ", ".join(f"{x:.1f}" for x in per_value[v])
                out.append(f"| {suite} | {v:g} | {text} | {per_value[v].mean():.1f} ± {per_value[v].std():.1f} |")
        waiting = [f"{task}/{level}" for task, level in (meta.get("suite_datasets") or {}).get(suite, [])
                   if (suite, task, level) not in cells]  # fmt: skip
        if waiting:  # the scores above average over part of the suite: not the rule's suite score yet
            verb = "has" if len(waiting) == 1 else "have"
            picks.append(f"- **{suite}**: undecided, {' and '.join(waiting)} {verb} no results yet (the scores "
                         "above leave it out); run the sweep again to finish it.")  # fmt: skip
            continue
        missing = [v for v in values if v not in per_value or len(per_value[v]) < len(meta["seeds"])]
        if missing:
            picks.append(f"- **{suite}**: undecided, {knob} = {', '.join(f'{v:g}' for v in missing)} lacks seeds "
                         f"on some of its {len(datasets)} dataset(s); run the sweep again to finish them.")  # fmt: skip
            continue
        best = max(per_value, key=lambda v: per_value[v].mean())
        default = defaults.get(suite)
        pick = f"- **{suite}**: {knob} = {best:g} scores highest ({per_value[best].mean():.1f})"
        if default is None or default not in per_value:
            pick += "; the sweep recorded no default in its grid to hold it against."
        elif best == default:
            pick += ", the default: it stays."
        else:
            w, d = per_value[best], per_value[default]
            gap = w.mean() - d.mean()
            se = float(np.sqrt(w.var(ddof=1) / len(w) + d.var(ddof=1) / len(d)))
            verdict = f"**{best:g} wins**" if gap > se else f"less than one: **the default {default:g} stays**"
            pick += f"; it beats the default {default:g} by {gap:.1f}, {gap / se:.2f} standard errors: {verdict}."
            if gap > se and len(values) >= 3 and best in (values[0], values[-1]):
                pick += f" {best:g} is on the grid's edge: extend the grid one step past it and run {knob} again."
        picks.append(pick)
    return "\n".join(out + [""] + picks) + "\n"


def reliable_section(meta: dict, results: list[dict]) -> str:
    """Aggregates over the datasets of each suite, as rliable / marl-eval report them (omgmg.experiments.stats):
    each algorithm's IQM and mean of the final scores with 95% stratified-bootstrap intervals, and the
    probability that OMGMG improves on each other algorithm. Scores: the normalised score (MaMuJoCo) or the
    win rate in % (SMACv2); a dataset enters only where every algorithm has every seed."""
    from omgmg.experiments.stats import improvement_interval, interval, iqm, mean, probability_of_improvement

    algos = meta["algorithms"]
    if len(algos) < 2:
        return ""
    cells = suite_scores(results)
    seeds = meta["seeds"]
    out = []
    for suite, unit in SUITE_UNITS.items():
        tasks = sorted(
            k for k in cells if k[0] == suite and all((a, None, s) in cells[k] for a in algos for s in seeds)
        )
        if not tasks:
            continue
        matrix = {a: np.array([[cells[t][(a, None, s)] for t in tasks] for s in seeds]) for a in algos}  # (runs, tasks)
        out += [
            f"### {suite}: aggregate over {len(tasks)} dataset(s), {len(seeds)} seeds each ({unit})",
            "",
            "IQM and mean of the final scores with 95% stratified-bootstrap confidence intervals (runs resampled "
            "within each dataset), as rliable and marl-eval report them.",
            "",
            "| algorithm | IQM [95% CI] | mean [95% CI] |",
            "|---|---|---|",
        ]
        for a in algos:
            lo, hi = interval(matrix[a], iqm)
            mlo, mhi = interval(matrix[a], mean)
            out.append(
                f"| {a} | {iqm(matrix[a]):.1f} [{lo:.1f}, {hi:.1f}] | {mean(matrix[a]):.1f} [{mlo:.1f}, {mhi:.1f}] |"
            )
        if "omgmg" in algos:
            out += ["", "| P(OMGMG > X) | estimate [95% CI] |", "|---|---|"]
            for a in algos:
                if a != "omgmg":
                    p = probability_of_improvement(matrix["omgmg"], matrix[a])
                    lo, hi = improvement_interval(matrix["omgmg"], matrix[a])
                    out.append(f"| {a} | {p:.2f} [{lo:.2f}, {hi:.2f}] |")
        out.append("")
    return "\n".join(out)


MECHANISM_LABELS = {
    "policy/action_distance": "RMS / range",
    "policy/action_differs": "share a' != a",
}
"""How far a' sits from the data's actions, in the unit of each metric (continuous tasks, discrete ones)."""


def ablation(meta: dict, agg: dict, out_png: Path) -> tuple[str, list[list[str]]]:
    """The ablation figure (score, Q_tot and, where the runs logged it, how far the target policy's actions sit
    from the data's, against the grid value; one column per dataset) and its table."""
    from matplotlib.figure import Figure  # no pyplot: no process-wide backend or state

    param = meta["grid"]
    datasets = sorted({k[:2] for k in agg})

    def off_data(e: dict) -> tuple[str, tuple[float, float]] | None:
        """The mechanism (docs/omgmg.md) of a point whose runs logged it: (metric, (mean, std)); the metric is
        the action distance on continuous tasks, the share of a' != a on discrete ones."""
        return next(((n, e["mechanism"][n]) for n in MECHANISM_LABELS if n in e.get("mechanism", {})), None)

    distance = any(off_data(e) for e in agg.values())
    rows = [("score", lambda e: (e["mean"], e["std"]) if "mean" in e else None), ("Q_tot", lambda e: e.get("q_tot"))]
    if distance:
        rows.append(("a' off the data", lambda e: off_data(e)[1] if off_data(e) else None))
    fig = Figure(figsize=(3.6 * len(datasets), 3 * len(rows)), dpi=100)
    axes = fig.subplots(len(rows), len(datasets), squeeze=False)
    extra = " a' off the data |" if distance else ""
    md = [
        f"## {meta['title']}",
        "",
        f"_{budget_label(meta, agg)}_",
        "",
        f"| task | dataset | algorithm | {param} | score | Q_tot |{extra} diverged |",
        "|---|---|---|---|---|---|---|" + ("---|" if distance else ""),
    ]
    header = ["task", "dataset", "algorithm", param, "score_mean", "score_std", "q_tot_mean", "q_tot_std"]
    csv_rows = [header + (["off_data_metric", "off_data_mean", "off_data_std"] if distance else []) + ["diverged", "n"]]
    for j, (task, level) in enumerate(datasets):
        for algo in meta["algorithms"]:
            keys = sorted(k for k in agg if k[:3] == (task, level, algo))
            xs = [k[3] for k in keys]
            for row, (label, value) in enumerate(rows):
                ax = axes[row, j]
                pts = [(x, value(agg[k]), agg[k]["diverged"]) for x, k in zip(xs, keys) if value(agg[k]) is not None]
                if not pts:
                    continue
                x = np.array([p[0] for p in pts], dtype=float)
                y, err = np.array([p[1][0] for p in pts]), np.array([p[1][1] for p in pts])
                if len(x) > 1:  # mean ± std band, as the paper's figures
                    (line,) = ax.plot(x, y, marker="o", label=algo)
                    ax.fill_between(x, y - err, y + err, color=line.get_color(), alpha=0.2)
                else:  # a band of one point is a line: an error bar says the same
                    ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=algo)
                bad = np.array([p[2] > 0 for p in pts])
                if bad.any():
                    ax.scatter(x[bad], y[bad], marker="x", s=120, c="red", zorder=5, label="diverged")
                if (x > 0).all() and x.max() >= 100 * x.min():  # a grid of orders of magnitude (nu, alpha, beta)
                    ax.set_xscale("log")
                ax.set_xlabel(param)
                unit = {off_data(agg[k])[0] for k in keys if off_data(agg[k])}
                ax.set_ylabel(f"{label} ({MECHANISM_LABELS[unit.pop()]})" if row == 2 and unit else label)
                ax.set_title(f"{task} {level}" if row == 0 else "", fontsize=8)
            for x, k in zip(xs, keys):
                e = agg[k]
                score = f"{e['mean']:.1f} ± {e['std']:.1f}" if "mean" in e else "error"
                q = f"{e['q_tot'][0]:.1f} ± {e['q_tot'][1]:.1f}" if "q_tot" in e else "-"
                m = off_data(e)
                off = f" {m[1][0]:.3f} ± {m[1][1]:.3f} ({MECHANISM_LABELS[m[0]]}) |" if m else " - |"
                cell = off if distance else ""
                md.append(f"| {task} | {level} | {algo} | {x:g} | {score} | {q} |{cell} {e['diverged']}/{e['n']} |")
                q_cols = [e["q_tot"][0], e["q_tot"][1]] if "q_tot" in e else ["", ""]
                m_cols = ([m[0], *m[1]] if m else ["", "", ""]) if distance else []
                csv_rows.append(
                    [task, level, algo, f"{x:g}", e.get("mean", ""), e.get("std", ""), *q_cols, *m_cols,
                     e["diverged"], e["n"]]
                )  # fmt: skip
    for ax in axes.flat:
        if not ax.has_data():  # e.g. the mechanism, in results of runs made before it was logged
            ax.set_axis_off()
            ax.text(0.5, 0.5, "not logged by these runs", ha="center", va="center", transform=ax.transAxes)
    width = int(3.6 * len(datasets) * 100 / 6.5)  # characters of 8-point text across the figure, about
    fig.suptitle(textwrap.fill(f"{meta['title']}; {budget_label(meta, agg)}", width), fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png)
    return "\n".join(md) + f"\n\n![{meta['name']}]({out_png.name})\n", csv_rows


def learning_curves(sweep_dir: Path, meta: dict, results: list[dict], out_png: Path) -> bool:
    """Evaluation score against gradient steps (SMACv2: win rate in %), mean ± std over seeds, one panel per
    dataset and a line per algorithm (and grid value). Reads each cell's run log, or where it is gone the
    evaluations its result recorded; False, and nothing written, when no cell has either."""
    from omgmg.experiments.spec import Cell
    from omgmg.experiments.sweep import cell_dir, evaluations
    from omgmg.rundir import read_log

    panels: dict = defaultdict(lambda: defaultdict(list))  # (task, level) -> label -> [{step: score}] per seed
    wins: dict = {}  # (task, level) -> whether its scores are win rates
    for r in results:
        if r.get("error") or r.get("skipped"):
            continue
        cell = Cell.from_json(r["cell"])
        run = cell_dir(sweep_dir, cell) / "run"
        if (run / "log.jsonl").exists():
            evals = evaluations(read_log(run))
        else:  # a report of result files alone: the evaluations each result recorded
            evals = r.get("evals") or []
        if not evals:
            continue
        win = [e["win_rate"] for e in evals]
        curve = {e["step"]: (100 * w if w is not None else e["return"]) for e, w in zip(evals, win, strict=True)}
        label = cell.algorithm + (f" {cell.grid[0]}={cell.grid[1]:g}" if cell.grid else "")
        panels[cell.dataset.row][label].append(curve)
        wins[cell.dataset.row] = bool(win) and win[0] is not None
    if not panels:
        return False
    from matplotlib.figure import Figure  # no pyplot: no process-wide backend or state

    keys = sorted(panels)
    fig = Figure(figsize=(max(5.5, 4.2 * len(keys)), 3.6), dpi=100)
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for label, seeds in sorted(panels[key].items()):
            steps = sorted(set.intersection(*(set(c) for c in seeds)))
            y = np.array([[c[s] for s in steps] for c in seeds])
            mean, std = y.mean(0), y.std(0)
            ax.plot(steps, mean, label=f"{label} ({len(seeds)} seeds)")
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        ax.set_title(" ".join(key), fontsize=9)
        ax.set_xlabel("gradient steps")
        ax.set_ylabel("win rate (%)" if wins[key] else "evaluation return")
        ax.legend(fontsize=7)
    fig.suptitle(f"{meta['name']}: evaluation during training, mean ± std over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png)
    return True


def marl_eval(sweep_dir) -> dict:
    """The sweep's evaluations in marl-eval's raw-data layout, which BenchMARL, OG-MARL and Mava
    results load with: ``{suite: {task-level: {algorithm: {"run_SEED": {"step_I": {...}, ...,
    "absolute_metrics": {...}}}}}}``.

    ``step_I`` is the I-th evaluation in the cell's log (from 0) with ``step_count`` (gradient steps)
    and one value per evaluation episode: ``return``, and ``win_rate`` (0/1 per episode) where the task
    reports wins. ``absolute_metrics`` is the final evaluation (marl-eval's convention is a final
    evaluation over ten times the episodes; omgmg's is over the run's ``eval_episodes``). An ablation's
    algorithm name carries its grid value, e.g. ``omgmg[lam=0.5]``. Logs written before omgmg kept
    every episode's return, and results exported without their logs, give the evaluation's mean as a single
    value.
    """
    from omgmg.experiments.spec import Cell
    from omgmg.experiments.sweep import cell_dir
    from omgmg.rundir import read_log

    sweep_dir = Path(sweep_dir)
    _, results = load_results(sweep_dir)
    out: dict = {}
    for r in results:
        if r.get("error") or r.get("skipped"):
            continue
        cell = Cell.from_json(r["cell"])
        ref = cell.dataset
        algo = cell.algorithm + (f"[{cell.grid[0]}={cell.grid[1]:g}]" if cell.grid else "")
        task = f"{ref.task}-{ref.level}" if not ref.path else ref.name
        evals = [e for e in read_log(cell_dir(sweep_dir, cell) / "run") if "eval/return" in e]
        if not evals:  # results alone (``omgmg report --with-results``): the evaluations the result recorded
            evals = [{"step": e["step"], "eval/return": e["return"], "eval/win_rate": e["win_rate"]}
                     for e in r.get("evals") or []]  # fmt: skip
        run = {}
        for i, e in enumerate(evals):
            metrics = {"return": e.get("eval/episode_returns", [e["eval/return"]])}
            if e.get("eval/win_rate") is not None:
                metrics["win_rate"] = e.get("eval/episode_wins", [e["eval/win_rate"]])
            run[f"step_{i}"] = {"step_count": int(e["step"]), **metrics}
            run["absolute_metrics"] = metrics
        suite_tasks = out.setdefault(ref.suite or "dataset", {}).setdefault(task, {})
        suite_tasks.setdefault(algo, {})[f"run_{cell.seed}"] = run
    return out


def export_results(sweep_dir, out_dir) -> int:
    """Copy the sweep's finished results into ``out_dir``: ``sweep.json`` and each cell's ``result.json`` (with
    the evaluations it recorded, filled from its run log where a result older than that field lacks them), no
    run logs or checkpoints. ``out_dir`` is then a sweep directory of results alone, a few KB per cell: the
    report can be redrawn from it, committed beside a paper, and the sweep continued from a copy of it
    (``omgmg sweep SPEC --out COPY`` trains only the missing cells). Results already in ``out_dir`` for other
    cells of the same experiment stay, so exporting the parts of a sweep split across machines
    (``omgmg sweep --only``, or a spec file holding some of the cells) one after another merges them; results
    of another version of the spec (cell lists of which neither holds the other) are refused, never mixed
    into one table. Returns the number of results copied."""
    from omgmg.experiments.spec import Cell
    from omgmg.experiments.sweep import SweepError, cell_dir, evaluations
    from omgmg.rundir import read_log

    sweep_dir, out_dir = Path(sweep_dir), Path(out_dir)
    meta, results = load_results(sweep_dir)
    if out_dir.resolve() == sweep_dir.resolve():
        raise SweepError(f"--out {out_dir} is the sweep directory itself; export its results to another directory")
    with os_errors(out_dir, "creating the export directory"):
        out_dir.mkdir(parents=True, exist_ok=True)
    with OutputLock(out_dir, "sweep"):  # not into a directory a sweep is running in, nor two exports at once
        there = out_dir / "sweep.json"
        keep = meta  # the sweep.json to leave in out_dir: of the two cell lists, the one that holds the other
        if there.exists():
            try:
                theirs = json.loads(there.read_text())
                name, smoke, listed = theirs["name"], theirs.get("smoke"), set(theirs.get("cells", []))
            except (OSError, ValueError, TypeError, KeyError):
                raise SweepError(
                    f"{there} exists and is not an omgmg sweep's; choose another --out (nothing was written)"
                ) from None
            if (name, smoke) != (meta["name"], meta.get("smoke")):
                label = f"'{name}'{' (smoke)' if smoke else ''}"
                raise SweepError(
                    f"{out_dir} holds the results of sweep {label}, not of '{meta['name']}'"
                    f"{' (smoke)' if meta.get('smoke') else ''}; export into another directory (nothing was written)"
                )
            ours = set(meta.get("cells", [c["key"] for c in results]))
            if ours < listed:  # this sweep is a part of the one out_dir holds (the same cells: ours, the newer
                keep = theirs  # record, which may say more, e.g. the defaults a selection ran with)
            elif not listed <= ours:  # two versions of the spec: their results must not mix in one table
                raise SweepError(
                    f"{out_dir} holds results of another version of sweep '{name}' ({len(listed - ours)} of its "
                    f"cells are not in this one, {len(ours - listed)} of this one's not in it); export into a new "
                    f"directory, or delete {there} to report this version's cells only (nothing was written)"
                )
        copied = 0
        for result in results:
            if result.get("error") or result.get("skipped"):
                continue
            cell = Cell.from_json(result["cell"])
            if "evals" not in result and (log := cell_dir(sweep_dir, cell) / "run" / "log.jsonl").exists():
                result = result | {"evals": evaluations(read_log(log.parent))}
            with os_errors(out_dir, "exporting results into"):
                cell_dir(out_dir, cell).mkdir(parents=True, exist_ok=True)
            atomic_write_json(cell_dir(out_dir, cell) / "result.json", result)
            copied += 1
        atomic_write_json(there, keep)
    return copied


def trained_where(results: list[dict]) -> str:
    """Which devices and machines trained the cells ("" for results from before they were recorded)."""
    from collections import Counter

    trained = [r for r in results if r.get("device")]
    if not trained:
        return ""
    devices = Counter(r["device"] for r in trained)
    nodes = Counter(r.get("node", "?") for r in trained)
    said = ", ".join(f"{d} ({n} cell{'s' if n > 1 else ''})" for d, n in devices.most_common())
    return f"Trained on {said}, on {len(nodes)} machine{'s' if len(nodes) > 1 else ''} ({', '.join(sorted(nodes))})"


def reused_line(results: list[dict]) -> str:
    """Which results were taken from other sweeps (``omgmg sweep --reuse``) rather than trained by this one."""
    from collections import Counter

    sources = Counter(r["reused_from"].get("sweep") for r in results if isinstance(r.get("reused_from"), dict))
    if not sources:
        return ""
    said = ", ".join(f"{n} from {name}" for name, n in sorted(sources.items(), key=lambda item: str(item[0])))
    return f"Results of the same cells (algorithm, config, seed and data) taken from other sweeps: {said}"


def data_lines(results: list[dict]) -> list[str]:
    """The data each dataset's results were trained on (episodes, mean return, content fingerprint), and a
    warning where one dataset's results come from different data: parts of a sweep run on machines that
    generated the same request differently, merged by ``omgmg report --with-results``."""
    from omgmg.experiments.spec import DatasetRef

    held: dict[str, dict[tuple, int]] = {}
    for r in results:
        stats = r.get("dataset_stats")
        if not stats or r.get("error") or r.get("skipped"):
            continue
        name = DatasetRef(**r["cell"]["dataset"]).name
        what = (r.get("dataset_content") or "", stats.get("episodes"), stats.get("transitions"),
                (stats.get("return") or {}).get("mean"))  # fmt: skip
        held.setdefault(name, {})
        held[name][what] = held[name].get(what, 0) + 1
    lines = []
    for name, contents in held.items():
        said = "; ".join(
            f"{episodes} episodes, {transitions:,} transitions, return {mean:.4g}"
            + (f", content {fingerprint[:12]}" if fingerprint else "")
            + (f" ({n} cells)" if len(contents) > 1 else "")
            for (fingerprint, episodes, transitions, mean), n in contents.items()
        )
        if len(contents) > 1:
            lines.append(f"**{name}: its results come from {len(contents)} different datasets, not comparable "
                         f"with each other** ({said}): rerun the cells of one on the other's data")  # fmt: skip
        else:
            lines.append(f"Data {name}: {said}")
    return lines


def write_report(sweep_dir, out_dir=None, *, marl_eval_json: bool = False) -> list[Path]:
    """Write ``NAME.md``, ``NAME.csv`` (and ``NAME.png`` for ablations) into ``out_dir`` (default: the
    sweep), and ``NAME-curves.png`` (:func:`learning_curves`) where the cells' logs or recorded evaluations
    are there; with ``marl_eval_json`` also ``NAME.marl-eval.json`` (:func:`marl_eval`)."""
    sweep_dir = Path(sweep_dir)
    meta, results = load_results(sweep_dir)
    if not results:
        raise FileNotFoundError(f"{sweep_dir} has no finished cells yet; run `omgmg sweep` (it resumes)")
    out_dir = Path(out_dir or sweep_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    agg = aggregate(results)
    paths = [out_dir / f"{meta['name']}.md", out_dir / f"{meta['name']}.csv"]
    if meta["layout"] in ("ablation", "selection"):
        paths.append(out_dir / f"{meta['name']}.png")
        md, rows = ablation(meta, agg, paths[2])
        if meta["layout"] == "selection":
            md += "\n" + selection_section(meta, results)
    else:
        md, rows = table(meta, agg)
        md += "\n" + reliable_section(meta, results)
    if meta.get("published"):
        md += "\n" + published_section(meta, agg)
    finished = sum(1 for r in results if not (r.get("error") or r.get("skipped")))
    if "cells" in meta and finished < len(meta["cells"]):  # said under the budget line
        budget = f"_{budget_label(meta, agg)}_\n"
        unfinished = f"_Unfinished: {finished} of {len(meta['cells'])} cells have a result; run the sweep again "
        unfinished += "to train the rest._\n"
        md = md.replace(budget, f"{budget}\n{unfinished}", 1)
    for line in (*reversed(data_lines(results)), reused_line(results), trained_where(results)):  # under the budget
        if line:
            budget = f"_{budget_label(meta, agg)}_\n"
            md = md.replace(budget, f"{budget}\n_{line}_\n", 1)
    curves = out_dir / f"{meta['name']}-curves.png"
    if learning_curves(sweep_dir, meta, results, curves):
        paths.append(curves)
        md += f"\n![evaluation during training]({curves.name})\n"
    paths[0].write_text(md)
    with open(paths[1], "w", newline="") as f:
        csv.writer(f).writerows(rows)
    if marl_eval_json:
        paths.append(out_dir / f"{meta['name']}.marl-eval.json")
        atomic_write_json(paths[-1], marl_eval(sweep_dir))
    return paths
