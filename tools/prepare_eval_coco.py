"""Write the COCO caption-format ground truth of a Karpathy split file, for pycocoevalcap.

    python tools/prepare_eval_coco.py --ann-file data/coco/annotations/coco_karpathy_test.json --out gt_test.json

Output: {"images": [{"id"}], "annotations": [{"image_id", "id", "caption"}]}, image ids as the coco_caption
dataset's evaluation items carry them (the number in the image file name).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lavis.datasets.datasets.coco_caption import caption_ground_truth, karpathy_records


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ann-file", required=True, help="coco_karpathy_{val,test}.json")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if not Path(args.ann_file).is_file():
        sys.exit(f"error: --ann-file {args.ann_file} does not exist; it should be a Karpathy split JSON list")
    records, skipped = karpathy_records(args.ann_file, per_caption=False)
    truth = caption_ground_truth(records)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(truth))
    print(f"{out}: {len(truth['images'])} images, {len(truth['annotations'])} captions; skipped {len(skipped)}")
    return out


if __name__ == "__main__":
    main()
