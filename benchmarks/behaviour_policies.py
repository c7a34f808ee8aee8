"""Which continuous behaviour policy generates the MaMuJoCo datasets (issue 36): HAPPO's ``policy``
candidates measured on Hopper-3x1 and HalfCheetah-6x1 at the README's (200k env steps) and the
paper-check's (2M, the default) training budgets, 3 seeds each.

    python benchmarks/behaviour_policies.py &     # two lanes side by side share the jobs (one core each)
    python benchmarks/behaviour_policies.py &
    python benchmarks/behaviour_policies.py --report         # the table and the rule's verdict

Per (policy, task, seed) job: the behaviour run is trained through ``omgmg-data collect``'s own code
(cached in ``$OMGMG_HOME``, so the chosen policy's runs serve the real collections later), and every
level but random is collected at 100k transitions (medium-replay: all its episodes) for each budget.
Measured: the expert checkpoint's evaluation return (16 deterministic episodes, as the collector
scores checkpoints), each level's share of action entries within 1e-6 of a bound
(``omgmg.datakit.coverage.bound_share``) and its mean episode return. The random level does not
depend on the policy: measured once per task. A job writes ``OUT/jobs/POLICY-TASK-seedS.json`` when
done; a rerun skips finished jobs and resumes an interrupted training run. A candidate whose finished
seeds already break the rule's bound share is out whatever its other seeds give; its remaining jobs can be
skipped (capped's were: see docs/collecting.md).

The rule, fixed before the runs (docs/collecting.md): a candidate qualifies when every level's bound
share is at most 2% (every seed, both budgets, both tasks) and, on both tasks at 2M steps, its mean
expert return is not below the clip policy's by more than two standard errors of the difference over
the seeds. Of the qualifying candidates the one with the higher expert return relative to clip's,
averaged over the tasks, is chosen; if none qualifies, the one whose largest bound share is lowest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omgmg.collectors.collect import CollectRequest, collect  # noqa: E402
from omgmg.datakit.coverage import bound_share  # noqa: E402

POLICIES = ["tanh", "capped", "clip"]
TASKS = ["Hopper-3x1", "HalfCheetah-6x1"]
SEEDS = [0, 1, 2]
BUDGETS = {"readme": 200_000, "paper-check": 2_000_000}
LEVELS = ["expert", "medium", "medium-expert", "medium-replay"]
TRANSITIONS = 100_000
MAX_BOUND_SHARE = 0.02


def measure(level: str, task: str, seed: int, train_steps: int | None, policy: str | None, scratch: Path) -> dict:
    out = scratch / f"{task}-{level}.zarr"
    req = CollectRequest(
        "mamujoco",
        task,
        level,
        transitions=TRANSITIONS,
        seed=seed,
        train_steps=train_steps,
        out=out,
        workers=1,
        force=True,
        behaviour={} if policy is None else {"policy": policy},
    )
    ds = collect(req, on_note=lambda m: None)
    shares = bound_share(ds)  # None for an empty level: medium-replay when the medium checkpoint is the first
    result = {
        "bound_share": None if shares is None else float(np.mean(shares)),
        "bound_share_per_agent": shares,
        "return_mean": (ds.meta["stats"]["return"] or {}).get("mean"),  # None: no episode
        "episodes": ds.n_episodes,
        "transitions": ds.n_transitions,
    }
    checkpoints = ds.meta["collection"].get("checkpoints")
    if checkpoints:
        result["expert_return"] = checkpoints["expert"]["eval_score"]
        result["medium_return"] = checkpoints["medium"]["eval_score"]
    shutil.rmtree(out)
    return result


def claim(path: Path) -> bool:
    """Take a job for this process (a claim file holding its pid; a dead process's claim is taken over)."""
    mark = path.with_suffix(".claim")
    mark.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(mark.read_text() or 0), 0)
            return False  # another lane has it
        except (ProcessLookupError, ValueError):
            mark.unlink(missing_ok=True)
            return claim(path)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def run_job(policy: str, task: str, seed: int, out: Path) -> None:
    path = out / "jobs" / f"{policy}-{task}-seed{seed}.json"
    if path.exists() or not claim(path):
        return
    result = {"policy": policy, "task": task, "seed": seed, "budgets": {}}
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        # the longest budget first: it trains the run, whose checkpoints then serve the shorter one
        for name, steps in sorted(BUDGETS.items(), key=lambda kv: -kv[1]):
            levels = {}
            for level in LEVELS:
                levels[level] = measure(level, task, seed, steps, policy, Path(scratch))
                print(f"{policy} {task} seed {seed} {name} {level}: {levels[level]}", flush=True)
            result["budgets"][name] = levels
    path.write_text(json.dumps(result, indent=1))
    path.with_suffix(".claim").unlink()


