"""Evidence for trustworthy datasets (issue 19), run by hand: every step as a user runs it.

    OMGMG_HOME=... python benchmarks/provenance.py --out provenance-evidence

1. `omgmg-data verify` on a MaMuJoCo (Hopper-3x1 medium, reusing the behaviour policy already trained
   under $OMGMG_HOME, or training it) and an SMAX (protoss_5v5 random) dataset collected here: every
   replayed episode matches; then on a copy with one reward changed: the mismatch, by episode and step.
2. The card of the Hopper-3x1 medium dataset (provenance and coverage), and `omgmg-data compare` of it
   against a medium-expert dataset (``--compare-with``), with its PNG.

Writes each command's output to ``commands.log`` and a summary to ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def run(log: Path, *args: str, ok=(0,)) -> tuple[int, str]:
    module = {"omgmg-data": "omgmg.cli.data", "omgmg": "omgmg.cli.train"}[args[0]]
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", module, *args[1:]], capture_output=True, text=True)
    text = done.stdout + done.stderr
    with open(log, "a") as f:
        f.write(f"$ {' '.join(args)}\n{text}(exit {done.returncode}, {time.time() - t0:.0f} s)\n\n")
    if done.returncode not in ok:
        sys.exit(f"{' '.join(args)} failed:\n{text}")
    return done.returncode, text


def change_one_reward(src: Path, dst: Path, episode: int, step: int) -> None:
    import zarr

    from omgmg.datakit import open_dataset

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    row = int(open_dataset(src).episode_starts()[episode]) + step
    arr = zarr.open_group(dst, mode="r+")["steps/reward"]
    values = arr[:]
    values[row] += 1.0
    arr[:] = values


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("provenance-evidence"))
    p.add_argument("--compare-with", type=Path, help="a Hopper-3x1 medium-expert dataset for `compare`")
    p.add_argument("--transitions", type=int, default=100_000)
    args = p.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    summary = {}
    hopper, smax = out / "hopper-medium.zarr", out / "smax-protoss-random.zarr"
    if not hopper.exists():
        run(log, "omgmg-data", "collect", "mamujoco", "Hopper-3x1", "--level", "medium",
            "--transitions", str(args.transitions), "--out", str(hopper))  # fmt: skip
    if not smax.exists():
        run(log, "omgmg-data", "collect", "smacv2", "protoss_5v5", "--level", "random", "--backend", "smax",
            "--episodes", "200", "--out", str(smax))  # fmt: skip
    for name, path in (("hopper", hopper), ("smax", smax)):
        _, text = run(log, "omgmg-data", "verify", str(path), "--episodes", "0")
        summary[f"verify_{name}"] = text.strip().splitlines()[-1]
        bad = out / f"{path.stem}-one-reward-changed.zarr"
        change_one_reward(path, bad, episode=7, step=5)
        code, text = run(log, "omgmg-data", "verify", str(bad), "--episodes", "0", ok=(1,))
        summary[f"verify_{name}_changed"] = {"exit": code, "lines": text.strip().splitlines()}
        shutil.rmtree(bad)
    _, card = run(log, "omgmg-data", "inspect", str(hopper))
    (out / "hopper-medium-card.txt").write_text(card)
    if args.compare_with:
        png = out / "hopper-medium-vs-medium-expert.png"
        _, text = run(log, "omgmg-data", "compare", str(hopper), str(args.compare_with), "--plot", str(png))
        summary["compare"] = text.strip().splitlines()
    from omgmg.datakit import open_dataset
    from omgmg.datakit.coverage import coverage

    summary["coverage"] = {name: coverage(open_dataset(p)) for name, p in (("hopper", hopper), ("smax", smax))}
    summary["returns"] = {
        name: float(np.mean(open_dataset(p).read("episodes/return")))
        for name, p in (("hopper", hopper), ("smax", smax))
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
