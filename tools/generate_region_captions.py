"""RegionGPT's region-caption data pipeline, with any model of this framework: a global caption of each image (or
point-cloud scene) from a holistic modality, then a caption of each of its regions from a region modality, prompted
with the global caption as context. The result is region-caption shards (the `region_shards` format) to train on.

    python tools/generate_region_captions.py --cfg-path configs/eval/regionblip_opt2.7b_refcoco.yaml \
        --ckpt output/train/regionblip_opt2.7b --coco-instances data/coco/annotations/instances_val2014.json \
        --media-root data/coco/images/val2014 --out data/generated/coco_val2014
    python tools/generate_region_captions.py --cfg-path CONFIG.yaml --ckpt CKPT --modality pointcloud_region \
        --instructions data/instructions/scanrefer_val.jsonl --media-root data/scannet/scannet_data \
        --out data/generated/scanrefer_val

Sources (paths in them are relative to --media-root):
  --coco-instances FILE  COCO instances JSON (images, annotations, categories; RefCOCO's refer-layout
                         instances.json is one): one input per image, one region per annotation (crowd annotations
                         are left out: they hold many objects), the category's name as the region's class name.
  --instructions FILE    instruction JSONL (README "Instruction data"; conversations are not needed): one input per
                         distinct image or point file, its regions those of all its records, each distinct region
                         once. tools/convert_to_instructions.py makes this from RefCOCO and ScanRefer.
Each region becomes what the region modality's kind needs (lavis/datasets/datasets/instructions.py): box2d a box or
a mask's bounding box, mask2d a mask or a box's rectangle, box3d_corners a box3d or the box of points_of, point_set
points_of or the points inside a box3d. A region that cannot be one (a box outside the image, an empty mask) is
reported and left out; so is an input that cannot be read.

Prompts (templates; fields {caption} = the global caption, {class_name}, {region} = the model's region_token):
  --prompt / --class-prompt                with the global caption (the class variant where the source has one)
  --plain-prompt / --plain-class-prompt    with --no-global-context (the ablation: no global caption is generated)
  --global-prompt                          the holistic modality's instruction (default: its own template)

Output (--out): `part-000000/`, `part-000001/`, ... each a complete shard folder written by write_region_shards
(one shard of at most --images-per-shard inputs) plus `inputs.json` (the inputs it covers), and `index.json` over
all parts, which the `region_shards` dataset reads. A part is written under `part-N.tmp/` and renamed when whole,
so a crash loses at most the part being written; re-running with the same settings (`run.json`) skips the inputs of
the finished parts and continues where the crash left off, with the same batches, hence the same captions.
Each tar sample's JSON holds, beside boxes / captions, per region the prompt, source region, class name and id, the
global caption and prompt, and the model (config, checkpoint path and SHA-256 digest, modalities).

Batches hold up to --batch-size regions of whole inputs; each input is encoded once and its tokens serve both
stages (`input_index` maps each region to its input), unless it has more regions than --batch-size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

import lavis  # noqa: F401  (registers the built-in models and datasets)
from lavis.common.captioner import eval_processor_config, load_captioner
from lavis.common.checkpoint import checkpoint_digest
from lavis.common.config import ResolvedConfig, load_config
from lavis.common.config_schema import ConfigError
from lavis.common.preflight import checkpoint_file
from lavis.common.registry import REGION_KINDS
from lavis.datasets.annotation_io import load_array
from lavis.datasets.datasets.instructions import (
    IMAGE_REGIONS,
    POINT_REGIONS,
    Region,
    image_region,
    kind_input,
    parse_region,
    point_region,
)
from lavis.datasets.datasets.region_shards import (
    INDEX_FORMAT,
    INDEX_NAME,
    PointRegionSample,
    RegionSample,
    read_index,
    write_region_shards,
)
from lavis.datasets.loaders import move_to
from lavis.processors.image_processors import BoxImageProcessor, ImageReadError, RegionMaskError, load_rgb_image
from lavis.processors.point_processors import PointCloudError, PointCloudProcessor
from lavis.processors.region_kinds import corner_layout
from lavis.runners.setup import autocast, autocast_dtype

SETTINGS_NAME = "run.json"
INPUTS_NAME = "inputs.json"
PART_PREFIX = "part-"
FIELDS = ("caption", "class_name", "region")
WHOLE = {"image": "image", "points": "scene"}  # what the prompts call the whole input
DEFAULT_PROMPTS = {
    "prompt": "In the context of the entire {whole}, {{caption}}, describe the close-up region {{region}} in detail.",
    "class_prompt": "In the context of the entire {whole}, {{caption}}, describe the {{class_name}} in the close-up "
                    "region {{region}} in detail.",
    "plain_prompt": "Describe the close-up region {{region}} in detail.",
    "plain_class_prompt": "Describe the {{class_name}} in the close-up region {{region}} in detail.",
}


# ---- what to caption -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegionJob:
    region: Region  # as the source gives it (instructions.py's Region: box, mask, polygon, box3d, points_of)
    class_name: Optional[str]
    region_id: Any  # the source's id of the region (a COCO annotation id; a JSONL region's position)


@dataclass
class InputJob:
    key: str  # the shard sample key: the media path without its suffix
    media: str  # relative to --media-root
    image_id: Any
    regions: list[RegionJob] = field(default_factory=list)


def coco_jobs(path: Path, with_mask: bool) -> tuple[list[InputJob], list[str]]:
    """One job per image of a COCO instances file that has a usable annotation; the problems of the others."""
    try:
        data = json.loads(path.read_text())
        images = {img["id"]: img for img in data["images"]}
        names = {c["id"]: c["name"] for c in data.get("categories", [])}
        annotations = data["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--coco-instances {path}: not a COCO instances JSON with images / annotations ({e!r})") \
            from None
    jobs: dict[Any, InputJob] = {}
    problems = []
    for ann in annotations:
        image = images.get(ann.get("image_id"))
        if image is None:
            problems.append(f"annotation {ann.get('id')}: image_id {ann.get('image_id')} is not in 'images'")
            continue
        if ann.get("iscrowd"):
            continue  # a crowd region covers many objects: not one region to describe
        try:
            region = coco_region(ann, with_mask)
        except ValueError as e:
            problems.append(f"annotation {ann.get('id')}: {e}")
            continue
        job = jobs.setdefault(image["id"], InputJob(media_key(image["file_name"]), image["file_name"], image["id"]))
        job.regions.append(RegionJob(region, names.get(ann.get("category_id")), ann.get("id")))
    return list(jobs.values()), problems


def coco_region(ann: dict, with_mask: bool) -> Region:
    """A mask kind's region is the annotation's segmentation where it has one, a box kind's its bbox (COCO's own
    box, not the rasterised polygon's); `parse_region` checks the shape."""
    segmentation = ann.get("segmentation") if with_mask else None
    if isinstance(segmentation, dict):
        return parse_region({"mask": segmentation}, IMAGE_REGIONS)
    if isinstance(segmentation, list) and segmentation:
        return parse_region({"polygon": segmentation}, IMAGE_REGIONS)
    return parse_region({"box": ann.get("bbox")}, IMAGE_REGIONS)


