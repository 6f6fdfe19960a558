#!/usr/bin/env bash
# One device call: measure kernels and end-to-end decoder layers on this machine's GPU into $OUT
# (then copy $OUT/profile/* to traces/kernels/<gpu>/ and e2e_forward.csv to traces/e2e/).
#   OUT=/tmp/prof BUDGET=300 bash benchmarks/gpu_profile.sh
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/moesd_profile}
mkdir -p "$OUT/profile"
{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  python3 -m simulator profile --out "$OUT/profile" --budget-s "${BUDGET:-300}"
} 2>&1 | tee "$OUT/profile.log"
