"""Hostile-user cases, run by hand: each case damages, races or misuses a command the way a user
might, then reports the exit code and first line of output of the command that meets it, plus what
is on disk afterwards. Run it against this tree, or against another checkout to compare:

    python benchmarks/hostile.py                        # this tree
    python benchmarks/hostile.py --root /path/to/old    # another checkout (same Python environment)
    python benchmarks/hostile.py --only force,chunk     # cases whose name contains a word

Disk-full cases mount a 2 MiB tmpfs and are skipped where mounting is not permitted (needs root).
Prints a markdown table (case, exit code, seconds the command took, its first error line, afterwards).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

KILL_COLLECT = textwrap.dedent("""
    import sys
    from omgmg.collectors.collect import CollectRequest, collect
    out, level, seed, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    def hook(done, total):
        if done >= stop:
            raise SystemExit(137)  # the test's kill, at a chosen point
    collect(CollectRequest("fixture", "continuous", level, episodes=600, train_steps=2000, seed=seed, workers=1,
                           out=out), on_note=lambda m: None, on_rollout=hook)
""")

STOP_TRAIN = textwrap.dedent("""
    import sys
    from omgmg.algos.bc import BCConfig
    from omgmg.trainer import train
    def hook(step, total, ev):
        if ev is not None and step == int(sys.argv[3]):
            raise SystemExit(137)
    train("bc", sys.argv[1], BCConfig(steps=90, eval_every=30, log_every=20, hidden=16, eval_episodes=1), sys.argv[2],
          evaluate=False, progress=hook)
""")

FLIP = textwrap.dedent("""
    import sys
    p = sys.argv[1]; lo, n = int(sys.argv[2]), int(sys.argv[3])
    b = bytearray(open(p, "rb").read())
    for k in range(lo, lo + n): b[k] ^= 0xFF
    open(p, "wb").write(bytes(b))
""")

SAME = textwrap.dedent("""
    import sys, zarr, numpy as np
    a, b = (zarr.open_group(p, mode="r") for p in sys.argv[1:3])
    same = all(np.array_equal(a[k][:], b[k][:]) for k in ("steps/obs", "steps/actions", "steps/reward"))
    print(f"{a.attrs['level']}, {a['episodes/length'].shape[0]} episodes; identical to a fresh run of the request: "
          f"{same}")
""")

SERVE = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1] + "/tests")
    from faulty_http import FaultyServer
    server = FaultyServer(".")
    if sys.argv[2] != "none":
        server.faults["f.zarr/steps/obs/c/0/0/0"] = sys.argv[2]
    open("url", "w").write(server.url + "/f.zarr")
    time.sleep(900)
""")

TRAIN = "omgmg train --algo bc --no-eval --steps 90 --eval-every 30 --log-every 20 --hidden 16 --eval-episodes 1"
COLLECT = "omgmg-data collect fixture continuous --episodes 600 --train-steps 2000 --workers 1"

