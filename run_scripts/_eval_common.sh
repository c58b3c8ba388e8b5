# Sourced by eval_table1.sh and eval_table2.sh: argument parsing, the weight paths of each LLM, and one evaluation.
# WEIGHTS (optional) is a folder of the pretrained files in this layout (the names LAVIS and the reference use):
#   blip2_pretrained_{opt2.7b,opt6.7b,flant5xl,flant5xxl}.pth   LAVIS BLIP-2 checkpoints (EVA ViT-g included)
#   point_bert_pretrained.pt                                     ULIP Point-BERT
#   bert-base-uncased/  opt-2.7b/  opt-6.7b/  flan-t5-xl/  flan-t5-xxl/   HF directories
# Without WEIGHTS, give the five model paths with --options (then a run covers one LLM: set LLMS).
# OUT (default output/eval) receives one folder per config; a config whose metrics file exists is skipped unless
# FORCE=1. NPROC processes per run (default: the GPU count, 1 on a CPU); PYTHON is the environment's interpreter.
# Relative paths (WEIGHTS, OUT, --options values and the data paths inside the configs) are taken from where you
# stand, as with `python evaluate.py`; the configs, evaluate.py and the tools are found beside this script.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
EXTRA=()
if [ $# -gt 0 ]; then
  if [ "$1" != "--options" ]; then echo "usage: $0 [--options key=value ...]" >&2; exit 2; fi
  shift; EXTRA=("$@")
fi
PYTHON=${PYTHON:-python3}
OUT=${OUT:-output/eval}
FORCE=${FORCE:-0}
if [ -z "${NPROC:-}" ]; then
  NPROC=$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi

weight_options() {  # $1: opt2.7b | opt6.7b | flant5xl | flant5xxl
  [ -n "${WEIGHTS:-}" ] || return 0
  local hf
  case $1 in
    opt2.7b) hf=opt-2.7b ;; opt6.7b) hf=opt-6.7b ;; flant5xl) hf=flan-t5-xl ;; flant5xxl) hf=flan-t5-xxl ;;
    *) echo "unknown LLM $1" >&2; return 2 ;;
  esac
  echo "model.blip2_checkpoint_path=$WEIGHTS/blip2_pretrained_$1.pth"
  echo "model.encoders.point.params.checkpoint_path=$WEIGHTS/point_bert_pretrained.pt"
  echo "model.qformers.blip2.config.tokenizer_path=$WEIGHTS/bert-base-uncased"
  echo "model.qformers.point.config.tokenizer_path=$WEIGHTS/bert-base-uncased"
  echo "model.llm.path=$WEIGHTS/$hf"
}

metrics_name() {  # $1: cell -> the metrics file evaluate.py writes for that cell's dataset
  case $1 in
    coco) echo coco_caption_test_metrics.json ;; refcoco) echo refcoco_test_metrics.json ;;
    objaverse) echo objaverse_cap3d_test_metrics.json ;; scanrefer) echo scanrefer_val_metrics.json ;;
    vqav2) echo vqav2_val2014_metrics.json ;;
    *) echo "unknown cell $1" >&2; return 2 ;;
  esac
}

run_eval() {  # $1: config stem under configs/eval, $2: its LLM; evaluates into $OUT/<stem>
  local stem=$1 llm=$2 weights
  local done_file stamp options
  mapfile -t weights < <(weight_options "$llm")
  # A folder counts as done only for the same weights and options: the stamp holds those of its last evaluation
  stamp="$OUT/$stem/.eval_options"
  options=$(printf '%s\n' "${weights[@]}" "${EXTRA[@]}")
  done_file=$(ls "$OUT/$stem"/*_metrics.json 2>/dev/null | head -n 1 || true)
  if [ -n "$done_file" ] && [ "$FORCE" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$options" ]; then
    echo "== $stem: done ($done_file) with these weights and options; FORCE=1 redoes it"; return
  fi
  echo "== $stem ($NPROC processes)"
  "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" "$REPO/evaluate.py" \
    --cfg-path "$REPO/configs/eval/$stem.yaml" --options "${weights[@]}" run.output_dir="$OUT/$stem" "${EXTRA[@]}"
  mkdir -p "$OUT/$stem" && printf '%s\n' "$options" > "$stamp"
}

link_metrics() {  # $1: group folder, $2: config stem: expose the run's metrics file in the group (for metrics_table)
  mkdir -p "$1"
  local file
  for file in "$OUT/$2"/*_metrics.json; do
    # No metrics file (a dry run with PYTHON=echo) leaves the unmatched pattern. An `if`, not `[ -e ] && ln`: the
    # failed test would be the function's status and `set -e` would silently end the calling script.
    if [ -e "$file" ]; then ln -sfn "$(realpath "$file")" "$1/$2__$(basename "$file")"; fi
  done
}
