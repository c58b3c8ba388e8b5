"""Score the region captions tools/generate_region_captions.py wrote against a region-caption ground truth.

    python tools/score_generated_captions.py --shards output/regioncap --gt data/gt/refcoco_test.json [--json out.json]

Each image region of the shards is matched to the ground truth by its evaluation id (image id and the integer box,
lavis.datasets.datasets.refcoco.region_id: what tools/prepare_eval_refcoco.py writes); point-cloud regions by their
recorded region id. Regions the ground truth does not hold (other splits) are counted and left out; the COCO
caption metrics are computed over the rest, so a generated corpus can be compared with and without its global
context (`--no-global-context`) on the same held-out regions.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path
from typing import Any, Iterator, Optional

from lavis.common.caption_metrics import CaptionMetricsConfig, coco_caption_scores, format_table, load_references
from lavis.datasets.datasets.refcoco import region_id
from lavis.datasets.datasets.region_shards import INDEX_NAME, read_index


def shard_regions(folder: Path) -> Iterator[tuple[Any, str]]:
    """(evaluation id, caption) of every region in the shards of `folder` (its index.json)."""
    index = read_index(folder / INDEX_NAME)
    for shard in index["shards"]:
        with tarfile.open(folder / shard["file"]) as tar:
            for member in tar:
                if not member.name.endswith(".json"):
                    continue
                meta = json.loads(tar.extractfile(member).read())
                if "region_ids" in meta:  # point clouds: the ids are recorded
                    yield from zip(meta["region_ids"], meta["captions"])
                else:
                    for box, caption in zip(meta["boxes"], meta["captions"]):
                        yield region_id(meta["image_id"], box), caption


def score(folder: Path, ground_truth: Path, spice: bool) -> tuple[dict, int, int]:
    """(the caption report, regions scored, regions left out as not in the ground truth)."""
    references = load_references(ground_truth)
    keys = {str(k): k for k in references}
    results, outside = [], 0
    for rid, caption in shard_regions(folder):
        key = keys.get(str(rid))
        if key is None:
            outside += 1
            continue
        results.append({"image_id": key, "caption": caption})
    if not results:
        raise SystemExit(f"no region of {folder} is in {ground_truth}: check that both name the same split")
    report = coco_caption_scores(results, ground_truth, CaptionMetricsConfig(spice=spice))
    return report, len(results), outside


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, type=Path, help="the --out folder of generate_region_captions.py")
    parser.add_argument("--gt", required=True, type=Path, help="COCO caption-format ground truth of the regions")
    parser.add_argument("--json", type=Path, help="also write the metrics here")
    parser.add_argument("--no-spice", action="store_true", help="leave SPICE out (it needs Stanford CoreNLP)")
    args = parser.parse_args(argv)
    for flag, path in (("--shards", args.shards / INDEX_NAME), ("--gt", args.gt)):
        if not path.is_file():
            parser.error(f"{flag}: {path} does not exist")
    report, scored, outside = score(args.shards, args.gt, spice=not args.no_spice)
    print(f"{args.shards}: {scored} regions scored against {args.gt} ({outside} not in it, left out)")
    print(format_table(report))
    out = {"shards": str(args.shards), "gt": str(args.gt), "scored": scored, "outside": outside,
           "metrics": report.metrics, "missing": report.missing}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
