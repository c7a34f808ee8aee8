"""A folder of run directories (what ``omgmg train --seeds 0-4 --grid lam=0,0.5`` writes): its runs grouped
by setting, and a report of each group's final score, mean ± std over its seeds.

    groups = group_runs(member_runs("runs/hopper-medium"))   # {"omgmg lam=0.5": [run dirs of each seed]}
    paths = write_runs_report("runs/hopper-medium")           # runs.md, runs.csv, runs-curves.png

Runs belong to one group when they share the algorithm, the dataset and every hyperparameter but the seed;
a group is named by the algorithm and the hyperparameters that differ between that algorithm's groups. A
folder of such folders (one per algorithm: ``runs/hopper/{omgmg,omiga,bc}``) is reported as one, so the
algorithms' curves share a figure.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from omgmg.datakit.errors import RequestError
from omgmg.datakit.outputs import is_omgmg_run, os_errors


def runs_to_evaluate(path) -> tuple[dict[str, list[Path]], bool]:
    """What ``omgmg eval PATH`` evaluates: a checkpoint file or a run directory alone (``{"": [path]}``), or a
    folder's runs grouped by setting; and whether it was a folder (then each group's mean over seeds is due)."""
    path = Path(path)
    if path.is_file() or (path / "checkpoints").is_dir() or not path.is_dir():
        return {"": [path]}, False
    return group_runs(member_runs(path)), True


def member_runs(folder) -> list[Path]:
    """The run directories directly inside ``folder``, or, where it holds none, inside its subfolders (one
    folder of seeds per algorithm on one dataset: ``runs/hopper/{omgmg,omiga,bc}``); FileNotFoundError when
    there are none either way."""
    folder = Path(folder)
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    runs = [p for p in subfolders if is_omgmg_run(p)]
    if not runs:
        runs = [run for sub in subfolders for run in sorted(sub.iterdir()) if is_omgmg_run(run)]
    if not runs:
        raise FileNotFoundError(
            f"{folder} holds no run directories (nor a sweep's sweep.json); give a folder that `omgmg train "
            "--seeds` or `--grid` wrote (or a folder of such folders), a run directory, or a sweep directory"
        )
    return runs


def _setting(run: Path) -> tuple[dict, int]:
    """A run's setting (what it shares with the other seeds of its group) and its seed."""
    config = json.loads((run / "config.json").read_text())
    hyper = {k: v for k, v in config["config"].items() if k not in ("seed", "steps")}
    return {"algorithm": config["algorithm"], "dataset": config["dataset"], **hyper}, config["config"]["seed"]


def group_runs(runs: list[Path]) -> dict[str, list[Path]]:
    """Runs that differ only in their seed, under one label each (see the module docstring)."""
    settings, seeds = {}, {}
    for run in runs:
        settings[run], seeds[run] = _setting(run)
    varying = {}  # per algorithm: one algorithm's knobs do not label another's runs
    for algorithm in {s["algorithm"] for s in settings.values()}:
        own = [s for s in settings.values() if s["algorithm"] == algorithm]
        varying[algorithm] = sorted({k for s in own for k in s if len({json.dumps(t.get(k)) for t in own}) > 1})
    groups: dict[str, list[Path]] = defaultdict(list)
    seen: dict[tuple[str, int], Path] = {}
    for run, s in settings.items():
        parts = [s["algorithm"]] + [f"{k}={_short(s.get(k))}" for k in varying[s["algorithm"]]]
        label, seed = " ".join(parts), seeds[run]
        if (label, seed) in seen:  # e.g. a copy, or the same runs in two folders: they must not count twice
            raise RequestError(
                f"{seen[label, seed]} and {run} are the same setting ({label}) with the same seed ({seed}); a mean "
                "over seeds would count it twice: report their folders one at a time, or move one aside"
            )
        seen[label, seed] = run
        groups[label].append(run)
    return dict(groups)


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_scores(run: Path) -> dict:
    """A finished run's final and best evaluation (``results.json``), in the report's unit: return, or win
    rate in %; None where the run has not finished."""
    try:
        result = json.loads((run / "results.json").read_text())
    except (OSError, ValueError):
        return {"final": None, "best": None, "step": None}

    def score(record):
        if not record or record.get("eval/return") is None:
            return None
        wins = record.get("eval/win_rate")
        return 100 * wins if wins is not None else record["eval/return"]

    final = result.get("final") or {}
    return {"final": score(final), "best": score(result.get("best")), "step": final.get("step")}