def jsonl_jobs(path: Path, media: str) -> tuple[list[InputJob], list[str]]:
    """One job per distinct `media` ("image" or "points") path of an instruction JSONL, with each distinct region
    of its records once."""
    jobs: dict[str, InputJob] = {}
    seen: dict[str, set[str]] = {}
    problems = []
    allowed = IMAGE_REGIONS if media == "image" else POINT_REGIONS
    with path.open(encoding="utf-8") as f:
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
                regions = [parse_region(entry, allowed) for entry in record.get("regions", [])]
                relative = record[media]
                if not isinstance(relative, str) or not relative:
                    raise ValueError(f"'{media}' must be a path")
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                problems.append(f"{path.name}:{number}: {e!r}")
                continue
            job = jobs.setdefault(relative, InputJob(media_key(relative), relative, media_key(relative)))
            known = seen.setdefault(relative, set())
            for region in regions:
                identity = json.dumps([region.source, region.value], sort_keys=True)
                if identity not in known:
                    known.add(identity)
                    job.regions.append(RegionJob(region, None, len(job.regions)))
    return [job for job in jobs.values() if job.regions], problems


def media_key(relative: str) -> str:
    return str(Path(relative).with_suffix(""))


def jsonl_media(path: Path) -> str:
    """"image" or "points": what the first record of an instruction JSONL names."""
    with path.open(encoding="utf-8") as f:
        for text in f:
            if text.strip():
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as e:
                    raise ValueError(f"--instructions {path}: the first line is not JSON ({e})") from None
                return "points" if isinstance(record, dict) and "points" in record else "image"
    raise ValueError(f"--instructions {path}: the file holds no records")


