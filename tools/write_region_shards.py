"""Convert region-caption data into webdataset shards: RefCOCO (refer layout or flat JSON), COCO Karpathy captions,
Objaverse point clouds with Cap3D captions, or ScanRefer over preprocessed ScanNet scenes.

    python tools/write_region_shards.py --refer-root data/refer --dataset refcoco --split train \
        --image-root data/coco/images/train2014 --out data/region_shards/train
    python tools/write_region_shards.py --flat-file Refcoco_train.json --image-root data/coco/images --out ...
    python tools/write_region_shards.py --coco-ann-file coco_karpathy_train.json --image-root data/coco/images --out ...
    python tools/write_region_shards.py --objaverse-root data/objaverse/objaverse_pc_parallel \
        --cap3d-file Cap3D_automated_Objaverse.csv --split train --out data/objaverse_shards/train
    python tools/write_region_shards.py --scanrefer-root data/scanrefer/ScanRefer_Dataset/raw \
        --scannet-data-root data/scanrefer/scannet_data --split train --out data/scanrefer_shards/train

Images: one tar sample per image, its encoded bytes plus {boxes, captions, image_id}, one box per caption. COCO
captions describe the whole image, so their box is the whole image. Point clouds: one tar sample per object or
scene, its points as .npy (float32 xyz, plus rgb where the file has colour) plus {boxes, captions, image_id,
region_ids}. An Objaverse caption describes the whole object (box null); a ScanRefer description its object, whose
box is stored as 8 corners from `{scene}_aligned_bbox.npy`, laid out as --region-kind. The objects of an Objaverse
split are chosen exactly as the `objaverse_cap3d` dataset chooses them (--test-caption-file / --test-uids-file / the
seeded --num-test draw). Files that cannot be read are reported and left out. Read the shards with the
`region_shards` dataset builder.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from lavis.datasets.annotation_io import load_array
from lavis.datasets.base import BadSampleError
from lavis.datasets.builders.point_builders import (
    DEFAULT_CORNER_KIND,
    ObjaverseCap3DBuilder,
    ObjaverseCap3DConfig,
    ScanReferBuilder,
    ScanReferConfig,
)
from lavis.datasets.datasets.coco_caption import karpathy_records
from lavis.datasets.datasets.region_shards import PointRegionSample, RegionSample, write_region_shards
from lavis.datasets.datasets.scanrefer import object_image_id
from lavis.datasets.refcoco_source_options import add_source_args, load_source

SOURCES = ("flat_file", "refer_root", "coco_ann_file", "objaverse_root", "scanrefer_root")
# the dataset config keys the builders' path checks name -> this tool's options
FLAGS = {"points_root": "--objaverse-root", "caption_file": "--cap3d-file", "test_caption_file": "--test-caption-file",
         "test_uids_file": "--test-uids-file", "annotation_root": "--scanrefer-root",
         "scannet_data_root": "--scannet-data-root"}


def exit_on_problems(problems: list[str]) -> None:
    """Stop with the builder's path problems, each led by the option to fix instead of the config key."""
    if not problems:
        return
    lines = []
    for problem in problems:
        key, _, rest = problem.partition(" ")
        lines.append(f"{FLAGS[key]} {rest}" if key in FLAGS else problem)
    sys.exit("error: " + "; ".join(lines))


# ---- images ----------------------------------------------------------------------------------------------------------
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


# ---- point clouds ----------------------------------------------------------------------------------------------------
def build_or_exit(builder, split: str, what: str):
    """The builder's dataset of `split`, or exit naming the bad path or file; reports what indexing dropped."""
    exit_on_problems(builder.check_paths())
    try:
        dataset = builder.build(split)
    except ValueError as e:
        sys.exit(f"error: {e}")
    if dataset.skipped:
        print(f"skipped {len(dataset.skipped)} {what} while indexing, e.g. {dataset.skipped[0]}")
    return dataset


def stored_cloud(array: np.ndarray, source: Path) -> np.ndarray:
    """The columns the point processor reads: xyz, plus rgb when present (ScanNet's normals are left out)."""
    if array.ndim != 2 or array.shape[1] < 3 or len(array) == 0:
        raise ValueError(f"{source}: shape {array.shape}, expected [N, 3+] points")
    return array[:, :6] if array.shape[1] >= 6 else array[:, :3]


def objaverse_samples(args: argparse.Namespace, unreadable: list[str]) -> tuple[Iterator[PointRegionSample], int]:
    """One sample per object of --split: its cloud and its caption (no box: the caption describes the object)."""
    cfg = ObjaverseCap3DConfig(modality="pointcloud", points_root=args.objaverse_root,
                               caption_file=args.cap3d_file or "", test_caption_file=args.test_caption_file or "",
                               test_uids_file=args.test_uids_file or "", num_test=args.num_test,
                               split_seed=args.split_seed)
    dataset = build_or_exit(ObjaverseCap3DBuilder(cfg), args.split, "objects")

    def generate() -> Iterator[PointRegionSample]:
        for uid, caption, path in dataset.items:
            try:
                points = stored_cloud(load_array(path), path)
            except ValueError as e:
                unreadable.append(str(e))
                continue
            yield PointRegionSample(uid, points, [None], [caption], uid, [uid])

    return generate(), len(dataset.items)