def write_runs_report(folder, out_dir=None) -> list[Path]:
    """``runs.md`` and ``runs.csv`` (each group's final score, mean ± std over its seeds, and the mean best in
    brackets) and ``runs-curves.png`` (evaluations during training, mean ± std bands) into ``out_dir``
    (default: the folder)."""
    from omgmg.rundir import read_log

    folder = Path(folder)
    groups = group_runs(member_runs(folder))
    out_dir = Path(out_dir or folder)
    with os_errors(out_dir, "writing the report into"):
        out_dir.mkdir(parents=True, exist_ok=True)
    md = [
        f"## {folder.name}: final evaluation, mean ± std over seeds",
        "",
        "Final evaluation score (MaMuJoCo: return; SMACv2: win rate in %), mean ± std over the seeds of each "
        "setting (population std); in brackets the mean best score, selected on evaluation returns (optimistic).",
        "",
        "| setting | seeds | final | [best] | per seed |",
        "|---|---|---|---|---|",
    ]
    rows = [["setting", "seeds", "finished", "final_mean", "final_std", "best_mean", "per_seed"]]
    curves = {}
    for label, runs in sorted(groups.items()):
        scores = [run_scores(r) for r in runs]
        final = np.array([s["final"] for s in scores if s["final"] is not None], dtype=float)
        best = np.array([s["best"] for s in scores if s["best"] is not None], dtype=float)
        text = f"{final.mean():.1f} ± {final.std():.1f}" if len(final) else "not finished"
        if 0 < len(final) < len(runs):
            text += f" ({len(final)} of {len(runs)} finished)"
        per_seed = ", ".join("-" if s["final"] is None else f"{s['final']:.1f}" for s in scores)
        best_text = f"[{best.mean():.1f}]" if len(best) else "-"
        md.append(f"| {label} | {len(runs)} | {text} | {best_text} | {per_seed} |")
        mean_std = [f"{final.mean():.6g}", f"{final.std():.6g}"] if len(final) else ["", ""]
        rows.append([label, len(runs), len(final), *mean_std, f"{best.mean():.6g}" if len(best) else "", per_seed])
        curves[label] = [_eval_curve(read_log(run)) for run in runs]
    paths = [out_dir / "runs.md", out_dir / "runs.csv"]
    png = out_dir / "runs-curves.png"
    if _plot_curves(curves, png, folder.name):
        paths.append(png)
        md += ["", f"![evaluation during training]({png.name})"]
    paths[0].write_text("\n".join(md) + "\n")
    with open(paths[1], "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return paths


def _eval_curve(log: list[dict]) -> dict[int, float]:
    """{step: evaluation score} of a run's log (win rate in % where the task reports wins)."""
    return {
        r["step"]: 100 * r["eval/win_rate"] if r.get("eval/win_rate") is not None else r["eval/return"]
        for r in log
        if "eval/return" in r
    }


def _plot_curves(curves: dict[str, list[dict]], out: Path, title: str) -> bool:
    curves = {k: [c for c in v if c] for k, v in curves.items() if any(v)}
    if not curves:
        return False
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6), dpi=100)
    ax = fig.subplots()
    for label, seeds in sorted(curves.items()):
        steps = sorted(set.intersection(*(set(c) for c in seeds)))
        y = np.array([[c[s] for s in steps] for c in seeds])
        ax.plot(steps, y.mean(0), marker="o" if len(steps) < 3 else None, label=f"{label} ({len(seeds)} seeds)")
        ax.fill_between(steps, y.mean(0) - y.std(0), y.mean(0) + y.std(0), alpha=0.2)
    ax.set_xlabel("gradient steps")
    ax.set_ylabel("evaluation score")
    ax.set_title(f"{title}: mean ± std over seeds", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    return True
