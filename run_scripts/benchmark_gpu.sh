#!/usr/bin/env bash
# The GPU figures of README "Benchmarks" in one run; each part's tables go to $OUT_DIR/<part>.txt.
#   checks    the CUDA-only tests: Triton FPS against torch (both kernels), no device sync inside a training step
#   opt2.7b   RegionBLIP OPT-2.7B (random weights, no download) per modality at the paper's batch (16 per GPU):
#             samples/s, step split, peak memory, FLOPs/sample, MFU, generation samples/s
#   cache     image-region with and without the ViT-g feature cache, OPT-2.7B
#   maxbatch  the largest per-GPU train batch per modality, OPT-2.7B and OPT-6.7B (then rerun opt2.7b with
#             BATCH=<found> for the best-batch figures)
#   compile   run.compile=true against eager, OPT-2.7B
#   fps       fps_backend=triton against the torch loop on the point modalities (ScanRefer: 40000 points)
#
# Usage: bash run_scripts/benchmark_gpu.sh [part ...]        (default: every part, in the order above)
# Environment: PYTHON (default python3), OUT_DIR (default output/benchmark_gpu), STEPS (timed steps, default 10),
#   BATCH (default: the config's 16), BERT_TOKENIZER / OPT_TOKENIZER (directories of the real bert-base-uncased and
#   OPT tokenizers; default: the tiny ones written into $OUT_DIR/assets, which only changes the caption token counts).
# Relative paths are taken from the repository root (the script runs there). A part that fails stops the run.
# TINY=1 runs the same commands on the tiny demo config: a check of this script on any machine, not a measurement
# (the CUDA-only parts, checks and maxbatch, are skipped without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
OUT_DIR=${OUT_DIR:-output/benchmark_gpu}
STEPS=${STEPS:-10}
PARTS=("$@")
[ ${#PARTS[@]} -gt 0 ] || PARTS=(checks opt2.7b cache maxbatch compile fps)
for part in "${PARTS[@]}"; do
  case $part in checks|opt2.7b|cache|maxbatch|compile|fps) ;;
    *) echo "unknown part '$part'; parts: checks opt2.7b cache maxbatch compile fps" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1

has_cuda=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))")
if [ "$has_cuda" != 1 ] && [ "${TINY:-0}" != 1 ]; then
  echo "no CUDA device: these are GPU figures (TINY=1 checks the script on the tiny config)" >&2
  exit 2
fi

ASSETS=$OUT_DIR/assets
[ -d "$ASSETS/opt" ] || "$PYTHON" -c "import sys; from lavis.models.tiny_assets import write_tiny_assets; \
write_tiny_assets(sys.argv[1])" "$ASSETS" >/dev/null
BERT_TOKENIZER=${BERT_TOKENIZER:-$ASSETS/bert_tokenizer}
OPT_TOKENIZER=${OPT_TOKENIZER:-$ASSETS/opt}

# the image-region dataset is `refcoco` in both configs; TINY keeps the tiny LLM whatever size a part names
if [ "${TINY:-0}" = 1 ]; then
  CFG=configs/demo/regionblip_tiny.yaml
else
  CFG=configs/train/regionblip_opt2.7b.yaml
fi
COMMON=(model.random_init=true "model.qformers.blip2.config.tokenizer_path=$BERT_TOKENIZER"
        "model.qformers.point.config.tokenizer_path=$BERT_TOKENIZER" "model.llm.path=$OPT_TOKENIZER")
bench() {  # bench <part> <LLM architecture in configs/hf_configs> <benchmark.py arguments...>
  local part=$1 llm=$2
  shift 2
  local options=("${COMMON[@]}") batch=()
  [ "${TINY:-0}" = 1 ] || options+=("model.llm.config_path=configs/hf_configs/$llm")
  # BATCH sets the timed batch; a --find-max-batch search starts from the config's
  [ -z "${BATCH:-}" ] || [[ " $* " == *" --find-max-batch "* ]] || batch=(--batch-size "$BATCH")
  echo "== $part" >&2
  # ${a[@]+...}: an empty array under `set -u` on any bash
  "$PYTHON" tools/benchmark.py --cfg-path "$CFG" --options "${options[@]}" "$@" ${batch[@]+"${batch[@]}"} \
    2>&1 | tee "$OUT_DIR/$part.txt"
}

for part in "${PARTS[@]}"; do
  case $part in
    checks)
      if [ "$has_cuda" = 1 ]; then
        "$PYTHON" -m pytest -q tests/models/test_fps_triton.py tests/test_step_host_reads.py \
          2>&1 | tee "$OUT_DIR/checks.txt"
      else
        echo "== checks: skipped (no CUDA device)" >&2
      fi ;;
    opt2.7b)
      bench opt2.7b opt-2.7b --steps "$STEPS" --generate-steps 2 ;;
    cache)
      bench cache opt-2.7b --modalities image_region --steps "$STEPS" --generate-steps 0 \
        --compare "datasets.refcoco.feature_cache_dir=$OUT_DIR/feature_cache" ;;
    maxbatch)
      if [ "$has_cuda" = 1 ]; then
        bench maxbatch_opt2.7b opt-2.7b --find-max-batch
        bench maxbatch_opt6.7b opt-6.7b --find-max-batch
      else
        echo "== maxbatch: skipped (no CUDA device)" >&2
      fi ;;
    compile)
      bench compile opt-2.7b --steps "$STEPS" --generate-steps 0 --compare run.compile=true ;;
    fps)
      bench fps opt-2.7b --modalities pointcloud pointcloud_region --steps "$STEPS" --generate-steps 0 \
        --compare model.encoders.point.params.fps_backend=triton ;;
  esac
done
echo "tables in $OUT_DIR" >&2
