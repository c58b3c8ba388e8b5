"""Write the COCO caption-format ground truth of a RefCOCO split: one image id per unique region.

    python tools/prepare_eval_refcoco.py --refer-root data/refer --dataset refcoco --split val --out gt.json
    python tools/prepare_eval_refcoco.py --flat-file Refer/refcoco/Refcoco_test.json --out gt.json

A region is an image id plus its integer box; its id is "<image_id>_box_<x>_<y>_<w>_<h>", the `image_id` the refcoco
dataset's evaluation items carry, and every sentence of the region is one annotation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lavis.datasets.datasets.refcoco import (
    REFER_SPLITS,
    flat_records,
    refer_paths,
    refer_records,
    region_ground_truth,
    unique_regions,
)


def add_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flat-file", help="a flat RegionBLIP JSON list (instead of the refer layout)")
    parser.add_argument("--refer-root", help="holds <dataset>/refs(<split-by>).p and <dataset>/instances.json")
    parser.add_argument("--dataset", default="refcoco", choices=["refcoco", "refcoco+", "refcocog"])
    parser.add_argument("--split-by", default="unc", choices=sorted(REFER_SPLITS))
    parser.add_argument("--split", default="val")


def load_source(args: argparse.Namespace):
    """(records, skipped) from --flat-file or the refer layout; exits with a clear message on a bad path."""
    if args.flat_file:
        if not Path(args.flat_file).is_file():
            sys.exit(f"error: --flat-file {args.flat_file} does not exist; it should be a JSON list of "
                     "{image, bbox, caption, image_id}")
        return flat_records(args.flat_file)
    if not args.refer_root:
        sys.exit("error: give --flat-file or --refer-root")
    for path in refer_paths(args.refer_root, args.dataset, args.split_by):
        if not path.is_file():
            sys.exit(f"error: {path} does not exist; --refer-root should hold {args.dataset}/{path.name}")
    return refer_records(args.refer_root, args.dataset, args.split_by, args.split)


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
