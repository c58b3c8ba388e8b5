"""Point-cloud region shards: tools/write_region_shards.py converts Objaverse/Cap3D and ScanRefer (written in their
real layouts by the fixtures of test_point_datasets.py), and the `region_shards` builder reads back exactly the
items the original datasets give, through both readers; bad stored data is skipped with its id."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lavis.common.registry import DATASET_BUILDERS
from lavis.datasets.base import BadSampleError, SkippedSample
from lavis.datasets.builders.image_builders import RegionShardsConfig
from lavis.datasets.datasets.region_shards import (
    PointRegionSample,
    RegionSample,
    RegionShardMapDataset,
    index_payload,
    write_region_shards,
)
from lavis.processors.image_processors import BoxImageConfig, BoxImageProcessor
from lavis.processors.point_processors import PointCloudProcessorConfig, box_corners
from lavis.processors.text_processors import CaptionConfig, CaptionProcessor
from tests.datasets.test_point_datasets import (
    inside,
    objaverse_builder,
    processor,
    scanrefer_builder,
    write_objaverse,
    write_scanrefer,
)
from tools import write_region_shards as shards_tool

STRIDE_450 = {"num_points": 450, "sampling": "stride"}  # every point of the 450-point scene, in order
# the original datasets' training processors augment by default; off, their items are comparable with the shards'
NO_AUGMENTATION = {"dropout_max_ratio": 0.0, "scale_low": 1.0, "scale_high": 1.0, "rotate_z_max_deg": 0.0}


def shard_builder(root: Path, modality: str, split: str, access: str, **kw):
    cfg = RegionShardsConfig(modality=modality, shard_root=str(root), train_split=None, eval_split=split,
                             access=access, **kw)
    return DATASET_BUILDERS.get("region_shards")(cfg)


def read_items(dataset) -> dict[str, dict]:
    """image_id -> item over either reader (no item is expected to be bad here)."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        items = list(dataset)
    else:
        items = [dataset[i] for i in range(len(dataset))]
    assert not [it for it in items if isinstance(it, SkippedSample)]
    return {it["image_id"]: it for it in items}


def test_scanrefer_shards_round_trip_to_the_dataset_items(tmp_path: Path, capsys):
    paths = write_scanrefer(tmp_path / "scanrefer")
    out = tmp_path / "shards" / "train"
    index = shards_tool.main(["--scanrefer-root", paths["annotation_root"], "--scannet-data-root",
                              paths["scannet_data_root"], "--split", "train", "--out", str(out)])
    printed = capsys.readouterr().out
    meta = json.loads(index.read_text())
    # 5 train descriptions: a missing scene and a blank one are dropped while indexing, object 9 has no box
    assert (meta["payload"], meta["samples"], meta["regions"]) == ("npy", 1, 2)
    assert "object 9 is not among the boxes" in printed and "1 unreadable" in printed
    original = scanrefer_builder(paths, train_processor={**STRIDE_450, **NO_AUGMENTATION}).build("train")
    expected = {it["image_id"]: it for it in (original[0], original[1])}  # objects 3 and 7
    for access in ("random", "stream"):
        builder = shard_builder(tmp_path / "shards", "pointcloud_region", "train", access,
                                eval_points=PointCloudProcessorConfig(**STRIDE_450))
        assert builder.check_paths() == [] and builder.input_processor_config("train")[0] == "eval_points"
        items = read_items(builder.build("train"))
        assert items.keys() == expected.keys() == {"scene0000_00|3", "scene0000_00|7"}
        for region, item in items.items():
            assert torch.equal(item["points"], expected[region]["points"])  # same cloud, same normalisation
            assert torch.equal(item["region_geometry"], expected[region]["region_geometry"])  # same corners
            assert item["text_input"] == expected[region]["text_input"]
        assert items["scene0000_00|7"]["text_input"] == "the table, long and wide"


def test_scanrefer_shard_augmentation_moves_box_with_points(tmp_path: Path):
    paths = write_scanrefer(tmp_path / "scanrefer")
    shards_tool.main(["--scanrefer-root", paths["annotation_root"], "--scannet-data-root",
                      paths["scannet_data_root"], "--split", "train", "--out", str(tmp_path / "shards" / "train")])
    augment = {**STRIDE_450, "scale_low": 0.7, "scale_high": 1.3, "rotate_z_max_deg": 180}
    cfg = RegionShardsConfig(modality="pointcloud_region", shard_root=str(tmp_path / "shards"), train_split="train",
                             eval_split=None, train_points=PointCloudProcessorConfig(**augment))
    builder = DATASET_BUILDERS.get("region_shards")(cfg)
    assert builder.input_processor_config("train")[0] == "train_points"
    dataset = builder.build("train")
    for seed in range(3):
        torch.manual_seed(seed)
        item = dataset[1]  # the scene's second description
        assert item["image_id"] == "scene0000_00|7"
        flags = inside(item["points"], item["region_geometry"].view(8, 3))  # the table is points 100..249
        assert flags[100:250].all() and not flags[:100].any()


