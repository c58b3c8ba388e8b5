"""Builders of the instruction datasets: the instruction JSONL (`instructions`) and Osprey-724K (`osprey724k`).

Both yield the items of lavis/datasets/datasets/instructions.py. The dataset's region kind (`region_kind`, from its
modality's region) says what the items carry: an image kind reads images (the `train_image` / `eval_image`
processors), a 3D corner kind reads point clouds (`train_points` / `eval_points`); a kind with a mask adds
`region_mask`. The training split uses the train processor (augmentation allowed), every other split the eval one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from torch.utils.data import Dataset

from lavis.common.registry import DATASET_BUILDERS
from lavis.datasets.base import DatasetConfig, ItemKeys
from lavis.datasets.datasets.instructions import (
    instruction_dataset,
    instruction_samples,
    kind_input,
    read_instruction_jsonl,
)
from lavis.datasets.datasets.osprey import REFERENCE_STYLES, OspreyFileConfig, read_osprey
from lavis.processors.image_processors import BoxImageConfig, BoxImageProcessor
from lavis.processors.point_processors import PointCloudProcessor, PointCloudProcessorConfig
from lavis.processors.region_kinds import has_mask, region_dim
from lavis.processors.text_processors import CaptionConfig, CaptionProcessor

DEFAULT_REGION_TOKEN = "<region>"  # model.region_token's default: the two must agree


def _train_image() -> BoxImageConfig:
    # no flip: instructions say "left of"; crop and mild jitter keep every region and its colour name true
    return BoxImageConfig(image_size=224, crop_prob=0.5, crop_min_scale=0.7, color_jitter=0.1)


def _missing(key: str, value: Optional[str], holds: str, is_dir: bool) -> list[str]:
    path = Path(value) if value else None
    if path is None or not (path.is_dir() if is_dir else path.is_file()):
        return [f"{key} = {value} is not a {'folder' if is_dir else 'file'}; it should be {holds}"]
    return []


class _InstructionBuilder:
    """Shared: the processors by split and by the region kind's input."""

    cfg: DatasetConfig

    def is_train(self, split: str) -> bool:
        return split == self.cfg.train_split

    def input_key(self) -> str:
        return kind_input(self.cfg.region_kind)

    def item_keys(self, split: str) -> ItemKeys:
        return ItemKeys(self.input_key(), region_dim(self.cfg.region_kind), has_mask(self.cfg.region_kind))

    def input_processor_config(self, split: str) -> tuple[str, BoxImageConfig | PointCloudProcessorConfig]:
        """(key in this dataset's YAML block, config) of the processor that makes the encoder's input of `split`."""
        kind = "image" if self.input_key() == "image" else "points"
        key = f"train_{kind}" if self.is_train(split) else f"eval_{kind}"
        return key, getattr(self.cfg, key)

    def input_processor(self, split: str) -> BoxImageProcessor | PointCloudProcessor:
        _, cfg = self.input_processor_config(split)
        return BoxImageProcessor(cfg) if isinstance(cfg, BoxImageConfig) else PointCloudProcessor(cfg)

    def used_splits(self) -> list[str]:
        return [s for s in dict.fromkeys((self.cfg.train_split, self.cfg.eval_split)) if s]


# ---- instruction JSONL -----------------------------------------------------------------------------------------
@dataclass
class InstructionsConfig(DatasetConfig):
    files: Dict[str, str] = field(default_factory=dict)  # split -> instruction JSONL file
    media_root: str = "???"  # the folder the records' `image` / `points` paths start from
    region_token: str = DEFAULT_REGION_TOKEN  # the placeholder in the instructions (= model.region_token)
    train_image: BoxImageConfig = field(default_factory=_train_image)
    eval_image: BoxImageConfig = field(default_factory=BoxImageConfig)
    train_points: PointCloudProcessorConfig = field(default_factory=PointCloudProcessorConfig)
    eval_points: PointCloudProcessorConfig = field(
        default_factory=lambda: PointCloudProcessorConfig(sampling="stride"))
    text: CaptionConfig = field(default_factory=CaptionConfig)  # cleans the answers


@DATASET_BUILDERS.register("instructions")
class InstructionsBuilder(_InstructionBuilder):
    Config = InstructionsConfig
    DEFAULT_CONFIG = "datasets/instructions.yaml"

    def __init__(self, cfg: InstructionsConfig):
        if not cfg.region_token.strip():
            raise ValueError("instructions: region_token is empty; it must be the model's region placeholder")
        self.cfg = cfg

    def check_paths(self) -> list[str]:
        cfg = self.cfg
        problems = _missing("media_root", cfg.media_root, "the folder of the records' images or point files", True)
        for split in self.used_splits():
            if split not in cfg.files:
                problems.append(f"files.{split} is not set; it should name the instruction JSONL of split '{split}' "
                                f"(set: {sorted(cfg.files)})")
            else:
                problems += _missing(f"files.{split}", cfg.files[split], "an instruction JSONL file", False)
        return problems

    def build(self, split: str) -> Dataset:
        cfg = self.cfg
        if split not in cfg.files:
            raise ValueError(f"instructions: files has no '{split}' entry (set: {sorted(cfg.files)})")
        records, skipped = read_instruction_jsonl(cfg.files[split], self.input_key())
        samples, left_out = instruction_samples(records, cfg.region_token)
        return instruction_dataset(samples, skipped + left_out, cfg.media_root, self.input_processor(split),
                                   CaptionProcessor(cfg.text), cfg.region_kind, name=f"instructions/{split}")


