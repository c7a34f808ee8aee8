"""What drawing progress costs: a command run with its output piped into a file, and the same command in a
pseudo-terminal of 100 x 25 (live bars), wall time and bytes written to the terminal.

    python benchmarks/cli.py                       # 1000 episodes of random SMAX protoss_5v5 (needs omgmg[smax])
    python benchmarks/cli.py --episodes 200 --repeats 3

Target (issue 35): the terminal run within 5% of the piped one, and its bytes bounded by the run's length,
not by the number of episodes (live bars redraw at most 10 times a second). ``--launcher`` runs the CLI
another way (e.g. ``"python /tmp/oldcli.py"``, a script that imports another checkout) for a before/after.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from terminal import run_argv_in_terminal  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--launcher", default=f"{sys.executable} -m", help="what runs the module omgmg.cli.data")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        command = [*shlex.split(args.launcher), "omgmg.cli.data", "collect", "smacv2", "protoss_5v5"]
        command += ["--level", "random", "--episodes", str(args.episodes), "--force", "--out", f"{tmp}/d.zarr"]
        env = {"OMGMG_HOME": f"{tmp}/home"}
        for r in range(args.repeats):
            log = Path(tmp) / "log.txt"
            t0 = time.perf_counter()
            with open(log, "wb") as f:
                code = subprocess.call(command, stdout=f, stderr=f, env=os.environ | env)
            piped = time.perf_counter() - t0
            run = run_argv_in_terminal(command, cols=100, rows=25, env=env, timeout=3600)
            bars = len(run.lines_with("collecting random"))
            print(
                f"run {r}: piped {piped:.1f} s ({log.stat().st_size:,} bytes, exit {code}); terminal "
                f"{run.seconds:.1f} s ({len(run.output):,} bytes, {bars} bar line(s) in the transcript, exit "
                f"{run.exit_code}); terminal / piped {run.seconds / piped:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