# (name, setup commands, the command met, a command describing what is on disk afterwards)
CASES = [
    (
        "resume: a partial medium collection, then --level random",
        ["python kill_collect.py d.zarr medium 0 400"],
        f"{COLLECT} --level random --out d.zarr",
        f"{COLLECT} --level random --out e.zarr >/dev/null 2>&1; python same.py d.zarr e.zarr 2>&1 | tail -1",
    ),
    (
        "resume: a partial seed-0 collection, then --seed 1",
        ["python kill_collect.py d.zarr medium 0 400"],
        f"{COLLECT} --level medium --seed 1 --out d.zarr",
        f"{COLLECT} --level medium --seed 1 --out e.zarr >/dev/null 2>&1; python same.py d.zarr e.zarr 2>&1 | tail -1",
    ),
    (
        "resume: a partial collection, then --force",
        ["python kill_collect.py d.zarr medium 0 400"],
        f"{COLLECT} --level random --out d.zarr --force",
        f"{COLLECT} --level random --out e.zarr >/dev/null 2>&1; python same.py d.zarr e.zarr 2>&1 | tail -1",
    ),
    (
        "lock: two collections on one --out",
        [
            f"nohup {COLLECT.replace('600', '400')} --level medium --out d.zarr > first.log 2>&1 & "
            "echo $! > first.pid; sleep 4"
        ],
        f"{COLLECT.replace('600', '400')} --level medium --out d.zarr",
        'while kill -0 $(cat first.pid) 2>/dev/null; do sleep 1; done; python -c "import zarr; '
        "g=zarr.open_group('d.zarr',mode='r'); "
        "print(g['episodes/length'].shape[0], 'episodes for a budget of 400')\" 2>&1 "
        "| tail -1",
    ),
    (
        "lock: two trainings into one run directory",
        [
            "omgmg-data fixture f.zarr --episodes 200",
            f"nohup {TRAIN} --steps 3000 --dataset f.zarr --out run > first.log 2>&1 & echo $! > first.pid; sleep 3",
        ],
        f"{TRAIN} --steps 3000 --dataset f.zarr --out run --seed 1",
        'while kill -0 $(cat first.pid) 2>/dev/null; do sleep 1; done; python -c "import json; '
        "r=[json.loads(l) for l in open('run/log.jsonl')]; print(len(r), 'log lines,', len({(x['step'], tuple(x)) "
        "for x in r}), 'distinct')\"",
    ),
    (
        "chunk: a deleted steps/obs chunk, validate",
        ["omgmg-data fixture f.zarr --episodes 30", "rm f.zarr/steps/obs/c/0/0/0"],
        "omgmg-data validate f.zarr",
        "echo",
    ),
    (
        "chunk: 64 flipped bytes in a steps/state chunk, validate",
        ["omgmg-data fixture f.zarr --episodes 30", "python flip.py f.zarr/steps/state/c/0/0 40 64"],
        "omgmg-data validate f.zarr",
        "echo",
    ),
    (
        "chunk: a truncated chunk, export",
        ["omgmg-data fixture f.zarr --episodes 30", "truncate -s 100 f.zarr/steps/obs/c/0/0/0"],
        "omgmg-data export f.zarr --format omiga --out x.hdf5",
        "ls x.hdf5 2>/dev/null || echo no export",
    ),
    (
        "chunk: a truncated chunk, train",
        ["omgmg-data fixture f.zarr --episodes 30", "truncate -s 100 f.zarr/steps/obs/c/0/0/0"],
        f"{TRAIN} --dataset f.zarr --out run",
        "echo",
    ),
    (
        "value: a NaN reward, train",
        [
            "omgmg-data fixture f.zarr --episodes 30",
            "python -c \"import zarr,numpy as np; g=zarr.open_group('f.zarr',mode='r+'); r=g['steps/reward'][:]; "
            "r[7]=np.nan; g['steps/reward'][:]=r\"",
        ],
        f"{TRAIN} --dataset f.zarr --out run",
        "ls run/checkpoints 2>/dev/null | head -1 || echo",
    ),
    (
        "force: export --out .. --force from a subfolder",
        ["omgmg-data fixture f.zarr --episodes 10", "mkdir -p w/sub && echo mine > w/notes.txt"],
        "cd w/sub && omgmg-data export ../../f.zarr --format omiga --out .. --force",
        "ls w/notes.txt f.zarr/zarr.json 2>&1 | tr '\\n' ' '",
    ),
    (
        "force: export --out DIR --force",
        ["omgmg-data fixture f.zarr --episodes 10", "mkdir -p dir/deep"],
        "omgmg-data export f.zarr --format omiga --out dir --force",
        "ls -d dir/deep 2>&1",
    ),
    (
        "force: fixture notadataset --force",
        ["echo precious > notadataset"],
        "omgmg-data fixture notadataset --force",
        "cat notadataset 2>&1 | head -c 60",
    ),
    (
        "checkpoint: latest.pt half written, resume",
        [
            "omgmg-data fixture f.zarr --episodes 10",
            "python stop_train.py f.zarr run 60 || true",
            "truncate -s 300 run/checkpoints/latest.pt",
        ],
        f"{TRAIN} --dataset f.zarr --out run",
        "echo",
    ),
    (
        "checkpoint: latest.pt empty, resume",
        [
            "omgmg-data fixture f.zarr --episodes 10",
            "python stop_train.py f.zarr run 60 || true",
            "truncate -s 0 run/checkpoints/latest.pt",
        ],
        f"{TRAIN} --dataset f.zarr --out run",
        "echo",
    ),
    (
        "checkpoint: 1 KB overwritten inside latest.pt, resume",
        [
            "omgmg-data fixture f.zarr --episodes 10",
            "python stop_train.py f.zarr run 60 || true",
            "python flip.py run/checkpoints/latest.pt 4000 1024",
        ],
        f"{TRAIN} --dataset f.zarr --out run",
        "echo",
    ),
    (
        "resume: train on another dataset of the same task into a run",
        [
            "omgmg-data fixture f.zarr --episodes 10",
            "omgmg-data fixture g.zarr --episodes 10 --seed 1",
            "python stop_train.py f.zarr run 60 || true",
        ],
        f"{TRAIN} --dataset g.zarr --out run",
        "python -c \"import json; print('config names', json.load(open('run/config.json'))['dataset'])\"",
    ),
    (
        "rename: a finished collection killed before its rename",
        [
            "omgmg-data collect fixture continuous --level medium --episodes 30 --train-steps 2000 --workers 1 "
            "--out d.zarr",
            "mv d.zarr .d.zarr.partial",
        ],
        "omgmg-data collect fixture continuous --level medium --episodes 30 --train-steps 2000 --workers 1 "
        "--out d.zarr",
        "ls -d d.zarr .d.zarr.partial 2>&1 | tr '\\n' ' '",
    ),
    (
        "log: a torn last line in log.jsonl, resume",
        [
            "omgmg-data fixture f.zarr --episodes 10",
            "python stop_train.py f.zarr run 60 || true",
            'printf \'{"step": 70, "loss/ac\' >> run/log.jsonl',
        ],
        f"{TRAIN} --dataset f.zarr --out run",
        "echo",
    ),
    (
        "disk full: export to a 2 MiB tmpfs",
        [
            "omgmg-data fixture f.zarr --shape hopper-3x1 --episodes 20",
            "mkdir -p small && mount -t tmpfs -o size=2m tmpfs small",
        ],
        "omgmg-data export f.zarr --format omiga --out small/x.hdf5",
        "ls -A small | tr '\\n' ' '; umount small",
    ),
    (
        "disk full: collect to a 2 MiB tmpfs",
        ["mkdir -p small && mount -t tmpfs -o size=2m tmpfs small"],
        "omgmg-data collect fixture hopper-3x1 --level random --episodes 200 --workers 1 --out small/x.zarr",
        "ls -A small | tr '\\n' ' '; umount small",
    ),
    (
        "bad input: --nu nan",
        ["omgmg-data fixture f.zarr --episodes 10"],
        "omgmg train --dataset f.zarr --no-eval --steps 20 --hidden 16 --nu nan --out run",
        "echo",
    ),
    (
        "bad input: --grad-norm-clip -1",
        ["omgmg-data fixture f.zarr --episodes 10"],
        "omgmg train --dataset f.zarr --algo bc --no-eval --steps 20 --hidden 16 --grad-norm-clip -1 --out run",
        "echo",
    ),
    (
        "bad input: unknown level in import",
        [
            "python -c \"import h5py,numpy as np; f=h5py.File('o.hdf5','w'); "
            "[f.create_dataset(k, data=np.zeros((4,2,3))) "
            "for k in 'soa']; f['r']=np.zeros((4,1)); f['d']=np.array([[0],[0],[0],[1.]])\""
        ],
        "omgmg-data import omiga o.hdf5 --task Hopper-3x1 --level bogus --out i.zarr",
        "echo",
    ),
    (
        "bad input: an HDF5 whose o is a group",
        [
            "python -c \"import h5py,numpy as np; f=h5py.File('o.hdf5','w'); f.create_group('o'); "
            "[f.create_dataset(k, data=np.zeros((4,1))) for k in 'sard']\""
        ],
        "omgmg-data import omiga o.hdf5 --task Hopper-3x1 --level medium --out i.zarr",
        "echo",
    ),
    ("bad input: --out under a regular file (fixture)", ["echo x > afile"], "omgmg-data fixture afile/x.zarr", "echo"),
    (
        "bad input: eval with a dataset of another task",
        [
            "omgmg-data fixture f.zarr --episodes 10",
            "omgmg-data fixture h.zarr --shape hopper-3x1 --episodes 2 --max-episode-len 20",
            "omgmg train --dataset f.zarr --algo bc --steps 4 --eval-every 4 --eval-episodes 1 --hidden 8 --out run",
        ],
        "omgmg eval run --dataset h.zarr --episodes 1",
        "echo",
    ),
    ("bad input: a sweep spec that is a folder", ["mkdir spec.toml"], "omgmg sweep spec.toml --out s", "echo"),
    *[
        (
            f"remote: a server whose first steps/obs chunk is {fault}, {verb}",
            [
                "omgmg-data fixture f.zarr --episodes 30",
                f"nohup python serve.py $PYTHONPATH {fault} > serve.log 2>&1 & echo $! > serve.pid; sleep 3",
            ],
            command,
            "kill $(cat serve.pid); ls -a | grep -v -e '^\\.\\.\\?$' -e f.zarr -e serve -e url -e '\\.py$' -e .bin "
            "| tr '\\n' ' '; echo '(nothing else on disk)'",
        )
        for fault in ("missing", "500", "cut", "hang")
        for verb, command in (
            ("train", f"{TRAIN} --dataset $(cat url) --out run"),
            ("validate", "omgmg-data validate $(cat url)"),
            ("download", "omgmg-data download $(cat url) --out dl.zarr"),
        )
    ],
    (
        "url: batch of a URL",
        [
            "omgmg-data fixture f.zarr --episodes 30",
            "nohup python serve.py $PYTHONPATH none > serve.log 2>&1 & echo $! > serve.pid; sleep 3",
        ],
        "omgmg batch $(cat url) | head -1",
        "kill $(cat serve.pid)",
    ),
    (
        "url: upgrade of a URL",
        [
            "omgmg-data fixture f.zarr --episodes 30",
            "nohup python serve.py $PYTHONPATH none > serve.log 2>&1 & echo $! > serve.pid; sleep 3",
        ],
        "omgmg-data upgrade $(cat url) --out u.zarr",
        "kill $(cat serve.pid)",
    ),
    ("bad input: collect without --level", [], "omgmg-data collect mamujoco Hopper-3x1 --transitions 100", "echo"),
    (
        "bad input: --device mps",
        ["omgmg-data fixture f.zarr --episodes 10"],
        f"{TRAIN} --dataset f.zarr --out run --device mps",
        "ls -d run 2>&1",
    ),
    (
        "bad input: --seeds ''",
        ["omgmg-data fixture f.zarr --episodes 10"],
        f"{TRAIN} --dataset f.zarr --out run --seeds ''",
        "ls -d run 2>&1",
    ),
    (
        "bad input: --seeds 0-",
        ["omgmg-data fixture f.zarr --episodes 10"],
        f"{TRAIN} --dataset f.zarr --out run --seeds 0-",
        "ls -d run 2>&1",
    ),
    (
        "bad input: --grid lam=0 --grid lam=1",
        ["omgmg-data fixture f.zarr --episodes 10"],
        "omgmg train --dataset f.zarr --no-eval --steps 4 --hidden 8 --grid lam=0 --grid lam=1 --out run",
        "ls -d run 2>&1",
    ),
    (
        "bad input: verify --atol nan",
        ["omgmg-data collect fixture continuous --level random --episodes 5 --workers 1 --out d.zarr"],
        "omgmg-data verify d.zarr --atol nan",
        "echo",
    ),
    (
        "bad input: import og-marl of omgmg's own export with --task foo/bar",
        ["omgmg-data fixture f.zarr --episodes 10", "omgmg-data export f.zarr --format og-marl --out v.vlt"],
        "omgmg-data import og-marl v.vlt --task foo/bar --out i.zarr",
        "ls -d i.zarr 2>&1",
    ),
    (
        "export: NaN observations and an action of 50.0",
        [
            "omgmg-data fixture f.zarr --episodes 10",
            "python -c \"import zarr,numpy as np; g=zarr.open_group('f.zarr',mode='r+'); o=g['steps/obs'][:]; "
            "o[5,0,0]=np.nan; g['steps/obs'][:]=o; a=g['steps/actions'][:]; a[7,1,0]=50.0; g['steps/actions'][:]=a\"",
        ],
        "omgmg-data export f.zarr --format omiga --out x.hdf5",
        "ls x.hdf5 2>&1",
    ),
    (
        "sweep: --device cuda on a machine without CUDA",
        [
            "omgmg-data fixture f.zarr --episodes 10",
            'printf \'name = "t"\\nalgorithms = ["bc"]\\nseeds = [0]\\ndatasets = [{ path = "f.zarr" }]\\n'
            "[budget]\\nsteps = 10\\neval_every = 10\\neval_episodes = 1\\n[smoke]\\nseeds = [0]\\nsteps = 10\\n"
            "eval_every = 10\\neval_episodes = 1\\n' > spec.toml",
        ],
        "omgmg sweep spec.toml --out sw --device cuda",
        "ls sw/cells 2>&1 | head -1",
    ),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="The checkout whose code runs (default: this one).")
    ap.add_argument("--only", help="Comma-separated words: run the cases whose name contains one of them.")
    args = ap.parse_args()
    words = args.only.split(",") if args.only else None
    print("| case | exit | s | first line | afterwards |\n|---|---|---|---|---|")
    for name, setup, command, after in CASES:
        if words and not any(w in name for w in words):
            continue
        code, seconds, line, state = run_case(args.root.resolve(), setup, command, after)
        print(f"| {name} | {code} | {seconds} | {line} | {state} |", flush=True)


