#!/usr/bin/env bash
# The embedded default: RegionBLIP's incremental story at toy scale, on a synthetic world in the real dataset formats
# read by the real dataset classes. Nothing is downloaded. Measured: about 6 minutes on 2 cores (README).
#   stage 0  stand-ins for the pretrained parts: tokenizers, a tiny OPT (a language model that writes about what its
#            context holds), a tiny ViT and Point-BERT (CLIP-style trained on the synthetic pairs; frozen from here on)
#   stage 1  "BLIP-2": an image-text Q-Former, alignment first (ITC, ITM, ITG), then with the LLM loss added;
#            exported as a LAVIS BLIP-2 checkpoint
#   stage 2  RegionBLIP: that BLIP-2 frozen; image regions, point clouds and point-cloud regions added with LoRA,
#            queries and PaFE (and once more with PaFE off)
# Every modality is scored (COCO caption metrics, held-out splits) untrained, after stage 1 and after stage 2, and
# tools/demo_report.py says whether the demo shows what it should (learning, PaFE, a preserved image path).
#   bash run_scripts/demo.sh [--quick] [--no-ablation]
# --quick: fewer steps everywhere (the test suite runs it). DEMO_DIR (default: the repository) is where data/demo
# (the paths of configs/demo/*.yaml, relative to it) and output/demo are written; OUT overrides the latter.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
ABLATION=1
# epochs: stage 1 alignment, stage 1 with the LLM loss, stage 2; CLIP steps for the encoders; LM steps for the OPT
S1A=6; S1B=6; S2=12; ENC_STEPS=120; LLM_STEPS=1000
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) S1A=4; S1B=4; S2=6; ENC_STEPS=60; LLM_STEPS=1000; shift ;;
    --no-ablation) ABLATION=0; shift ;;
    *) echo "unknown argument $1; usage: $0 [--quick] [--no-ablation]" >&2; exit 2 ;;
  esac
done
cd "$REPO"
source run_scripts/_venv.sh
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
cd "${DEMO_DIR:-$REPO}"
DATA=data/demo
OUT=${OUT:-output/demo}
ASSETS=$DATA/assets
SCRATCH=$REPO/configs/demo/regionblip_tiny.yaml   # all four modalities, nothing pretrained but what --options name
STAGE1=$REPO/configs/demo/stage1_image.yaml
STAGE2=$REPO/configs/demo/stage2_regions.yaml
TOOLS=$REPO/tools
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
START=$SECONDS
step() { printf '\n== [%4ds] %s\n' $((SECONDS - START)) "$*"; }

step "1/8 synthetic world -> $DATA"
"$PY" "$TOOLS"/make_synthetic_world.py --out "$DATA"
mkdir -p "$DATA/gt"
"$PY" "$TOOLS"/prepare_eval_coco.py --ann-file "$DATA/coco_karpathy_test.json" --out "$DATA/gt/coco_test.json"
"$PY" "$TOOLS"/prepare_eval_refcoco.py --refer-root "$DATA" --dataset refcoco --split-by unc --split test \
  --out "$DATA/gt/refcoco_test.json"
"$PY" "$TOOLS"/prepare_eval_objaverse.py -i "$DATA/Cap3D_automated_Objaverse.csv" \
  --test-uids "$DATA/objaverse/test_uids.txt" -o "$DATA/gt/objaverse_test.json"
"$PY" "$TOOLS"/prepare_eval_scanrefer.py -i "$DATA/scanrefer/ScanRefer_filtered_val.json" -o "$DATA/gt/scanrefer_val.json"

step "2/8 tiny tokenizers and a tiny OPT trained as a language model on the synthetic captions"
"$PY" "$TOOLS"/make_tiny_assets.py --corpus "$DATA/corpus.txt" --out "$ASSETS" --llm-steps "$LLM_STEPS" --llms opt 2>&1 \
  | grep -v "shards\|Loading weights" || true

step "3/8 the frozen encoders' stand-ins: tiny ViT and Point-BERT, CLIP-style on the train splits"
"$PY" "$TOOLS"/pretrain_tiny_encoders.py --cfg-path "$SCRATCH" --out "$ASSETS" --steps "$ENC_STEPS"
ENCODERS=("model.encoders.vision.params.checkpoint_path=$ASSETS/eva_vit_tiny.pth"
          "model.encoders.point.params.checkpoint_path=$ASSETS/pointbert_tiny.pth")

rm -rf "$OUT"
step "4/8 evaluate the untrained model: pretrained encoders and LLM, random Q-Formers, queries and heads"
"$PY" "$REPO/evaluate.py" --cfg-path "$SCRATCH" --options "${ENCODERS[@]}" run.output_dir="$OUT/untrained"

step "5/8 stage 1 (BLIP-2): image-text alignment ($S1A epochs), then with the LLM loss ($S1B epochs); export"
"$PY" "$REPO/train.py" --cfg-path "$STAGE1" --options run.output_dir="$OUT/stage1_align" run.max_epoch="$S1A" \
  model.modalities.image.losses.llm=0
"$PY" "$REPO/train.py" --cfg-path "$STAGE1" --options run.output_dir="$OUT/stage1" run.max_epoch="$S1B" \
  run.load_ckpt_path="$OUT/stage1_align"
"$PY" "$REPO/evaluate.py" --cfg-path "$STAGE1" --options run.output_dir="$OUT/after_stage1" run.load_ckpt_path="$OUT/stage1"
"$PY" "$TOOLS"/export_blip2_checkpoint.py --run "$OUT/stage1" --out "$ASSETS/blip2_tiny.pth"

step "6/8 stage 2 (RegionBLIP): BLIP-2 frozen, regions and point clouds added with LoRA + PaFE, $S2 epochs"
"$PY" "$REPO/train.py" --cfg-path "$STAGE2" --options run.output_dir="$OUT/stage2" run.max_epoch="$S2"
"$PY" "$REPO/evaluate.py" --cfg-path "$STAGE2" --options run.output_dir="$OUT/after_stage2" run.load_ckpt_path="$OUT/stage2"

RUNS=(--run "untrained=$OUT/untrained" --run "stage 1=$OUT/after_stage1" --run "stage 2=$OUT/after_stage2")
if [ "$ABLATION" = 1 ]; then
  step "7/8 stage 2 again with PaFE off (the region modalities see no box)"
  NO_PAFE=("model.modalities.image_region.region=null" "model.modalities.image_region.losses.reg=0"
           "model.modalities.pointcloud_region.region=null" "model.modalities.pointcloud_region.losses.reg=0")
  "$PY" "$REPO/train.py" --cfg-path "$STAGE2" --options "${NO_PAFE[@]}" run.output_dir="$OUT/stage2_no_pafe" \
    run.max_epoch="$S2"
  "$PY" "$REPO/evaluate.py" --cfg-path "$STAGE2" --options "${NO_PAFE[@]}" run.output_dir="$OUT/after_stage2_no_pafe" \
    run.load_ckpt_path="$OUT/stage2_no_pafe"
  RUNS+=(--run "PaFE off=$OUT/after_stage2_no_pafe")
fi

step "8/8 results (x100; held-out data)"
"$PY" "$TOOLS"/metrics_table.py "${RUNS[@]}" | tee "$OUT/results.txt"
"$PY" "$TOOLS"/metrics_table.py "${RUNS[@]}" --markdown > "$OUT/results.md"
"$PY" "$TOOLS"/demo_report.py "$OUT" | tee -a "$OUT/results.txt"
printf '\ndemo finished in %d s; runs, logs and captions under %s\n' $((SECONDS - START)) "$OUT"
