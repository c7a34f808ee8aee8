"""The mechanism metrics of the long runs' last checkpoints: BC, OMGMG and OMIGA measured on the same batches.

    python docs/results/verdict/mechanism-at-checkpoints.py runs/long/Hopper-3x1-omiga-medium DATASET OUT.json

Per folder of seeds (one per algorithm or setting, named by its folder; the members of one program), averaged
over 40 batches drawn with one seed for all: the trainer's own diagnostics (``policy/action_distance``: a
sampled action a' ~ pi(o) against the data's, in units of the action range; ``policy/behaviour_log_prob`` of a'
against ``_data`` of the data's action), plus two of the deterministic action that evaluation plays, mu(o) =
tanh of the Gaussian mean: ``mean_action_distance`` (mu against the data's action) and
``mean_action_distance_from_bc`` (mu against the BC policy's mu of the same seed). The second says how far each
method's evaluated policy moves from behaviour cloning; the first two how far from the data."""

import json
import sys
from pathlib import Path

import torch

from omgmg.algos import algorithm_class
from omgmg.behaviour import behaviour_density
from omgmg.datakit import TransitionLoader, open_dataset
from omgmg.datakit.checkpoints import load_checkpoint
from omgmg.diagnostics import action_distance
from omgmg.rundir import load_members
from omgmg.trainer import build

BATCHES = 40

runs, ds = Path(sys.argv[1]), open_dataset(sys.argv[2])
density = behaviour_density(ds)  # None where the behaviour policy is not in $OMGMG_HOME
low, high, mask = (torch.as_tensor(x) for x in ds.spec.action_bounds())
out, bc_means = {}, []
folders = sorted((p for p in runs.iterdir() if p.is_dir()), key=lambda p: (p.name != "bc", p.name))
for folder in folders:  # one per algorithm (or setting); BC first: the others are measured against it
    states = [load_checkpoint(p / "checkpoints" / "latest.pt", fallback=False) for p in sorted(folder.glob("*-seed*"))]
    if not states:  # not trained yet
        continue
    name = states[0]["algorithm"]
    cls = algorithm_class(name)
    cfgs = [cls.config_cls(**s["config"]) for s in states]
    algo = build(name, ds, cfgs)
    load_members(algo, TransitionLoader(ds, cfgs[0].batch_size, seed=[c.seed for c in cfgs]), states)
    algo.behaviour_log_prob = density
    loader = TransitionLoader(ds, cfgs[0].batch_size, seed=[1234] * len(cfgs))  # the same batches for every algorithm
    torch.manual_seed(0)
    sums = {}
    for i in range(BATCHES):
        b = algo.prepare(loader.sample_members())
        with torch.no_grad():
            mu = algo.act(b.obs, None)
        metrics = algo.diagnostics(b) | {"policy/mean_action_distance": action_distance(mu, b.actions, low, high, mask)}
        if name == "bc":
            bc_means.append(mu)
        else:
            metrics["policy/mean_action_distance_from_bc"] = action_distance(mu, bc_means[i], low, high, mask)
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0) + v / BATCHES
    out[folder.name] = {
        "step": [s["step"] for s in states],
        **{k: [round(float(x), 4) for x in v] for k, v in sums.items()},
    }
    print(folder.name, json.dumps(out[folder.name]))
Path(sys.argv[3]).write_text(json.dumps(out, indent=1) + "\n")
