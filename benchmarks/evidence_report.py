"""Summarise an evidence directory (collected levels + OMGMG/BC/lambda runs) as markdown and PNG.

    python benchmarks/evidence_report.py EVIDENCE_DIR OUT_DIR

EVIDENCE_DIR holds ``LEVEL.zarr`` datasets and ``runs/NAME`` run directories named
``omgmg-seedK``, ``bc-seedK`` and ``omgmg-lamL-seed0`` (``omgmg train ... --out EVIDENCE_DIR/runs/NAME``).
Writes ``OUT_DIR/summary.md``, ``OUT_DIR/eval_curves.png`` (evaluation score against gradient steps,
mean ± std over seeds) and, when lambda runs exist, ``OUT_DIR/q_tot_lambda.png``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omgmg.datakit import open_dataset  # noqa: E402
from omgmg.rundir import read_log  # noqa: E402


def main(evidence: Path, out: Path) -> None:
    run_dirs = sorted(evidence.glob("runs/*-seed*/log.jsonl"))
    if not any(p.parent.name.split("-")[0] in ("omgmg", "bc") for p in run_dirs):
        sys.exit(
            f"{evidence}: no runs/omgmg-seedK or runs/bc-seedK with a log.jsonl; train them with "
            f"`omgmg train ... --out {evidence}/runs/omgmg-seed0` first"
        )
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {evidence.name}", ""]
    lines += [
        "| level | episodes | transitions | return mean ± std | min | max | win rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for level in ("random", "medium-replay", "medium", "medium-expert", "expert"):
        path = evidence / f"{level}.zarr"
        if not path.exists():
            continue
        s = open_dataset(path).meta["stats"]
        wr = "-" if s["win_rate"] is None else f"{100 * s['win_rate']:.1f}%"
        r = s["return"]
        lines.append(
            f"| {level} | {s['episodes']} | {s['transitions']} | {r['mean']:.3g} ± {r['std']:.3g} | "
            f"{r['min']:.3g} | {r['max']:.3g} | {wr} |"
        )
    runs = {p.name: read_log(p) for p in sorted((evidence / "runs").glob("*")) if (p / "log.jsonl").exists()}
    finals = {}
    for name, log in runs.items():
        evals = [r for r in log if r.get("eval/return") is not None]
        if evals:
            finals[name] = evals[-1]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines += [
        "",
        "Final evaluation (medium dataset), mean ± std over seeds; the last column first averages each seed's "
        "evaluations over the last 20% of its steps (less noisy than one evaluation):",
        "",
        "| algorithm | seeds | steps | return | win rate | Q_tot (last log) | return, last 20% of steps |",
        "|---|---|---|---|---|---|---|",
    ]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    ylabel = "evaluation return"
    for algo in ("omgmg", "bc"):
        names = [n for n in finals if re.fullmatch(rf"{algo}-seed\d+", n)]
        if not names:
            continue
        rets = np.array([finals[n]["eval/return"] for n in names])
        wrs = [finals[n].get("eval/win_rate") for n in names]
        qs = [next((r["value/q_tot"] for r in reversed(runs[n]) if "value/q_tot" in r), None) for n in names]
        wr = "-" if wrs[0] is None else f"{100 * np.mean(wrs):.1f} ± {100 * np.std(wrs):.1f}%"
        q = "-" if qs[0] is None else f"{np.mean(qs):.3g}"
        curves = [[r for r in runs[n] if r.get("eval/return") is not None] for n in names]
        late = np.array([np.mean([r["eval/return"] for r in c if r["step"] >= 0.8 * c[-1]["step"]]) for c in curves])
        lines.append(
            f"| {algo} | {len(names)} | {finals[names[0]]['step']} | {rets.mean():.4g} ± {rets.std():.3g} | {wr} | "
            f"{q} | {late.mean():.4g} ± {late.std():.3g} |"
        )
        key, ylabel = (
            ("eval/return", "evaluation return") if wrs[0] is None else ("eval/win_rate", "evaluation win rate")
        )
        n_evals = min(len(c) for c in curves)
        steps = [r["step"] for r in curves[0][:n_evals]]
        values = np.array([[r[key] for r in c[:n_evals]] for c in curves])
        ax.plot(steps, values.mean(0), label=f"{algo} ({len(names)} seeds)")
        ax.fill_between(steps, values.mean(0) - values.std(0), values.mean(0) + values.std(0), alpha=0.2)
    ax.set_xlabel("gradient steps")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{evidence.name} medium: mean ± std over seeds", fontsize=10)
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(out / "eval_curves.png")
    plt.close(fig)

    lam_runs = {"0.0": "omgmg-lam0.0-seed0", "0.5": "omgmg-seed0", "0.9": "omgmg-lam0.9-seed0"}
    if sum(name in runs for name in lam_runs.values()) < 2:
        (out / "summary.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    lines += [
        "",
        "Q_tot trace by lambda (seed 0):",
        "",
        "| lambda | final Q_tot | final eval return | win rate |",
        "|---|---|---|---|",
    ]
    for lam, name in lam_runs.items():
        if name not in runs:
            continue
        q = [r for r in runs[name] if "value/q_tot" in r]
        ax.plot([r["step"] for r in q], [r["value/q_tot"] for r in q], label=f"lambda = {lam}")
        f = finals.get(name, {})
        wr = f.get("eval/win_rate")
        lines.append(
            f"| {lam} | {q[-1]['value/q_tot']:.4g} | {f.get('eval/return', float('nan')):.4g} | "
            f"{'-' if wr is None else f'{100 * wr:.1f}%'} |"
        )
    ax.set_xlabel("gradient steps")
    ax.set_ylabel("Q_tot on dataset batches")
    ax.set_title(f"OMGMG on {evidence.name} medium", fontsize=10)
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(out / "q_tot_lambda.png")
    plt.close(fig)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python benchmarks/evidence_report.py EVIDENCE_DIR OUT_DIR")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
