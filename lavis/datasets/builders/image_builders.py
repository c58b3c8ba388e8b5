"""Builders of the image and image-region datasets: COCO captions, RefCOCO(+/g), region shards.

Each builder's `Config` is its YAML block (`datasets.<name>`), defaults in `DEFAULT_CONFIG`. The training split
uses `train_image` (augmentation allowed); every other split uses `eval_image` (resize and normalise only).
Region shards may hold point clouds instead of images (their index says which); those use `train_points` /
`eval_points`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

from torch.utils.data import Dataset

from lavis.common.registry import DATASET_BUILDERS
from lavis.datasets.base import DatasetConfig, ItemKeys
from lavis.datasets.datasets.coco_caption import CocoCaptionDataset
from lavis.datasets.datasets.refcoco import (
    DATASETS,
    REFER_SPLITS,
    RefCocoDataset,
    flat_records,
    refer_paths,
    refer_records,
)
from lavis.datasets.datasets.region_shards import (
    INDEX_NAME,
    RegionShardDataset,
    RegionShardMapDataset,
    check_region_kind,
    index_payload,
    read_index,
)
from lavis.processors.image_processors import BoxImageConfig, BoxImageProcessor
from lavis.processors.point_processors import PointCloudProcessor, PointCloudProcessorConfig
from lavis.processors.region_kinds import region_dim
from lavis.processors.text_processors import CaptionConfig, CaptionProcessor


def _train_image() -> BoxImageConfig:
    return BoxImageConfig(image_size=224, crop_prob=0.5, crop_min_scale=0.7, color_jitter=0.1)


def _missing_dir(key: str, value: Optional[str], holds: str) -> list[str]:
    if not value or not Path(value).is_dir():
        return [f"{key} = {value} is not a folder; it should hold {holds}"]
    return []


def _missing_file(key: str, path: Path, holds: str) -> list[str]:
    return [] if path.is_file() else [f"{key}: {path} does not exist; it should be {holds}"]


class _ImageBuilder:
    """Shared by the builders here: processors picked by split."""

    cfg: DatasetConfig

    def processors(self, split: str) -> tuple[BoxImageProcessor, CaptionProcessor]:
        image_cfg = self.cfg.train_image if split == self.cfg.train_split else self.cfg.eval_image
        return BoxImageProcessor(image_cfg), CaptionProcessor(self.cfg.text)

    def input_processor_config(self, split: str) -> tuple[str, BoxImageConfig]:
        """(key in this dataset's YAML block, config) of the processor that makes the encoder's input of `split`."""
        key = "train_image" if split == self.cfg.train_split else "eval_image"
        return key, getattr(self.cfg, key)

    def is_train(self, split: str) -> bool:
        return split == self.cfg.train_split


# ---- COCO captions -----------------------------------------------------------------------------------------------
@dataclass
class CocoCaptionConfig(DatasetConfig):
    image_root: str = "???"  # holds train2014/ and val2014/ (the paths in the Karpathy files are relative to it)
    ann_root: str = "???"  # holds coco_karpathy_{train,val,test}.json
    train_image: BoxImageConfig = field(default_factory=_train_image)
    eval_image: BoxImageConfig = field(default_factory=BoxImageConfig)
    text: CaptionConfig = field(default_factory=CaptionConfig)


@DATASET_BUILDERS.register("coco_caption")
class CocoCaptionBuilder(_ImageBuilder):
    Config = CocoCaptionConfig
    DEFAULT_CONFIG = "datasets/coco_caption.yaml"

    def __init__(self, cfg: CocoCaptionConfig):
        self.cfg = cfg

    def ann_file(self, split: str) -> Path:
        return Path(self.cfg.ann_root) / f"coco_karpathy_{split}.json"

    def item_keys(self, split: str) -> ItemKeys:
        return ItemKeys("image")

    def _splits(self) -> list[str]:
        return [s for s in (self.cfg.train_split, self.cfg.eval_split) if s]

    def check_paths(self) -> list[str]:
        problems = _missing_dir("image_root", self.cfg.image_root, "the COCO train2014/ and val2014/ image folders")
        problems += _missing_dir("ann_root", self.cfg.ann_root, "coco_karpathy_{train,val,test}.json")
        if not problems:
            for split in self._splits():
                problems += _missing_file("ann_root", self.ann_file(split), f"the Karpathy '{split}' caption list")
        return problems

    def build(self, split: str) -> Dataset:
        image_processor, text_processor = self.processors(split)
        return CocoCaptionDataset(self.ann_file(split), self.cfg.image_root, image_processor, text_processor,
                                  per_caption=self.is_train(split))


# ---- RefCOCO / RefCOCO+ / RefCOCOg -------------------------------------------------------------------------------
@dataclass
class RefCocoConfig(DatasetConfig):
    format: str = "refer"  # refer: refs(<split_by>).p + instances.json; flat: the RegionBLIP JSON lists
    dataset: str = "refcoco"  # refcoco | refcoco+ | refcocog
    split_by: str = "unc"  # unc (refcoco, refcoco+) | umd or google (refcocog)
    refer_root: Optional[str] = None  # format refer: holds <dataset>/refs(<split_by>).p and <dataset>/instances.json
    flat_files: Dict[str, str] = field(default_factory=dict)  # format flat: split -> JSON list file
    image_root: str = "???"  # COCO train2014 (refer) or the folder the flat files' `image` paths start from
    crop_to_box: bool = False  # items are the box crop as a plain image, no region_geometry (BLIP-2 crop baseline)
    train_image: BoxImageConfig = field(default_factory=_train_image)
    eval_image: BoxImageConfig = field(default_factory=BoxImageConfig)
    text: CaptionConfig = field(default_factory=CaptionConfig)


@DATASET_BUILDERS.register("refcoco")
class RefCocoBuilder(_ImageBuilder):
    Config = RefCocoConfig
    DEFAULT_CONFIG = "datasets/refcoco.yaml"

    def __init__(self, cfg: RefCocoConfig):
        if cfg.format not in ("refer", "flat"):
            raise ValueError(f"refcoco: format must be 'refer' or 'flat', not '{cfg.format}'")
        if cfg.dataset not in DATASETS:
            raise ValueError(f"refcoco: dataset must be one of {DATASETS}, not '{cfg.dataset}'")
        if cfg.split_by not in REFER_SPLITS:
            raise ValueError(f"refcoco: split_by must be one of {sorted(REFER_SPLITS)}, not '{cfg.split_by}'")
        self.cfg = cfg

    def _splits(self) -> list[str]:
        return [s for s in (self.cfg.train_split, self.cfg.eval_split) if s]

    def item_keys(self, split: str) -> ItemKeys:
        return ItemKeys("image", None if self.cfg.crop_to_box else region_dim("box2d"))

    def check_paths(self) -> list[str]:
        cfg = self.cfg
        problems = _missing_dir("image_root", cfg.image_root, "the COCO images the annotations name")
        if cfg.format == "refer":
            holds = f"{cfg.dataset}/refs({cfg.split_by}).p and {cfg.dataset}/instances.json (lichengunc/refer)"
            problems += _missing_dir("refer_root", cfg.refer_root, holds)
            if not problems:
                refs_file, instances_file = refer_paths(cfg.refer_root, cfg.dataset, cfg.split_by)
                problems += _missing_file("refer_root", refs_file, f"the pickled {cfg.dataset} refs list")
                problems += _missing_file("refer_root", instances_file, "the COCO-format boxes of the refs")
            return problems
        for split in self._splits():
            if split not in cfg.flat_files:
                problems.append(f"flat_files.{split} is not set; it should name the JSON list of the '{split}' "
                                f"split (set: {sorted(cfg.flat_files)})")
            else:
                problems += _missing_file(f"flat_files.{split}", Path(cfg.flat_files[split]),
                                          "a JSON list of {image, bbox, caption, image_id}")
        return problems

    def build(self, split: str) -> Dataset:
        cfg = self.cfg
        if cfg.format == "refer":
            records, skipped = refer_records(cfg.refer_root, cfg.dataset, cfg.split_by, split)
            source = f"{cfg.dataset}({cfg.split_by}) {split}"
        else:
            if split not in cfg.flat_files:
                raise ValueError(f"refcoco: flat_files has no '{split}' entry (set: {sorted(cfg.flat_files)})")
            records, skipped = flat_records(cfg.flat_files[split])
            source = cfg.flat_files[split]
        image_processor, text_processor = self.processors(split)
        return RefCocoDataset(records, skipped, cfg.image_root, image_processor, text_processor,
                              per_sentence=self.is_train(split), source=source, crop_to_box=cfg.crop_to_box)


# ---- region shards ---------------------------------------------------------------------------------------------
@dataclass
class RegionShardsConfig(DatasetConfig):
    shard_root: str = "???"  # holds <split>/index.json and <split>/regions-*.tar (tools/write_region_shards.py)
    access: str = "random"  # random: map-style, seeks per region (the runner's sampler); stream: IterableDataset
    seed: int = 0  # shard order and shuffle buffer; the epoch is mixed in by set_epoch
    shuffle_buffer: int = 500  # regions held to mix the regions of one image apart
    train_image: BoxImageConfig = field(default_factory=_train_image)
    eval_image: BoxImageConfig = field(default_factory=BoxImageConfig)
    # point-cloud shards (payload npy): the processor of the points and their box corners. The defaults sample
    # 8192 points (Objaverse objects); ScanRefer scenes take num_points 40000. Augmentation is off unless set
    # (the objaverse_cap3d / scanrefer builders' train_processor settings are the paper's).
    train_points: PointCloudProcessorConfig = field(default_factory=PointCloudProcessorConfig)
    eval_points: PointCloudProcessorConfig = field(
        default_factory=lambda: PointCloudProcessorConfig(sampling="stride"))
    text: CaptionConfig = field(default_factory=CaptionConfig)


@DATASET_BUILDERS.register("region_shards")
class RegionShardsBuilder(_ImageBuilder):
    Config = RegionShardsConfig
    DEFAULT_CONFIG = "datasets/region_shards.yaml"

    def __init__(self, cfg: RegionShardsConfig):
        if cfg.access not in ("random", "stream"):
            raise ValueError(f"region_shards: access must be 'random' or 'stream', not '{cfg.access}'")
        self.cfg = cfg

    def index_file(self, split: str) -> Path:
        return Path(self.cfg.shard_root) / split / INDEX_NAME

    def check_paths(self) -> list[str]:
        problems = _missing_dir("shard_root", self.cfg.shard_root, "one folder of shards per split")
        if not problems:
            for split in (s for s in (self.cfg.train_split, self.cfg.eval_split) if s):
                problems += _missing_file("shard_root", self.index_file(split),
                                          f"the shard index of split '{split}' (tools/write_region_shards.py)")
        return problems

    def holds_points(self, split: str) -> bool:
        """Whether the split's shards hold point clouds (else images): what the shard index records."""
        index_file = self.index_file(split)
        if not index_file.is_file():
            raise FileNotFoundError(f"region_shards: {index_file} does not exist; it should be the shard index of "
                                    f"split '{split}' (tools/write_region_shards.py)")
        return index_payload(read_index(index_file)) == "npy"

    def input_processor_config(self, split: str) -> tuple[str, BoxImageConfig | PointCloudProcessorConfig]:
        """(key in this dataset's YAML block, config) of the processor that makes the encoder's input of `split`."""
        kind = "points" if self.holds_points(split) else "image"
        key = f"train_{kind}" if self.is_train(split) else f"eval_{kind}"
        return key, getattr(self.cfg, key)

    def build(self, split: str) -> Dataset:
        _, input_cfg = self.input_processor_config(split)
        if isinstance(input_cfg, PointCloudProcessorConfig):
            check_region_kind(self.index_file(split), self.cfg.region_kind)
            input_processor = PointCloudProcessor(input_cfg)
        else:
            input_processor = BoxImageProcessor(input_cfg)
        text_processor = CaptionProcessor(self.cfg.text)
        if self.cfg.access == "random":
            return RegionShardMapDataset(self.index_file(split), input_processor, text_processor)
        train = self.is_train(split)
        return RegionShardDataset(self.index_file(split), input_processor, text_processor,
                                  name=f"region_shards/{split}", seed=self.cfg.seed, shuffle=train,
                                  shuffle_buffer=self.cfg.shuffle_buffer if train else 0)
