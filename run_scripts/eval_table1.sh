#!/usr/bin/env bash
# The paper's Table 1: evaluate configs/eval/regionblip_<llm>_{coco,refcoco,objaverse,scanrefer}.yaml (the checkpoint
# of the matching configs/train run), regionblip_<llm>_vqav2.yaml (zero-shot VQAv2 val through the frozen BLIP-2 image
# path) and the BLIP-2 crop baseline blip2_crop_refcoco_<llm>.yaml, then print ours next to the paper
# (tools/compare_table1.py) and CIDEr / SPICE / VQA accuracy of every cell (tools/metrics_table.py).
# A dry run prints the commands: PYTHON=echo NPROC=1 OUT=/tmp/dry bash run_scripts/eval_table1.sh
#   WEIGHTS=/path/to/pretrained bash run_scripts/eval_table1.sh [--options key=value ...]
#   LLMS=opt2.7b CELLS="refcoco scanrefer" NPROC=1 bash run_scripts/eval_table1.sh --options run.device=cpu
# Ground truth first: the tools/prepare_eval_*.py commands at the top of each eval config. See _eval_common.sh for
# WEIGHTS, OUT, FORCE, NPROC.
source "$(dirname "$0")/_eval_common.sh"
LLMS=${LLMS:-opt2.7b opt6.7b flant5xl flant5xxl}
CELLS=${CELLS:-vqav2 coco refcoco objaverse scanrefer blip2_crop}

RESULTS=()
for llm in $LLMS; do
  for cell in $CELLS; do
    if [ "$cell" = blip2_crop ]; then stem=blip2_crop_refcoco_$llm; else stem=regionblip_${llm}_$cell; fi
    run_eval "$stem" "$llm"
    link_metrics "$OUT/table1/$llm" "$stem"
    case $cell in
      refcoco | objaverse | scanrefer) RESULTS+=(--result "$llm=$OUT/$stem/$(metrics_name "$cell")") ;;
    esac
  done
done

echo
[ ${#RESULTS[@]} -eq 0 ] || "$PYTHON" "$REPO/tools/compare_table1.py" "${RESULTS[@]}" | tee "$OUT/table1/compare_table1.txt"
RUNS=()
for llm in $LLMS; do RUNS+=(--run "$llm=$OUT/table1/$llm"); done
echo
"$PYTHON" "$REPO/tools/metrics_table.py" "${RUNS[@]}" --metrics CIDEr SPICE accuracy | tee "$OUT/table1/metrics.txt"
