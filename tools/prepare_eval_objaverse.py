"""Cap3D captions of the held-out Objaverse objects -> COCO caption-format ground truth for point-cloud captioning.

    python tools/prepare_eval_objaverse.py -i Cap3D_automated_Objaverse.csv -o objaverse_test_coco_gt.json \
        [--test-uids test_uids.txt | --num-test 20000 --split-seed 0 | --all]

The test objects are chosen exactly as the `objaverse_cap3d` dataset chooses them: the uids of --test-uids, or
the seeded draw of --num-test (same defaults as the dataset), or every line with --all (an input that already is
the test set, e.g. Cap3D_automated_Objaverse_test.txt). Image ids are the uids, as in the dataset's items:
    {"images": [{"id": "<uid>"}, ...], "annotations": [{"image_id": "<uid>", "id": 0, "caption": "..."}, ...]}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lavis.datasets.builders.point_builders import ObjaverseCap3DConfig
from lavis.datasets.datasets.objaverse import heldout_uids, read_cap3d_captions, read_uid_list


def objaverse_ground_truth(captions: dict[str, str], uids: set[str]) -> dict:
    chosen = sorted(uid for uid in uids if uid in captions)
    return {
        "images": [{"id": uid} for uid in chosen],
        "annotations": [{"image_id": uid, "id": i, "caption": captions[uid]} for i, uid in enumerate(chosen)],
    }


def main(argv: list[str] | None = None) -> int:
    defaults = ObjaverseCap3DConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", type=Path, required=True, help="Cap3D CSV of `uid,caption` lines")
    parser.add_argument("-o", "--output", type=Path, default=None, help="default: <input>__coco_gt.json")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--test-uids", type=Path, default=None, help="held-out uids, one per line")
    choice.add_argument("--all", action="store_true", help="the input already is the test set")
    parser.add_argument("--num-test", type=int, default=defaults.num_test)
    parser.add_argument("--split-seed", type=int, default=defaults.split_seed)
    args = parser.parse_args(argv)
    if not args.input.is_file():
        parser.error(f"--input {args.input}: no such file (expected a Cap3D `uid,caption` CSV)")
    if args.test_uids is not None and not args.test_uids.is_file():
        parser.error(f"--test-uids {args.test_uids}: no such file")
    captions, skipped = read_cap3d_captions(args.input)
    if args.all:
        uids = set(captions)
    elif args.test_uids is not None:
        uids = set(read_uid_list(args.test_uids))
    else:
        try:
            uids = heldout_uids(captions, args.num_test, args.split_seed)
        except ValueError as e:
            parser.error(str(e))
    gt = objaverse_ground_truth(captions, uids)
    output = args.output or args.input.with_name(f"{args.input.stem}__coco_gt.json")
    output.write_text(json.dumps(gt))
    missing = len(uids) - len(gt["images"])
    print(f"{output}: {len(gt['images'])} objects ({len(skipped)} bad lines, {missing} test uids without a caption)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
