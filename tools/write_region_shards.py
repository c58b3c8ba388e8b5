"""Convert RefCOCO (refer layout or flat JSON) or COCO Karpathy captions into region-caption webdataset shards.

    python tools/write_region_shards.py --refer-root data/refer --dataset refcoco --split train \
        --image-root data/coco/images/train2014 --out data/region_shards/train
    python tools/write_region_shards.py --flat-file Refcoco_train.json --image-root data/coco/images --out ...
    python tools/write_region_shards.py --coco-ann-file coco_karpathy_train.json --image-root data/coco/images --out ...

One tar sample per image: its encoded bytes plus {boxes, captions, image_id}, one box per caption. COCO captions
describe the whole image, so their box is the whole image. Images that cannot be read are reported and left out.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from lavis.datasets.datasets.coco_caption import karpathy_records
from lavis.datasets.datasets.region_shards import RegionSample, write_region_shards
from tools.prepare_eval_refcoco import add_source_args, load_source


def region_groups(args: argparse.Namespace) -> dict[str, dict]:
    """image path -> {image_id, boxes, captions}, in first-seen order."""
    groups: dict[str, dict] = defaultdict(lambda: {"image_id": None, "boxes": [], "captions": []})
    if args.coco_ann_file:
        if not Path(args.coco_ann_file).is_file():
            sys.exit(f"error: --coco-ann-file {args.coco_ann_file} does not exist; it should be a Karpathy JSON list")
        records, skipped = karpathy_records(args.coco_ann_file, per_caption=True)
        for r in records:
            group = groups[r.image]
            group["image_id"] = r.image_id
            group["boxes"].append(None)  # the whole image, known once the image is opened
            group["captions"].append(r.captions[0])
    else:
        records, skipped = load_source(args)
        for r in records:
            group = groups[r.image]
            group["image_id"] = r.image_id
            group["boxes"].append(list(r.box_xywh))
            group["captions"].append(r.captions[0])
    if skipped:
        print(f"skipped {len(skipped)} annotations while indexing, e.g. {skipped[0]}")
    return groups


def samples(groups: dict[str, dict], image_root: Path, unreadable: list[str]):
    for image, group in groups.items():
        path = image_root / image
        try:
            with Image.open(path) as opened:
                width, height = opened.size
            data = path.read_bytes()
        except (OSError, UnidentifiedImageError) as e:
            unreadable.append(f"{path}: {e}")
            continue
        boxes = [box if box is not None else [0.0, 0.0, float(width), float(height)] for box in group["boxes"]]
        yield RegionSample(str(Path(image).with_suffix("")), data, boxes, group["captions"], group["image_id"])


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_source_args(parser)
    parser.add_argument("--coco-ann-file", help="a Karpathy caption list (whole-image boxes)")
    parser.add_argument("--image-root", required=True, help="the folder the annotations' image paths start from")
    parser.add_argument("--out", required=True, help="output folder: regions-*.tar and index.json")
    parser.add_argument("--max-per-shard", type=int, default=1000, help="images per shard")
    args = parser.parse_args(argv)
    image_root = Path(args.image_root)
    if not image_root.is_dir():
        sys.exit(f"error: --image-root {image_root} is not a folder; it should hold the images the annotations name")
    groups = region_groups(args)
    unreadable: list[str] = []
    index = write_region_shards(samples(groups, image_root, unreadable), args.out,
                                max_per_shard=args.max_per_shard, total=len(groups))
    print(f"{index}: {len(groups) - len(unreadable)} images written; {len(unreadable)} unreadable")
    for line in unreadable[:20]:
        print(f"  unreadable {line}")
    return index


if __name__ == "__main__":
    main()
