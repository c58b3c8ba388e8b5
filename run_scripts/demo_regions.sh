#!/usr/bin/env bash
# Regions of any shape, measured on the synthetic world (README "Regions of any shape: measured"):
#   (i)  masks matter: two shapes overlap so that one box holds both (a ring round a disc, an L-shape round a square,
#        a cross over a ring with the same box); "Describe <region>." -> "<colour> <shape>", trained once with mask
#        regions (mask2d: the queries see only the ViT patches under the mask) and once with their boxes (box2d), same
#        data, steps and seed; accuracy of the named shape and colour, exact match and CIDEr on held-out images
#   (ii) multi-region instructions: questions over 1-3 regions of an image (masks) or a point-cloud scene (point
#        sets), exact match untrained vs trained, on held-out images and scenes
# Both train RegionBLIP's stage 2 on the demo's frozen parts: its tiny ViT and Point-BERT (CLIP-style pretrained)
# and its stage-1 "BLIP-2" Q-Former (data/demo/assets/blip2_tiny.pth); what is missing of them is made first, as
# run_scripts/demo.sh makes it. The LLM is a tiny OPT trained on the region world's texts (it must know "ring", "yes").
#   bash run_scripts/demo_regions.sh [--quick]
# DEMO_DIR (default: the repository) holds data/demo and output/demo_regions (OUT overrides the latter).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
# epochs of (i) and (ii); LM steps of the region world's tiny OPT; (the demo's own, where its parts are missing)
E_OVERLAP=12; E_MULTI=10; LLM_STEPS=600; S1A=6; S1B=6; ENC_STEPS=120; DEMO_LLM_STEPS=1000
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) E_OVERLAP=3; E_MULTI=2; LLM_STEPS=200; S1A=2; S1B=2; ENC_STEPS=40; DEMO_LLM_STEPS=300; shift ;;
    *) echo "unknown argument $1; usage: $0 [--quick]" >&2; exit 2 ;;
  esac
done
cd "$REPO"
source run_scripts/_venv.sh
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
cd "${DEMO_DIR:-$REPO}"
DATA=data/demo
ASSETS=$DATA/assets
REGIONS=$DATA/regions
OUT=${OUT:-output/demo_regions}
OVERLAP=$REPO/configs/demo/regions_overlap.yaml
MULTI=$REPO/configs/demo/regions_multi.yaml
TOOLS=$REPO/tools
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
START=$SECONDS
step() { printf '\n== [%4ds] %s\n' $((SECONDS - START)) "$*"; }
train() { "$PY" "$REPO/train.py" "$@" >> "$OUT/log.txt" 2>&1 || { tail -30 "$OUT/log.txt"; exit 1; }; }
evaluate() { "$PY" "$REPO/evaluate.py" "$@" >> "$OUT/log.txt" 2>&1 || { tail -30 "$OUT/log.txt"; exit 1; }; }

step "1/6 the demo's frozen parts (made only where missing: see run_scripts/demo.sh)"
if [ ! -f "$DATA/corpus.txt" ]; then "$PY" "$TOOLS"/make_synthetic_world.py --out "$DATA"; fi
if [ ! -d "$ASSETS/opt" ]; then
  "$PY" "$TOOLS"/make_tiny_assets.py --corpus "$DATA/corpus.txt" --out "$ASSETS" --llm-steps "$DEMO_LLM_STEPS" \
    --llms opt 2>&1 | grep -v "shards\|Loading weights" || true
fi
if [ ! -f "$ASSETS/eva_vit_tiny.pth" ] || [ ! -f "$ASSETS/pointbert_tiny.pth" ]; then
  "$PY" "$TOOLS"/pretrain_tiny_encoders.py --cfg-path "$REPO/configs/demo/regionblip_tiny.yaml" --out "$ASSETS" \
    --steps "$ENC_STEPS"
