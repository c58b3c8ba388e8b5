"""Builders for the point-cloud datasets: Objaverse + Cap3D, ScanRefer, Nr3D, ModelNet40.

Each builder: `Config` (a DatasetConfig subclass with its paths, options and processor settings), `DEFAULT_CONFIG`
(a YAML under lavis/configs/), `check_paths()` (one message per missing path, naming its key) and `build(split)`.
The training split uses `train_processor` (augmentation), every other split `eval_processor` (deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from torch.utils.data import Dataset

from lavis.common.registry import DATASET_BUILDERS
from lavis.datasets.base import DatasetConfig, ItemKeys
from lavis.datasets.datasets.modelnet import ModelNet40, read_shape_names
from lavis.datasets.datasets.nr3d import Nr3D, read_scan_list
from lavis.datasets.datasets.objaverse import (
    DEFAULT_FILE_PATTERNS,
    ObjaverseCap3D,
    heldout_uids,
    read_cap3d_captions,
    read_uid_list,
)
from lavis.datasets.datasets.scanrefer import ScanRefer
from lavis.processors.point_processors import PointCloudProcessor, PointCloudProcessorConfig
from lavis.processors.region_kinds import region_dim
from lavis.processors.text_processors import CaptionConfig, CaptionProcessor

DEFAULT_CORNER_KIND = "box3d_corners"  # a ScanRefer config without a modality's region (tools, tests)


def _missing(key: str, value: str, what: str, is_dir: bool = False) -> list[str]:
    if not value:
        return [f"{key} is not set; it should be {what}"]
    path = Path(value)
    if not (path.is_dir() if is_dir else path.is_file()):
        kind = "directory" if is_dir else "file"
        return [f"{key} = {value}: no such {kind}; it should be {what}"]
    return []


class _PointBuilder:
    Config = DatasetConfig
    SPLITS: tuple[str, ...] = ()

    def __init__(self, cfg):
        self.cfg = cfg

    def used_splits(self) -> list[str]:
        return [s for s in dict.fromkeys((self.cfg.train_split, self.cfg.eval_split)) if s]

    def item_keys(self, split: str) -> ItemKeys:
        return ItemKeys("points")

    def processor(self, split: str) -> PointCloudProcessor:
        chosen = self.cfg.train_processor if split == self.cfg.train_split else self.cfg.eval_processor
        return PointCloudProcessor.from_config(chosen)

    def input_processor_config(self, split: str) -> tuple[str, PointCloudProcessorConfig]:
        """(key in this dataset's YAML block, config) of the processor that makes the encoder's input of `split`."""
        key = "train_processor" if split == self.cfg.train_split else "eval_processor"
        return key, getattr(self.cfg, key)

    def _check_split(self, split: str) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"{type(self).__name__}: unknown split '{split}'; this dataset has {list(self.SPLITS)}")


# ---- Objaverse + Cap3D ----------------------------------------------------------------------------------------------
@dataclass
class ObjaverseCap3DConfig(DatasetConfig):
    points_root: str = "???"  # ULIP's objaverse_pc_parallel: {uid}/{uid}_8192.npz
    caption_file: str = "???"  # Cap3D CSV `uid,caption` (all objects, or the training ones)
    test_caption_file: str = ""  # optional Cap3D CSV of the test objects; then caption_file is the training set
    test_uids_file: str = ""  # optional: one held-out uid per line (replaces the seeded draw)
    num_test: int = 20000  # size of the seeded held-out draw (paper: 20k)
    split_seed: int = 0
    file_patterns: List[str] = field(default_factory=lambda: list(DEFAULT_FILE_PATTERNS))
    check_files: bool = True  # stat each object's file at index time (missing ones are counted as skipped)
    text_processor: CaptionConfig = field(default_factory=CaptionConfig)
    eval_split: Optional[str] = "test"
    train_processor: PointCloudProcessorConfig = field(default_factory=lambda: PointCloudProcessorConfig(
        num_points=8192, dropout_max_ratio=0.875, scale_low=0.8, scale_high=1.25, anisotropic=False,
        rotate_z_max_deg=180.0))
    eval_processor: PointCloudProcessorConfig = field(
        default_factory=lambda: PointCloudProcessorConfig(num_points=8192, sampling="stride"))


@DATASET_BUILDERS.register("objaverse_cap3d")
class ObjaverseCap3DBuilder(_PointBuilder):
    Config = ObjaverseCap3DConfig
    DEFAULT_CONFIG = "datasets/objaverse_cap3d.yaml"
    SPLITS = ("train", "test")

    def check_paths(self) -> list[str]:
        cfg = self.cfg
        problems = _missing("points_root", cfg.points_root, "ULIP's Objaverse folder of {uid}/{uid}_8192.npz files",
                            is_dir=True)
        problems += _missing("caption_file", cfg.caption_file, "Cap3D's CSV of `uid,caption` lines")
        if cfg.test_caption_file:
            problems += _missing("test_caption_file", cfg.test_caption_file, "a Cap3D CSV of the test objects")
        if cfg.test_uids_file:
            problems += _missing("test_uids_file", cfg.test_uids_file, "a list of held-out uids, one per line")
        return problems

    def build(self, split: str) -> Dataset:
        self._check_split(split)
        cfg = self.cfg
        captions, skipped = read_cap3d_captions(cfg.caption_file)
        if cfg.test_caption_file:
            test_captions, test_skipped = read_cap3d_captions(cfg.test_caption_file)
            if split == "test":
                captions, skipped = test_captions, test_skipped
            uids = set(captions) - (set(test_captions) if split == "train" else set())
        else:
            test = set(read_uid_list(cfg.test_uids_file)) if cfg.test_uids_file else heldout_uids(
                captions, cfg.num_test, cfg.split_seed)
            uids = test if split == "test" else set(captions) - test
            skipped = [s for s in skipped if (s[0] in test) == (split == "test")]  # each reported in one split
        text = CaptionProcessor.from_config(cfg.text_processor)
        return ObjaverseCap3D(cfg.points_root, captions, uids, self.processor(split), text,
                              file_patterns=cfg.file_patterns, check_files=cfg.check_files,
                              name=f"objaverse_cap3d/{split}", skipped=skipped)


# ---- ScanRefer ------------------------------------------------------------------------------------------------------
@dataclass
class ScanNetScenesConfig(DatasetConfig):
    """What ScanRefer and Nr3D share: descriptions of objects of ScanNet scenes, read from the same scannet_data/."""

    scannet_data_root: str = "???"  # ScanRefer's scannet_data/: {scene}_aligned_vert.npy, {scene}_aligned_bbox.npy
    scene_mesh_pattern: str = ""  # e.g. "{scene_id}/{scene_id}_vh_clean_2.ply" to read scenes from meshes instead
    one_item_per_object_in_eval: bool = True  # evaluation: one item per (scene, object), all descriptions as refs
    text_processor: CaptionConfig = field(default_factory=CaptionConfig)
    eval_split: Optional[str] = "val"
    train_processor: PointCloudProcessorConfig = field(default_factory=lambda: PointCloudProcessorConfig(
        num_points=40000, dropout_max_ratio=0.1, scale_low=0.9, scale_high=1.1, rotate_z_max_deg=180.0))
    eval_processor: PointCloudProcessorConfig = field(
        default_factory=lambda: PointCloudProcessorConfig(num_points=40000, sampling="stride"))


@dataclass
class ScanReferConfig(ScanNetScenesConfig):
    annotation_root: str = "???"  # holds ScanRefer_filtered_{train,val}.json
    annotation_pattern: str = "ScanRefer_filtered_{split}.json"


class _SceneBuilder(_PointBuilder):
    """Descriptions of objects in ScanNet scenes (ScanRefer, Nr3D): the scenes' folder and the items' settings."""

    def item_keys(self, split: str) -> ItemKeys:
        return ItemKeys("points", region_dim(self.cfg.region_kind or DEFAULT_CORNER_KIND))

    def scenes_missing(self) -> list[str]:
        return _missing("scannet_data_root", self.cfg.scannet_data_root,
                        "ScanRefer's scannet_data/ folder of {scene}_aligned_vert.npy and _aligned_bbox.npy "
                        "(tools/preprocess_scannet.py writes it)", is_dir=True)

    def scene_options(self, split: str, name: str) -> dict:
        """The ScanRefer dataset's settings every scene dataset shares, for `split`."""
        cfg = self.cfg
        return {"one_item_per_object": cfg.one_item_per_object_in_eval and split != cfg.train_split,
                "scene_mesh_pattern": cfg.scene_mesh_pattern, "name": f"{name}/{split}",
                "region_kind": cfg.region_kind or DEFAULT_CORNER_KIND}


@DATASET_BUILDERS.register("scanrefer")
class ScanReferBuilder(_SceneBuilder):
    Config = ScanReferConfig
    DEFAULT_CONFIG = "datasets/scanrefer.yaml"
    SPLITS = ("train", "val")

    def annotation_file(self, split: str) -> Path:
        return Path(self.cfg.annotation_root) / self.cfg.annotation_pattern.format(split=split)

    def check_paths(self) -> list[str]:
        cfg = self.cfg
        problems = _missing("annotation_root", cfg.annotation_root, "the folder of ScanRefer_filtered_{split}.json",
                            is_dir=True)
        problems += self.scenes_missing()
        if not problems:
            for split in self.used_splits():
                problems += _missing("annotation_root", str(self.annotation_file(split)),
                                     f"ScanRefer's {split} annotations (annotation_pattern = {cfg.annotation_pattern})")
        return problems

    def build(self, split: str) -> Dataset:
        self._check_split(split)
        cfg = self.cfg
        return ScanRefer(self.annotation_file(split), cfg.scannet_data_root, self.processor(split),
                         CaptionProcessor.from_config(cfg.text_processor), **self.scene_options(split, "scanrefer"))


# ---- Nr3D (ReferIt3D) ----------------------------------------------------------------------------------------------
@dataclass
class Nr3DConfig(ScanNetScenesConfig):
    csv_file: str = "???"  # ReferIt3D's nr3d.csv
    # split -> the scans of that split: ReferIt3D's referit3d/data/language/nr3d/{train,test}_scans.txt (JSON lists)
    # or ScanNet's scannetv2_{train,val}.txt (one id a line); ReferIt3D's test scans are ScanNet's val scans
    scan_files: Dict[str, str] = field(default_factory=dict)
    eval_split: Optional[str] = "test"


@DATASET_BUILDERS.register("nr3d")
class Nr3DBuilder(_SceneBuilder):
    Config = Nr3DConfig
    DEFAULT_CONFIG = "datasets/nr3d.yaml"
    SPLITS = ("train", "test")

    def check_paths(self) -> list[str]:
        cfg = self.cfg
        problems = _missing("csv_file", cfg.csv_file, "ReferIt3D's nr3d.csv")
        problems += self.scenes_missing()
        for split in self.used_splits():
            problems += _missing(f"scan_files.{split}", cfg.scan_files.get(split, ""),
                                 f"the scan ids of Nr3D's {split} split (ReferIt3D's {split}_scans.txt)")
        return problems

    def build(self, split: str) -> Dataset:
        self._check_split(split)
        cfg = self.cfg
        if split not in cfg.scan_files:
            raise ValueError(f"nr3d: scan_files has no '{split}' entry (it has {sorted(cfg.scan_files)}); set "
                             f"scan_files.{split} to ReferIt3D's {split}_scans.txt")
        return Nr3D(cfg.csv_file, read_scan_list(cfg.scan_files[split]), cfg.scannet_data_root, self.processor(split),
                    CaptionProcessor.from_config(cfg.text_processor), **self.scene_options(split, "nr3d"))


# ---- ModelNet40 -----------------------------------------------------------------------------------------------------
@dataclass
class ModelNet40Config(DatasetConfig):
    data_root: str = "???"  # holds modelnet40_shape_names.txt and the .dat files or the class folders
    layout: str = "dat"  # "dat": ULIP's modelnet40_{split}_{dat_points}pts_fps.dat; "folder": {class}/{id}.txt
    dat_points: int = 8192
    shape_names_file: str = ""  # empty: {data_root}/modelnet40_shape_names.txt
    class_prompt: str = "a point cloud of {}"  # zero_shot_classification: the class name ("_" -> " ") fills {}
    train_split: Optional[str] = None  # zero-shot: evaluation only
    eval_split: Optional[str] = "test"
    train_processor: PointCloudProcessorConfig = field(default_factory=lambda: PointCloudProcessorConfig(
        num_points=8192, scale_low=0.8, scale_high=1.25, anisotropic=False))
    eval_processor: PointCloudProcessorConfig = field(
        default_factory=lambda: PointCloudProcessorConfig(num_points=8192, sampling="stride"))


@DATASET_BUILDERS.register("modelnet40")
class ModelNet40Builder(_PointBuilder):
    Config = ModelNet40Config
    DEFAULT_CONFIG = "datasets/modelnet40.yaml"
    SPLITS = ("train", "test")

    def shape_names_path(self) -> Path:
        return Path(self.cfg.shape_names_file or Path(self.cfg.data_root) / "modelnet40_shape_names.txt")

    def split_path(self, split: str) -> Path:
        root = Path(self.cfg.data_root)
        if self.cfg.layout == "dat":
            return root / f"modelnet40_{split}_{self.cfg.dat_points}pts_fps.dat"
        return root / f"modelnet40_{split}.txt"

    def check_paths(self) -> list[str]:
        cfg = self.cfg
        if cfg.layout not in ("dat", "folder"):
            return [f"layout = {cfg.layout}: must be 'dat' or 'folder'"]
        problems = _missing("data_root", cfg.data_root, "the ModelNet40 folder", is_dir=True)
        if problems:
            return problems
        problems += _missing("shape_names_file" if cfg.shape_names_file else "data_root", str(self.shape_names_path()),
                             "the 40 class names, one per line")
        what = "ULIP's pickled (points, labels) file" if cfg.layout == "dat" else "the split's shape ids, one per line"
        for split in self.used_splits():
            problems += _missing("data_root", str(self.split_path(split)), f"{what} (layout = {cfg.layout})")
        return problems

    def build(self, split: str) -> Dataset:
        self._check_split(split)
        names = read_shape_names(self.shape_names_path())
        source = self.split_path(split)
        if self.cfg.layout == "dat":
            return ModelNet40(names, self.processor(split), dat_file=source, name=f"modelnet40/{split}")
        return ModelNet40(names, self.processor(split), folder_root=self.cfg.data_root, split_file=source,
                          name=f"modelnet40/{split}")
