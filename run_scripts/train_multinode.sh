#!/usr/bin/env bash
# Train on N nodes x G GPUs with torchrun's c10d rendezvous. Run the same command on every node.
#   NNODES=4 MASTER_ADDR=node0 bash run_scripts/train_multinode.sh CONFIG.yaml [--options key=value ...]
# or with flags before the config:
#   bash run_scripts/train_multinode.sh --nnodes 4 --master-addr node0 [--master-port 29500] [--node-rank 1] \
#        [--nproc 8] [--max-restarts 3] CONFIG.yaml [--options ...]
# NODE_RANK is only needed without a rendezvous server (RDZV_BACKEND=static); with c10d, ranks are assigned.
# With --max-restarts > 0, a failed worker group is restarted and resumes from the latest checkpoint when the
# config sets run.resume_ckpt_path=auto. Relative paths (the config, --options values, the paths inside the config)
# are taken from where you stand, as with `python train.py`.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd -P)
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
NPROC=${NPROC:-}
MAX_RESTARTS=${MAX_RESTARTS:-0}
RDZV_BACKEND=${RDZV_BACKEND:-c10d}
RDZV_ID=${RDZV_ID:-regionblip}
while [ $# -gt 0 ]; do
  case "$1" in
    --nnodes) NNODES=$2; shift 2 ;;
    --node-rank) NODE_RANK=$2; shift 2 ;;
    --master-addr) MASTER_ADDR=$2; shift 2 ;;
    --master-port) MASTER_PORT=$2; shift 2 ;;
    --nproc) NPROC=$2; shift 2 ;;
    --max-restarts) MAX_RESTARTS=$2; shift 2 ;;
    --rdzv-id) RDZV_ID=$2; shift 2 ;;
    -*) echo "unknown flag $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [ $# -lt 1 ]; then echo "usage: $0 [flags] CONFIG.yaml [--options key=value ...]" >&2; exit 2; fi
CFG=$1; shift
if [ -z "$NPROC" ]; then
  NPROC=$("${PYTHON:-python3}" -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
if [ "$RDZV_BACKEND" = static ]; then
  LAUNCH=(--nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT")
else
  LAUNCH=(--nnodes="$NNODES" --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="$RDZV_ID")
fi
exec "${PYTHON:-python3}" -m torch.distributed.run "${LAUNCH[@]}" --nproc_per_node="$NPROC" --max_restarts="$MAX_RESTARTS" \
  "$REPO/train.py" --cfg-path "$CFG" "$@"