fi
mkdir -p "$OUT"
if [ ! -f "$ASSETS/blip2_tiny.pth" ]; then
  STAGE1=$REPO/configs/demo/stage1_image.yaml
  rm -rf "$OUT/stage1_align" "$OUT/stage1"
  train --cfg-path "$STAGE1" --options run.output_dir="$OUT/stage1_align" run.max_epoch="$S1A" \
    model.modalities.image.losses.llm=0
  train --cfg-path "$STAGE1" --options run.output_dir="$OUT/stage1" run.max_epoch="$S1B" \
    run.load_ckpt_path="$OUT/stage1_align"
  "$PY" "$TOOLS"/export_blip2_checkpoint.py --run "$OUT/stage1" --out "$ASSETS/blip2_tiny.pth"
fi

step "2/6 the region world ($REGIONS) and its tiny OPT ($LLM_STEPS LM steps)"
"$PY" "$TOOLS"/make_synthetic_world.py --out "$DATA" --sets regions
# made again only when its texts or steps changed (the world is seeded: the same corpus run after run)
if ! cmp -s "$REGIONS/corpus.txt" "$REGIONS/assets/corpus.txt" || [ "$(cat "$REGIONS/assets/steps" 2>/dev/null)" != "$LLM_STEPS" ]; then
  "$PY" "$TOOLS"/make_tiny_assets.py --corpus "$REGIONS/corpus.txt" --out "$REGIONS/assets" --llm-steps "$LLM_STEPS" \
    --llms opt 2>&1 | grep -v "shards\|Loading weights" || true
  cp "$REGIONS/corpus.txt" "$REGIONS/assets/corpus.txt"
  echo "$LLM_STEPS" > "$REGIONS/assets/steps"
fi

rm -rf "$OUT"/overlap_* "$OUT"/eval_* "$OUT"/multi*
BOX=(model.modalities.image_shape.region=box2d)
step "3/6 (i) masks matter: untrained, then $E_OVERLAP epochs with mask regions and with their boxes"
evaluate --cfg-path "$OVERLAP" --options run.output_dir="$OUT/eval_overlap_untrained"
train --cfg-path "$OVERLAP" --options run.output_dir="$OUT/overlap_mask" run.max_epoch="$E_OVERLAP"
evaluate --cfg-path "$OVERLAP" --options run.output_dir="$OUT/eval_overlap_mask" run.load_ckpt_path="$OUT/overlap_mask"
train --cfg-path "$OVERLAP" --options "${BOX[@]}" run.output_dir="$OUT/overlap_box" run.max_epoch="$E_OVERLAP"
evaluate --cfg-path "$OVERLAP" --options "${BOX[@]}" run.output_dir="$OUT/eval_overlap_box" \
  run.load_ckpt_path="$OUT/overlap_box"

step "4/6 (ii) multi-region questions, image (mask2d) and point cloud (point_set): untrained"
evaluate --cfg-path "$MULTI" --options run.output_dir="$OUT/eval_multi_untrained"

step "5/6 (ii) trained $E_MULTI epochs (interleaved image and point-cloud batches)"
train --cfg-path "$MULTI" --options run.output_dir="$OUT/multi" run.max_epoch="$E_MULTI"
evaluate --cfg-path "$MULTI" --options run.output_dir="$OUT/eval_multi_trained" run.load_ckpt_path="$OUT/multi"

step "6/6 results (% on held-out images and scenes; CIDEr x100)"
RUNS=(--run "untrained=$OUT/eval_overlap_untrained" --run "box2d=$OUT/eval_overlap_box"
      --run "mask2d=$OUT/eval_overlap_mask" --run "untrained=$OUT/eval_multi_untrained"
      --run "trained=$OUT/eval_multi_trained")
"$PY" "$TOOLS"/score_region_answers.py "${RUNS[@]}" --majority "most frequent answer (train)" --markdown --out "$OUT/results.md" --json "$OUT/results.json" \
  >> "$OUT/log.txt" 2>&1
cat "$OUT/results.md"
printf '\nfinished in %d s; runs, logs (%s) and answers under %s\n' $((SECONDS - START)) "$OUT/log.txt" "$OUT"
