"""RefCOCO / RefCOCO+ / RefCOCOg region captions, from either of the two layouts found in the wild.

refer (github.com/lichengunc/refer): `{refer_root}/{dataset}/refs({split_by}).p`, a pickled list of refs
    `{ref_id, ann_id, image_id, split, sentences: [{sent, raw, tokens, sent_id}]}`, and
    `{refer_root}/{dataset}/instances.json` (COCO format: images with file_name, annotations with id and pixel
    bbox [x, y, w, h]). Splits: refcoco / refcoco+ (unc) train, val, testA, testB; refcocog (umd) train, val, test,
    (google) train, val. Image paths are `{image_root}/{file_name}` (image_root = COCO train2014).
flat (the RegionBLIP release): one JSON list per split of `{image, bbox [x, y, w, h] pixels, caption, image_id}`,
    image paths `{image_root}/{image}`.

Training yields one item per sentence. Evaluation yields one item per unique region (same image id and integer box),
whose ground truth keeps all its sentences; its `image_id` is `"{image_id}_box_{x}_{y}_{w}_{h}"`, as in the
reference's ground-truth files, so `tools/prepare_eval_refcoco.py` and this class agree on ids.

With `crop_to_box`, an item is the box's crop resized as a plain image and carries no region_geometry: the input
of the BLIP-2 baseline of the paper's Table 1 (BLIP-2 captions the cropped region with its image path). The crop
covers the box's whole pixels (floor of x1, y1 to ceil of x2, y2); image_id stays the region id, so the same
ground truth scores both.

Problems visible in the annotations (zero-area or non-finite box, empty sentence, a ref whose annotation is missing)
are kept in `skipped` as (sample id, reason) and logged; problems seen only when reading (missing or corrupt image,
box outside the image, caption empty after cleaning) raise BadSampleError.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Union

from torch.utils.data import Dataset

from lavis.common.safe_pickle import load_pickle
from lavis.datasets.annotation_io import AnnotationError, parsing, read_json
from lavis.datasets.base import BadSampleError, cleaned_caption
from lavis.processors.image_processors import (
    BoxImageConfig,
    BoxImageProcessor,
    ImageReadError,
    box_xywh_to_xyxy,
    check_box,
    load_rgb_image,
    reference_box_pixels,
)
from lavis.processors.text_processors import CaptionProcessor

log = logging.getLogger(__name__)

ImageId = Union[int, str]
REFER_SPLITS = {"unc": ("train", "val", "testA", "testB"), "umd": ("train", "val", "test"), "google": ("train", "val")}
DATASETS = ("refcoco", "refcoco+", "refcocog")
_VALUES = re.compile(r"\[.*?\]|'.*?'|-?\d+(\.\d+)?")  # the values in a reason, so reasons can be counted by kind


@dataclass(frozen=True)
class RegionRecord:
    sample_id: str
    image: str  # relative to the image root
    image_id: ImageId  # the COCO image id
    box_xywh: tuple[float, float, float, float]  # pixels
    captions: tuple[str, ...]

    @property
    def region_id(self) -> str:
        return region_id(self.image_id, self.box_xywh)


def region_id(image_id: ImageId, box_xywh: Any) -> str:
    """The evaluation id of a region: image id and the box truncated to integers (the reference's format)."""
    return "{}_box_{}_{}_{}_{}".format(image_id, *(int(v) for v in box_xywh))


def box_pixel_bounds(box_xyxy: Any) -> tuple[int, int, int, int]:
    """The whole pixels a box (x1, y1, x2, y2) touches, as PIL crop bounds: never empty for a box of positive area."""
    x1, y1, x2, y2 = box_xyxy
    return math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2)


def refer_paths(refer_root: str | Path, dataset: str, split_by: str) -> tuple[Path, Path]:
    folder = Path(refer_root) / dataset
    return folder / f"refs({split_by}).p", folder / "instances.json"


def _box_problem(box: Any) -> str | None:
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        return f"bbox {box!r} is not a list of numbers"
    if len(values) != 4:
        return f"bbox {box!r} does not have 4 numbers"
    if not all(math.isfinite(v) for v in values):
        return f"bbox {box!r} is not finite"
    if values[2] <= 0 or values[3] <= 0:
        return f"bbox {box!r} has zero area"
    return None


def refer_records(
    refer_root: str | Path, dataset: str, split_by: str, split: str
) -> tuple[list[RegionRecord], list[tuple[str, str]]]:
    """One record per sentence of the refs in `split`, and the (sample id, reason) of those that cannot be used."""
    refs_file, instances_file = refer_paths(refer_root, dataset, split_by)
    with parsing(refs_file, "a refer pickle (a list of refs)"):
        refs = load_pickle(refs_file)
    instances = read_json(instances_file, "COCO instances JSON")
    with parsing(f"{refs_file} + {instances_file}", "refer annotations"):
        return _refer_records(refs, instances, refs_file, dataset, split)


def _refer_records(refs, instances, refs_file, dataset, split):
    images = {img["id"]: img for img in instances["images"]}
    boxes = {ann["id"]: ann["bbox"] for ann in instances["annotations"]}
    available = sorted({str(ref["split"]) for ref in refs})
    if split not in available:
        raise ValueError(f"{refs_file}: no refs in split '{split}'; its splits are {available}")
    records: list[RegionRecord] = []
    skipped: list[tuple[str, str]] = []
    for ref in refs:
        if ref["split"] != split:
            continue
        ref_key = f"{dataset}/{ref['ref_id']}"
        image, box = images.get(ref["image_id"]), boxes.get(ref["ann_id"])
        problem = (
            f"image {ref['image_id']} is not in instances.json" if image is None
            else f"annotation {ref['ann_id']} is not in instances.json" if box is None
            else _box_problem(box)
        )
        if problem:
            skipped.append((ref_key, problem))
            continue
        for k, sentence in enumerate(ref.get("sentences", [])):
            text = sentence.get("sent") or sentence.get("raw") or ""
            if not str(text).strip():
                skipped.append((f"{ref_key}/{k}", "empty sentence"))
                continue
            box_xywh = tuple(float(v) for v in box)
            records.append(RegionRecord(f"{ref_key}/{k}", image["file_name"], ref["image_id"], box_xywh, (text,)))
    return records, skipped


