"""Point-cloud datasets, processors and tools, on miniature data written in the real on-disk formats."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lavis.common.config_schema import ConfigError, config_from_dict
from lavis.common.registry import DATASET_BUILDERS, PROCESSORS
from lavis.common.safe_pickle import UnsafePickleError
from lavis.datasets.base import BadSampleError
from lavis.datasets.builders.point_builders import ModelNet40Builder, ObjaverseCap3DBuilder, ScanReferBuilder
from lavis.datasets.datasets.objaverse import heldout_uids, read_cap3d_captions
from lavis.processors.point_processors import (
    PointCloudProcessor,
    PointCloudProcessorConfig,
    box_corners,
    corners_to_geometry,
)
from tools import inspect_dataset, prepare_eval_objaverse, prepare_eval_scanrefer, preprocess_scannet


def config(cls, fields: dict):
    return config_from_dict(cls, {"modality": "pointcloud", **fields}, "test")


def processor(**kw) -> PointCloudProcessor:
    return PointCloudProcessor(PointCloudProcessorConfig(**kw))


def inside(points: torch.Tensor, corners: torch.Tensor, tol: float = 1e-4) -> torch.Tensor:
    """Whether each point lies in the (possibly rotated) box: coordinates along corner 0 -> 1, 0 -> 3, 0 -> 4."""
    axes = torch.stack([corners[1] - corners[0], corners[3] - corners[0], corners[4] - corners[0]], 1)
    coords = torch.linalg.solve(axes.double(), (points[:, :3] - corners[0]).double().T).T
    return ((coords >= -tol) & (coords <= 1 + tol)).all(1)


# ---- processor ------------------------------------------------------------------------------------------------------
def test_box_corners_follow_the_documented_order():
    corners = box_corners([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    expected = torch.tensor([[0, 0, 0], [2, 0, 0], [2, 4, 0], [0, 4, 0], [0, 0, 6], [2, 0, 6], [2, 4, 6], [0, 4, 6]],
                            dtype=torch.float32)
    assert torch.equal(corners, expected)
    assert corners_to_geometry(corners).tolist()[:6] == [0, 0, 0, 2, 0, 0]
    assert box_corners(torch.zeros(5, 3), torch.ones(5, 3)).shape == (5, 8, 3)


def test_normalisation_puts_points_in_unit_sphere_and_corners_in_the_same_frame():
    gen = torch.Generator().manual_seed(0)
    cloud = torch.randn(500, 3, generator=gen) * torch.tensor([3.0, 1.0, 0.5]) + torch.tensor([10.0, -4.0, 2.0])
    corners = box_corners([10.0, -4.0, 2.0], [1.0, 1.0, 1.0])
    points, moved = processor(num_points=500, sampling="stride")(cloud, corners[None])
    assert points.norm(dim=1).max() == pytest.approx(1.0, abs=1e-5)
    center = cloud.mean(0)
    radius = (cloud - center).norm(dim=1).max()
    assert torch.allclose(moved[0], (corners - center) / radius, atol=1e-5)
    assert torch.allclose(points, (cloud - center) / radius, atol=1e-5)


def test_rotation_and_scaling_move_points_and_corners_identically():
    gen = torch.Generator().manual_seed(1)
    obj = torch.rand(200, 3, generator=gen) * torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([2.0, 0.0, 0.0])
    other = torch.rand(300, 3, generator=gen) * 4 - 6
    cloud = torch.cat([obj, other])
    lo, hi = obj.min(0).values, obj.max(0).values
    corners = box_corners((lo + hi) / 2, hi - lo)
    assert inside(cloud, corners)[:200].all() and not inside(cloud, corners)[200:].any()
    plain, plain_corners = processor(num_points=500, sampling="stride")(cloud, corners[None])
    aug = processor(num_points=500, sampling="stride", scale_low=1.5, scale_high=1.5, rotate_z_max_deg=180)
    torch.manual_seed(3)
    points, moved = aug(cloud, corners[None])
    # the object's points stay inside the moved box, the others stay outside
    assert inside(points, moved[0])[:200].all() and not inside(points, moved[0])[200:].any()
    # and the motion is a rotation about z by one angle, times the scale: rebuild it by hand from one point
    angle = math.atan2(points[0, 1], points[0, 0]) - math.atan2(plain[0, 1], plain[0, 0])
    c, s = math.cos(angle), math.sin(angle)
    by_hand = 1.5 * torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    assert abs(s) > 1e-3  # a rotation really happened
    assert torch.allclose(points, plain @ by_hand.T, atol=1e-5)
    assert torch.allclose(moved[0], plain_corners[0] @ by_hand.T, atol=1e-5)


def test_anisotropic_scale_keeps_box_consistency_and_augmentation_is_seeded():
    cloud = torch.rand(300, 3) * 2 - 1
    corners = box_corners([0.0, 0.0, 0.0], [2.0, 2.0, 2.0])
    aug = processor(num_points=256, scale_low=0.5, scale_high=2.0, anisotropic=True, rotate_z_max_deg=45,
                    dropout_max_ratio=0.5)
    torch.manual_seed(7)
    a, ca = aug(cloud, corners[None])
    torch.manual_seed(7)
    b, cb = aug(cloud, corners[None])
    assert torch.equal(a, b) and torch.equal(ca, cb)
    assert a.shape == (256, 3) and inside(a, ca[0]).all()
    edges = [(ca[0][i] - ca[0][0]).norm().item() for i in (1, 3, 4)]
    assert max(edges) / min(edges) > 1.01  # anisotropic: the cube became a box


def test_sampling_pads_subsamples_and_keeps_colour_in_unit_range():
    cloud = np.concatenate([np.random.default_rng(0).normal(size=(10, 3)), np.full((10, 3), 255.0)], 1)
    points, _ = processor(num_points=32, use_color=True, normalize=False)(cloud)
    assert points.shape == (32, 6)
    assert torch.all(points[:, 3:] == 1.0)
    xyz = {tuple(p) for p in torch.as_tensor(cloud[:, :3], dtype=torch.float32).tolist()}
    assert {tuple(p) for p in points[:, :3].tolist()} == xyz  # every point present, the rest repeats
    few, _ = processor(num_points=4, normalize=False)(cloud)
    assert len({tuple(p) for p in few.tolist()}) == 4
    s1, _ = processor(num_points=4, sampling="stride", normalize=False)(cloud)
    s2, _ = processor(num_points=4, sampling="stride", normalize=False)(cloud)
    assert torch.equal(s1, s2)
    assert PROCESSORS.get("point_cloud") is PointCloudProcessor


@pytest.mark.parametrize("bad", [np.zeros((10, 2)), np.zeros((0, 3)), np.array([[0.0, np.nan, 1.0]] * 4)])
def test_processor_rejects_bad_arrays(bad):
    with pytest.raises(ValueError):
        processor(num_points=8)(bad)


# ---- Objaverse + Cap3D ----------------------------------------------------------------------------------------------
def write_objaverse(root: Path) -> dict:
    rng = np.random.default_rng(0)
    points_root = root / "objaverse_pc_parallel"
    uids = [f"uid{i:02d}" for i in range(10)]
    for uid in uids[:8]:
        (points_root / uid).mkdir(parents=True)
        np.savez(points_root / uid / f"{uid}_8192.npz", arr_0=rng.normal(size=(64, 3)).astype(np.float32))
    np.save(points_root / f"{uids[8]}.npy", np.concatenate([rng.normal(size=(40, 3)), np.full((40, 3), 128.0)], 1))
    lines = [f"{uid},A Chair. Red, wooden, with four legs" if uid == "uid03" else f"{uid},Object {uid}"
             for uid in uids]  # uid09 has no point file
    lines += ['uid10,"A lamp, ""tall"""', "uid11,", "no comma here"]
    caption_file = root / "Cap3D_automated_Objaverse.csv"
    caption_file.write_text("\n".join(lines) + "\n")
    test_uids = root / "test_uids.txt"
    test_uids.write_text("uid01\nuid03\nuid09\n")
    return {"points_root": str(points_root), "caption_file": str(caption_file), "test_uids_file": str(test_uids)}


