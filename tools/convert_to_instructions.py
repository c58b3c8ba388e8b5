"""RefCOCO (refer layout) or ScanRefer -> instruction JSONL (README "Instruction data"), two tasks per sentence:

    describe   "Describe <region>."  ->  the referring sentence
    choice     'Which object does "<sentence>" describe: <region> or <region>?'  ->  "the first" | "the second"

    python tools/convert_to_instructions.py refcoco --refer-root data/refer --dataset refcoco --split-by unc \
        --split train --out data/instructions/refcoco_train.jsonl
    python tools/convert_to_instructions.py scanrefer --annotations data/scanrefer/ScanRefer_filtered_train.json \
        --scannet-data-root data/scannet/scannet_data --region box3d --out data/instructions/scanrefer_train.jsonl

The choice's other option is another region of the same image (a RefCOCO ref of the same split with another box)
or scene (another object of its `_aligned_bbox.npy`); which one, and whether the described region comes first, is
drawn from a generator seeded by (--seed, sample id): the same file for the same input, whatever the order of the
annotations, and the right answer first in about half of the samples. A sentence whose image or scene has no other
region gets no choice sample (counted in the summary).

Paths in the JSONL are relative to the media root the dataset is then given: RefCOCO's `file_name` (media_root =
the COCO train2014 folder), ScanRefer's `{scene_id}_aligned_vert.npy` (media_root = --scannet-data-root).
ScanRefer regions are `box3d` (the object's `_aligned_bbox.npy` row) or `points_of` (the rows of `_ins_label.npy`
equal to objectId + --instance-id-offset: 1 for ScanNet's files; tools/make_synthetic_world.py writes objectId, 0).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from tqdm import tqdm

from lavis.datasets.annotation_io import AnnotationError, load_array
from lavis.datasets.datasets.refcoco import DATASETS, REFER_SPLITS, RegionRecord, refer_paths, refer_records
from lavis.datasets.datasets.scanrefer import read_scanrefer
from lavis.datasets.loaders import derive_seed

DESCRIBE = "Describe {region}."
CHOICE = 'Which object does "{sentence}" describe: {region} or {region}?'
ANSWERS = ("the first", "the second")
TASKS = ("describe", "choice")


def instruction_record(record_id: str, media_key: str, media: str, regions: list[dict], question: str,
                       answer: str) -> dict:
    return {"id": record_id, media_key: media, "regions": regions,
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


def choice_order(seed: int, sample_id: str, candidates: list) -> tuple[object, bool]:
    """(the other option, whether the described region comes first), seeded by (seed, sample id) alone."""
    rng = random.Random(derive_seed(seed, sample_id))
    return rng.choice(candidates), rng.random() < 0.5


def task_records(sample_id: str, media_key: str, media: str, target: dict, others: list[dict], sentence: str,
                 tasks: tuple[str, ...], token: str, seed: int) -> Iterator[tuple[str, Optional[dict]]]:
    """(task, record or None when the task cannot be made) for one referring sentence."""
    if "describe" in tasks:
        yield "describe", instruction_record(f"{sample_id}/describe", media_key, media, [target],
                                             DESCRIBE.format(region=token), sentence)
    if "choice" in tasks:
        if not others:
            yield "choice", None
            return
        other, target_first = choice_order(seed, sample_id, others)
        regions = [target, other] if target_first else [other, target]
        question = CHOICE.format(sentence=sentence.strip().rstrip("."), region=token)
        yield "choice", instruction_record(f"{sample_id}/choice", media_key, media, regions, question,
                                           ANSWERS[0 if target_first else 1])


# ---- RefCOCO ---------------------------------------------------------------------------------------------------
def refcoco_records(records: list[RegionRecord], tasks: tuple[str, ...], token: str, seed: int
                    ) -> Iterator[tuple[str, Optional[dict]]]:
    by_image: dict[object, list[tuple[float, ...]]] = defaultdict(list)
    for record in records:
        if record.box_xywh not in by_image[record.image_id]:
            by_image[record.image_id].append(record.box_xywh)
    for record in tqdm(records, desc="refcoco sentences", unit="sent", mininterval=1.0):
        target = {"box": list(record.box_xywh)}
        others = [{"box": list(box)} for box in by_image[record.image_id] if box != record.box_xywh]
        yield from task_records(record.sample_id, "image", record.image, target, others, record.captions[0], tasks,
                                token, seed)


# ---- ScanRefer -------------------------------------------------------------------------------------------------
class SceneRegions:
    """The regions of a scene's objects, read once per scene: box3d rows or points_of rows."""

    def __init__(self, data_root: Path, region: str, instance_offset: int):
        self.root, self.region, self.offset = data_root, region, instance_offset
        self._scenes: dict[str, dict[int, dict]] = {}

    def of(self, scene_id: str) -> dict[int, dict]:
        """object id -> region of every usable object of the scene; ValueError naming a missing / bad file."""
        if scene_id not in self._scenes:
            self._scenes[scene_id] = self._read(scene_id)
        return self._scenes[scene_id]

    def _read(self, scene_id: str) -> dict[int, dict]:
        boxes = load_array(self.root / f"{scene_id}_aligned_bbox.npy")
        if boxes.ndim != 2 or boxes.shape[1] < 8:
            raise ValueError(f"{scene_id}_aligned_bbox.npy has shape {boxes.shape}, expected [K, 8]")
        labels = load_array(self.root / f"{scene_id}_ins_label.npy") if self.region == "points_of" else None
        regions = {}
        for row in boxes:
            object_id = int(round(float(row[-1])))
            if not np.isfinite(row[:6]).all() or (row[3:6] <= 0).any():
                continue  # ScanRefer's all-zero placeholder box of an unannotated scene
            if labels is None:
                regions[object_id] = {"box3d": [float(v) for v in row[:6]]}
                continue
            rows = np.flatnonzero(labels == object_id + self.offset)
            if len(rows):
                regions[object_id] = {"points_of": rows.tolist()}
        return regions


