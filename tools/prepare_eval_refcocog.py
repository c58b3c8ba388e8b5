"""Write the COCO caption-format ground truth of RefCOCOg (umd split) region captioning, one file per split.

    python tools/prepare_eval_refcocog.py --refer-root data/refer --out-dir data/gt [--splits val test]

Reads `{refer_root}/refcocog/refs(umd).p` and `{refer_root}/refcocog/instances.json` (github.com/lichengunc/refer)
and writes `{out_dir}/refcocog_umd_{split}.json`: one image id per unique region ("<image_id>_box_<x>_<y>_<w>_<h>",
the id the refcoco builder's eval items carry) and every sentence of its refs as one reference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lavis.datasets.datasets.refcoco import (
    REFER_SPLITS,
    refer_paths,
    refer_records,
    region_ground_truth,
    unique_regions,
)


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refer-root", required=True, help="holds refcocog/refs(umd).p and refcocog/instances.json")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--splits", nargs="+", default=["val", "test"], choices=REFER_SPLITS["umd"])
    args = parser.parse_args(argv)
    for path in refer_paths(args.refer_root, "refcocog", "umd"):
        if not path.is_file():
            sys.exit(f"error: {path} does not exist; --refer-root should hold refcocog/{path.name}")
    written = []
    for split in args.splits:
        records, skipped = refer_records(args.refer_root, "refcocog", "umd", split)
        truth = region_ground_truth(unique_regions(records))
        out = Path(args.out_dir) / f"refcocog_umd_{split}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(truth))
        print(f"{out}: {len(truth['images'])} regions, {len(truth['annotations'])} sentences; skipped {len(skipped)}")
        written.append(out)
    return written


if __name__ == "__main__":
    main()
