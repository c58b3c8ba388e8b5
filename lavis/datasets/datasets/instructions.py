"""Instruction data: an image or point cloud, regions of any shape, and conversation turns (README "Instruction data").

One JSON object per line of a `.jsonl` file:
    {"id": "...", "image": "relative/path.jpg"  |  "points": "relative/path.npy"   ([N, >=3], rows xyz(rgb)),
     "regions": [{"box": [x, y, w, h]} | {"mask": {"size": [h, w], "counts": ...}} (COCO RLE, compressed or not)
                 | {"polygon": [[x1, y1, x2, y2, ...], ...]} | {"box3d": [cx, cy, cz, dx, dy, dz]}
                 | {"points_of": [i, ...]}, ...],
     "conversations": [{"from": "human", "value": "What colour is <region>?"}, {"from": "gpt", "value": "red"}, ...]}
Paths are relative to the dataset's `media_root`; pixel boxes and polygons are in the image's pixels, `box3d` and
point indices in the file's frame and rows.

Placeholders bind to regions by position: the k-th placeholder of the conversation (human turns only) is the k-th
region, so a record's human turns hold exactly as many placeholders as it has regions. Each gpt turn is one sample:
instruction = the earlier turns (human and gpt, joined by "\n") + this human turn; answer = the gpt value; the
sample carries the regions its instruction's placeholders name (all of them when the first turn names them all).

A region is converted to the dataset's region kind (`region_kind`): an image kind without a mask (box2d) takes a
box, or a mask's / polygon's bounding box; an image kind with a mask (mask2d) takes the mask, or a box's rectangle;
a 3D corner kind without a mask (box3d_corners) takes box3d, or the bounding box of points_of; a 3D kind with a mask
(point_set) takes points_of, or the points inside box3d, with the corners of the set's bounding box as geometry.

Bad data never crashes a run. While indexing, into `skipped` (sample or record id, reason): an unreadable line, a
duplicate id, a record without its image / points path, a malformed or wrong-dimension region, no regions, a
placeholder count != the region count, a placeholder in an answer, an empty answer, a sample whose instruction
names no region.
While reading (BadSampleError): a missing or corrupt file, an empty mask (decoded, or emptied by the crop, resize or
point sampling), a mask of another size than the image, a box outside the image, a point index out of range.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
from torch.utils.data import Dataset

from lavis.common.registry import REGION_KINDS
from lavis.datasets.annotation_io import load_array, parsing
from lavis.datasets.base import BadSampleError, cleaned_caption
from lavis.datasets.region_masks import (
    RegionShapeError,
    box_mask,
    decode_segmentation,
    mask_box,
    point_set_box,
    points_in_box,
)
from lavis.processors.image_processors import (
    BoxImageProcessor,
    ImageReadError,
    RegionMaskError,
    box_xywh_to_xyxy,
    check_box,
    load_rgb_image,
    reference_box_pixels,
)
from lavis.processors.point_processors import PointCloudError, PointCloudProcessor
from lavis.processors.region_kinds import corner_layout, has_mask

log = logging.getLogger(__name__)

IMAGE_REGIONS = ("box", "mask", "polygon")
POINT_REGIONS = ("box3d", "points_of")
SPEAKERS = ("human", "gpt")


@dataclass(frozen=True)
class Region:
    source: str  # the record's key: box, mask, polygon, box3d or points_of
    value: Any  # its value, checked for shape (not against the image or cloud, which indexing does not read)


@dataclass(frozen=True)
class InstructionRecord:
    record_id: str
    media: str  # the image or point-cloud path, relative to the media root
    regions: tuple[Region, ...]
    turns: tuple[tuple[str, str], ...]  # (speaker, text), speakers alternating human, gpt


@dataclass(frozen=True)
class InstructionSample:
    sample_id: str
    media: str
    regions: tuple[Region, ...]  # those named by the instruction's placeholders, in their order
    instruction: str
    answer: str


# ---- the format -------------------------------------------------------------------------------------------------
def _numbers(value: Any, count: int, what: str) -> list[float]:
    if not isinstance(value, list) or len(value) != count or not all(isinstance(v, (int, float)) for v in value):
        raise ValueError(f"'{what}' must be a list of {count} numbers, not {value!r}")
    if not all(math.isfinite(v) for v in value):
        raise ValueError(f"'{what}' {value} is not finite")
    return [float(v) for v in value]


def parse_region(entry: Any, allowed: tuple[str, ...]) -> Region:
    """One entry of `regions`, checked for shape; ValueError saying what is wrong. `allowed`: the keys that fit the
    record's media (an image takes box / mask / polygon, a point cloud box3d / points_of)."""
    if not isinstance(entry, dict) or len(entry) != 1:
        raise ValueError(f"a region must be an object with one key of {list(allowed)}, not {entry!r}"[:200])
    (source, value), = entry.items()
    if source not in allowed:
        raise ValueError(f"region key '{source}' does not fit this record's media; use one of {list(allowed)}")
    if source == "box":
        box = _numbers(value, 4, "box")
        if box[2] <= 0 or box[3] <= 0:
            raise ValueError(f"box {box} (x, y, w, h) has zero area")
        return Region(source, box)
    if source == "box3d":
        box = _numbers(value, 6, "box3d")
        if min(box[3:]) <= 0:
            raise ValueError(f"box3d {box} (centre, size) has a size <= 0")
        return Region(source, box)
    if source == "points_of":
        if not isinstance(value, list) or not value:
            raise ValueError("'points_of' must be a non-empty list of point indices")
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
            raise ValueError("'points_of' must hold non-negative integer row indices of the point file")
        return Region(source, tuple(value))
    if source == "mask":
        if not isinstance(value, dict) or not {"size", "counts"} <= set(value):
            raise ValueError("'mask' must be a COCO RLE {\"size\": [h, w], \"counts\": ...}")
        return Region(source, value)
    if not isinstance(value, list) or not value:
        raise ValueError("'polygon' must be a non-empty list of [x1, y1, x2, y2, ...] rings")
    return Region(source, value)


