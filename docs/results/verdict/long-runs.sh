#!/bin/bash
# Issue 37, point 5: OMGMG, OMIGA and BC on Hopper-3x1 medium and HalfCheetah-6x1 medium-replay (OMIGA's
# observation layout, omgmg's tanh-HAPPO data: the paper-check's datasets), 3 seeds as the members of one
# program per algorithm and dataset, evaluated every 10k steps over 32 episodes.
#
#   bash docs/results/verdict/long-runs.sh 100000     # stage 1; then 300000 (and 1000000 where time allows)
#
# A larger stage runs the same commands with a larger --steps: each resumes its run directories from their
# last checkpoint (a run's identity is its data and hyperparameters, not its step budget). The two datasets
# run side by side (one core each; LANES=... runs some of them). `omgmg report runs/long/DATASET/ALGO` gives mean ± std over the seeds
# and the learning curves.
set -u
STEPS=${1:?give the stage: the gradient steps to train to, e.g. 100000}
DATA=${DATA:-${OMGMG_HOME:-$HOME/.omgmg}/experiments/data-b5bbdb370d}   # where the sweeps generate them
OUT=${OUT:-runs/long}
lane() {
  for algo in omgmg omiga bc; do
    omgmg train --dataset "$DATA/mamujoco-$1.zarr" --algo "$algo" --seeds 0-2 --steps "$STEPS" \
      --eval-every 10000 --eval-episodes 32 --torch-threads 1 --no-tensorboard --out "$OUT/$1/$algo"
  done
}
# LANES picks the datasets (both by default, side by side): LANES=Hopper-3x1-omiga-medium for one core
for dataset in ${LANES:-Hopper-3x1-omiga-medium HalfCheetah-6x1-omiga-medium-replay}; do
  lane "$dataset" &
done
wait
