#!/usr/bin/env bash
# Every protocol for one training run: evaluate.py on each configs/eval/regionblip_<LLM>_<cell>.yaml that exists
# (coco, refcoco, refcocog, objaverse, scanrefer, nr3d, vqav2) with run.load_ckpt_path=RUN_DIR, the 3D dense-caption
# metrics on ground-truth boxes (tools/eval_dense_captions.py --proposals gt) of ScanRefer and, when its references
# exist, Nr3D, then tools/compare_published.py.
#   LLM=opt2.7b WEIGHTS=/path/to/pretrained bash run_scripts/eval_protocols.sh RUN_DIR [--options key=value ...]
# A dry run prints the commands: PYTHON=echo NPROC=1 bash run_scripts/eval_protocols.sh RUN_DIR
# OUT (default RUN_DIR/eval_protocols) receives one folder per config and densecap/; SCANREFER_VAL, NR3D_TEST and
# SCANNET_DATA name the dense-caption inputs (default data/scanrefer/..., data/gt/nr3d_test.json). See _eval_common.sh for WEIGHTS, FORCE, NPROC.
if [ $# -lt 1 ] || [ "${1:0:2}" = "--" ]; then
  echo "usage: $0 RUN_DIR [--options key=value ...]" >&2; exit 2
fi
RUN_DIR=$1
shift
OUT=${OUT:-$RUN_DIR/eval_protocols}
source "$(dirname "$0")/_eval_common.sh"
LLM=${LLM:-opt2.7b}
SCANREFER_VAL=${SCANREFER_VAL:-data/scanrefer/ScanRefer_filtered_val.json}
SCANNET_DATA=${SCANNET_DATA:-data/scanrefer/scannet_data}
NR3D_TEST=${NR3D_TEST:-data/gt/nr3d_test.json}
EXTRA=(run.load_ckpt_path="$RUN_DIR" "${EXTRA[@]}")

for cell in coco refcoco refcocog objaverse scanrefer nr3d vqav2; do
  stem=regionblip_${LLM}_$cell
  if [ -f "$REPO/configs/eval/$stem.yaml" ]; then run_eval "$stem" "$LLM"; fi
done

# densecap NAME REFERENCES: the m@kIoU metrics on ground-truth boxes of one ScanRefer-layout reference file
densecap() {
  local name=$1 refs=$2 dense=$OUT/densecap/$1_densecap_gt_metrics.json
  if [ -e "$dense" ] && [ "$FORCE" != 1 ]; then
    echo "== densecap $name: done ($dense); FORCE=1 redoes it"
    return
  fi
  mapfile -t weights < <(weight_options "$LLM")
  local overrides=("${weights[@]}" "${EXTRA[@]:1}")  # the checkpoint goes as --ckpt
  local options=()
  if [ ${#overrides[@]} -gt 0 ]; then options=(--options "${overrides[@]}"); fi
  echo "== densecap $name (ground-truth boxes)"
  "$PYTHON" "$REPO/tools/eval_dense_captions.py" --scanrefer "$refs" --scannet-data-root "$SCANNET_DATA" \
    --proposals gt --cfg-path "$REPO/configs/eval/regionblip_${LLM}_scanrefer.yaml" --ckpt "$RUN_DIR" \
    --out "$dense" "${options[@]}"
}

densecap scanrefer "$SCANREFER_VAL"
# Nr3D: when its references exist (tools/prepare_eval_nr3d.py writes them in ScanRefer's layout)
if [ -f "$NR3D_TEST" ]; then densecap nr3d "$NR3D_TEST"; else echo "== densecap nr3d: skipped, no $NR3D_TEST"; fi

echo
mkdir -p "$OUT"
"$PYTHON" "$REPO/tools/compare_published.py" "$OUT" | tee "$OUT/compare_published.txt"