def parse_record(line: Any, media_key: str, fallback_id: str) -> InstructionRecord:
    """One JSONL object -> a record; ValueError saying what is wrong."""
    if not isinstance(line, dict):
        raise ValueError(f"a record must be a JSON object, not {type(line).__name__}")
    media = line.get(media_key)
    if not isinstance(media, str) or not media:
        other = "points" if media_key == "image" else "image"
        hint = f" (it has '{other}': give it to a dataset of that modality)" if other in line else ""
        raise ValueError(f"record has no '{media_key}' path{hint}")
    regions = line.get("regions", [])
    if not isinstance(regions, list):
        raise ValueError("'regions' must be a list")
    allowed = IMAGE_REGIONS if media_key == "image" else POINT_REGIONS
    parsed = []
    for k, entry in enumerate(regions):
        try:
            parsed.append(parse_region(entry, allowed))
        except ValueError as e:
            raise ValueError(f"region {k}: {e}") from None
    return InstructionRecord(str(line.get("id", fallback_id)), media, tuple(parsed), _turns(line.get("conversations")))


def _turns(conversations: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(conversations, list):
        raise ValueError("'conversations' must be a list of {\"from\": \"human\" | \"gpt\", \"value\": ...}")
    turns = []
    for k, turn in enumerate(conversations):
        speaker = turn.get("from") if isinstance(turn, dict) else None
        if speaker != SPEAKERS[k % 2] or not isinstance(turn.get("value"), str):
            raise ValueError(f"turn {k} must be {{\"from\": \"{SPEAKERS[k % 2]}\", \"value\": <text>}} (turns "
                             f"alternate human, gpt), not {turn!r}"[:240])
        turns.append((speaker, turn["value"]))
    return tuple(turns)


def read_instruction_jsonl(path: str | Path, media_key: str) -> tuple[list[InstructionRecord], list[tuple[str, str]]]:
    """The records of a JSONL file whose media is `media_key` ("image" or "points"), and the (id, reason) of the lines
    that cannot be records."""
    records, skipped = [], []
    seen: dict[str, int] = {}
    stem = Path(path).stem
    with parsing(path, "instruction JSONL (one JSON object per line)"), Path(path).open(encoding="utf-8") as f:
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            where = f"{stem}:{number}"
            try:
                line = json.loads(text)
            except json.JSONDecodeError as e:
                skipped.append((where, f"not a JSON object: {e}"))
                continue
            try:
                record = parse_record(line, media_key, where)
            except ValueError as e:  # named by the record's id where it has one, so the report finds it
                skipped.append((str(line["id"]) if isinstance(line, dict) and "id" in line else where, str(e)))
                continue
            if record.record_id in seen:  # sample ids must be unique: logs, bad-sample reports, results
                skipped.append((record.record_id, f"duplicate id (line {number}; line {seen[record.record_id]} kept)"))
                continue
            seen[record.record_id] = number
            records.append(record)
    return records, skipped


def instruction_samples(records: Iterable[InstructionRecord], region_token: str
                        ) -> tuple[list[InstructionSample], list[tuple[str, str]]]:
    """One sample per answered turn (module docstring), and the (id, reason) of records and samples left out."""
    samples, skipped = [], []
    for record in records:
        humans = [text for speaker, text in record.turns if speaker == "human"]
        placeholders = sum(text.count(region_token) for text in humans)
        problem = (
            "no regions" if not record.regions
            else f"{placeholders} '{region_token}' placeholder(s) in the human turns but {len(record.regions)} "
                 "region(s)" if placeholders != len(record.regions)
            else "an answer holds a region placeholder" if any(
                region_token in text for speaker, text in record.turns if speaker == "gpt")
            else "no answered turn" if len(record.turns) < 2
            else None
        )
        if problem:
            skipped.append((record.record_id, problem))
            continue
        for index in range(1, len(record.turns), 2):
            sample_id = f"{record.record_id}#{index // 2}"
            instruction = "\n".join(text for _, text in record.turns[:index]).strip()
            answer = record.turns[index][1].strip()
            named = instruction.count(region_token)
            if not answer:
                skipped.append((sample_id, "empty answer"))
            elif named == 0:
                skipped.append((sample_id, "the instruction names no region"))
            else:
                samples.append(InstructionSample(sample_id, record.media, record.regions[:named], instruction, answer))
    return samples, skipped


# ---- regions as the region kind needs them ---------------------------------------------------------------------
def kind_input(kind: Optional[str]) -> str:
    """The input key ("image" or "points") of the items of a region kind: a 3D corner kind reads points, a 4-value
    kind without corners an image. ValueError for no kind or one that is neither."""
    if not kind:
        raise ValueError("region_kind is not set: instruction items need regions; give the dataset a modality with a "
                         "region (model.modalities.<modality>.region) or set region_kind")
    spec = REGION_KINDS.get(kind)
    if spec.box_corners is not None:
        return "points"
    if spec.dim == 4:
        return "image"
    raise ValueError(f"region kind '{kind}' ({spec.dim} values, no 3D corner layout) is neither an image box kind "
                     "(4 values) nor a 3D corner kind; instruction datasets cannot make its geometry")


def image_region(region: Region, height: int, width: int, with_mask: bool, tolerance: float,
                 truncate: bool) -> tuple[list[float], Optional[np.ndarray]]:
    """(x1y1x2y2 pixel box, bool mask [height, width] or None) of one region of a height x width image."""
    if region.source == "box":
        box = check_box(box_xywh_to_xyxy(region.value), width, height, tolerance)
        if truncate:  # the reference's whole-pixel box (BoxImageConfig.truncate_box_pixels)
            box = reference_box_pixels(region.value, width, height)
        return box, box_mask(box, height, width) if with_mask else None
    mask = decode_segmentation(region.value, height, width)  # an RLE dict (mask) or rings (polygon)
    box = mask_box(mask)
    if box is None:
        raise RegionShapeError(f"the {region.source} covers no pixel of the {width}x{height} image")
    return box, mask if with_mask else None


def point_region(region: Region, xyz: np.ndarray, with_mask: bool
                 ) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(box centre [3], size [3], bool mask over the cloud's rows [N] or None) of one region of a cloud [N, 3]."""
    if region.source == "points_of":
        rows = np.asarray(region.value, dtype=np.int64)
        if rows.max() >= len(xyz):
            raise RegionShapeError(f"points_of holds index {int(rows.max())}, but the cloud has {len(xyz)} points")
        mask = np.zeros(len(xyz), dtype=bool)
        mask[rows] = True
        center, size = point_set_box(xyz[rows])
        return center, size, mask if with_mask else None
    center, size = np.asarray(region.value[:3], np.float32), np.asarray(region.value[3:], np.float32)
    if not with_mask:
        return center, size, None
    mask = points_in_box(xyz, center, size)
    if not mask.any():
        raise RegionShapeError(f"no point of the cloud lies in box3d {list(region.value)}")
    center, size = point_set_box(xyz[mask])  # the set's own box: what a point_set's geometry is
    return center, size, mask


def log_skipped(name: str, skipped: list[tuple[str, str]], total: int, examples: int = 3) -> None:
    if skipped:
        shown = "; ".join(f"{sid}: {why}" for sid, why in skipped[:examples])
        log.warning("%s: skipped %d of %d records / samples while indexing, e.g. %s", name, len(skipped), total, shown)


# ---- the datasets ----------------------------------------------------------------------------------------------
class _InstructionDataset(Dataset):
    """Shared by the image and point datasets: samples, skipped, text, the item's text keys."""

    def __init__(self, samples: list[InstructionSample], skipped: list[tuple[str, str]], media_root: str | Path,
                 text_processor: Callable[[str], str], region_kind: str, name: str):
        self.samples, self.skipped = samples, list(skipped)
        self.root = Path(media_root)
        self.text_processor = text_processor
        self.with_mask = has_mask(region_kind)
        self.region_kind = region_kind
        log_skipped(name, self.skipped, len(samples) + len(self.skipped))

    def __len__(self) -> int:
        return len(self.samples)

    def _text(self, sample: InstructionSample) -> dict[str, Any]:
        return {"instruction": sample.instruction,
                "text_input": cleaned_caption(self.text_processor, sample.answer, sample.sample_id),
                "sample_id": sample.sample_id, "image_id": sample.sample_id}


class ImageInstructions(_InstructionDataset):
    """Items: image [3, S, S], region_geometry [K, 4], region_mask bool [K, S, S] (mask kinds), instruction,
    text_input, sample_id, image_id (= sample_id)."""

    def __init__(self, samples, skipped, media_root, image_processor: BoxImageProcessor,
                 text_processor: Callable[[str], str], region_kind: str = "box2d", name: str = "instructions"):
        if kind_input(region_kind) != "image":
            raise ValueError(f"ImageInstructions: region kind '{region_kind}' is not an image kind")
        super().__init__(samples, skipped, media_root, text_processor, region_kind, name)
        self.image_processor = image_processor

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        cfg = self.image_processor.cfg
        try:
            image = load_rgb_image(self.root / sample.media)
        except ImageReadError as e:
            raise BadSampleError(sample.sample_id, str(e)) from None
        boxes, masks = [], []
        for k, region in enumerate(sample.regions):
            try:
                box, mask = image_region(region, image.height, image.width, self.with_mask, cfg.box_tolerance,
                                         cfg.truncate_box_pixels)
            except ValueError as e:  # RegionShapeError, or check_box's box outside the image
                raise BadSampleError(sample.sample_id, f"region {k} ({region.source}): {e}") from None
            boxes.append(box)
            masks.append(mask)
        try:
            if self.with_mask:
                pixels, geometry, region_mask = self.image_processor(image, boxes, np.stack(masks))
            else:
                (pixels, geometry), region_mask = self.image_processor(image, boxes), None
        except RegionMaskError as e:
            raise BadSampleError(sample.sample_id, f"{sample.media}: {e}") from None
        item = {"image": pixels, "region_geometry": geometry, **self._text(sample)}
        if region_mask is not None:
            item["region_mask"] = region_mask
        return item


class PointInstructions(_InstructionDataset):
    """Items: points [num_points, 3 or 6], region_geometry [K, 24] (the corners of each region's box, moved with the
    points), region_mask bool [K, num_points] (mask kinds), instruction, text_input, sample_id, image_id."""

    def __init__(self, samples, skipped, media_root, processor: PointCloudProcessor,
                 text_processor: Callable[[str], str], region_kind: str = "box3d_corners",
                 name: str = "instructions"):
        self.box_corners = corner_layout(region_kind)  # ValueError for a kind without 3D corners
        super().__init__(samples, skipped, media_root, text_processor, region_kind, name)
        self.processor = processor

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        path = self.root / sample.media
        try:
            array = load_array(path)
        except (OSError, ValueError) as e:
            raise BadSampleError(sample.sample_id, str(e)) from None
        if array.ndim != 2 or array.shape[1] < 3:
            raise BadSampleError(sample.sample_id, f"{path}: expected an [N, >=3] array, got shape {array.shape}")
        centers, sizes, masks = [], [], []
        for k, region in enumerate(sample.regions):
            try:
                center, size, mask = point_region(region, array[:, :3], self.with_mask)
            except RegionShapeError as e:
                raise BadSampleError(sample.sample_id, f"region {k} ({region.source}): {e}") from None
            centers.append(center)
            sizes.append(size)
            masks.append(mask)
        corners = self.box_corners(np.stack(centers), np.stack(sizes))
        try:
            if self.with_mask:
                points, moved, region_mask = self.processor(array, corners, np.stack(masks))
            else:
                (points, moved), region_mask = self.processor(array, corners), None
        except PointCloudError as e:  # RegionMaskError included
            raise BadSampleError(sample.sample_id, f"{sample.media}: {e}") from None
        item = {"points": points, "region_geometry": moved.reshape(len(moved), -1), **self._text(sample)}
        if region_mask is not None:
            item["region_mask"] = region_mask
        return item


def instruction_dataset(samples: list[InstructionSample], skipped: list[tuple[str, str]], media_root: str | Path,
                        input_processor: BoxImageProcessor | PointCloudProcessor,
                        text_processor: Callable[[str], str], region_kind: str, name: str) -> Dataset:
    """The image or point dataset, as the region kind reads images or points."""
    cls = ImageInstructions if kind_input(region_kind) == "image" else PointInstructions
    return cls(samples, skipped, media_root, input_processor, text_processor, region_kind=region_kind, name=name)