# ---- the plan: modalities and prompts, checked before any weight is read ---------------------------------------
@dataclass(frozen=True)
class Plan:
    modality: str  # the region modality
    global_modality: Optional[str]  # the holistic one (None: --no-global-context)
    input_key: str  # "image" or "points"
    region_kind: str
    share_tokens: bool  # both modalities read one encoder: encode once for both stages
    prompt: str
    class_prompt: str
    global_prompt: Optional[str]  # None: the global modality's own template
    region_token: str


def make_plan(cfg: ResolvedConfig, args: argparse.Namespace, media: str) -> Plan:
    modalities = cfg.model.modalities
    if args.modality not in modalities:
        raise ValueError(f"--modality {args.modality} is not one of the config's modalities {sorted(modalities)}")
    m = modalities[args.modality]
    if m.region is None:
        raise ValueError(f"--modality {args.modality} has no region (region: null); name a region modality of "
                         f"{sorted(n for n, e in modalities.items() if e.region)}")
    input_key = cfg.model.encoders[m.encoder].input_key
    if input_key != media or kind_input(m.region) != media:
        raise ValueError(f"--modality {args.modality} reads '{input_key}' ({m.region} regions), but the source holds "
                         f"{media}; choose a modality for {media}")
    global_modality = None if args.no_global_context else pick_global_modality(cfg, args, m.encoder, input_key)
    token = getattr(cfg.model, "region_token", "<region>")
    names = ("plain_prompt", "plain_class_prompt") if args.no_global_context else ("prompt", "class_prompt")
    prompts = [checked_prompt(args, name, token) for name in names]
    share = global_modality is not None and modalities[global_modality].encoder == m.encoder
    return Plan(args.modality, global_modality, input_key, m.region, share or global_modality is None, *prompts,
                args.global_prompt, token)


def pick_global_modality(cfg: ResolvedConfig, args: argparse.Namespace, encoder: str, input_key: str) -> str:
    """--global-modality, or the config's first modality without a region over the region modality's encoder."""
    modalities = cfg.model.modalities
    if args.global_modality is None:
        same = [n for n, e in modalities.items() if e.region is None and e.encoder == encoder]
        if not same:
            raise ValueError(f"no modality without a region reads encoder '{encoder}' to make the global caption; "
                             "name one with --global-modality, or pass --no-global-context")
        return same[0]
    g = modalities.get(args.global_modality)
    if g is None or g.region is not None or cfg.model.encoders[g.encoder].input_key != input_key:
        holistic = sorted(n for n, e in modalities.items() if e.region is None)
        raise ValueError(f"--global-modality {args.global_modality} must be a modality without a region that reads "
                         f"'{input_key}' (the config's holistic modalities: {holistic})")
    return args.global_modality


def checked_prompt(args: argparse.Namespace, name: str, token: str) -> str:
    """The template of option --{name}, with its fields checked: {region} (or the token itself) once, {caption} in
    the context prompts and only there, {class_name} in the class prompts and only there."""
    text = getattr(args, name)
    flag = "--" + name.replace("_", "-")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as e:
        raise ValueError(f"{flag} {text!r}: {e} (write a literal brace as {{{{ or }}}})") from None
    unknown = fields - set(FIELDS)
    if unknown:
        raise ValueError(f"{flag} {text!r}: unknown field(s) {sorted(unknown)}; the fields are {list(FIELDS)}")
    for needed, wanted, why in (("caption", not name.startswith("plain"), "the global caption"),
                                ("class_name", "class" in name, "the class name")):
        if wanted and needed not in fields:
            hint = "; without it, pass --no-global-context" if needed == "caption" else ""
            raise ValueError(f"{flag} {text!r} has no {{{needed}}} field for {why}{hint}")
        if not wanted and needed in fields:
            raise ValueError(f"{flag} {text!r}: {{{needed}}} does not belong in this prompt")
    filled = text.format(caption="", class_name="", region=token)
    if filled.count(token) != 1:
        raise ValueError(f"{flag} {text!r} holds {filled.count(token)} region placeholders ({{region}} or "
                         f"'{token}'); it needs exactly one")
    return text


