#!/bin/bash
# the datasets make-data.sh wrote (in $DATA, default verdict-data) where the sweeps look for them (hard links)
M=${OMGMG_HOME:-$HOME/.omgmg}/experiments/data-b5bbdb370d; S=${OMGMG_HOME:-$HOME/.omgmg}/experiments/data-af5cf4aeaf
mkdir -p $M $S
link() { [ -d ${DATA:-verdict-data}/$1.zarr ] && [ ! -e $2 ] && cp -al ${DATA:-verdict-data}/$1.zarr $2 && echo "linked $1 -> $2"; }
for lv in medium medium-replay expert random; do
  link hopper-omiga-$lv $M/mamujoco-Hopper-3x1-omiga-$lv.zarr
  link halfcheetah-omiga-$lv $M/mamujoco-HalfCheetah-6x1-omiga-$lv.zarr
done
link hopper-omiga-medium-copy1 $M/mamujoco-Hopper-3x1-omiga-rollouts1-medium.zarr
link halfcheetah-omiga-medium-copy1 $M/mamujoco-HalfCheetah-6x1-omiga-rollouts1-medium.zarr
for t in protoss_5v5 terran_5v5 zerg_5v5; do link smax-$t-medium $S/smacv2-$t-medium.zarr; done
link smax-protoss_5v5-medium-copy1 $S/smacv2-protoss_5v5-rollouts1-medium.zarr
true