def objaverse_builder(paths: dict, **kw) -> ObjaverseCap3DBuilder:
    return ObjaverseCap3DBuilder(config(ObjaverseCap3DBuilder.Config, {**paths, **kw}))


def test_cap3d_csv_is_split_on_the_first_comma(tmp_path):
    paths = write_objaverse(tmp_path)
    captions, skipped = read_cap3d_captions(paths["caption_file"])
    assert captions["uid03"] == "A Chair. Red, wooden, with four legs"
    assert captions["uid10"] == 'A lamp, "tall"'
    assert {sid for sid, _ in skipped} == {"uid11", "Cap3D_automated_Objaverse.csv:13"}


def test_objaverse_splits_items_and_skips(tmp_path):
    paths = write_objaverse(tmp_path)
    builder = objaverse_builder(paths, eval_processor={"num_points": 16, "sampling": "stride"},
                                train_processor={"num_points": 16})
    assert builder.check_paths() == []
    train, test = builder.build("train"), builder.build("test")
    assert [it[0] for it in test.items] == ["uid01", "uid03"]
    train_ids = {it[0] for it in train.items}
    assert train_ids == {"uid00", "uid02", "uid04", "uid05", "uid06", "uid07", "uid08"}
    assert ("uid09", ) == tuple(sid for sid, _ in test.skipped)  # in the test list, but no point file
    assert {"uid10", "uid11"} <= {sid for sid, _ in train.skipped}
    item = test[1]
    assert item["sample_id"] == item["image_id"] == "uid03"
    assert item["text_input"] == "a chair red, wooden, with four legs"
    assert item["points"].shape == (16, 3) and item["points"].norm(dim=1).max() <= 1 + 1e-5
    colored = objaverse_builder(paths, train_processor={"num_points": 16, "use_color": True})
    uid08 = next(i for i, it in enumerate(colored.build("train").items) if it[0] == "uid08")
    rgb = colored.build("train")[uid08]["points"][:, 3:]
    assert torch.allclose(rgb, torch.full_like(rgb, 128 / 255))