def region_prompt(plan: Plan, global_caption: Optional[str], class_name: Optional[str]) -> str:
    """A region's instruction: the class variant where the source names the class."""
    caption = "" if global_caption is None else clean_context(global_caption, plan.region_token)
    template = plan.class_prompt if class_name else plan.prompt
    return template.format(caption=caption, class_name=class_name or "", region=plan.region_token)


def clean_context(caption: str, token: str) -> str:
    """The global caption as a clause: no placeholder of its own (it would take a region), no final full stop."""
    return caption.replace(token, " ").strip().rstrip(".").strip()


# ---- inputs, processed as the instruction datasets process them -------------------------------------------------
@dataclass
class PreparedInput:
    job: InputJob
    tensor: torch.Tensor  # the processed image [3, S, S] or points [P, C]
    geometry: torch.Tensor  # [K, D] of the kept regions
    mask: Optional[torch.Tensor]  # [K, S, S] / [K, P] for mask kinds
    regions: list[RegionJob]  # the kept ones
    stored: list  # per kept region: its [x, y, w, h] pixel box, or its [8, 3] corners in the file's frame
    payload: Any  # the image's encoded bytes, or the cloud [N, 3 | 6] float32
    global_caption: Optional[str] = None
    prompts: dict[int, str] = field(default_factory=dict)
    captions: dict[int, str] = field(default_factory=dict)


class InputReader:
    """Reads an input and converts its regions to the region kind; `problems` collects what was left out."""

    def __init__(self, plan: Plan, cfg: ResolvedConfig, media_root: Path):
        self.plan, self.root = plan, media_root
        self.with_mask = REGION_KINDS.get(plan.region_kind).has_mask
        attribute = "eval_image" if plan.input_key == "image" else "eval_processor"
        processor_cfg = eval_processor_config(cfg, plan.modality, attribute)
        self.processor = (BoxImageProcessor(processor_cfg) if plan.input_key == "image"
                          else PointCloudProcessor(processor_cfg))
        self.problems: list[str] = []

    def __call__(self, job: InputJob) -> Optional[PreparedInput]:
        read = self.image if self.plan.input_key == "image" else self.points
        return read(job)

    def _drop(self, job: InputJob, k: int, reason: str) -> None:
        self.problems.append(f"{job.key} region {job.regions[k].region_id}: {reason}")

    def image(self, job: InputJob) -> Optional[PreparedInput]:
        path = self.root / job.media
        try:
            data = path.read_bytes()
            image = load_rgb_image(data)
        except (OSError, ImageReadError) as e:
            self.problems.append(f"{path}: {e}")
            return None
        cfg = self.processor.cfg
        shapes = {}  # region index -> (x1y1x2y2 box, mask or None)
        for k, r in enumerate(job.regions):
            try:
                shapes[k] = image_region(r.region, image.height, image.width, self.with_mask, cfg.box_tolerance,
                                         cfg.truncate_box_pixels)
            except ValueError as e:
                self._drop(job, k, str(e))
        if not shapes:
            return None
        try:
            pixels, geometry, mask = self._process_image(image, shapes)
        except RegionMaskError:  # a mask smaller than one resized pixel vanished: leave it out alone, not the image
            for k in list(shapes):
                try:
                    self.processor(image, [shapes[k][0]], shapes[k][1][None])
                except RegionMaskError as e:
                    self._drop(job, k, str(e))
                    del shapes[k]
            if not shapes:
                return None
            pixels, geometry, mask = self._process_image(image, shapes)
        boxes = [shapes[k][0] for k in shapes]
        # x, y, w, h to a thousandth of a pixel: x2 - x1 would otherwise carry the float noise of the difference
        stored = [[round(v, 3) for v in (x1, y1, x2 - x1, y2 - y1)] for x1, y1, x2, y2 in boxes]
        return PreparedInput(job, pixels, geometry, mask, [job.regions[k] for k in shapes], stored, data)

    def _process_image(self, image, shapes: dict) -> tuple:
        """(pixels, geometry [K, 4], masks [K, S, S] or None) of the regions in `shapes`."""
        boxes = [box for box, _ in shapes.values()]
        if not self.with_mask:
            return (*self.processor(image, boxes), None)
        return self.processor(image, boxes, np.stack([mask for _, mask in shapes.values()]))

    def points(self, job: InputJob) -> Optional[PreparedInput]:
        path = self.root / job.media
        try:
            array = load_array(path)
        except (OSError, ValueError) as e:
            self.problems.append(f"{path}: {e}")
            return None
        if array.ndim != 2 or array.shape[1] < 3 or not len(array):
            self.problems.append(f"{path}: expected an [N, >=3] array, got shape {array.shape}")
            return None
        layout = corner_layout(self.plan.region_kind)
        shapes = {}  # region index -> (corners [8, 3] in the file's frame, point mask or None)
        for k, r in enumerate(job.regions):
            try:
                center, size, mask = point_region(r.region, array[:, :3], self.with_mask)
            except ValueError as e:
                self._drop(job, k, str(e))
                continue
            shapes[k] = (layout(torch.as_tensor(center), torch.as_tensor(size)), mask)
        if not shapes:
            return None
        corners = torch.stack([shapes[k][0] for k in shapes])
        try:
            if self.with_mask:
                points, moved, mask = self.processor(array, corners, np.stack([shapes[k][1] for k in shapes]))
            else:
                (points, moved), mask = self.processor(array, corners), None
        except PointCloudError as e:  # the cloud, or a point set the sampling emptied
            self.problems.append(f"{path}: {e}")
            return None
        cloud = np.asarray(array, dtype=np.float32)
        cloud = cloud[:, :6] if cloud.shape[1] >= 6 else cloud[:, :3]  # xyz (rgb): what the shards store
        return PreparedInput(job, points, moved.reshape(len(moved), -1), mask, [job.regions[k] for k in shapes],
                             corners.tolist(), cloud)


