"""Convert the `refer` layout (refs(<split_by>).p + instances.json) into the flat JSON lists RegionBLIP reads.

    python tools/prepare_refcoco_flat.py --refer-root data/refer --dataset refcoco --split-by unc --out-dir data/flat

Writes `<out-dir>/<dataset>_<split>.json` per split: a list of {image, bbox [x, y, w, h] pixels, caption, image_id},
one entry per sentence. Unusable refs (zero-area box, missing annotation, empty sentence) are reported, not written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lavis.datasets.datasets.refcoco import REFER_SPLITS, refer_paths, refer_records


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refer-root", required=True, help="holds <dataset>/refs(<split-by>).p and instances.json")
    parser.add_argument("--dataset", default="refcoco", choices=["refcoco", "refcoco+", "refcocog"])
    parser.add_argument("--split-by", default="unc", choices=sorted(REFER_SPLITS))
    parser.add_argument("--splits", nargs="*", help="default: every split of --split-by")
    parser.add_argument("--image-prefix", default="", help="prepended to file_name, e.g. 'train2014/'")
    parser.add_argument("--out-dir", required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    for path in refer_paths(args.refer_root, args.dataset, args.split_by):
        if not path.is_file():
            sys.exit(f"error: {path} does not exist; --refer-root should hold {args.dataset}/{path.name}")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for split in args.splits or REFER_SPLITS[args.split_by]:
        records, skipped = refer_records(args.refer_root, args.dataset, args.split_by, split)
        entries = [
            {"image": args.image_prefix + r.image, "bbox": list(r.box_xywh), "caption": r.captions[0],
             "image_id": r.image_id}
            for r in records
        ]
        out = out_dir / f"{args.dataset}_{split}.json"
        out.write_text(json.dumps(entries))
        written.append(out)
        print(f"{out}: {len(entries)} sentences; skipped {len(skipped)}")
        for sample_id, reason in skipped[:20]:
            print(f"  skipped {sample_id}: {reason}")
    return written


if __name__ == "__main__":
    main()
