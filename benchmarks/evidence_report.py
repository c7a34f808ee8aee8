"""Summarise an evidence directory (collected levels + OMGMG/BC/lambda runs) as markdown and PNG.

    python benchmarks/evidence_report.py EVIDENCE_DIR OUT_DIR

EVIDENCE_DIR holds ``LEVEL.zarr`` datasets and ``runs/NAME`` run directories named
``omgmg-seedK``, ``bc-seedK`` and ``omgmg-lamL-seed0`` (as written by the evidence script used for
the issue notes). Writes ``OUT_DIR/summary.md`` and ``OUT_DIR/q_tot_lambda.png``.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datakit import open_dataset  # noqa: E402
from omgmg.trainer import read_log  # noqa: E402


def main(evidence: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {evidence.name}", ""]
    lines += ["| level | episodes | transitions | return mean ± std | min | max | win rate |", "|---|---|---|---|---|---|---|"]
    for level in ("random", "medium-replay", "medium", "medium-expert", "expert"):
        path = evidence / f"{level}.zarr"
        if not path.exists():
            continue
        s = open_dataset(path).meta["stats"]
        wr = "-" if s["win_rate"] is None else f"{100 * s['win_rate']:.1f}%"
        r = s["return"]
        lines.append(f"| {level} | {s['episodes']} | {s['transitions']} | {r['mean']:.3g} ± {r['std']:.3g} | "
                     f"{r['min']:.3g} | {r['max']:.3g} | {wr} |")
    runs = {p.name: read_log(p) for p in sorted((evidence / "runs").glob("*")) if (p / "log.jsonl").exists()}
    finals = {}
    for name, log in runs.items():
        evals = [r for r in log if r.get("eval/return") is not None]
        if evals:
            finals[name] = evals[-1]
    lines += ["", "Final evaluation (medium dataset), mean ± std over seeds:", "",
              "| algorithm | seeds | steps | return | win rate | Q_tot (last log) |", "|---|---|---|---|---|---|"]
    for algo in ("omgmg", "bc"):
        names = [n for n in finals if re.fullmatch(fr"{algo}-seed\d+", n)]
        if not names:
            continue
        rets = np.array([finals[n]["eval/return"] for n in names])
        wrs = [finals[n].get("eval/win_rate") for n in names]
        qs = [next((r["value/q_tot"] for r in reversed(runs[n]) if "value/q_tot" in r), None) for n in names]
        wr = "-" if wrs[0] is None else f"{100 * np.mean(wrs):.1f} ± {100 * np.std(wrs):.1f}%"
        q = "-" if qs[0] is None else f"{np.mean(qs):.3g}"
        lines.append(f"| {algo} | {len(names)} | {finals[names[0]]['step']} | {rets.mean():.4g} ± {rets.std():.3g} | {wr} | {q} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    lam_runs = {"0.0": "omgmg-lam0.0-seed0", "0.5": "omgmg-seed0", "0.9": "omgmg-lam0.9-seed0"}
    lines += ["", "Q_tot trace by lambda (seed 0):", "", "| lambda | final Q_tot | final eval return | win rate |", "|---|---|---|---|"]
    for lam, name in lam_runs.items():
        if name not in runs:
            continue
        q = [r for r in runs[name] if "value/q_tot" in r]
        ax.plot([r["step"] for r in q], [r["value/q_tot"] for r in q], label=f"lambda = {lam}")
        f = finals.get(name, {})
        wr = f.get("eval/win_rate")
        lines.append(f"| {lam} | {q[-1]['value/q_tot']:.4g} | {f.get('eval/return', float('nan')):.4g} | "
                     f"{'-' if wr is None else f'{100 * wr:.1f}%'} |")
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
    main(Path(sys.argv[1]), Path(sys.argv[2]))
