#!/bin/bash
# Issue 37's data: omgmg's tanh HAPPO (MaMuJoCo, OMIGA's observation layout) and MAPPO (SMAX) datasets,
# seed 0, the paper-check budgets (1M transitions, 1000 episodes), plus independent copies (--rollout-seed 1)
# of the levels the selection protocol tunes on. Resumable: an existing dataset is skipped.
# The selection's copies come first (the first sweeps need nothing else); SUITE=mamujoco or SUITE=smax makes
# one suite's data, so two cores make both at once. On one machine the collection is deterministic; another
# machine makes other data from the same requests (README.md: generation A and B), so compare the cards.
# run from the repository with its environment active (. .venv/bin/activate)
D=${DATA:-verdict-data}; mkdir -p $D
collect() {  # name, then collect arguments
  local name=$1; shift
  [ -d $D/$name.zarr ] && return
  echo "== $name: omgmg-data collect $*"
  omgmg-data collect "$@" --workers 1 --out $D/$name.zarr || exit 1
}
if [ "${SUITE:-mamujoco}" = mamujoco ]; then
  collect hopper-omiga-medium-copy1 mamujoco Hopper-3x1 --level medium --obs-mode omiga --rollout-seed 1
  collect halfcheetah-omiga-medium-copy1 mamujoco HalfCheetah-6x1 --level medium --obs-mode omiga --rollout-seed 1
  for level in medium medium-replay expert random; do
    collect hopper-omiga-$level mamujoco Hopper-3x1 --level $level --obs-mode omiga
    collect halfcheetah-omiga-$level mamujoco HalfCheetah-6x1 --level $level --obs-mode omiga
  done
fi
if [ "${SUITE:-smax}" = smax ]; then
  collect smax-protoss_5v5-medium-copy1 smacv2 protoss_5v5 --level medium --rollout-seed 1
  for task in protoss_5v5 terran_5v5 zerg_5v5; do
    collect smax-$task-medium smacv2 $task --level medium
  done
fi
echo "== done"
