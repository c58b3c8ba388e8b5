#!/usr/bin/env bash
# The paper's Table 2 (RegionBLIP OPT-2.7B with and without PaFE): evaluate configs/eval/regionblip_opt2.7b_<cell>.yaml
# and regionblip_opt2.7b_no_pafe_<cell>.yaml for RefCOCO, Objaverse and ScanRefer (the PaFE-off checkpoint comes
# from configs/train/regionblip_opt2.7b_no_pafe.yaml), then print both side by side.
#   WEIGHTS=/path/to/pretrained bash run_scripts/eval_table2.sh [--options key=value ...]
# Runs already done by eval_table1.sh (same OUT) are reused. See _eval_common.sh for WEIGHTS, OUT, FORCE, NPROC.
source "$(dirname "$0")/_eval_common.sh"
CELLS=${CELLS:-refcoco objaverse scanrefer}

RESULTS=()
for cell in $CELLS; do
  run_eval "regionblip_opt2.7b_$cell" opt2.7b
  run_eval "regionblip_opt2.7b_no_pafe_$cell" opt2.7b
  link_metrics "$OUT/table2/pafe" "regionblip_opt2.7b_$cell"
  link_metrics "$OUT/table2/no_pafe" "regionblip_opt2.7b_no_pafe_$cell"
  RESULTS+=(--result "opt2.7b=$OUT/regionblip_opt2.7b_$cell/$(metrics_name "$cell")")
done

echo
"$PYTHON" "$REPO/tools/compare_table1.py" "${RESULTS[@]}" | tee "$OUT/table2/compare_table1.txt"
echo
echo "Table 2 (paper, CIDEr / SPICE, PaFE on -> off): RefCOCO 63.5/21.3 -> 44.7/14.8, Objaverse 112.7/31.6 ->" \
  "84.7/27.6, ScanRefer 57.0/13.5 -> 21.4/8.4"
"$PYTHON" "$REPO/tools/metrics_table.py" --run "PaFE=$OUT/table2/pafe" --run "PaFE off=$OUT/table2/no_pafe" \
  --metrics CIDEr SPICE | tee "$OUT/table2/metrics.txt"
