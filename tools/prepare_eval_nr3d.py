"""Nr3D (ReferIt3D's nr3d.csv) -> the ground truth of one split, for both evaluations:

    python tools/prepare_eval_nr3d.py -i data/referit3d/nr3d.csv \
        --scans referit3d/data/language/nr3d/test_scans.txt --split test --out-dir data/gt

writes
    {out_dir}/nr3d_{split}.json            ScanRefer's annotation layout [{scene_id, object_id, object_name, ann_id,
                                           description, token}], what Vote2Cap-DETR's data/parse_nr3d.py writes: the
                                           references of tools/eval_dense_captions.py --scanrefer (m@kIoU)
    {out_dir}/nr3d_{split}__coco_gt.json   COCO caption ground truth, one image "{scan_id}|{target_id}" per target
                                           object (the image_id of the nr3d dataset's evaluation items), every
                                           utterance of it a reference: evaluate.py's eval_gt_file
`--tokens vote2cap_detr` (default) tokenises the utterance as Vote2Cap-DETR and LL3DA do; `--tokens csv` keeps the
CSV's own `tokens` column, as Scan2Cap's scripts/organize_referit3d.py does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lavis.datasets.annotation_io import AnnotationError
from lavis.datasets.datasets.nr3d import TOKENIZATIONS, read_nr3d, read_scan_list
from lavis.datasets.datasets.scanrefer import coco_ground_truth


def nr3d_ground_truth(csv_file: Path, scans_file: Path, tokens: str) -> tuple[list[dict], dict, list]:
    """-> (ScanRefer-layout annotations, COCO ground truth, skipped [(sample id, reason)]) of the split's scans."""
    entries, skipped = read_nr3d(csv_file, read_scan_list(scans_file), tokens)
    # object_id as a string, as in ScanRefer's and Vote2Cap-DETR's files
    layout = [{**entry, "object_id": str(entry["object_id"])} for entry in entries]
    return layout, coco_ground_truth(entries), skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", type=Path, required=True, help="ReferIt3D's nr3d.csv")
    parser.add_argument("--scans", type=Path, required=True,
                        help="the split's scan ids (ReferIt3D's {train,test}_scans.txt or ScanNet's scannetv2_val.txt)")
    parser.add_argument("--split", default="test", help="names the output files (default: test)")
    parser.add_argument("--tokens", default="vote2cap_detr", choices=TOKENIZATIONS)
    parser.add_argument("--out-dir", type=Path, default=None, help="default: the folder of --input")
    args = parser.parse_args(argv)
    for flag, path in (("--input", args.input), ("--scans", args.scans)):
        if not path.is_file():
            parser.error(f"{flag} {path}: no such file")
    try:
        layout, gt, skipped = nr3d_ground_truth(args.input, args.scans, args.tokens)
    except AnnotationError as e:
        parser.error(str(e))
    if not layout:
        parser.error(f"--input {args.input}: no usable utterance of the {len(read_scan_list(args.scans))} scans of "
                     f"--scans {args.scans}; do the scan ids match the CSV's scan_id column?")
    out_dir = args.out_dir or args.input.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    annotations, coco = out_dir / f"nr3d_{args.split}.json", out_dir / f"nr3d_{args.split}__coco_gt.json"
    annotations.write_text(json.dumps(layout))
    coco.write_text(json.dumps(gt))
    print(f"{annotations}, {coco}: {len(gt['images'])} objects, {len(layout)} utterances ({len(skipped)} skipped"
          + (f", e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else "") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
