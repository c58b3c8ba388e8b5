#!/usr/bin/env bash
# The embedded default: a synthetic world in the real dataset formats, a tiny RegionBLIP trained on all four
# modalities (image, image region, point cloud, point-cloud region) semi-hybrid, evaluated with the COCO caption
# metrics before and after training, and with PaFE switched off. Nothing is downloaded. About 6 minutes on 2 cores.
#   bash run_scripts/demo.sh [--epochs N] [--no-ablation]
# Data goes to data/demo (the paths of configs/demo/regionblip_tiny.yaml); OUT (default output/demo) holds the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=12
ABLATION=1
while [ $# -gt 0 ]; do
  case "$1" in
    --epochs) EPOCHS=$2; shift 2 ;;
    --no-ablation) ABLATION=0; shift ;;
    *) echo "unknown argument $1; usage: $0 [--epochs N] [--no-ablation]" >&2; exit 2 ;;
  esac
done
source run_scripts/_venv.sh
DATA=data/demo
OUT=${OUT:-output/demo}
CFG=configs/demo/regionblip_tiny.yaml
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
START=$SECONDS
step() { printf '\n== [%4ds] %s\n' $((SECONDS - START)) "$*"; }

step "1/6 synthetic world -> $DATA"
"$PY" tools/make_synthetic_world.py --out "$DATA"
mkdir -p "$DATA/gt"
"$PY" tools/prepare_eval_coco.py --ann-file "$DATA/coco_karpathy_test.json" --out "$DATA/gt/coco_test.json"
"$PY" tools/prepare_eval_refcoco.py --refer-root "$DATA" --dataset refcoco --split-by unc --split test \
  --out "$DATA/gt/refcoco_test.json"
"$PY" tools/prepare_eval_objaverse.py -i "$DATA/Cap3D_automated_Objaverse.csv" \
  --test-uids "$DATA/objaverse/test_uids.txt" -o "$DATA/gt/objaverse_test.json"
"$PY" tools/prepare_eval_scanrefer.py -i "$DATA/scanrefer/ScanRefer_filtered_val.json" -o "$DATA/gt/scanrefer_val.json"

step "2/6 tiny tokenizers and a tiny OPT trained as a language model on the synthetic captions"
"$PY" tools/make_tiny_assets.py --corpus "$DATA/corpus.txt" --out "$DATA/assets" --llm-steps 300 2>&1 \
  | grep -v "shards\|Loading weights" || true

# Everything below reads configs/demo/regionblip_tiny.yaml (whose paths point into data/demo); only --options differ.
NO_PAFE=(
  "model.modalities.image_region.region=null" "model.modalities.image_region.losses.reg=0"
  "model.modalities.pointcloud_region.region=null" "model.modalities.pointcloud_region.losses.reg=0"
)
latest() { ls "$1"/checkpoint_*.pth | sort | tail -n 1; }

step "3/6 evaluate the untrained model (held-out splits)"
rm -rf "$OUT"
"$PY" evaluate.py --cfg-path "$CFG" --options run.output_dir="$OUT/before"

step "4/6 train all four modalities, $EPOCHS epochs, interleaved single-modality batches"
"$PY" train.py --cfg-path "$CFG" --options run.output_dir="$OUT/train" run.max_epoch="$EPOCHS"
"$PY" evaluate.py --cfg-path "$CFG" --options run.output_dir="$OUT/after" \
  run.load_ckpt_path="$(latest "$OUT/train")"

RUNS=(--run "before=$OUT/before" --run "after=$OUT/after")
if [ "$ABLATION" = 1 ]; then
  step "5/6 the same training with PaFE off (region modalities see no box)"
  "$PY" train.py --cfg-path "$CFG" --options "${NO_PAFE[@]}" run.output_dir="$OUT/train_no_pafe" \
    run.max_epoch="$EPOCHS"
  "$PY" evaluate.py --cfg-path "$CFG" --options "${NO_PAFE[@]}" run.output_dir="$OUT/after_no_pafe" \
    run.load_ckpt_path="$(latest "$OUT/train_no_pafe")"
  RUNS+=(--run "PaFE off=$OUT/after_no_pafe")
fi

step "6/6 results (x100; held-out data)"
"$PY" tools/metrics_table.py "${RUNS[@]}" | tee "$OUT/results.txt"
"$PY" tools/metrics_table.py "${RUNS[@]}" --markdown > "$OUT/results.md"
printf '\ndemo finished in %d s; runs, logs and captions under %s\n' $((SECONDS - START)) "$OUT"
