#!/usr/bin/env bash
# The web demo (tools/web_demo.py) on the stage-2 run that run_scripts/demo.sh writes, on this CPU:
#   bash run_scripts/demo.sh && bash run_scripts/web_demo.sh      # then open http://127.0.0.1:7860
# RUN (default output/demo/stage2 under DEMO_DIR, as demo.sh) picks another run folder; extra arguments go to the
# tool (--port 8080, --host 0.0.0.0, --cfg-path ...).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
source run_scripts/_venv.sh
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
cd "${DEMO_DIR:-$REPO}"   # the run's config.yaml names data/demo relative to this folder
RUN=${RUN:-output/demo/stage2}
if [ ! -f "$RUN/config.yaml" ]; then
  echo "no training run in $RUN: run bash run_scripts/demo.sh first (or set RUN=...)" >&2
  exit 2
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec "$PY" "$REPO/tools/web_demo.py" --run "$RUN" "$@"
