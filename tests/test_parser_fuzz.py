"""Truncated or garbage annotation files, images and point clouds give a clear error naming the file, or a
counted skip of the sample; never a bare traceback from deep inside a parser, never a hang."""

import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lavis.common.config_schema import config_from_dict
from lavis.common.registry import DATASET_BUILDERS
from lavis.datasets.base import BadSampleError

# (builder, config relative to the world root, split, file to damage)
TARGETS = {
    "coco_json": ("coco_caption", {"image_root": "images", "ann_root": "."}, "train", "coco_karpathy_train.json"),
    "coco_image": ("coco_caption", {"image_root": "images", "ann_root": "."}, "train",
                   "images/train2014/COCO_train2014_000000000003.jpg"),
    "refs_pickle": ("refcoco", {"refer_root": ".", "image_root": "images/train2014"}, "train", "refcoco/refs(unc).p"),
    "refer_instances": ("refcoco", {"refer_root": ".", "image_root": "images/train2014"}, "train",
                        "refcoco/instances.json"),
    "cap3d_csv": ("objaverse_cap3d", {"points_root": "objaverse", "caption_file": "Cap3D_automated_Objaverse.csv",
                                      "test_uids_file": "objaverse/test_uids.txt"}, "train",
                  "Cap3D_automated_Objaverse.csv"),
    "object_npy": ("objaverse_cap3d", {"points_root": "objaverse", "caption_file": "Cap3D_automated_Objaverse.csv",
                                       "test_uids_file": "objaverse/test_uids.txt"}, "train",
                   "objaverse/obj00005/obj00005.npy"),
    "scanrefer_json": ("scanrefer", {"annotation_root": "scanrefer", "scannet_data_root": "scanrefer/scannet_data"},
                       "train", "scanrefer/ScanRefer_filtered_train.json"),
    "scene_npy": ("scanrefer", {"annotation_root": "scanrefer", "scannet_data_root": "scanrefer/scannet_data"},
                  "train", "scanrefer/scannet_data/scene0004_00_aligned_vert.npy"),
    "scene_boxes": ("scanrefer", {"annotation_root": "scanrefer", "scannet_data_root": "scanrefer/scannet_data"},
                    "train", "scanrefer/scannet_data/scene0004_00_aligned_bbox.npy"),
}
WRONG_SHAPES = [b"", b"{}", b"[]", b"[1, 2, 3]", b'{"images": 5}', b'[{"image": 5, "caption": null}]', b"null",
                b"\x93NUMPY\x01\x00garbage", b"uid-without-comma\n"]


@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_world")
    for name in ("images", "refcoco", "objaverse", "scanrefer"):
        shutil.copytree(tiny_world / name, root / name)
    for name in ("coco_karpathy_train.json", "Cap3D_automated_Objaverse.csv"):
        shutil.copy(tiny_world / name, root / name)
    return root


def damage(original: bytes, how: str, fraction: float, noise: bytes) -> bytes:
    if how == "truncate":
        return original[: int(len(original) * fraction)]
    if how == "noise":
        return noise
    if how == "flip":
        cut = int(len(original) * fraction)
        return original[:cut] + noise + original[cut + len(noise):]
    return WRONG_SHAPES[int(fraction * len(WRONG_SHAPES)) % len(WRONG_SHAPES)]


@settings(max_examples=120, deadline=20000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(target=st.sampled_from(sorted(TARGETS)), how=st.sampled_from(["truncate", "noise", "flip", "shape"]),
       fraction=st.floats(0.0, 0.99), noise=st.binary(min_size=1, max_size=64))
def test_damaged_files_fail_clearly_or_are_skipped(world, target, how, fraction, noise):
    builder_name, paths, split, relative = TARGETS[target]
    path = world / relative
    original = path.read_bytes()
    path.write_bytes(damage(original, how, fraction, noise))
    try:
        builder_cls = DATASET_BUILDERS.get(builder_name)
        params = {key: str(world / value) for key, value in paths.items()}
        params["modality"] = "any"
        builder = builder_cls(config_from_dict(builder_cls.Config, params, f"datasets.{target}"))
        try:
            dataset = builder.build(split)
        except Exception as e:  # noqa: BLE001 - the message is what is checked
            assert path.name in str(e) or str(path.parent.name) in str(e), f"{type(e).__name__}: {e}"
            return
        for index in range(len(dataset)):
            try:
                dataset[index]
            except BadSampleError as e:
                assert e.sample_id and e.reason  # counted and reported by the loader
    finally:
        path.write_bytes(original)



@pytest.mark.parametrize("kind", ["npy", "npz", "npz_compressed"])
def test_every_one_byte_damage_of_an_array_file_is_a_clear_error(tmp_path, kind):
    """Each byte of a small point file set to several values: load_array returns an array or raises ValueError
    naming the file, never numpy's own SyntaxError / TokenError (a damaged header is parsed as a literal)."""
    from lavis.datasets.annotation_io import load_array

    path = tmp_path / f"cloud.{kind[:3]}"
    cloud = np.arange(24, dtype=np.float32).reshape(4, 6)
    {"npy": np.save, "npz": np.savez, "npz_compressed": np.savez_compressed}[kind](path, cloud)
    data = path.read_bytes()
    for i in range(0, len(data), 1 if kind == "npy" else 3):
        for value in (0x00, 0x0A, 0x28, 0xFF):
            damaged = bytearray(data)
            damaged[i] = value
            path.write_bytes(bytes(damaged))
            try:
                load_array(path)
            except ValueError as e:
                assert str(path) in str(e)
