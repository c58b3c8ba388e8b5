"""ScanRefer annotations -> COCO caption-format ground truth for point-cloud-region captioning.

    python tools/prepare_eval_scanrefer.py -i ScanRefer_filtered_val.json -o scanrefer_val_coco_gt.json

One image per referred object, id "{scene_id}|{object_id}" (the image_id the ScanRefer dataset's evaluation items
carry); every description of that object is one reference caption:
    {"images": [{"id": "scene0011_00|3"}, ...],
     "annotations": [{"image_id": "scene0011_00|3", "id": 0, "caption": "this is a brown chair ..."}, ...]}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lavis.datasets.datasets.scanrefer import coco_ground_truth, read_scanrefer


def scanrefer_ground_truth(annotation_file: Path) -> tuple[dict, int]:
    """-> (COCO ground truth, number of annotations skipped for a missing key or an empty description)."""
    entries, skipped = read_scanrefer(annotation_file)
    return coco_ground_truth(entries), len(skipped)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", type=Path, required=True, help="ScanRefer_filtered_{split}.json")
    parser.add_argument("-o", "--output", type=Path, default=None, help="default: <input>__coco_gt.json")
    args = parser.parse_args(argv)
    if not args.input.is_file():
        parser.error(f"--input {args.input}: no such file (expected ScanRefer_filtered_val.json)")
    try:
        gt, skipped = scanrefer_ground_truth(args.input)
    except (ValueError, json.JSONDecodeError) as e:
        parser.error(f"--input {args.input}: not a ScanRefer annotation list: {e}")
    output = args.output or args.input.with_name(f"{args.input.stem}__coco_gt.json")
    output.write_text(json.dumps(gt))
    print(f"{output}: {len(gt['images'])} objects, {len(gt['annotations'])} descriptions ({skipped} skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
