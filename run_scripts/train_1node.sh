#!/usr/bin/env bash
# Train on one machine with every visible GPU (or NPROC processes; CPU works too, with gloo).
# PYTHON (default python3) is the interpreter of the environment the package is installed in.
#   bash run_scripts/train_1node.sh CONFIG.yaml [--options key=value ...]
#   NPROC=4 bash run_scripts/train_1node.sh configs/train/regionblip_opt2.7b.yaml --options run.max_epoch=2
# Relative paths (the config, --options values, the paths inside the config) are taken from where you stand, as
# with `python train.py`; the script may be called from anywhere.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd -P)
if [ $# -lt 1 ]; then echo "usage: $0 CONFIG.yaml [--options key=value ...]" >&2; exit 2; fi
CFG=$1; shift
if [ -z "${NPROC:-}" ]; then
  NPROC=$("${PYTHON:-python3}" -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
exec "${PYTHON:-python3}" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" \
  "$REPO/train.py" --cfg-path "$CFG" "$@"
