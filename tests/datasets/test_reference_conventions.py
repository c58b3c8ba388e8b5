"""The reference's data conventions as named options: its 3D corner layout (a region kind), its whole-pixel 2D box,
its random FPS start; and one source of truth for the region kind a dataset builds (the model's modality)."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import lavis  # noqa: F401  (registers the built-in models, region kinds and datasets)
from lavis.common import captioner as caption  # the input processing tools/caption.py uses
from lavis.common.config import load_config
from lavis.common.config_schema import ConfigError
from lavis.common.registry import REGION_KINDS
from lavis.datasets.builders.image_builders import RefCocoConfig
from lavis.datasets.builders.point_builders import ScanReferConfig
from lavis.datasets.datasets.refcoco import load_image_and_box
from lavis.models.regionblip.region import corner_layout, register_region_kind
from lavis.processors.image_processors import BoxImageConfig, BoxImageProcessor, reference_box_pixels
from lavis.processors.point_processors import (
    PointCloudProcessor,
    PointCloudProcessorConfig,
    box_corners,
    reference_box_corners,
    roll_to_start,
)
from tests.conftest import REPO
from tests.datasets.test_point_datasets import scanrefer_builder, write_scanrefer
from tests.datasets.test_point_shards import shard_builder
from tests.test_paper_configs import weights  # noqa: F401  (fixture: stand-in weight paths)
from tools import write_region_shards as shards_tool

KIT = Path("/work/shared/reference/inputs.pt")


@pytest.fixture(scope="module")
def kit() -> dict:
    if not KIT.is_file():
        pytest.skip(f"the reference kit {KIT} is not on this machine")
    return torch.load(KIT, weights_only=True)


# ---- 3D corners -----------------------------------------------------------------------------------------------------
def test_reference_corners_follow_the_documented_formula():
    # l = 2, w = 4, h = 6: x = 1 +- 1, y = 2 +- 3 (h), z = 3 +- 2 (w), order (+++), (++-), (-+-), (-++), (+-+), ...
    corners = reference_box_corners([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    expected = torch.tensor([[2, 5, 5], [2, 5, 1], [0, 5, 1], [0, 5, 5], [2, -1, 5], [2, -1, 1], [0, -1, 1],
                             [0, -1, 5]], dtype=torch.float32)
    assert torch.equal(corners, expected)
    assert reference_box_corners(torch.zeros(5, 3), torch.ones(5, 3)).shape == (5, 8, 3)


def test_reference_corners_equal_the_kits(kit):
    region = kit["pointcloud_region"]
    corners = reference_box_corners(region["box_center"], region["box_size"])
    assert corners.shape == region["refer_box_corners"].shape
    assert torch.allclose(corners, region["refer_box_corners"], atol=1e-6, rtol=0)


def test_corner_kinds_name_their_layout():
    assert corner_layout("box3d_corners") is box_corners
    assert corner_layout("box3d_corners_reference") is reference_box_corners
    assert REGION_KINDS.get("box3d_corners_reference").dim == 24
    with pytest.raises(ValueError, match="'box2d' has no 3D box corner layout.*box3d_corners_reference"):
        corner_layout("box2d")
    with pytest.raises(ValueError, match="unknown region kind 'box3d_cornrs'"):
        corner_layout("box3d_cornrs")
    if "layoutless_test" not in REGION_KINDS:  # the old call, without a layout, still registers a kind
        register_region_kind("layoutless_test", 3, "a test kind")
    assert REGION_KINDS.get("layoutless_test").box_corners is None


def test_scanrefer_builds_corners_with_its_region_kind(tmp_path):
    paths = write_scanrefer(tmp_path)
    raw = {"num_points": 450, "sampling": "stride", "normalize": False}
    row = np.load(Path(paths["scannet_data_root"]) / "scene0000_00_aligned_bbox.npy")[1]  # object 7, distinct l, w, h
    for kind, layout in (("box3d_corners", box_corners), ("box3d_corners_reference", reference_box_corners)):
        item = scanrefer_builder(paths, eval_processor=raw, region_kind=kind).build("val")[1]
        expected = layout(torch.as_tensor(row[:3]), torch.as_tensor(row[3:6])).reshape(-1)
        assert torch.allclose(item["region_geometry"], expected, atol=1e-6)
    default = scanrefer_builder(paths, eval_processor=raw).build("val")[1]  # no modality: box3d_corners
    assert torch.equal(default["region_geometry"], box_corners(row[:3], row[3:6]).reshape(-1))
    with pytest.raises(ValueError, match="'box2d' has no 3D box corner layout"):
        scanrefer_builder(paths, region_kind="box2d").build("val")


def test_region_shards_record_and_check_their_corner_layout(tmp_path):
    paths = write_scanrefer(tmp_path / "scanrefer")
    index = shards_tool.main(["--scanrefer-root", paths["annotation_root"], "--scannet-data-root",
                              paths["scannet_data_root"], "--split", "train", "--out", str(tmp_path / "s" / "train"),
                              "--region-kind", "box3d_corners_reference"])
    assert json.loads(index.read_text())["region_kind"] == "box3d_corners_reference"
    points = PointCloudProcessorConfig(num_points=450, sampling="stride", normalize=False)
    stored = shard_builder(tmp_path / "s", "pointcloud_region", "train", "random", eval_points=points,
                           region_kind="box3d_corners_reference").build("train")
    row = np.load(Path(paths["scannet_data_root"]) / "scene0000_00_aligned_bbox.npy")[0]  # object 3
    assert torch.allclose(stored[0]["region_geometry"], reference_box_corners(row[:3], row[3:6]).reshape(-1))
    with pytest.raises(ValueError, match="laid out as region kind 'box3d_corners_reference'.*'box3d_corners'"):
        shard_builder(tmp_path / "s", "pointcloud_region", "train", "random", region_kind="box3d_corners").build(
            "train")


# ---- 2D boxes -------------------------------------------------------------------------------------------------------
def test_truncated_box_is_the_references(kit, tmp_path):
    region = kit["image_region"]
    for i, (raw, (width, height)) in enumerate(zip(region["raw_bbox_xywh"].tolist(), region["image_wh"].tolist())):
        assert reference_box_pixels(raw, width, height) == region["box_x1y1x2y2_pixels_int"][i].tolist()
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (width, height), (90, 30, 200)).save(path)
        for truncate in (True, False):
            cfg = BoxImageConfig(image_size=28, truncate_box_pixels=truncate)
            image, box = load_image_and_box(path, raw, cfg, f"kit/{i}")
            _, normalised = BoxImageProcessor(cfg)(image, box)
            # truncated: the reference's box bit for bit; not truncated: the sub-pixel box, a different one
            assert torch.equal(normalised, region["box"][i]) == truncate
            if not truncate:
                assert torch.allclose(normalised, torch.tensor(box) / torch.tensor([width, height] * 2))


def test_truncation_clamps_then_truncates():
    # x2 = 3.7 + 20.9 overshoots the 24-pixel-wide image: clamped to 24; y1 = 5.9 truncates to 5
    assert reference_box_pixels([3.7, 5.9, 20.9, 10.0], 24, 30) == [3.0, 5.0, 24.0, 15.0]
    assert BoxImageConfig().truncate_box_pixels is False  # the sub-pixel box by default


# ---- FPS start ------------------------------------------------------------------------------------------------------
def test_roll_to_start_moves_the_row_first():
    rows = torch.arange(12.0).reshape(6, 2)
    assert torch.equal(roll_to_start(rows, 0), rows)
    assert torch.equal(roll_to_start(rows, 4)[0], rows[4])
    assert torch.equal(roll_to_start(rows, 4), torch.cat([rows[4:], rows[:4]]))


def test_random_fps_start_rolls_the_processed_cloud_reproducibly():
    cloud = np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32)
    corners = box_corners([0.0, 0.0, 0.0], [1.0, 2.0, 3.0])[None]
    augment = {"num_points": 64, "scale_low": 0.8, "scale_high": 1.2, "rotate_z_max_deg": 90.0}
    first = PointCloudProcessor(PointCloudProcessorConfig(**augment))
    rolled = PointCloudProcessor(PointCloudProcessorConfig(**augment, fps_start="random"))
    starts = set()
    for seed in range(4):
        torch.manual_seed(seed)
        points, moved = first(cloud, corners)
        torch.manual_seed(seed)
        shifted, moved_too = rolled(cloud, corners)
        torch.manual_seed(seed)
        assert torch.equal(rolled(cloud, corners)[0], shifted)  # reproducible under the loader's seed
        start = int((points == shifted[0]).all(1).nonzero()[0])  # the other draws are untouched: a pure roll
        assert torch.equal(shifted, roll_to_start(points, start)) and torch.equal(moved_too, moved)
        starts.add(start)
    assert len(starts) > 1 and starts != {0}
    assert PointCloudProcessorConfig(fps_start="random").random_settings()[-1] == "fps_start=random (off: first)"
    assert "fps_start" not in " ".join(PointCloudProcessorConfig(sampling="stride").random_settings())
    with pytest.raises(ValueError, match="fps_start must be one of"):
        PointCloudProcessor(PointCloudProcessorConfig(fps_start="middle"))


# ---- region kind: one source of truth -------------------------------------------------------------------------------
TRAIN = str(REPO / "configs" / "train" / "regionblip_opt2.7b.yaml")


def test_region_kind_comes_from_the_modality(weights):  # noqa: F811
    cfg = load_config(TRAIN, weights)
    assert cfg.datasets["scanrefer"].region_kind == "box3d_corners"
    assert cfg.datasets["refcoco"].region_kind == "box2d"
    assert cfg.datasets["objaverse_cap3d"].region_kind is None  # a modality without a region
    assert cfg.yaml.datasets.scanrefer.region_kind == "box3d_corners"  # the saved config says which
    reference = load_config(TRAIN, weights + ["model.modalities.pointcloud_region.region=box3d_corners_reference"])
    assert reference.datasets["scanrefer"].region_kind == "box3d_corners_reference"
    agreeing = load_config(TRAIN, weights + ["datasets.scanrefer.region_kind=box3d_corners"])
    assert agreeing.datasets["scanrefer"].region_kind == "box3d_corners"


def test_a_region_kind_unlike_the_modalitys_is_refused_naming_both(weights):  # noqa: F811
    with pytest.raises(ConfigError) as err:
        load_config(TRAIN, weights + ["datasets.scanrefer.region_kind=box3d_corners_reference"])
    message = str(err.value)
    assert message.startswith("--options") and "datasets.scanrefer.region_kind" in message
    assert "model.modalities.pointcloud_region.region" in message
    assert "'box3d_corners_reference'" in message and "'box3d_corners'" in message
    with pytest.raises(ConfigError, match="datasets.objaverse_cap3d.region_kind.*pointcloud.region is None"):
        load_config(TRAIN, weights + ["datasets.objaverse_cap3d.region_kind=box3d_corners"])


# ---- tools/caption.py: one input, processed as the config's datasets are --------------------------------------------
def test_caption_tool_builds_the_modalitys_corners_and_box(tmp_path):
    raw = PointCloudProcessorConfig(num_points=16, sampling="stride", normalize=False)
    cfg = SimpleNamespace(datasets={
        "scanrefer": ScanReferConfig(modality="pointcloud_region", eval_processor=raw),
        "refcoco": RefCocoConfig(modality="image_region", eval_image=BoxImageConfig(image_size=16,
                                                                                     truncate_box_pixels=True))})
    np.save(tmp_path / "scene.npy", np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32))
    box = [1.0, 2.0, 3.0, 2.0, 4.0, 6.0]
    args = Namespace(points=tmp_path / "scene.npy", box3d=box, modality="pointcloud_region")
    regions = caption.requested_regions(args)
    for kind, layout in (("box3d_corners", box_corners), ("box3d_corners_reference", reference_box_corners)):
        item = caption.point_item(cfg, args, kind, regions)
        assert torch.equal(item["region_geometry"], layout(box[:3], box[3:]).reshape(1, -1))
    with pytest.raises(ValueError, match="expects a 'box2d' region"):
        caption.point_item(cfg, args, "box2d", regions)
    Image.new("RGB", (40, 30)).save(tmp_path / "photo.png")
    image_args = Namespace(image=tmp_path / "photo.png", box=[3.7, 5.2, 24.6, 20.7], modality="image_region")
    geometry = caption.image_item(cfg, image_args, "box2d", caption.requested_regions(image_args))["region_geometry"]
    assert torch.equal(geometry, torch.tensor([[3.0, 5.0, 24.0, 20.0]]) / torch.tensor([40.0, 30.0, 40.0, 30.0]))
