"""The synthetic world's region sets (tools/make_synthetic_world.py --sets regions), as run_scripts/demo_regions.sh
reads them: the instruction dataset reader takes every record with the regions its placeholders name, the masks of
overlapping shapes are not their boxes (and hold ViT patches of their own), and the demo's files do not change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lavis.common.registry import DATASET_BUILDERS
from lavis.datasets.builders.instruction_builders import InstructionsConfig
from lavis.datasets.region_masks import box_mask, decode_rle, mask_box
from lavis.processors.image_processors import BoxImageConfig
from lavis.processors.point_processors import PointCloudProcessorConfig
from tools import make_synthetic_world as world

SIZES = ["--overlap-images", "15", "--multi-images", "10", "--region-scenes", "10", "--region-scene-points", "512"]
SMALL_DEMO = ["--images", "6", "--objects", "4", "--scenes", "3", "--object-points", "64", "--scene-points", "128"]


@pytest.fixture(scope="module")
def regions(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    world.main(["--out", str(out), "--sets", "regions", *SIZES])
    return out / "regions"


def build(root: Path, stem: str, split: str, kind: str):
    cfg = InstructionsConfig(modality="m", region_kind=kind, files={split: str(root / f"{stem}_{split}.jsonl")},
                             media_root=str(root), eval_split="test",
                             train_image=BoxImageConfig(image_size=64), eval_image=BoxImageConfig(image_size=64),
                             train_points=PointCloudProcessorConfig(num_points=256, sampling="stride", use_color=True),
                             eval_points=PointCloudProcessorConfig(num_points=256, sampling="stride", use_color=True))
    return DATASET_BUILDERS.get("instructions")(cfg).build(split)


def records(root: Path, stem: str, split: str) -> list[dict]:
    return [json.loads(line) for line in (root / f"{stem}_{split}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stem,kinds", [("overlap", ("mask2d", "box2d")), ("multi", ("mask2d", "box2d")),
                                        ("scenes", ("point_set", "box3d_corners"))])
def test_every_record_is_read_with_its_regions(regions, stem, kinds):
    for split in ("train", "test"):
        expected = {r["id"]: len(r["regions"]) for r in records(regions, stem, split)}
        assert expected
        for kind in kinds:
            data = build(regions, stem, split, kind)
            assert data.skipped == [] and len(data) == len(expected)
            for i in range(len(data)):
                item = data[i]
                k = expected[item["sample_id"].rsplit("#", 1)[0]]
                assert item["instruction"].count("<region>") == k and item["region_geometry"].shape[0] == k
                if "mask" in kind or kind == "point_set":
                    assert item["region_mask"].shape[0] == k and item["region_mask"].flatten(1).any(1).all()
                else:
                    assert "region_mask" not in item
    counts = {len(r["regions"]) for r in records(regions, stem, "train")}
    assert counts == ({1} if stem == "overlap" else {1, 2, 3})


def test_overlapping_masks_are_not_their_boxes(regions):
    by_image: dict[str, list[dict]] = {}
    for r in records(regions, "overlap", "train") + records(regions, "overlap", "test"):
        by_image.setdefault(r["image"], []).append(r)
    kinds = set()
    for pair in by_image.values():
        assert len(pair) == 2
        kind = pair[0]["id"].split("_", 1)[1].rsplit("_", 1)[0]
        kinds.add(kind)
        masks = [decode_rle(r["regions"][0]["mask"]) for r in pair]
        boxes = [mask_box(m) for m in masks]
        assert not (masks[0] & masks[1]).any()  # visible pixels: the upper shape hides what it covers
        # one box holds both: the outer shape's box covers every pixel of the inner one, which its mask leaves out
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
        outer = areas.index(max(areas))
        outer_box = box_mask(boxes[outer], *masks[outer].shape)
        assert (outer_box & masks[1 - outer]).sum() >= 0.95 * masks[1 - outer].sum()
        assert masks[outer].sum() < 0.75 * outer_box.sum()  # a ring or an L: not its rectangle
        if kind == "ring_cross":  # the same box, up to the pixel the cross hides at the ring's ends
            assert max(abs(a - b) for a, b in zip(*boxes)) <= 2
    assert kinds == set(world.OVERLAP_PAIRS)


def test_masks_hold_vit_patches_of_their_own(regions):
    """At the demo ViT's 8 x 8 patch grid (64 px, patch 8) each shape of a pair keeps patches the other lacks, so a
    mask region's queries see other tokens than its partner's; its box (box2d) would see every token."""
    data = build(regions, "overlap", "test", "mask2d")
    items = {data[i]["sample_id"]: data[i] for i in range(len(data))}
    for sid, item in items.items():
        if not sid.endswith("_0#0"):
            continue
        other = items[sid.replace("_0#0", "_1#0")]
        patches = [torch.nn.functional.max_pool2d(x["region_mask"][:, None].float(), 8).flatten() > 0
                   for x in (item, other)]
        own = [(patches[k] & ~patches[1 - k]).sum().item() for k in range(2)]
        assert min(own) >= 2 and patches[0].sum() < 64, (sid, own)


def test_the_demo_files_do_not_change(tmp_path):
    world.main(["--out", str(tmp_path / "demo"), *SMALL_DEMO])
    world.main(["--out", str(tmp_path / "all"), "--sets", "all", *SMALL_DEMO, *SIZES])
    demo = sorted(p.relative_to(tmp_path / "demo") for p in (tmp_path / "demo").rglob("*") if p.is_file())
    assert demo and all((tmp_path / "demo" / p).read_bytes() == (tmp_path / "all" / p).read_bytes() for p in demo)
    assert (tmp_path / "all" / "regions" / "overlap_train.jsonl").is_file()
