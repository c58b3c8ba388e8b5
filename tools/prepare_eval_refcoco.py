"""Write the COCO caption-format ground truth of a RefCOCO split: one image id per unique region.

    python tools/prepare_eval_refcoco.py --refer-root data/refer --dataset refcoco --split val --out gt.json
    python tools/prepare_eval_refcoco.py --flat-file Refer/refcoco/Refcoco_test.json --out gt.json

A region is an image id plus its integer box; its id is "<image_id>_box_<x>_<y>_<w>_<h>", the `image_id` the refcoco
dataset's evaluation items carry, and every sentence of the region is one annotation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lavis.datasets.datasets.refcoco import region_ground_truth, unique_regions
from lavis.datasets.refcoco_source_options import add_source_args, load_source


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_source_args(parser)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    records, skipped = load_source(args)
    truth = region_ground_truth(unique_regions(records))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(truth))
    print(f"{out}: {len(truth['images'])} regions, {len(truth['annotations'])} sentences; skipped {len(skipped)}")
    return out


if __name__ == "__main__":
    main()