# ---- captioning ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Piece:
    """Regions [start, stop) of one input, captioned in one batch."""

    item: PreparedInput
    start: int
    stop: int


def batches(items: Iterator[PreparedInput], batch_size: int) -> Iterator[list[Piece]]:
    """Whole inputs, packed in order until the next one would pass `batch_size` regions; an input with more regions
    than that is cut into batches of its own."""
    pending: list[Piece] = []
    size = 0
    for item in items:
        count = len(item.regions)
        for start in range(0, count, batch_size):
            piece = Piece(item, start, min(count, start + batch_size))
            if pending and size + piece.stop - piece.start > batch_size:
                yield pending
                pending, size = [], 0
            pending.append(piece)
            size += piece.stop - piece.start
    if pending:
        yield pending


class RegionCaptioner:
    """Runs the two stages on batches of pieces: global captions of the inputs that lack one, then the regions."""

    def __init__(self, model: torch.nn.Module, cfg: ResolvedConfig, plan: Plan, device: torch.device):
        self.model, self.cfg, self.plan, self.device = model, cfg, plan, device
        self.amp = autocast_dtype(device, cfg.run.amp.value)
        encoders = getattr(model, "encoders", None)
        encoder = cfg.model.modalities[plan.modality].encoder
        # RegionBLIP takes the frozen encoder's tokens as `encoder_tokens`: computed once, they serve both stages
        self.encoder = encoders[encoder] if encoders is not None and plan.share_tokens else None

    @torch.no_grad()
    def __call__(self, pieces: list[Piece]) -> None:
        inputs = list({id(p.item): p.item for p in pieces}.values())
        position = {id(item): i for i, item in enumerate(inputs)}
        common = {self.plan.input_key: torch.stack([item.tensor for item in inputs]).to(self.device)}
        with autocast(self.amp):
            if self.encoder is not None:
                common["encoder_tokens"] = self.encoder(common[self.plan.input_key])
            self._global_captions(inputs, common)
            rows = [(p.item, k) for p in pieces for k in range(p.start, p.stop)]
            prompts = [region_prompt(self.plan, item.global_caption, item.regions[k].class_name) for item, k in rows]
            batch = {"modality": self.plan.modality, **common,
                     "input_index": torch.tensor([position[id(item)] for item, _ in rows], device=self.device),
                     "region_geometry": torch.cat([p.item.geometry[p.start:p.stop] for p in pieces])}
            if pieces[0].item.mask is not None:
                batch["region_mask"] = torch.cat([p.item.mask[p.start:p.stop] for p in pieces])
            texts = self.model.generate(move_to(batch, self.device), prompts)
        for (item, k), prompt, text in zip(rows, prompts, texts):
            item.prompts[k], item.captions[k] = prompt, text.strip()

    def _global_captions(self, inputs: list[PreparedInput], common: dict[str, torch.Tensor]) -> None:
        if self.plan.global_modality is None:
            return
        need = [i for i, item in enumerate(inputs) if item.global_caption is None]
        if not need:
            return
        index = torch.tensor(need, device=self.device)
        batch = {"modality": self.plan.global_modality, **{k: v[index] for k, v in common.items()}}
        prompts = None if self.plan.global_prompt is None else [self.plan.global_prompt] * len(need)
        for i, text in zip(need, self.model.generate(batch, prompts)):
            inputs[i].global_caption = text.strip()


