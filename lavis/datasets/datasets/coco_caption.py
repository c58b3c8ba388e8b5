"""COCO captions in the Karpathy split files LAVIS ships: `coco_karpathy_{train,val,test}.json`.

Each file is a list of `{"image": "val2014/COCO_val2014_000000391895.jpg", "caption": str | [str, ...],
"image_id": ...}` (`image_id` is absent from the val / test files). Training yields one item per caption; evaluation
yields one item per image, with `image_id` the COCO id (the number in the file name), as in the ground-truth file
that `tools/prepare_eval_coco.py` writes.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from torch.utils.data import Dataset

from lavis.datasets.annotation_io import AnnotationError, parsing, read_json
from lavis.datasets.base import BadSampleError, cleaned_caption
from lavis.processors.image_processors import BoxImageProcessor, ImageReadError, load_rgb_image
from lavis.processors.text_processors import CaptionProcessor

log = logging.getLogger(__name__)

ImageId = Union[int, str]


@dataclass(frozen=True)
class CaptionRecord:
    sample_id: str
    image: str  # relative to the image root
    image_id: ImageId
    captions: tuple[str, ...]


def coco_image_id(image_path: str, given: ImageId | None = None) -> ImageId:
    """The COCO image id: the trailing number of the file name (COCO_val2014_000000391895.jpg -> 391895)."""
    match = re.search(r"(\d+)\.\w+$", image_path)
    if match:
        return int(match.group(1))
    return given if given is not None else Path(image_path).stem


def karpathy_records(ann_file: str | Path, per_caption: bool) -> tuple[list[CaptionRecord], list[tuple[str, str]]]:
    """Records of a Karpathy split file and the (sample id, reason) of entries that cannot be used.

    per_caption: one record per caption (training); otherwise one record per image holding all its captions.
    """
    entries = read_json(ann_file, "a Karpathy split (a JSON list of {image, caption} entries)")
    if not isinstance(entries, list):
        raise AnnotationError(f"{ann_file}: expected a JSON list of {{image, caption}} entries")
    with parsing(ann_file, "a Karpathy split (a JSON list of {image, caption} entries)"):
        return _karpathy_records(ann_file, entries, per_caption)


def _karpathy_records(ann_file, entries: list, per_caption: bool):
    by_image: dict[str, list[str]] = {}
    given_ids: dict[str, ImageId] = {}
    skipped: list[tuple[str, str]] = []
    for position, entry in enumerate(entries):
        image = entry.get("image")
        if not image:
            skipped.append((f"{Path(ann_file).name}#{position}", "entry has no 'image'"))
            continue
        captions = entry.get("caption", [])
        captions = [captions] if isinstance(captions, str) else list(captions)
        given_ids.setdefault(image, entry.get("image_id"))
        bucket = by_image.setdefault(image, [])
        for caption in captions:
            if isinstance(caption, str) and caption.strip():
                bucket.append(caption)
            else:
                skipped.append((f"{coco_image_id(image, given_ids[image])}/{len(bucket)}", "empty caption"))
    records = []
    for image, captions in by_image.items():
        image_id = coco_image_id(image, given_ids[image])
        if not captions:
            skipped.append((str(image_id), "image has no caption"))
        elif per_caption:
            records += [CaptionRecord(f"{image_id}/{k}", image, image_id, (c,)) for k, c in enumerate(captions)]
        else:
            records.append(CaptionRecord(str(image_id), image, image_id, tuple(captions)))
    return records, skipped


def caption_ground_truth(records: list[CaptionRecord]) -> dict:
    """COCO caption-format ground truth of per-image records (what pycocoevalcap reads)."""
    images, annotations = [], []
    for record in records:
        images.append({"id": record.image_id})
        for caption in record.captions:
            annotations.append({"image_id": record.image_id, "id": len(annotations), "caption": caption})
    return {"images": images, "annotations": annotations}


class CocoCaptionDataset(Dataset):
    """Items: image, text_input, sample_id, image_id; training: one per caption, evaluation: one per image."""

    def __init__(
        self,
        ann_file: str | Path,
        image_root: str | Path,
        image_processor: BoxImageProcessor,
        text_processor: CaptionProcessor,
        per_caption: bool,
    ):
        self.image_root = Path(image_root)
        self.image_processor, self.text_processor = image_processor, text_processor
        self.records, self.skipped = karpathy_records(ann_file, per_caption)
        if self.skipped:
            log.warning("%s: skipped %d entries while indexing, e.g. %s", ann_file, len(self.skipped), self.skipped[0])

    def __len__(self) -> int:
        return len(self.records)

    def ground_truth(self) -> dict:
        return caption_ground_truth(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        caption = cleaned_caption(self.text_processor, record.captions[0], record.sample_id)
        try:
            image = load_rgb_image(self.image_root / record.image)
        except ImageReadError as e:
            raise BadSampleError(record.sample_id, str(e)) from None
        pixels, _ = self.image_processor(image)
        return {"image": pixels, "text_input": caption, "sample_id": record.sample_id, "image_id": record.image_id}
