#!/bin/bash
# The GPU checks of the member axis, in one short run (about 5 minutes on an H200; at most 12 by its timeouts):
#   1. the equivalence tests on CUDA (member k of a batched run follows the single run with seed k);
#   2. gradient steps/s and member-steps/s for M = 1, 2, 5, 10, 20 on the four task shapes, eager;
#   3. the same for M = 1 and 10 on HalfCheetah-6x1 with the update compiled and replayed as CUDA graphs
#      (--compile), against the targets: >= 1,000 steps/s for one seed, >= 10,000 member-steps/s for 10;
#   4. step 3 again with TF32 matmuls (--tf32), to state what TF32 changes.
# Run from the repository root on a machine with a CUDA device and omgmg importable (pip install -e .,
# or PYTHONPATH pointing at an unpacked install); results go to ${OUT:-gpu-check}/.
set -o pipefail
out=${OUT:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))" || exit 1
OMGMG_TEST_DEVICE=cuda timeout 180 python -m pytest -q -p no:cacheprovider tests/test_members.py \
  -k "follows_the_single_run or grid_members or compiled" 2>&1 | tee "$out/equivalence.log"
timeout 180 python benchmarks/train.py --members 1,2,5,10,20 --device cuda --steps 100 \
  --shapes HalfCheetah-6x1,Hopper-3x1,Ant-2x4,protoss_5v5 --out "$out/members-cuda.json" 2>&1 | tee "$out/members-cuda.log"
timeout 200 python benchmarks/train.py --members 1,10 --device cuda --steps 200 --compile \
  --shapes HalfCheetah-6x1 --algos omgmg --out "$out/members-cuda-compiled.json" 2>&1 | tee "$out/members-cuda-compiled.log"
timeout 150 python benchmarks/train.py --members 1,10 --device cuda --steps 200 --compile --tf32 \
  --shapes HalfCheetah-6x1 --algos omgmg --out "$out/members-cuda-compiled-tf32.json" 2>&1 | tee "$out/members-cuda-compiled-tf32.log"