# ---- shards with their provenance ------------------------------------------------------------------------------
@dataclass
class GeneratedImageRegions(RegionSample):
    provenance: dict = field(default_factory=dict)  # stored beside boxes / captions in the sample's JSON

    def encoded(self) -> tuple[bytes, dict[str, Any]]:
        data, meta = super().encoded()
        return data, {**self.provenance, **meta}


@dataclass
class GeneratedPointRegions(PointRegionSample):
    provenance: dict = field(default_factory=dict)

    def encoded(self) -> tuple[bytes, dict[str, Any]]:
        data, meta = super().encoded()
        return data, {**self.provenance, **meta}


def shard_sample(item: PreparedInput, plan: Plan, model_record: dict) -> RegionSample | PointRegionSample:
    kept = range(len(item.regions))
    provenance = {
        "prompts": [item.prompts[k] for k in kept],
        "global_caption": item.global_caption,
        "global_prompt": model_record["global_prompt"],
        "class_names": [r.class_name for r in item.regions],
        "source_regions": [{r.region.source: r.region.value} for r in item.regions],
        "source_region_ids": [r.region_id for r in item.regions],
        "model": model_record["model"],
    }
    captions = [item.captions[k] for k in kept]
    job = item.job
    if plan.input_key == "image":
        return GeneratedImageRegions(job.key, item.payload, item.stored, captions, job.image_id, provenance)
    region_ids = [f"{job.key}|{r.region_id}" for r in item.regions]
    return GeneratedPointRegions(job.key, item.payload, item.stored, captions, job.image_id, region_ids, provenance)


def shard_region_kind(kind: str) -> Optional[str]:
    """The corner layout the point shards record: a mask kind's corners are those of the box kind with its layout
    (the shards keep corners, not point sets)."""
    spec = REGION_KINDS.get(kind)
    if spec.box_corners is None:
        return None
    if not spec.has_mask:
        return kind
    return next(name for name in REGION_KINDS.names()
                if REGION_KINDS.get(name).box_corners is spec.box_corners and not REGION_KINDS.get(name).has_mask)


class ShardFolder:
    """--out: finished parts, their combined index, and the settings they were made with."""

    def __init__(self, root: Path):
        self.root = root
        if root.exists() and not root.is_dir():
            raise ValueError(f"--out {root} is a file; name a folder")
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(f"{PART_PREFIX}*.tmp"):  # a part a crash interrupted: made again
            shutil.rmtree(leftover)

    def check_settings(self, settings: dict) -> None:
        """Write the settings, or refuse to continue a folder made with others (its captions would mix)."""
        path = self.root / SETTINGS_NAME
        if not self.parts():  # nothing made yet (a run that stopped before its first part): any settings go
            path.write_text(json.dumps(settings, indent=1))
            return
        if not path.is_file():
            raise ValueError(f"--out {self.root} holds parts but no {SETTINGS_NAME}; use an empty folder")
        before = json.loads(path.read_text())
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed:
            shown = "; ".join(f"{k}: {before.get(k)!r} then, {settings.get(k)!r} now" for k in changed)
            raise ValueError(f"--out {self.root} was made with other settings ({shown}); continue it with the same "
                             "arguments, or write to another --out")

    def parts(self) -> list[Path]:
        return sorted(p for p in self.root.glob(f"{PART_PREFIX}[0-9]*") if p.is_dir() and not p.suffix)

    def done_keys(self) -> set[str]:
        return {key for part in self.parts() for key in json.loads((part / INPUTS_NAME).read_text())["keys"]}

    def write_part(self, samples: list, keys: list[str], region_kind: Optional[str]) -> None:
        """One part, made whole under a temporary name, then renamed: a part exists entirely or not at all."""
        final = self.root / f"{PART_PREFIX}{len(self.parts()):06d}"
        tmp = final.with_name(final.name + ".tmp")
        write_region_shards(samples, tmp, max_per_shard=max(1, len(samples)), progress=False,
                            region_kind=region_kind)
        (tmp / INPUTS_NAME).write_text(json.dumps({"keys": keys}))
        os.replace(tmp, final)
        self.write_index()

    def write_index(self) -> Path:
        """index.json over every finished part's shards (paths relative to --out), as write_region_shards lays it."""
        shards, payloads, kinds = [], set(), set()
        for part in self.parts():
            index = read_index(part / INDEX_NAME)
            for shard in index["shards"]:
                shards.append({**shard, "file": f"{part.name}/{shard['file']}",
                               "offsets": f"{part.name}/{shard['offsets']}"})
                payloads.add(index["payload"])
                kinds.add(index.get("region_kind"))
        combined = {"format": INDEX_FORMAT, "payload": payloads.pop() if payloads else RegionSample.PAYLOAD,
                    "shards": shards, "samples": sum(s["samples"] for s in shards),
                    "regions": sum(s["regions"] for s in shards)}
        kind = kinds.pop() if kinds else None
        if kind is not None:
            combined["region_kind"] = kind
        path = self.root / INDEX_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(combined, indent=1))
        tmp.replace(path)
        return path