def scanrefer_samples(args: argparse.Namespace, unreadable: list[str]) -> tuple[Iterator[PointRegionSample], int]:
    """One sample per scene of --split: its cloud, and per description the referred object's box corners."""
    cfg = ScanReferConfig(modality="pointcloud_region", annotation_root=args.scanrefer_root,
                          scannet_data_root=args.scannet_data_root or "", train_split=args.split, eval_split=None,
                          region_kind=args.region_kind)
    # train_split = split: one item per description
    dataset = build_or_exit(ScanReferBuilder(cfg), args.split, "descriptions")
    scenes: dict[str, list[dict]] = defaultdict(list)
    for item in dataset.items:
        scenes[item["scene_id"]].append(item)

    def generate() -> Iterator[PointRegionSample]:
        for scene_id, items in scenes.items():
            path = Path(cfg.scannet_data_root) / f"{scene_id}_aligned_vert.npy"
            try:
                points = stored_cloud(load_array(path), path)
            except ValueError as e:  # its message names the file
                unreadable.append(str(e))
                continue
            corners, captions, region_ids = [], [], []
            for item in items:
                try:
                    corners.append(dataset.object_corners(scene_id, item["object_id"], item["sample_id"]))
                except BadSampleError as e:
                    unreadable.append(f"{e.sample_id}: {e.reason}")
                    continue
                captions.append(item["description"])
                region_ids.append(object_image_id(scene_id, item["object_id"]))
            if captions:
                yield PointRegionSample(scene_id, points, corners, captions, scene_id, region_ids)

    return generate(), len(scenes)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_source_args(parser)
    parser.add_argument("--coco-ann-file", help="a Karpathy caption list (whole-image boxes)")
    parser.add_argument("--image-root", help="image sources: the folder the annotations' image paths start from")
    objaverse = parser.add_argument_group("Objaverse + Cap3D (splits train / test)")
    objaverse.add_argument("--objaverse-root", help="ULIP's objaverse_pc_parallel: {uid}/{uid}_8192.npz")
    objaverse.add_argument("--cap3d-file", help="Cap3D CSV of `uid,caption` lines")
    objaverse.add_argument("--test-caption-file", help="optional Cap3D CSV of the test objects")
    objaverse.add_argument("--test-uids-file", help="optional held-out uids, one per line")
    objaverse_defaults = ObjaverseCap3DConfig()
    objaverse.add_argument("--num-test", type=int, default=objaverse_defaults.num_test,
                           help="size of the seeded held-out draw")
    objaverse.add_argument("--split-seed", type=int, default=objaverse_defaults.split_seed)
    scanrefer = parser.add_argument_group("ScanRefer (splits train / val)")
    scanrefer.add_argument("--scanrefer-root", help="holds ScanRefer_filtered_{split}.json")
    scanrefer.add_argument("--scannet-data-root", help="scannet_data/: {scene}_aligned_vert.npy, _aligned_bbox.npy")
    scanrefer.add_argument("--region-kind", default=DEFAULT_CORNER_KIND,
                           help="the corner layout of the boxes, a 3D corner region kind (box3d_corners_reference: "
                           "the reference's); recorded in index.json and checked against the dataset's region_kind")
    parser.add_argument("--out", required=True, help="output folder: regions-*.tar and index.json")
    parser.add_argument("--max-per-shard", type=int, default=1000, help="images or point clouds per shard")
    args = parser.parse_args(argv)
    given = [name for name in SOURCES if getattr(args, name)]
    if len(given) != 1:
        sys.exit(f"error: give exactly one source (--{', --'.join(s.replace('_', '-') for s in SOURCES)}); "
                 f"got {len(given)}")
    unreadable: list[str] = []
    if args.objaverse_root or args.scanrefer_root:
        make = objaverse_samples if args.objaverse_root else scanrefer_samples
        stream, total = make(args, unreadable)
        what = "point clouds"
    else:
        if not args.image_root or not Path(args.image_root).is_dir():
            sys.exit(f"error: --image-root {args.image_root} is not a folder; it should hold the images the "
                     "annotations name")
        groups = region_groups(args)
        stream, total, what = samples(groups, Path(args.image_root), unreadable), len(groups), "images"
    region_kind = args.region_kind if args.scanrefer_root else None  # only ScanRefer's regions have corners
    index = write_region_shards(stream, args.out, max_per_shard=args.max_per_shard, total=total,
                                region_kind=region_kind)
    written = json.loads(index.read_text())
    print(f"{index}: {written['samples']} {what} with {written['regions']} captions written; {len(unreadable)} "
          "unreadable")
    for line in unreadable[:20]:
        print(f"  unreadable {line}")
    return index


if __name__ == "__main__":
    main()