def test_heldout_split_is_seeded_and_independent_of_order(tmp_path):
    uids = [f"u{i}" for i in range(100)]
    a = heldout_uids(uids, 20, seed=0)
    assert a == heldout_uids(list(reversed(uids)), 20, seed=0) and len(a) == 20
    assert a != heldout_uids(uids, 20, seed=1)
    with pytest.raises(ValueError):
        heldout_uids(uids, 100, seed=0)
    paths = write_objaverse(tmp_path)
    paths.pop("test_uids_file")
    builder = objaverse_builder(paths, num_test=3)
    train, test = builder.build("train"), builder.build("test")
    test_ids = {it[0] for it in test.items} | {sid for sid, _ in test.skipped}
    assert len(test_ids) == 3 and not test_ids & {it[0] for it in train.items}


def test_objaverse_bad_files_raise_with_their_id(tmp_path):
    paths = write_objaverse(tmp_path)
    root = Path(paths["points_root"])
    (root / "uid00" / "uid00_8192.npz").write_bytes(b"PK\x03\x04 truncated")
    np.savez(root / "uid02" / "uid02_8192.npz", arr_0=np.zeros((64, 2)))
    bad = np.zeros((64, 3))
    bad[5, 1] = np.nan
    np.savez(root / "uid04" / "uid04_8192.npz", arr_0=bad)
    dataset = objaverse_builder(paths, train_processor={"num_points": 16}).build("train")
    for index, (uid, _, _) in enumerate(dataset.items):
        if uid in ("uid00", "uid02", "uid04"):
            with pytest.raises(BadSampleError) as err:
                dataset[index]
            assert err.value.sample_id == uid
        else:
            assert dataset[index]["points"].shape == (16, 3)