# ---- the run ---------------------------------------------------------------------------------------------------
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg-path", required=True, help="a run YAML (model section; its datasets give processors)")
    parser.add_argument("--ckpt", default=None, help="checkpoint file or training run directory (default: the "
                        "model's pretrained and initial weights)")
    parser.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--coco-instances", type=Path, help="a COCO instances JSON")
    source.add_argument("--instructions", type=Path, help="an instruction JSONL")
    parser.add_argument("--media-root", type=Path, required=True, help="the folder the source's paths start from")
    parser.add_argument("--out", type=Path, required=True, help="output folder (continued when it exists)")
    parser.add_argument("--modality", default=None, help="the region modality (default: image_region, or "
                        "pointcloud_region for point clouds)")
    parser.add_argument("--global-modality", default=None, help="the holistic modality of the global caption "
                        "(default: the first without a region over the same encoder)")
    parser.add_argument("--no-global-context", action="store_true", help="no global caption; the plain prompts")
    parser.add_argument("--global-prompt", default=None, help="instruction of the global caption")
    for name in DEFAULT_PROMPTS:
        parser.add_argument("--" + name.replace("_", "-"), default=None, help="a region template (see above)")
    parser.add_argument("--batch-size", type=int, default=16, help="regions per batch")
    parser.add_argument("--images-per-shard", type=int, default=200, help="inputs per part (and shard)")
    parser.add_argument("--limit", type=int, default=None, help="caption only the source's first N inputs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    for flag in ("batch_size", "images_per_shard", "limit"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, not {value}")
    return args


def source_media(args: argparse.Namespace) -> tuple[str, Path, str]:
    """(the source's flag, its path, "image" | "points"), after checking the files exist."""
    flag, path = ("--coco-instances", args.coco_instances) if args.coco_instances else ("--instructions",
                                                                                        args.instructions)
    if not path.is_file():
        raise ValueError(f"{flag} {path} does not exist")
    if not args.media_root.is_dir():
        raise ValueError(f"--media-root {args.media_root} is not a folder; it should hold the files {flag} names")
    return flag, path, "image" if args.coco_instances else jsonl_media(path)


def read_jobs(args: argparse.Namespace, plan: Plan) -> tuple[list[InputJob], list[str]]:
    """The inputs to caption (--limit of them) and the problems met while indexing the source."""
    flag, path, media = source_media(args)
    with_mask = REGION_KINDS.get(plan.region_kind).has_mask
    jobs, problems = coco_jobs(path, with_mask) if args.coco_instances else jsonl_jobs(path, media)
    if not jobs:
        raise ValueError(f"{flag} {path}: no input with a usable region ({len(problems)} problems, e.g. "
                         f"{problems[:2]})")
    return jobs[: args.limit], problems


