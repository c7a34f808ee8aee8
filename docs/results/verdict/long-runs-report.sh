#!/bin/bash
# What of the long runs (long-runs.sh) is committed at each stage: per dataset and algorithm, `omgmg report`'s
# table and learning curves (mean ± std over the seeds) and every evaluation of every seed (evals.jsonl, from
# the runs' logs); per dataset, the algorithms side by side in one table and one figure. The checkpoints (10 MB a program) stay with the runs, so a machine without them starts over.
#
#   bash docs/results/verdict/long-runs-report.sh runs/long docs/results/verdict/long-runs
set -eu
RUNS=${1:?the long runs folder, e.g. runs/long}
DEST=${2:?where the results go, e.g. docs/results/verdict/long-runs}
for algo_dir in "$RUNS"/*/*/; do
  dataset=$(basename "$(dirname "$algo_dir")")
  algo=$(basename "$algo_dir")
  out="$DEST/$dataset/$algo"
  grep -qs '"eval/return"' "$algo_dir"*/log.jsonl || continue   # not evaluated yet: nothing to commit
  mkdir -p "$out"
  omgmg report "$algo_dir" --out "$out" > /dev/null
  python3 - "$algo_dir" "$out/evals.jsonl" <<'EOF'
import json, pathlib, sys
runs, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
lines = []
for log in sorted(runs.glob("*/log.jsonl")):
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if "eval/return" in record:
            lines.append(json.dumps({"run": log.parent.name, **record}))
dest.write_text("\n".join(lines) + "\n")
EOF
done
for dataset_dir in "$RUNS"/*/; do  # the algorithms side by side: one table, one figure per dataset
  dataset=$(basename "$dataset_dir")
  [ -d "$DEST/$dataset" ] && omgmg report "$dataset_dir" --out "$DEST/$dataset" > /dev/null
done