def scanrefer_records(entries: list[dict], scenes: SceneRegions, tasks: tuple[str, ...], token: str, seed: int,
                      skipped: Counter) -> Iterator[tuple[str, Optional[dict]]]:
    for k, entry in enumerate(tqdm(entries, desc="scanrefer descriptions", unit="desc", mininterval=1.0)):
        scene_id, object_id = str(entry["scene_id"]), int(entry["object_id"])
        sample_id = f"{scene_id}|{object_id}|{entry.get('ann_id', k)}"
        try:
            regions = scenes.of(scene_id)
        except ValueError as e:
            skipped[f"scene unreadable ({type(e).__name__})"] += 1
            print(f"warning: {sample_id}: {e}", file=sys.stderr)
            continue
        if object_id not in regions:
            skipped[f"object not in its scene's {'points' if scenes.region == 'points_of' else 'boxes'}"] += 1
            continue
        others = [region for other, region in sorted(regions.items()) if other != object_id]
        yield from task_records(sample_id, "points", f"{scene_id}_aligned_vert.npy", regions[object_id], others,
                                str(entry["description"]).strip(), tasks, token, seed)


# ---- command line ----------------------------------------------------------------------------------------------
def write_jsonl(out: Path, produced: Iterator[tuple[str, Optional[dict]]]) -> Counter:
    """Writes the records (to a temporary file, renamed at the end: no half file under --out); counts per task."""
    counts: Counter = Counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as f:
            for task, record in produced:
                if record is None:
                    counts[f"{task}: no other region"] += 1
                    continue
                f.write(json.dumps(record) + "\n")
                counts[task] += 1
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(out)
    return counts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sources = parser.add_subparsers(dest="source", required=True)
    for name in ("refcoco", "scanrefer"):
        sub = sources.add_parser(name)
        sub.add_argument("--out", type=Path, required=True, help="the instruction JSONL to write")
        sub.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
        sub.add_argument("--seed", type=int, default=0, help="draws the choice's other option and its order")
        sub.add_argument("--region-token", default="<region>", help="the placeholder (= model.region_token)")
        sub.add_argument("--overwrite", action="store_true")
        if name == "refcoco":
            sub.add_argument("--refer-root", type=Path, required=True,
                             help="holds <dataset>/refs(<split-by>).p and <dataset>/instances.json")
            sub.add_argument("--dataset", choices=DATASETS, default="refcoco")
            sub.add_argument("--split-by", choices=sorted(REFER_SPLITS), default="unc")
            sub.add_argument("--split", required=True, help="train, val, testA, testB, test")
        else:
            sub.add_argument("--annotations", type=Path, required=True, help="ScanRefer_filtered_<split>.json")
            sub.add_argument("--scannet-data-root", type=Path, required=True,
                             help="{scene}_aligned_vert.npy, _aligned_bbox.npy (and _ins_label.npy for points_of)")
            sub.add_argument("--region", choices=("box3d", "points_of"), default="box3d")
            sub.add_argument("--instance-id-offset", type=int, default=1,
                             help="_ins_label.npy value of object k is k + offset (ScanNet: 1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out.exists() and not args.overwrite:
        sys.exit(f"error: --out {args.out} exists; pass --overwrite to replace it")
    tasks = tuple(dict.fromkeys(args.tasks))
    skipped: Counter = Counter()
    try:
        if args.source == "refcoco":
            for path in refer_paths(args.refer_root, args.dataset, args.split_by):
                if not path.is_file():
                    sys.exit(f"error: {path} does not exist; --refer-root should hold {args.dataset}/"
                             f"refs({args.split_by}).p and {args.dataset}/instances.json (lichengunc/refer)")
            records, left_out = refer_records(args.refer_root, args.dataset, args.split_by, args.split)
            skipped.update(reason for _, reason in left_out)
            produced = refcoco_records(records, tasks, args.region_token, args.seed)
        else:
            if not args.annotations.is_file():
                sys.exit(f"error: --annotations {args.annotations} does not exist; it should be a ScanRefer JSON list")
            if not args.scannet_data_root.is_dir():
                sys.exit(f"error: --scannet-data-root {args.scannet_data_root} is not a folder; it should hold "
                         "ScanRefer's scannet_data/ arrays (tools/preprocess_scannet.py)")
            entries, left_out = read_scanrefer(args.annotations)
            skipped.update(reason for _, reason in left_out)
            scenes = SceneRegions(args.scannet_data_root, args.region, args.instance_id_offset)
            produced = scanrefer_records(entries, scenes, tasks, args.region_token, args.seed, skipped)
        counts = write_jsonl(args.out, produced)
    except (AnnotationError, ValueError) as e:
        sys.exit(f"error: {e}")
    summary = ", ".join(f"{counts[t]} {t}" for t in tasks)
    not_made = ", ".join(f"{n} x {why}" for why, n in sorted((counts - Counter({t: counts[t] for t in tasks})).items()))
    left = ", ".join(f"{n} x {why}" for why, n in skipped.most_common(5))
    print(f"{args.out}: {summary} records" + (f"; not made: {not_made}" if not_made else "")
          + (f"; skipped annotations: {left}" if left else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
