"""What every dataset yields, and how a bad sample is reported instead of crashing a run.

A dataset item is a dict:
    sample_id       str, unique within the dataset (used in logs, bad-sample reports, results files)
    text_input      str, the caption (already cleaned by the text processor)
    image           float Tensor [3, H, W], normalised         (image modalities)
    points          float Tensor [N, 3 or 6], xyz (+ rgb)       (point-cloud modalities)
    region_geometry float Tensor [K, D] (or [D]: K = 1), the sample's K regions in placeholder order, normalised
                    coordinates (region modalities; D set by the region kind)
    region_mask     bool Tensor [K, H, W] over the processed pixels, or [K, N] over the processed points (region
                    kinds with a mask: regions of any shape)
    instruction     str, the LLM input before the answer, one model.region_token per region (instruction datasets;
                    other items get their dataset's template from the collate)
    image_id        int or str, the id in the ground-truth file (evaluation splits)
The modality of a dataset comes from its YAML entry (`datasets.<name>.modality`), never from the item.

A sample that cannot be read or is invalid raises `BadSampleError`; the loader counts, logs and skips it, and the
runner stops once more than `run.max_bad_sample_fraction` of the samples seen are bad. Annotations found unusable
while indexing (zero-area box, empty caption, missing point file) never become items: a dataset lists them in its
`skipped` attribute as (sample id, reason) pairs, and the runner counts them once, before training starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional


class BadSampleError(Exception):
    """A sample that cannot be used: names the sample and why."""

    def __init__(self, sample_id: str, reason: str):
        super().__init__(f"sample {sample_id}: {reason}")
        self.sample_id = str(sample_id)
        self.reason = reason


def cleaned_caption(clean: Callable[[str], str], raw: object, sample_id: str) -> str:
    """The caption after `clean`; one that is missing or cleans to nothing makes the sample bad (skipped, counted)."""
    caption = clean(raw) if isinstance(raw, str) else ""
    if not caption:
        raise BadSampleError(sample_id, f"caption {raw!r} is empty after cleaning")
    return caption


def indexing_skips(dataset: object) -> list[tuple[str, str]]:
    """The (sample id, reason) of annotations `dataset` dropped while indexing; [] for a dataset without the list."""
    return [(str(sample_id), str(reason)) for sample_id, reason in getattr(dataset, "skipped", None) or []]


@dataclass(frozen=True)
class ItemKeys:
    """What the items of a split carry for the model: the encoder's input key (image, points) and the length of
    region_geometry (None: no region). A builder's `item_keys(split)` declares it; the config check
    (lavis/common/preflight.py) compares it with what the dataset's modality reads, before anything is built."""

    input_key: str
    geometry_dim: Optional[int] = None
    region_mask: bool = False  # items carry region_mask (regions of any shape: a region kind with a mask)


@dataclass(frozen=True)
class SkippedSample:
    """Stands in for a bad sample inside a worker; the collate function removes it and reports it."""

    dataset: str
    sample_id: str
    reason: str


@dataclass
class DatasetConfig:
    """Settings every dataset entry has; a builder's own `Config` subclasses this and adds its paths and options.

    In a run YAML: `datasets: {<name>: {builder: <registered builder>, modality: ..., <builder fields>...}}`.
    """

    builder: str = ""  # empty: the entry's name is the builder's name
    modality: str = "???"  # a key of model.modalities
    batch_size: int = 16  # per process
    repeat: int = 1  # times the training split appears in one epoch
    train_split: Optional[str] = "train"  # None: not used for training
    eval_split: Optional[str] = None  # split used by evaluate.py
    eval_gt_file: Optional[str] = None  # COCO caption-format ground truth of eval_split (tools/prepare_eval_*.py)
    # The region kind the items' region_geometry follows (e.g. the 3D corner layout). None: the modality's
    # (model.modalities.<modality>.region), filled in by load_config; a different value is refused there.
    region_kind: Optional[str] = None
    # The instruction of items that bring none (caption datasets): a key of model.task_prompts (RegionGPT's
    # task-guided prompts, e.g. brief_caption, detailed_description). None: the modality's prompt / prefix.
    task_prompt: Optional[str] = None
    # Frozen-encoder feature cache (lavis/datasets/feature_cache.py): items carry `encoder_tokens` read from here
    # instead of the encoder's input; fill it with tools/precompute_features.py. Needs deterministic processors.
    feature_cache_dir: Optional[str] = None
    feature_cache_dtype: str = "float32"  # float32 (bit-exact), float16 or bfloat16 (half the disk, rounded)