# ---- ScanRefer ------------------------------------------------------------------------------------------------------
def write_scene(data_root: Path, scene_id: str, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Two boxes of points (objects 3 and 7) on a noisy floor; returns each object's point indices."""
    chair = rng.uniform([0, 0, 0], [1, 1, 1], size=(100, 3))
    table = rng.uniform([2, 1, 0], [4, 2, 0.8], size=(150, 3))
    floor = np.column_stack([rng.uniform(-1, 5, 200), rng.uniform(-1, 3, 200), np.zeros(200)])
    xyz = np.concatenate([chair, table, floor])
    verts = np.concatenate([xyz, rng.integers(0, 256, (len(xyz), 3)), np.zeros((len(xyz), 3))], 1)
    np.save(data_root / f"{scene_id}_aligned_vert.npy", verts.astype(np.float32))
    boxes = []
    for obj_id, pts in ((3, chair), (7, table)):
        lo, hi = pts.min(0), pts.max(0)
        boxes.append([*((lo + hi) / 2), *(hi - lo), 5, obj_id])
    np.save(data_root / f"{scene_id}_aligned_bbox.npy", np.array(boxes))
    return {3: np.arange(100), 7: np.arange(100, 250)}


def write_scanrefer(root: Path) -> dict:
    data_root = root / "scannet_data"
    data_root.mkdir(parents=True)
    write_scene(data_root, "scene0000_00", np.random.default_rng(0))

    def ann(scene, obj, ann_id, text):
        return {"scene_id": scene, "object_id": str(obj), "object_name": "chair", "ann_id": str(ann_id),
                "description": text, "token": text.split()}

    train = [ann("scene0000_00", 3, 0, "A brown chair. It is next to the table."),
             ann("scene0000_00", 7, 0, "The table, long and wide."),
             ann("scene0000_00", 9, 0, "An object that is not in the boxes."),
             ann("scene0999_00", 1, 0, "A scene that was never exported."),
             ann("scene0000_00", 3, 1, "   ")]
    val = [ann("scene0000_00", 3, 0, "The chair by the table."), ann("scene0000_00", 3, 1, "A small brown chair."),
           ann("scene0000_00", 7, 0, "A long table.")]
    (root / "ScanRefer_filtered_train.json").write_text(json.dumps(train))
    (root / "ScanRefer_filtered_val.json").write_text(json.dumps(val))
    return {"annotation_root": str(root), "scannet_data_root": str(data_root)}


def scanrefer_builder(paths: dict, **kw) -> ScanReferBuilder:
    return ScanReferBuilder(config(ScanReferBuilder.Config, {**paths, **kw}))


def test_scanrefer_items_counts_and_eval_ids(tmp_path):
    paths = write_scanrefer(tmp_path)
    builder = scanrefer_builder(paths, train_processor={"num_points": 64}, eval_processor={"num_points": 64})
    assert builder.check_paths() == []
    train, val = builder.build("train"), builder.build("val")
    assert len(train) == 3  # the never-exported scene and the blank description are skipped at index time
    assert {sid for sid, _ in train.skipped} == {"scene0999_00|1|0", "scene0000_00|3|1"}
    assert [it["sample_id"] for it in val.items] == ["scene0000_00|3", "scene0000_00|7"]
    item = val[0]
    assert item["image_id"] == "scene0000_00|3" and item["text_input"] == "the chair by the table"
    assert item["points"].shape == (64, 3) and item["region_geometry"].shape == (24,)
    with pytest.raises(BadSampleError, match="object 9 is not among the boxes") as err:
        train[2]
    assert err.value.sample_id == "scene0000_00|9|0"


def test_scanrefer_box_corners_match_the_bbox_file(tmp_path):
    paths = write_scanrefer(tmp_path)
    data_root = Path(paths["scannet_data_root"])
    row = np.load(data_root / "scene0000_00_aligned_bbox.npy")[1]  # object 7
    cx, cy, cz, dx, dy, dz = row[:6]
    by_hand = torch.tensor([[cx - dx / 2, cy - dy / 2, cz - dz / 2], [cx + dx / 2, cy - dy / 2, cz - dz / 2],
                            [cx + dx / 2, cy + dy / 2, cz - dz / 2], [cx - dx / 2, cy + dy / 2, cz - dz / 2],
                            [cx - dx / 2, cy - dy / 2, cz + dz / 2], [cx + dx / 2, cy - dy / 2, cz + dz / 2],
                            [cx + dx / 2, cy + dy / 2, cz + dz / 2], [cx - dx / 2, cy + dy / 2, cz + dz / 2]],
                           dtype=torch.float32)
    raw = scanrefer_builder(paths, eval_processor={"num_points": 450, "sampling": "stride", "normalize": False})
    assert torch.allclose(raw.build("val")[1]["region_geometry"].view(8, 3), by_hand, atol=1e-5)
    normed = scanrefer_builder(paths, eval_processor={"num_points": 450, "sampling": "stride"}).build("val")[1]
    xyz = torch.as_tensor(np.load(data_root / "scene0000_00_aligned_vert.npy")[:, :3])
    center = xyz.mean(0)
    radius = (xyz - center).norm(dim=1).max()
    assert torch.allclose(normed["region_geometry"].view(8, 3), (by_hand - center) / radius, atol=1e-5)
    assert normed["points"].norm(dim=1).max() == pytest.approx(1.0, abs=1e-5)


def test_scanrefer_augmented_box_still_encloses_the_object(tmp_path):
    paths = write_scanrefer(tmp_path)
    aug = {"num_points": 450, "sampling": "stride", "scale_low": 0.7, "scale_high": 1.3, "rotate_z_max_deg": 180,
           "dropout_max_ratio": 0.0}  # no dropout, so point indices still say which object a point belongs to
    dataset = scanrefer_builder(paths, train_processor=aug).build("train")
    torch.manual_seed(11)
    item = dataset[1]  # object 7: points 100..249
    corners = item["region_geometry"].view(8, 3)
    flags = inside(item["points"], corners)
    assert flags[100:250].all() and not flags[:100].any()


def test_scanrefer_reads_scenes_from_ply(tmp_path):
    from plyfile import PlyData, PlyElement

    paths = write_scanrefer(tmp_path)
    data_root = Path(paths["scannet_data_root"])
    verts = np.load(data_root / "scene0000_00_aligned_vert.npy")
    vertex = np.array([tuple(v[:6]) for v in verts], dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"),
                                                            ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(data_root / "scene0000_00.ply"))
    proc = {"num_points": 450, "sampling": "stride", "use_color": True}
    from_ply = scanrefer_builder(paths, scene_mesh_pattern="{scene_id}.ply", eval_processor=proc).build("val")[0]
    from_npy = scanrefer_builder(paths, eval_processor=proc).build("val")[0]
    assert torch.allclose(from_ply["points"], from_npy["points"], atol=1e-5)
    assert torch.equal(from_ply["region_geometry"], from_npy["region_geometry"])


def test_check_paths_names_key_and_path(tmp_path):
    builder = scanrefer_builder({"annotation_root": str(tmp_path / "nope"), "scannet_data_root": str(tmp_path)})
    problems = builder.check_paths()
    assert len(problems) == 1 and "annotation_root" in problems[0] and str(tmp_path / "nope") in problems[0]
    write_scanrefer(tmp_path)
    (tmp_path / "ScanRefer_filtered_val.json").unlink()
    problems = scanrefer_builder({"annotation_root": str(tmp_path),
                                  "scannet_data_root": str(tmp_path / "scannet_data")}).check_paths()
    assert len(problems) == 1 and "ScanRefer_filtered_val.json" in problems[0]
    with pytest.raises(ConfigError, match="num_pointz"):
        config_from_dict(ScanReferBuilder.Config, {"modality": "p", "train_processor": {"num_pointz": 3}}, "t")


def test_builders_are_registered_with_default_yamls():
    from lavis.common.config import CONFIG_ROOT

    for name in ("objaverse_cap3d", "scanrefer", "modelnet40"):
        builder = DATASET_BUILDERS.get(name)
        assert (CONFIG_ROOT / builder.DEFAULT_CONFIG).is_file()


# ---- ModelNet40 -----------------------------------------------------------------------------------------------------
class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def write_modelnet(root: Path) -> None:
    rng = np.random.default_rng(0)
    (root / "modelnet40_shape_names.txt").write_text("airplane\nbathtub\nnight_stand\n")
    points = [rng.normal(size=(32, 6)).astype(np.float32) for _ in range(5)]
    labels = [np.array([i % 3], dtype=np.int32) for i in range(4)] + [np.array([7], dtype=np.int32)]
    with (root / "modelnet40_test_32pts_fps.dat").open("wb") as f:
        pickle.dump((points, labels), f)
    (root / "night_stand").mkdir()
    (root / "airplane").mkdir()
    np.savetxt(root / "night_stand" / "night_stand_0001.txt", rng.normal(size=(20, 6)), delimiter=",")
    np.save(root / "airplane" / "airplane_0002.npy", rng.normal(size=(20, 3)))
    (root / "modelnet40_test.txt").write_text("night_stand_0001\nairplane_0002\nairplane_0003\nchair_0001\n")


def test_modelnet_dat_and_folder_layouts(tmp_path):
    write_modelnet(tmp_path)
    dat = ModelNet40Builder(config(ModelNet40Builder.Config, {
        "data_root": str(tmp_path), "dat_points": 32, "eval_processor": {"num_points": 16}}))
    assert dat.check_paths() == []
    ds = dat.build("test")
    assert len(ds) == 4 and ds.skipped[0][0].endswith("/4")  # label 7 is not one of the 3 classes
    item = ds[2]
    assert item["label"] == 2 and item["class_name"] == "night_stand"
    assert item["points"].shape == (16, 3) and item["points"].norm(dim=1).max() <= 1 + 1e-5
    folder = ModelNet40Builder(config(ModelNet40Builder.Config, {
        "data_root": str(tmp_path), "layout": "folder", "eval_processor": {"num_points": 16}}))
    ds = folder.build("test")
    assert [(it[0], it[1]) for it in ds.items] == [("night_stand_0001", 2), ("airplane_0002", 0)]
    assert {sid for sid, _ in ds.skipped} == {"airplane_0003", "chair_0001"}
    assert ds[0]["points"].shape == (16, 3) and ds[1]["class_name"] == "airplane"
    (tmp_path / "night_stand" / "night_stand_0001.txt").write_text("1,2,3\n4,nan,6\n")
    with pytest.raises(BadSampleError) as err:
        ds[0]
    assert err.value.sample_id == "night_stand_0001"


def test_modelnet_dat_with_code_is_refused(tmp_path):
    write_modelnet(tmp_path)
    with (tmp_path / "modelnet40_test_32pts_fps.dat").open("wb") as f:
        pickle.dump(([np.zeros((32, 3))], [_Evil()]), f)
    builder = ModelNet40Builder(config(ModelNet40Builder.Config, {"data_root": str(tmp_path), "dat_points": 32}))
    with pytest.raises(UnsafePickleError, match="builtins.print"):
        builder.build("test")


# ---- tools ----------------------------------------------------------------------------------------------------------
def write_raw_scan(scans: Path, scene: str = "scene0001_00") -> dict:
    """A tiny ScanNet scan: a chair cube (objectId 0), a floor quad (1), a table cube (2); shifted by axisAlignment."""
    from plyfile import PlyData, PlyElement

    cube = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=np.float32)
    chair, table = cube * 0.5 + [1, 1, 0], cube * [1.0, 2.0, 0.7] + [3, 0, 0]
    floor = np.array([[0, 0, 0], [5, 0, 0], [5, 3, 0], [0, 3, 0]], dtype=np.float32) - [0, 0, 0.01]
    xyz = np.concatenate([chair, table, floor]).astype(np.float32)
    faces = [[0, 1, 3], [0, 3, 2], [8, 9, 11], [8, 11, 10], [16, 17, 18], [16, 18, 19]]
    vertex = np.array([(*p, 200, 100, 50) for p in xyz], dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"),
                                                                   ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    face = np.array([(f,) for f in faces], dtype=[("vertex_indices", "i4", (3,))])
    scan = scans / scene
    scan.mkdir(parents=True)
    PlyData([PlyElement.describe(vertex, "vertex"), PlyElement.describe(face, "face")]).write(
        str(scan / f"{scene}_vh_clean_2.ply"))
    seg_indices = [10] * 8 + [20] * 8 + [30] * 4
    (scan / f"{scene}_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"segIndices": seg_indices}))
    groups = [{"objectId": 0, "label": "chair", "segments": [10]}, {"objectId": 1, "label": "floor", "segments": [30]},
              {"objectId": 2, "label": "table", "segments": [20]}]
    (scan / f"{scene}.aggregation.json").write_text(json.dumps({"segGroups": groups}))
    (scan / f"{scene}.txt").write_text("axisAlignment = 1 0 0 10 0 1 0 20 0 0 1 0 0 0 0 1\nsceneType = x\n")
    label_map = scans.parent / "scannetv2-labels.combined.tsv"
    label_map.write_text("id\traw_category\tcategory\tnyu40id\n1\tchair\tchair\t5\n2\tfloor\tfloor\t2\n"
                         "3\ttable\ttable\t7\n")
    return {"label_map": label_map, "xyz": xyz}


def test_preprocess_scannet_writes_scanrefer_arrays(tmp_path):
    raw = write_raw_scan(tmp_path / "scans")
    out = tmp_path / "scannet_data"
    args = ["--scans", str(tmp_path / "scans"), "--label-map", str(raw["label_map"]), "--out", str(out)]
    assert preprocess_scannet.main(args) == 0
    prefix = out / "scene0001_00"
    verts, aligned = np.load(f"{prefix}_vert.npy"), np.load(f"{prefix}_aligned_vert.npy")
    assert verts.shape == aligned.shape == (20, 9)
    assert np.allclose(aligned[:, :3], verts[:, :3] + [10, 20, 0]) and np.allclose(verts[:, 3:6], [200, 100, 50])
    assert np.allclose(verts[:4, 6:], [-1, 0, 0]) and np.allclose(verts[4:8, 6:], 0)  # the chair's x=0 face only
    assert np.load(f"{prefix}_sem_label.npy").tolist() == [5] * 8 + [7] * 8 + [2] * 4
    assert np.load(f"{prefix}_ins_label.npy").tolist() == [1] * 8 + [3] * 8 + [2] * 4
    boxes = np.load(f"{prefix}_aligned_bbox.npy")
    assert boxes.shape == (2, 8)  # the floor's box is dropped
    assert np.allclose(boxes[0], [11.25, 21.25, 0.25, 0.5, 0.5, 0.5, 5, 0])
    assert np.allclose(boxes[1], [13.5, 21.0, 0.35, 1.0, 2.0, 0.7, 7, 2])
    assert np.allclose(np.load(f"{prefix}_bbox.npy")[1, :3], [3.5, 1.0, 0.35])
    # the output is what the ScanRefer dataset reads
    entry = {"scene_id": "scene0001_00", "object_id": "2", "object_name": "table", "ann_id": "0",
             "description": "a table", "token": ["a", "table"]}
    (tmp_path / "ScanRefer_filtered_val.json").write_text(json.dumps([entry]))
    item = scanrefer_builder({"annotation_root": str(tmp_path), "scannet_data_root": str(out)},
                             eval_processor={"num_points": 20, "sampling": "stride"}).build("val")[0]
    assert inside(item["points"], item["region_geometry"].view(8, 3)).sum() == 8
    small = tmp_path / "small"
    assert preprocess_scannet.main([*args[:4], "--out", str(small), "--max-points", "12"]) == 0
    assert np.load(small / "scene0001_00_aligned_vert.npy").shape == (12, 9)
    with pytest.raises(SystemExit):
        preprocess_scannet.main(["--scans", str(tmp_path / "missing"), "--label-map", str(raw["label_map"]),
                                 "--out", str(out)])


def test_eval_converters_match_dataset_ids(tmp_path):
    paths = write_scanrefer(tmp_path)
    out = tmp_path / "scanrefer_gt.json"
    assert prepare_eval_scanrefer.main(["-i", str(tmp_path / "ScanRefer_filtered_val.json"), "-o", str(out)]) == 0
    gt = json.loads(out.read_text())
    val = scanrefer_builder(paths, eval_processor={"num_points": 8}).build("val")
    assert [im["id"] for im in gt["images"]] == [it["sample_id"] for it in val.items]
    assert [a["image_id"] for a in gt["annotations"]] == ["scene0000_00|3"] * 2 + ["scene0000_00|7"]
    assert len({a["id"] for a in gt["annotations"]}) == 3

    opaths = write_objaverse(tmp_path / "obj")
    out = tmp_path / "objaverse_gt.json"
    assert prepare_eval_objaverse.main(["-i", opaths["caption_file"], "--test-uids", opaths["test_uids_file"],
                                        "-o", str(out)]) == 0
    gt = json.loads(out.read_text())
    assert [im["id"] for im in gt["images"]] == ["uid01", "uid03", "uid09"]
    assert gt["annotations"][1] == {"image_id": "uid03", "id": 1, "caption": "A Chair. Red, wooden, with four legs"}
    test = objaverse_builder(opaths).build("test")
    assert {test[i]["image_id"] for i in range(len(test))} <= {im["id"] for im in gt["images"]}
    assert prepare_eval_objaverse.main(["-i", opaths["caption_file"], "--num-test", "3", "-o", str(out)]) == 0
    seeded = {im["id"] for im in json.loads(out.read_text())["images"]}
    no_list = {k: v for k, v in opaths.items() if k != "test_uids_file"}
    held = objaverse_builder(no_list, num_test=3).build("test")
    assert seeded == {it[0] for it in held.items} | {sid for sid, _ in held.skipped}
    with pytest.raises(SystemExit):
        prepare_eval_scanrefer.main(["-i", str(tmp_path / "missing.json")])


def test_inspect_dataset_draws_points_with_their_box(tmp_path, capsys):
    paths = write_scanrefer(tmp_path)
    out = tmp_path / "inspect"
    code = inspect_dataset.main(["--builder", "scanrefer", "--options", f"annotation_root={paths['annotation_root']}",
                                 f"scannet_data_root={paths['scannet_data_root']}", "eval_processor.num_points=128",
                                 "--split", "val", "--num", "2", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "scanrefer/train: 3 items, 2 skipped" in printed and "scanrefer/val: 2 items" in printed
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2
    pixels = np.asarray(Image.open(pngs[0]).convert("RGB"))
    assert ((pixels[..., 0] > 200) & (pixels[..., 1] < 30) & (pixels[..., 2] < 30)).sum() > 20  # the box's edges
