#!/usr/bin/env bash
# RegionGPT's data pipeline (tools/generate_region_captions.py) on the synthetic world with the demo's stage-2 model:
# every region of the held-out RefCOCO images captioned in the context of its image's global caption, and without
# it (--no-global-context), each scored (tools/score_generated_captions.py) against the world's referring sentences.
# Run run_scripts/demo.sh first (it writes data/demo and output/demo/stage2).
#   bash run_scripts/demo_generation.sh
# DEMO_DIR (default: the repository) is where data/demo and output/demo are; RUN (default output/demo/stage2) the
# model; OUT (default output/demo_generation) receives the shards, the scores and results.md.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
source run_scripts/_venv.sh
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
cd "${DEMO_DIR:-$REPO}"
DATA=data/demo
RUN=${RUN:-output/demo/stage2}
OUT=${OUT:-output/demo_generation}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
for need in "$RUN" "$DATA/refcoco/instances.json" "$DATA/gt/refcoco_test.json"; do
  if [ ! -e "$need" ]; then echo "$need is missing: run run_scripts/demo.sh first" >&2; exit 2; fi
done
rm -rf "$OUT"
mkdir -p "$OUT"

# the annotations of the held-out images only (the refer layout's test split): what the ground truth scores
"$PY" - "$DATA/refcoco" "$OUT/instances_test.json" <<'EOF'
import json, sys
from pathlib import Path
from lavis.common.safe_pickle import load_pickle
refer, out = Path(sys.argv[1]), Path(sys.argv[2])
test = {ref["image_id"] for ref in load_pickle(refer / "refs(unc).p") if ref["split"] == "test"}
data = json.loads((refer / "instances.json").read_text())
data["images"] = [i for i in data["images"] if i["id"] in test]
data["annotations"] = [a for a in data["annotations"] if a["image_id"] in test]
out.write_text(json.dumps(data))
print(f"{len(data['images'])} held-out images, {len(data['annotations'])} regions")
EOF

for variant in context plain; do
  flag=()
  if [ "$variant" = plain ]; then flag=(--no-global-context); fi
  echo "== generate ($variant)"
  "$PY" "$REPO/tools/generate_region_captions.py" --cfg-path "$REPO/configs/demo/stage2_regions.yaml" --ckpt "$RUN" \
    --coco-instances "$OUT/instances_test.json" --media-root "$DATA/images/train2014" --out "$OUT/$variant" \
    "${flag[@]}" > "$OUT/$variant.log" 2>&1 || { tail -30 "$OUT/$variant.log"; exit 1; }
  tail -2 "$OUT/$variant.log"
  "$PY" "$REPO/tools/score_generated_captions.py" --shards "$OUT/$variant" --gt "$DATA/gt/refcoco_test.json" \
    --no-spice --json "$OUT/$variant.json"
done

"$PY" - "$OUT" <<'EOF' | tee "$OUT/results.md"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| region captions (x100) | regions | CIDEr | BLEU-4 | METEOR | ROUGE_L |")
print("|---|---|---|---|---|---|")
for variant, title in (("context", "with the global caption as context"), ("plain", "without it")):
    r = json.loads((out / f"{variant}.json").read_text())
    m = r["metrics"]
    print(f"| {title} | {r['scored']} | {100 * m['CIDEr']:.1f} | {100 * m['Bleu_4']:.1f} | "
          f"{100 * m['METEOR']:.1f} | {100 * m['ROUGE_L']:.1f} |")
EOF