def settings_of(args: argparse.Namespace, cfg: ResolvedConfig, plan: Plan, model_record: dict) -> dict:
    """What decides the captions: a folder is only continued with the same (the resolved config, its model and
    processors included, by digest)."""
    source = args.coco_instances or args.instructions
    resolved = json.dumps(OmegaConf.to_container(cfg.yaml, resolve=True), sort_keys=True, default=str)
    return {"source": str(source.resolve()), "media_root": str(args.media_root.resolve()),
            "model": model_record["model"], "config_digest": hashlib.sha256(resolved.encode()).hexdigest(),
            "global_prompt": model_record["global_prompt"], "prompt": plan.prompt, "class_prompt": plan.class_prompt,
            "batch_size": args.batch_size, "images_per_shard": args.images_per_shard}


def model_record_of(args: argparse.Namespace, cfg: ResolvedConfig, plan: Plan) -> dict:
    ckpt = checkpoint_file(args.ckpt, "--ckpt", "the command line") if args.ckpt else None
    global_prompt = plan.global_prompt
    if global_prompt is None and plan.global_modality is not None:
        global_prompt = model_template(cfg, plan.global_modality)
    return {"model": {"config": str(Path(args.cfg_path).resolve()), "arch": cfg.model_arch,
                      "checkpoint": str(ckpt.resolve()) if ckpt else None,
                      "checkpoint_digest": checkpoint_digest(ckpt) if ckpt else None,
                      "modality": plan.modality, "global_modality": plan.global_modality},
            "global_prompt": global_prompt}


def model_template(cfg: ResolvedConfig, modality: str) -> Optional[str]:
    """A RegionBLIP modality's own instruction (for the record); None for a model without templates."""
    from lavis.models.regionblip.config import instruction_template

    return instruction_template(cfg.model, modality) if cfg.model_arch == "regionblip" else None


def run(args: argparse.Namespace) -> Path:
    cfg = load_config(args.cfg_path, args.options)
    _, _, media = source_media(args)
    for name, template in DEFAULT_PROMPTS.items():
        if getattr(args, name) is None:
            setattr(args, name, template.format(whole=WHOLE[media]))
    if args.modality is None:
        args.modality = "image_region" if media == "image" else "pointcloud_region"
    plan = make_plan(cfg, args, media)
    jobs, problems = read_jobs(args, plan)
    model_record = model_record_of(args, cfg, plan)
    folder = ShardFolder(args.out)
    folder.check_settings(settings_of(args, cfg, plan, model_record))
    done = folder.done_keys()
    todo = [job for job in jobs if job.key not in done]
    print(f"{len(jobs)} inputs with regions; {len(jobs) - len(todo)} already captioned in {args.out}")
    if todo:
        caption_all(args, cfg, plan, model_record, folder, todo, problems)
    index = folder.write_index()
    written = json.loads(index.read_text())
    print(f"{index}: {written['samples']} {media} inputs with {written['regions']} region captions; "
          f"{len(problems)} problems")
    for line in problems[:20]:
        print(f"  {line}")
    return index


def caption_all(args: argparse.Namespace, cfg: ResolvedConfig, plan: Plan, model_record: dict, folder: ShardFolder,
                todo: list[InputJob], problems: list[str]) -> None:
    device = torch.device(args.device)
    reader = InputReader(plan, cfg, args.media_root)
    model = load_captioner(cfg, args.ckpt, "--ckpt", "the command line").model.to(device)
    captioner = RegionCaptioner(model, cfg, plan, device)
    region_kind = shard_region_kind(plan.region_kind) if plan.input_key == "points" else None
    total = sum(len(job.regions) for job in todo)
    with tqdm(total=total, unit="region", desc="captioning regions") as progress:
        for start in range(0, len(todo), args.images_per_shard):
            part = todo[start:start + args.images_per_shard]
            items: list[PreparedInput] = []
            for pieces in batches(keep(map(reader, part), items), args.batch_size):
                captioner(pieces)
                progress.update(sum(p.stop - p.start for p in pieces))
            progress.update(sum(len(job.regions) for job in part) - sum(len(i.regions) for i in items))
            samples = [shard_sample(item, plan, model_record) for item in items]
            folder.write_part(samples, [job.key for job in part], region_kind)
    problems.extend(reader.problems)


def keep(items: Iterator[Optional[PreparedInput]], kept: list[PreparedInput]) -> Iterator[PreparedInput]:
    """The readable inputs, each also appended to `kept` (the part's samples, in order)."""
    for item in items:
        if item is not None:
            kept.append(item)
            yield item


def main(argv: Optional[list[str]] = None) -> Path:
    args = parse_args(argv)
    try:
        return run(args)
    except (ValueError, ConfigError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