def test_objaverse_shards_round_trip_the_split_and_colour(tmp_path: Path):
    paths = write_objaverse(tmp_path / "objaverse")
    out = tmp_path / "shards" / "train"
    index = shards_tool.main(["--objaverse-root", paths["points_root"], "--cap3d-file", paths["caption_file"],
                              "--test-uids-file", paths["test_uids_file"], "--split", "train",
                              "--max-per-shard", "3", "--out", str(out)])
    meta = json.loads(index.read_text())
    assert (meta["payload"], meta["samples"], meta["regions"], len(meta["shards"])) == ("npy", 7, 7, 3)
    stride16 = {"num_points": 16, "sampling": "stride"}
    original = objaverse_builder(paths, train_processor={**stride16, **NO_AUGMENTATION}).build("train")
    expected = {original[i]["image_id"]: original[i] for i in range(len(original))}
    for access in ("random", "stream"):
        builder = shard_builder(tmp_path / "shards", "pointcloud", "train", access,
                                eval_points=PointCloudProcessorConfig(**stride16))
        items = read_items(builder.build("train"))
        assert items.keys() == expected.keys() == {"uid00", "uid02", "uid04", "uid05", "uid06", "uid07", "uid08"}
        for uid, item in items.items():
            assert "region_geometry" not in item  # a Cap3D caption describes the whole object
            assert torch.equal(item["points"], expected[uid]["points"]) and item["points"].shape == (16, 3)
            assert item["text_input"] == expected[uid]["text_input"]
    colour = shard_builder(tmp_path / "shards", "pointcloud", "train", "random",
                           eval_points=PointCloudProcessorConfig(**stride16, use_color=True)).build("train")
    coloured, refused = {}, {}
    for i in range(len(colour)):
        try:
            coloured[colour[i]["image_id"]] = colour[i]
        except BadSampleError as e:
            refused[e.sample_id] = e.reason
    assert list(coloured) == ["uid08"]  # the one cloud stored with its colour, kept as xyz rgb
    assert torch.allclose(coloured["uid08"]["points"][:, 3:], torch.full((16, 3), 128 / 255))
    assert len(refused) == 6 and all("has 3 channels" in reason for reason in refused.values())
    test = shards_tool.main(["--objaverse-root", paths["points_root"], "--cap3d-file", paths["caption_file"],
                             "--test-uids-file", paths["test_uids_file"], "--split", "test",
                             "--out", str(tmp_path / "shards" / "test")])
    assert json.loads(test.read_text())["samples"] == 2  # uid01 and uid03; uid09 has no point file


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_bad_point_samples_are_skipped_with_their_id_and_kinds_are_not_mixed(tmp_path: Path):
    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(50, 3)).astype(np.float32)
    good = box_corners([0, 0, 0], [1, 1, 1]).tolist()
    nan_corners = [list(c) for c in good]
    nan_corners[2][1] = float("nan")
    nan_cloud = cloud.copy()
    nan_cloud[3, 0] = np.nan
    samples = [PointRegionSample("scene_a", cloud, [good, nan_corners], ["a box", "a broken box"], "scene_a",
                                 ["a|1", "a|2"]),
               PointRegionSample("scene_b", nan_cloud, [good], ["a box in a broken cloud"], "scene_b", ["b|1"])]
    index = write_region_shards(samples, tmp_path / "bad", progress=False)
    text = CaptionProcessor(CaptionConfig())
    dataset = RegionShardMapDataset(index, processor(num_points=32, sampling="stride"), text)
    outcomes = {}
    for i in range(len(dataset)):
        try:
            outcomes[dataset[i]["sample_id"]] = "ok"
        except BadSampleError as e:
            outcomes[e.sample_id] = e.reason
    assert outcomes["scene_a/0"] == "ok"
    assert "not 8 finite" in outcomes["scene_a/1"] and "NaN" in outcomes["scene_b/0"]
    with pytest.raises(ValueError, match="hold point clouds, to be read with a PointCloudProcessor"):
        RegionShardMapDataset(index, BoxImageProcessor(BoxImageConfig(image_size=16)), text)
    whole = PointRegionSample("obj", cloud, [None], ["an object"], "obj", ["obj"])
    with pytest.raises(ValueError, match="captions with and without a box"):
        write_region_shards([samples[0], whole], tmp_path / "mixed", progress=False)
    image = RegionSample("img", npy(cloud), [[0, 0, 1, 1]], ["x"], 1)
    with pytest.raises(ValueError, match="holds images, the ones before it point clouds"):
        write_region_shards([whole, image], tmp_path / "kinds", progress=False)
    assert index_payload({"format": "region_shards/v1", "shards": []}) == "jpg"  # older indexes hold images


def test_tool_wants_one_source_and_names_its_options(tmp_path: Path):
    with pytest.raises(SystemExit, match="exactly one source"):
        shards_tool.main(["--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="exactly one source"):
        shards_tool.main(["--objaverse-root", str(tmp_path), "--scanrefer-root", str(tmp_path), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--cap3d-file is not set"):
        shards_tool.main(["--objaverse-root", str(tmp_path), "--split", "train", "--out", str(tmp_path / "out")])
    paths = write_objaverse(tmp_path / "objaverse")
    with pytest.raises(SystemExit, match="unknown split 'val'"):
        shards_tool.main(["--objaverse-root", paths["points_root"], "--cap3d-file", paths["caption_file"],
                          "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("damage", ["truncated", "wrong shape", "floats"])
def test_a_damaged_offsets_table_is_refused_naming_it(tmp_path: Path, damage):
    paths = write_scanrefer(tmp_path / "scanrefer")
    out = tmp_path / "shards" / "train"
    index = shards_tool.main(["--scanrefer-root", paths["annotation_root"], "--scannet-data-root",
                              paths["scannet_data_root"], "--split", "train", "--out", str(out)])
    table_path = index.parent / json.loads(index.read_text())["shards"][0]["offsets"]
    table = np.load(table_path)
    if damage == "truncated":
        table_path.write_bytes(table_path.read_bytes()[:60])
    else:
        np.save(table_path, table[:, :4] if damage == "wrong shape" else table.astype(np.float64))
    builder = shard_builder(tmp_path / "shards", "pointcloud_region", "train", "random",
                            eval_points=PointCloudProcessorConfig(**STRIDE_450))
    with pytest.raises(ValueError, match=str(table_path.name)):
        builder.build("train")