def run_random(task: str, out: Path) -> None:
    path = out / "jobs" / f"random-{task}.json"
    if path.exists() or not claim(path):
        return
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        result = {"task": task, "random": measure("random", task, 0, None, None, Path(scratch))}
    path.write_text(json.dumps(result, indent=1))
    path.with_suffix(".claim").unlink()


def jobs(policies, tasks, seeds) -> list[tuple]:
    return [(p, t, s) for s in seeds for p in policies for t in tasks]


def report(out: Path, policies, tasks, seeds) -> str:
    done = {}
    for p, t, s in jobs(policies, tasks, seeds):
        f = out / "jobs" / f"{p}-{t}-seed{s}.json"
        if f.exists():
            done[p, t, s] = json.loads(f.read_text())
    lines = [
        "| policy | task | budget | expert return (mean ± std) | "
        + " | ".join(f"{lv} bound share" for lv in LEVELS)
        + " | seeds |",
        "|---" * (5 + len(LEVELS)) + "|",
    ]
    expert = {}
    worst = {p: 0.0 for p in policies}
    for p in policies:
        for t in tasks:
            for name in BUDGETS:
                rows = [done[p, t, s]["budgets"][name] for s in seeds if (p, t, s) in done]
                if not rows:
                    continue
                ret = np.array([r["expert"]["expert_return"] for r in rows])
                expert[p, t, name] = ret
                cells = []
                for lv in LEVELS:
                    share = np.array([r[lv]["bound_share"] for r in rows if r[lv]["bound_share"] is not None])
                    if not len(share):
                        cells.append("empty")
                        continue
                    worst[p] = max(worst[p], float(share.max()))
                    cells.append(f"{100 * share.mean():.2f}% (max {100 * share.max():.2f}%)")
                lines.append(
                    f"| {p} | {t} | {name} ({BUDGETS[name] // 1000}k) | {ret.mean():.0f} ± {ret.std():.0f} | "
                    + " | ".join(cells)
                    + f" | {len(rows)} |"
                )
    for t in tasks:
        f = out / "jobs" / f"random-{t}.json"
        if f.exists():
            r = json.loads(f.read_text())["random"]
            lines.append(
                f"\nrandom level, {t}: bound share {100 * r['bound_share']:.4f}%, return {r['return_mean']:.1f}"
            )
    verdict = ["", "Rule, fixed before the runs" + __doc__.split("The rule, fixed before the runs")[1].rstrip()]
    # a candidate whose finished seeds already break the bound rule is out whatever its other seeds give:
    # its remaining jobs need not run
    out = {p for p in policies if p != "clip" and worst[p] > MAX_BOUND_SHARE}
    needed = [(p, t, s) for p, t, s in jobs(policies, tasks, seeds) if p not in out]
    if "clip" not in policies or policies == ["clip"]:
        verdict.append("\nVerdict: not here (the rule compares candidates with clip: list both in --policies).")
        return "\n".join(lines + verdict)
    if not all(job in done for job in needed):
        missing = sum(job not in done for job in needed)
        verdict.append(f"\nVerdict: not yet ({missing} of the jobs the verdict needs are not done).")
        return "\n".join(lines + verdict)
    qualifying, gains = [], {}
    for p in policies:
        if p == "clip":
            continue
        ok = worst[p] <= MAX_BOUND_SHARE
        gain = []
        for t in tasks:
            if (p, t, "paper-check") not in expert:
                continue
            a, b = expert[p, t, "paper-check"], expert["clip", t, "paper-check"]
            if len(a) > 1 and len(b) > 1:
                se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
                ok &= a.mean() >= b.mean() - 2 * se
            gain.append(a.mean() / b.mean())
        gains[p] = float(np.mean(gain))
        stopped = f" (stopped after seed {min(seeds)}: out by its bound share)" if p in out else ""
        verdict.append(
            f"- {p}: largest bound share {100 * worst[p]:.2f}%, expert return {100 * gains[p]:.0f}% of clip's "
            f"-> {'qualifies' if ok else 'does not qualify'}{stopped}"
        )
        if ok:
            qualifying.append(p)
    chosen = max(qualifying, key=gains.get) if qualifying else min((p for p in policies if p != "clip"), key=worst.get)
    verdict.append(f"\nChosen: {chosen}" + ("" if qualifying else " (no candidate qualified: lowest bound share)"))
    return "\n".join(lines + verdict)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/results/behaviour-policies"))
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--report", action="store_true", help="only write the table from the finished jobs")
    args = ap.parse_args()
    policies, tasks = args.policies.split(","), args.tasks.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        for job in jobs(policies, tasks, seeds):  # lanes started side by side take the jobs in turn
            run_job(*job, args.out)
        for task in tasks:
            run_random(task, args.out)
    text = report(args.out, policies, tasks, seeds)
    (args.out / "README.md").write_text("# HAPPO's continuous behaviour policy: candidates\n\n" + text + "\n")
    print(text)


if __name__ == "__main__":
    main()