def run_case(root: Path, setup: list[str], command: str, after: str) -> tuple[str, str, str, str]:
    work = Path(tempfile.mkdtemp(prefix="omgmg-hostile-"))
    bin_dir = work / ".bin"
    bin_dir.mkdir()
    for name, module in (("omgmg-data", "omgmg.cli.data"), ("omgmg", "omgmg.cli.train")):
        exe = bin_dir / name
        exe.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'from {module} import main; main()' \"$@\"\n")
        exe.chmod(0o755)
    (work / "kill_collect.py").write_text(KILL_COLLECT)
    (work / "stop_train.py").write_text(STOP_TRAIN)
    (work / "flip.py").write_text(FLIP)
    (work / "same.py").write_text(SAME)
    (work / "serve.py").write_text(SERVE)
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "OMGMG_REMOTE_TIMEOUT": "5",  # a silent server's cost, per try
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "OMGMG_HOME": str(work / "home"),
        "COLUMNS": "250",
    }
    sh = lambda cmd: subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True)  # noqa: E731
    try:
        for cmd in setup:
            r = sh(cmd)
            if "mount" in cmd and r.returncode:
                return "-", "-", "skipped: mounting a tmpfs is not permitted here", ""
        t0 = time.perf_counter()
        met = sh(command)
        seconds = f"{time.perf_counter() - t0:.1f}"
        lines = [x.strip() for x in (met.stderr + met.stdout).splitlines() if x.strip()]
        kept = [x for x in lines if not x.startswith(("Traceback", "["))]  # progress lines ([0:00:01] ...) aside
        said = [x for x in kept if x.startswith(("error:", "invalid:", "Error:"))]
        first = (said or kept or [""])[0]
        if first.endswith(("problem(s))", "not a valid omgmg dataset")) and len(kept) > 1:  # show the first problem
            first += " " + kept[1]
        if any(x.startswith("Traceback") for x in lines):
            first = "Traceback ... " + lines[-1]
        if met.returncode < 0 or met.returncode > 128:
            first = f"killed by signal {abs(met.returncode) % 128}: " + first
        state = sh(after).stdout.strip().replace("\n", " ") if after else ""
        clip = lambda s: (s[:150] + " ...") if len(s) > 150 else s  # noqa: E731
        return str(met.returncode), seconds, clip(first.replace("|", "/")), clip(state.replace("|", "/"))
    finally:
        subprocess.run(["bash", "-c", "umount small 2>/dev/null; true"], cwd=work)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