# ---- Osprey-724K -----------------------------------------------------------------------------------------------
def _osprey_files() -> list[OspreyFileConfig]:
    short = " Answer the question using a single word or phrase."  # Osprey's own suffix for these two files
    return [
        OspreyFileConfig("osprey_conversation.json", regions="preamble"),
        OspreyFileConfig("osprey_short_form.json", regions="preamble", question_suffix=short),
        OspreyFileConfig("osprey_part_level.json", regions="preamble", question_suffix=short),
        OspreyFileConfig("osprey_lvis_positive_negative.json", regions="inline"),
        OspreyFileConfig("osprey_detail_description.json", regions="inline"),
    ]


@dataclass
class Osprey724kConfig(DatasetConfig):
    annotation_root: str = "???"  # holds the Osprey-724K JSON files
    image_root: str = "???"  # the COCO images, train2017 and val2017 in one folder (Osprey's dataset.md)
    files: List[OspreyFileConfig] = field(default_factory=_osprey_files)
    region_token: str = DEFAULT_REGION_TOKEN  # the placeholder in the instructions (= model.region_token)
    describe_question: str = "Please describe the region {region} in the image in detail."  # description records
    eval_split: Optional[str] = None  # Osprey-724K is training data
    train_image: BoxImageConfig = field(default_factory=_train_image)
    eval_image: BoxImageConfig = field(default_factory=BoxImageConfig)
    text: CaptionConfig = field(default_factory=lambda: CaptionConfig(max_words=150))  # descriptions are paragraphs


@DATASET_BUILDERS.register("osprey724k")
class Osprey724kBuilder(_InstructionBuilder):
    Config = Osprey724kConfig
    DEFAULT_CONFIG = "datasets/osprey724k.yaml"

    def __init__(self, cfg: Osprey724kConfig):
        for k, entry in enumerate(cfg.files):
            if entry.regions not in REFERENCE_STYLES:
                raise ValueError(f"osprey724k: files[{k}].regions must be one of {REFERENCE_STYLES}, not "
                                 f"'{entry.regions}'")
        if "{region}" not in cfg.describe_question:
            raise ValueError("osprey724k: describe_question must hold '{region}', where the region's placeholder goes")
        self.cfg = cfg

    def input_key(self) -> str:
        key = kind_input(self.cfg.region_kind)
        if key != "image":
            raise ValueError(f"osprey724k: its regions are image masks, but region kind '{self.cfg.region_kind}' is "
                             "a 3D kind; give the dataset an image region modality (box2d or mask2d)")
        return key

    def _files(self, split: str) -> list[OspreyFileConfig]:
        return [entry for entry in self.cfg.files if entry.split == split]

    def check_paths(self) -> list[str]:
        cfg = self.cfg
        problems = _missing("image_root", cfg.image_root, "the COCO images the records' file_name name", True)
        problems += _missing("annotation_root", cfg.annotation_root, "the folder of the Osprey-724K JSON files", True)
        if problems:
            return problems
        for split in self.used_splits():
            if not self._files(split):
                problems.append(f"no entry of files has split '{split}'")
            for k, entry in enumerate(self._files(split)):
                holds = "an Osprey-724K JSON file (huggingface.co/datasets/AntGroup-MI/Osprey-724K)"
                problems += _missing(f"files[{k}].path", str(Path(cfg.annotation_root) / entry.path), holds, False)
        return problems

    def build(self, split: str) -> Dataset:
        cfg = self.cfg
        entries = self._files(split)
        if not entries:
            raise ValueError(f"osprey724k: no entry of files has split '{split}'")
        records, skipped = [], []
        for entry in entries:
            found, left_out = read_osprey(Path(cfg.annotation_root) / entry.path, entry.regions,
                                          entry.question_suffix, cfg.region_token, cfg.describe_question)
            records += found
            skipped += left_out
        samples, left_out = instruction_samples(records, cfg.region_token)
        return instruction_dataset(samples, skipped + left_out, cfg.image_root, self.input_processor(split),
                                   CaptionProcessor(cfg.text), cfg.region_kind, name=f"osprey724k/{split}")