def flat_records(flat_file: str | Path) -> tuple[list[RegionRecord], list[tuple[str, str]]]:
    """One record per entry of a flat RegionBLIP JSON list, and the (sample id, reason) of unusable entries."""
    entries = read_json(flat_file, "a flat RegionBLIP JSON list")
    if not isinstance(entries, list):
        raise AnnotationError(f"{flat_file}: expected a JSON list of {{image, bbox, caption, image_id}} entries")
    with parsing(flat_file, "a flat RegionBLIP JSON list"):
        return _flat_records(flat_file, entries)


def _flat_records(flat_file, entries: list):
    records: list[RegionRecord] = []
    skipped: list[tuple[str, str]] = []
    stem = Path(flat_file).stem
    for position, entry in enumerate(entries):
        sample_id = f"{stem}#{position}"
        caption = entry.get("caption")
        problem = (
            "entry has no 'image'" if not entry.get("image")
            else _box_problem(entry.get("bbox"))
            or ("empty caption" if not isinstance(caption, str) or not caption.strip() else None)
        )
        if problem:
            skipped.append((sample_id, problem))
            continue
        image_id = entry.get("image_id", Path(entry["image"]).name)
        box_xywh = tuple(float(v) for v in entry["bbox"])
        records.append(RegionRecord(sample_id, entry["image"], image_id, box_xywh, (caption,)))
    return records, skipped


def unique_regions(records: list[RegionRecord]) -> list[RegionRecord]:
    """One record per region id (image id + integer box), holding the sentences of all its records, in order."""
    merged: dict[str, RegionRecord] = {}
    for record in records:
        key = record.region_id
        if key in merged:
            merged[key] = replace(merged[key], captions=merged[key].captions + record.captions)
        else:
            merged[key] = replace(record, sample_id=key)
    return list(merged.values())


def region_ground_truth(regions: list[RegionRecord]) -> dict:
    """COCO caption-format ground truth: one image per unique region, one annotation per sentence."""
    images, annotations = [], []
    for region in regions:
        images.append({"id": region.region_id})
        for caption in region.captions:
            annotations.append({"image_id": region.region_id, "id": len(annotations), "caption": caption})
    return {"images": images, "annotations": annotations}


def log_skipped(source: str, skipped: list[tuple[str, str]], total: int) -> None:
    if not skipped:
        return
    reasons = Counter(_VALUES.sub("#", reason) for _, reason in skipped)
    log.warning(
        "%s: skipped %d of %d annotations while indexing (%s); first: %s",
        source, len(skipped), total, ", ".join(f"{n} x {r}" for r, n in reasons.most_common()), skipped[0],
    )


def load_image_and_box(source, box_xywh, box_cfg: BoxImageConfig, sample_id: str):
    """(RGB image, its x1y1x2y2 box checked against the image size); any problem makes the sample bad.

    With `box_cfg.truncate_box_pixels` the (checked) box is the reference's: clamped, truncated to whole pixels.
    """
    try:
        image = load_rgb_image(source)
        box = check_box(box_xywh_to_xyxy(box_xywh), image.width, image.height, box_cfg.box_tolerance)
    except (ImageReadError, ValueError, TypeError) as e:
        raise BadSampleError(sample_id, str(e)) from None
    if box_cfg.truncate_box_pixels:
        box = reference_box_pixels(box_xywh, image.width, image.height)
    return image, box


class RefCocoDataset(Dataset):
    """Items: image, region_geometry (x1, y1, x2, y2 in [0, 1]), text_input, sample_id, image_id (the region id)."""

    def __init__(
        self,
        records: list[RegionRecord],
        skipped: list[tuple[str, str]],
        image_root: str | Path,
        image_processor: BoxImageProcessor,
        text_processor: CaptionProcessor,
        per_sentence: bool,
        source: str = "refcoco",
        crop_to_box: bool = False,
    ):
        self.records = records if per_sentence else unique_regions(records)
        self.skipped = skipped
        self.image_root = Path(image_root)
        self.image_processor, self.text_processor = image_processor, text_processor
        self.crop_to_box = crop_to_box
        log_skipped(source, skipped, len(records) + len(skipped))

    def __len__(self) -> int:
        return len(self.records)

    def ground_truth(self) -> dict:
        return region_ground_truth(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        caption = cleaned_caption(self.text_processor, record.captions[0], record.sample_id)
        image, box = load_image_and_box(self.image_root / record.image, record.box_xywh, self.image_processor.cfg,
                                        record.sample_id)
        if self.crop_to_box:
            pixels, _ = self.image_processor(image.crop(box_pixel_bounds(box)))
            return {"image": pixels, "text_input": caption, "sample_id": record.sample_id,
                    "image_id": record.region_id}
        pixels, region = self.image_processor(image, box)
        return {
            "image": pixels,
            "region_geometry": region,
            "text_input": caption,
            "sample_id": record.sample_id,
            "image_id": record.region_id,
        }
