"""Instruction data: region shapes (COCO RLE, polygons, 3D boxes, point sets), masks through the processors'
augmentation, the instruction JSONL datasets for images and point clouds, and every bad-region case counted.

Files are written into tmp_path in their real formats (jpg, .npy, JSONL with pycocotools RLE); no real data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from lavis.common.registry import DATASET_BUILDERS
from lavis.datasets.builders.instruction_builders import InstructionsConfig
from lavis.datasets.datasets.instructions import instruction_samples, parse_record
from lavis.datasets.loaders import Collator
from lavis.datasets.region_masks import (
    RegionShapeError,
    box_mask,
    decode_polygons,
    decode_rle,
    decode_segmentation,
    mask_box,
    point_set_box,
    points_in_box,
)
from lavis.processors import image_processors
from lavis.processors.image_processors import BoxImageConfig, BoxImageProcessor, RegionMaskError
from lavis.processors.point_processors import (
    PointCloudProcessor,
    PointCloudProcessorConfig,
    box_corners,
)
from lavis.processors.point_processors import RegionMaskError as PointMaskError
from tests.datasets.test_image_datasets import read_all

W, H = 64, 48
S = 32  # processed image side
RECT = (8, 4, 40, 28)  # x1, y1, x2, y2 of the white rectangle of the test image


def rect_mask(box=RECT, height=H, width=W) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = True
    return mask


def compressed_rle(mask: np.ndarray) -> dict:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: column-major run lengths, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [len(flat)]])
    runs = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


def save_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (W, H), (0, 0, 0))
    image.paste((255, 255, 255), RECT)
    image.save(path, quality=100)


def whiteness(pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(image_processors.EVA_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(image_processors.EVA_CLIP_STD).view(3, 1, 1)
    return ((pixels * std + mean) * 255).mean(0)


# ---- shapes ------------------------------------------------------------------------------------------------------
def test_rle_compressed_and_uncompressed_and_polygons_decode_to_the_same_mask():
    mask = rect_mask()
    assert np.array_equal(decode_rle(compressed_rle(mask)), mask)
    assert np.array_equal(decode_rle(uncompressed_rle(mask)), mask)
    x1, y1, x2, y2 = RECT
    assert np.array_equal(decode_polygons([[x1, y1, x2, y1, x2, y2, x1, y2]], H, W), mask)
    assert np.array_equal(decode_segmentation(compressed_rle(mask), H, W), mask)
    assert mask_box(mask) == [float(v) for v in RECT]
    assert np.array_equal(box_mask(RECT, H, W), mask)  # a box's rectangle round-trips through its mask
    assert mask_box(np.zeros((H, W), bool)) is None


@pytest.mark.parametrize("bad, message", [
    ({"size": [H, W], "counts": [5, 3]}, "sum to 8"),
    ({"size": [H], "counts": "abc"}, "'size' must be"),
    ({"counts": "abc"}, "'size' must be"),
    ("abc", "COCO RLE"),
    ({"size": [H, W], "counts": 7}, "string or a list"),
])
def test_bad_rle_is_refused_with_the_reason(bad, message):
    with pytest.raises(RegionShapeError, match=message):
        decode_rle(bad)


def test_polygons_need_three_points_and_an_rle_of_another_size_is_refused():
    with pytest.raises(RegionShapeError, match="needs x, y pairs"):
        decode_polygons([[1, 1, 5, 5]], H, W)  # pycocotools would read 4 numbers as a box
    with pytest.raises(RegionShapeError, match="image is 48x64"):
        decode_segmentation(compressed_rle(rect_mask(height=10, width=10, box=(1, 1, 5, 5))), H, W)


def test_points_in_box_and_a_point_set_box():
    xyz = np.array([[0, 0, 0], [1, 1, 1], [0.5, -0.5, 0.5], [3, 0, 0]], dtype=np.float32)
    assert points_in_box(xyz, [0.5, 0.5, 0.5], [1, 1, 1]).tolist() == [True, True, False, False]
    center, size = point_set_box(xyz[:3])
    assert np.allclose(center, [0.5, 0.25, 0.5]) and np.allclose(size, [1, 1.5, 1])
    with pytest.raises(RegionShapeError, match="empty"):
        point_set_box(xyz[:0])


# ---- masks through the image processor -------------------------------------------------------------------------
def test_masks_follow_crop_flip_and_resize_of_the_pixels(monkeypatch):
    image = Image.new("RGB", (200, 100), (0, 0, 0))
    image.paste((255, 255, 255), (20, 10, 120, 60))
    masks = np.stack([rect_mask((20, 10, 120, 60), 100, 200), rect_mask((150, 70, 190, 95), 100, 200)])
    kept = {}

    def crop(h, w, box, s):
        kept["box"] = box
        return 5, 10, 90, 185

    monkeypatch.setattr(image_processors, "sample_box_safe_crop", crop)
    processor = BoxImageProcessor(BoxImageConfig(image_size=80, crop_prob=1.0, hflip_prob=1.0))
    pixels, regions, out = processor(image, [[20, 10, 120, 60]], masks)
    assert kept["box"] == [20.0, 10.0, 190.0, 95.0]  # the crop must keep the box and both masks whole
    assert out.shape == (2, 80, 80) and out.dtype == torch.bool and regions.shape == (1, 4)
    white = whiteness(pixels)
    inside, outside = out[0], ~out[0]
    assert white[inside].mean() > 200 and white[outside].mean() < 30  # mask 0 sits on the (flipped) rectangle
    rows, cols = torch.nonzero(out[0], as_tuple=True)
    box = torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]) / 80
    assert torch.allclose(box, regions[0], atol=1.5 / 80)  # the processed mask's box is the processed box
    # flipped: the rectangle's crop columns 10..110 of 185 become 75..175, x1 = 75 / 185 * 80 = 32.4 after the resize
    assert abs(int(cols.min()) - 75 / 185 * 80) <= 1.5


def test_a_mask_lost_in_the_resize_or_of_the_wrong_size_is_refused():
    image = Image.new("RGB", (200, 200))
    tiny = np.zeros((1, 200, 200), bool)
    tiny[0, 1, 1] = True  # no nearest sample of a 200 -> 16 resize lands on pixel (1, 1)
    processor = BoxImageProcessor(BoxImageConfig(image_size=16))
    with pytest.raises(RegionMaskError, match=r"\[0\] have no pixel left"):
        processor(image, [[1, 1, 2, 2]], tiny)
    with pytest.raises(RegionMaskError, match=r"expected \[K, 200, 200\]"):
        processor(image, [[1, 1, 2, 2]], np.ones((1, 100, 200), bool))


def test_single_box_calls_are_unchanged_by_the_mask_support():
    image = Image.new("RGB", (W, H), (10, 20, 30))
    processor = BoxImageProcessor(BoxImageConfig(image_size=S))
    pixels, region = processor(image, RECT)
    _, regions, _ = processor(image, [RECT], rect_mask()[None])
    assert region.shape == (4,) and torch.allclose(region, torch.tensor([8 / W, 4 / H, 40 / W, 28 / H]))
    assert torch.equal(regions[0], region)


# ---- masks through the point processor -------------------------------------------------------------------------
def test_point_masks_follow_dropout_sampling_and_roll():
    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(300, 3)).astype(np.float32)
    cloud[:40, 0] += 20  # the set: the only points with x > 10
    masks = np.zeros((1, 300), bool)
    masks[0, :40] = True
    processor = PointCloudProcessor(PointCloudProcessorConfig(num_points=128, normalize=False, dropout_max_ratio=0.5,
                                                              fps_start="random"))
    torch.manual_seed(3)
    points, _, out = processor(cloud, None, masks)
    torch.manual_seed(3)
    plain, _ = processor(cloud)
    assert torch.equal(points, plain)  # carrying masks changes no draw
    assert out.shape == (1, 128) and out.dtype == torch.bool
    assert torch.equal(out[0], points[:, 0] > 10)


def test_a_point_set_lost_in_the_sampling_is_refused():
    cloud = np.arange(3000, dtype=np.float32).reshape(1000, 3)
    masks = np.zeros((1, 1000), bool)
    masks[0, 5] = True  # stride sampling of 10 of 1000 takes rows 0, 100, ...
    processor = PointCloudProcessor(PointCloudProcessorConfig(num_points=10, sampling="stride"))
    with pytest.raises(PointMaskError, match="no point left"):
        processor(cloud, None, masks)
    with pytest.raises(PointMaskError, match=r"expected \[K, 1000\]"):
        processor(cloud, None, masks[:, :10])


# ---- the format ------------------------------------------------------------------------------------------------
def conversation(*texts: str) -> list[dict]:
    return [{"from": ("human", "gpt")[k % 2], "value": text} for k, text in enumerate(texts)]


def test_turns_become_samples_and_placeholders_bind_regions_by_position():
    regions = [{"box": [0, 0, 4, 4]}, {"box": [4, 4, 4, 4]}]
    together = parse_record({"id": "a", "image": "x.jpg", "regions": regions,
                             "conversations": conversation("Is <region> left of <region>?", "yes", "Sure?", "yes")},
                            "image", "f:1")
    apart = parse_record({"id": "b", "image": "x.jpg", "regions": regions,
                          "conversations": conversation("Colour of <region>?", "red", "And <region>?", "blue")},
                         "image", "f:2")
    samples, skipped = instruction_samples([together, apart], "<region>")
    assert not skipped
    by_id = {s.sample_id: s for s in samples}
    assert by_id["a#1"].instruction == "Is <region> left of <region>?\nyes\nSure?" and by_id["a#1"].answer == "yes"
    assert len(by_id["a#0"].regions) == len(by_id["a#1"].regions) == 2
    assert [r.value for r in by_id["b#0"].regions] == [[0, 0, 4, 4]]  # the first turn names only the first region
    assert len(by_id["b#1"].regions) == 2 and by_id["b#1"].instruction.count("<region>") == 2


# ---- image instruction datasets --------------------------------------------------------------------------------
def image_records() -> list:
    mask = rect_mask()
    x1, y1, x2, y2 = RECT
    good = {"id": "good", "image": "img.jpg",
            "regions": [{"box": [x1, y1, x2 - x1, y2 - y1]}, {"mask": compressed_rle(mask)},
                        {"polygon": [[0, 0, 8, 0, 8, 8, 0, 8]]}],
            "conversations": conversation("Compare <region>, <region> and <region>.", "They are white.",
                                          "Which is smallest?", "the third")}
    uncompressed = {"id": "uncompressed", "image": "img.jpg", "regions": [{"mask": uncompressed_rle(mask)}],
                    "conversations": conversation("What is <region>?", "a rectangle")}

    def one(record_id, region, answer="a thing", image="img.jpg"):
        return {"id": record_id, "image": image, "regions": [region],
                "conversations": conversation("What is <region>?", answer)}

    return [
        good, uncompressed,
        {"id": "no_regions", "image": "img.jpg", "regions": [], "conversations": conversation("Hi?", "hello")},
        {"id": "count", "image": "img.jpg", "regions": [{"box": [0, 0, 4, 4]}],
         "conversations": conversation("<region> or <region>?", "left")},
        {"id": "in_answer", "image": "img.jpg", "regions": [{"box": [0, 0, 4, 4]}],
         "conversations": conversation("What is <region>?", "<region>")},
        one("empty_answer", {"box": [0, 0, 4, 4]}, answer="  "),
        one("zero_box", {"box": [0, 0, 0, 4]}),
        one("wrong_kind", {"box3d": [0, 0, 0, 1, 1, 1]}),
        {"id": "points_record", "points": "cloud.npy", "regions": [{"points_of": [0]}],
         "conversations": conversation("<region>?", "x")},
        one("empty_mask", {"mask": compressed_rle(np.zeros((H, W), bool))}),
        one("mask_size", {"mask": compressed_rle(rect_mask(height=H, width=W + 1))}),
        one("polygon_outside", {"polygon": [[100, 100, 120, 100, 120, 120]]}),
        one("box_outside", {"box": [60, 40, 30, 30]}),
        one("missing_image", {"box": [0, 0, 4, 4]}, image="nowhere.jpg"),
        one("uncompressed", {"box": [0, 0, 4, 4]}),  # a second record with that id
    ]


@pytest.fixture
def image_world(tmp_path: Path) -> Path:
    save_image(tmp_path / "media" / "img.jpg")
    lines = [json.dumps(r) for r in image_records()] + ["{not json"]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def build(world: Path, kind: str, split: str = "train", **overrides):
    cfg = InstructionsConfig(modality="region", region_kind=kind, files={split: str(world / f"{split}.jsonl")},
                             media_root=str(world / "media"), eval_split=None,
                             train_image=BoxImageConfig(image_size=S), train_points=PointCloudProcessorConfig(
                                 num_points=64, sampling="stride", normalize=False), **overrides)
    builder = DATASET_BUILDERS.get("instructions")(cfg)
    return builder, builder.build(split)


INDEXING_SKIPS = {
    "no_regions": "no regions", "count": "2 '<region>' placeholder(s) in the human turns but 1 region",
    "in_answer": "answer holds", "empty_answer#0": "empty answer", "zero_box": "zero area",
    "wrong_kind": "does not fit", "points_record": "has 'points'", "train:16": "not a JSON object",
}
READING_BAD = {"empty_mask#0": "covers no pixel", "mask_size#0": "image is 48x64",
               "polygon_outside#0": "covers no pixel", "box_outside#0": "outside", "missing_image#0": "not found"}


def test_every_bad_region_case_is_counted_once(image_world: Path):
    builder, dataset = build(image_world, "box2d")
    skipped = dict(dataset.skipped)
    assert set(skipped) == set(INDEXING_SKIPS) | {"uncompressed"}
    assert skipped["uncompressed"] == "duplicate id (line 15; line 2 kept)"
    for sample_id, reason in INDEXING_SKIPS.items():
        assert reason in skipped[sample_id], (sample_id, skipped[sample_id])
    good, bad = read_all(dataset)
    assert set(good) == {"good#0", "good#1", "uncompressed#0"}
    assert set(bad) == set(READING_BAD)
    for sample_id, reason in READING_BAD.items():
        assert reason in bad[sample_id], (sample_id, bad[sample_id])


def test_box_kind_items_carry_each_region_box(image_world: Path):
    builder, dataset = build(image_world, "box2d")
    good, _ = read_all(dataset)
    item = good["good#1"]
    assert builder.item_keys("train").input_key == "image" and builder.item_keys("train").geometry_dim == 4
    assert item["image"].shape == (3, S, S) and "region_mask" not in item
    assert item["region_geometry"].dtype == torch.float32 and item["region_geometry"].shape == (3, 4)
    rect = torch.tensor([8 / W, 4 / H, 40 / W, 28 / H])
    assert torch.allclose(item["region_geometry"][0], rect)  # the box
    assert torch.allclose(item["region_geometry"][1], rect)  # the mask's bounding box
    assert torch.allclose(item["region_geometry"][2], torch.tensor([0, 0, 8 / W, 8 / H]))  # the polygon's
    assert item["instruction"].endswith("Which is smallest?") and item["text_input"] == "the third"


def test_mask_kind_items_carry_masks_at_the_processed_size(image_world: Path):
    _, dataset = build(image_world, "mask2d")
    good, bad = read_all(dataset)
    assert set(bad) == set(READING_BAD)
    item = good["good#0"]
    masks = item["region_mask"]
    assert masks.shape == (3, S, S) and masks.dtype == torch.bool
    assert torch.equal(masks[0], masks[1])  # the box's rectangle is the rectangle's mask
    white = whiteness(item["image"])
    assert white[masks[1]].mean() > 200 and white[~masks[1]].mean() < 30
    assert torch.equal(good["uncompressed#0"]["region_mask"][0], masks[1])


def test_mixed_region_counts_collate_into_one_batch(image_world: Path):
    _, dataset = build(image_world, "mask2d")
    good, _ = read_all(dataset)
    batch = Collator("region", None)([good["good#0"], good["uncompressed#0"]])
    assert batch["region_counts"] == [3, 1]
    assert batch["region_geometry"].shape == (4, 4) and batch["region_mask"].shape == (4, S, S)
    assert batch["region_sample"].tolist() == [0, 0, 0, 1]
    assert batch["instruction"][1] == "What is <region>?"


def test_builder_names_missing_paths_and_refuses_a_run_without_region_kind(tmp_path: Path):
    cfg = InstructionsConfig(modality="region", region_kind="box2d", files={}, media_root=str(tmp_path / "none"))
    problems = DATASET_BUILDERS.get("instructions")(cfg).check_paths()
    assert any("media_root" in p for p in problems) and any("files.train is not set" in p for p in problems)
    no_kind = DATASET_BUILDERS.get("instructions")(InstructionsConfig(modality="image", media_root=str(tmp_path)))
    with pytest.raises(ValueError, match="region_kind is not set"):
        no_kind.item_keys("train")


# ---- point-cloud instruction datasets --------------------------------------------------------------------------
@pytest.fixture
def point_world(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    cloud = np.concatenate([rng.uniform(0, 1, (60, 3)), rng.uniform(4, 5, (40, 3))]).astype(np.float32)
    (tmp_path / "media").mkdir()
    np.save(tmp_path / "media" / "cloud.npy", cloud)
    records = [
        {"id": "pair", "points": "cloud.npy", "regions": [{"points_of": list(range(60, 100))},
                                                          {"box3d": [0.5, 0.5, 0.5, 1.0, 1.0, 1.0]}],
         "conversations": conversation("Which is larger, <region> or <region>?", "the second")},
        {"id": "out_of_range", "points": "cloud.npy", "regions": [{"points_of": [5, 100]}],
         "conversations": conversation("What is <region>?", "x")},
        {"id": "empty_box", "points": "cloud.npy", "regions": [{"box3d": [10, 10, 10, 1, 1, 1]}],
         "conversations": conversation("What is <region>?", "x")},
        {"id": "image_record", "image": "img.jpg", "regions": [{"box": [0, 0, 1, 1]}],
         "conversations": conversation("What is <region>?", "x")},
        {"id": "negative_index", "points": "cloud.npy", "regions": [{"points_of": [-1]}],
         "conversations": conversation("What is <region>?", "x")},
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return tmp_path


def test_point_set_items_carry_point_masks_and_set_boxes(point_world: Path):
    builder, dataset = build(point_world, "point_set")
    assert builder.item_keys("train").input_key == "points" and builder.item_keys("train").geometry_dim == 24
    assert {sid for sid, _ in dataset.skipped} == {"image_record", "negative_index"}
    good, bad = read_all(dataset)
    assert "index 100" in bad["out_of_range#0"] and "no point of the cloud lies in box3d" in bad["empty_box#0"]
    item = good["pair#0"]
    points, masks = item["points"], item["region_mask"]
    assert masks.shape == (2, 64) and masks.dtype == torch.bool and item["region_geometry"].shape == (2, 24)
    assert torch.equal(masks[0], points[:, 0] > 3) and torch.equal(masks[1], points[:, 0] < 2)
    cloud = np.load(point_world / "media" / "cloud.npy")
    low, high = cloud[60:].min(0), cloud[60:].max(0)
    expected = box_corners((low + high) / 2, high - low).reshape(-1)
    assert torch.allclose(item["region_geometry"][0], expected, atol=1e-5)  # all of the set's points, not a sample


def test_box_corner_items_take_the_box_and_the_bbox_of_points_of(point_world: Path):
    _, dataset = build(point_world, "box3d_corners")
    good, bad = read_all(dataset)
    assert "empty_box#0" in good  # a box is a box, points in it or not
    item = good["pair#0"]
    assert "region_mask" not in item and item["region_geometry"].shape == (2, 24)
    assert torch.allclose(item["region_geometry"][1], box_corners([0.5] * 3, [1.0] * 3).reshape(-1))
    assert "index 100" in bad["out_of_range#0"]
