"""A model loaded once for captioning single inputs: tools/caption.py (one caption, then exit) and tools/web_demo.py
(many captions, one model) share this, so both check the checkpoint and build the model exactly as evaluate.py does.
Below it, how one user-given input (an image and its regions, a cloud and its 3D regions, optionally an instruction
with a placeholder per region) becomes the item a dataset of its modality would yield (`input_item`), used by both
tools and by tools/eval_dense_captions.py."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lavis.common.checkpoint_compat import Purpose
from lavis.common.config import ResolvedConfig
from lavis.common.config_schema import ConfigError
from lavis.common.preflight import load_for_inference
from lavis.common.registry import MODELS, REGION_KINDS
from lavis.datasets.annotation_io import load_array
from lavis.datasets.datasets.instructions import POINT_REGIONS, kind_input, parse_region, point_region
from lavis.datasets.datasets.refcoco import box_pixel_bounds
from lavis.datasets.datasets.scanrefer import read_ply_vertices
from lavis.datasets.loaders import Collator
from lavis.datasets.region_masks import box_mask, check_mask_size, decode_segmentation, mask_box
from lavis.processors.image_processors import (
    BoxImageProcessor,
    RegionMaskError,
    check_box,
    load_rgb_image,
    truncated_box_pixels,
)
from lavis.processors.point_processors import (
    PointCloudError,
    PointCloudProcessor,
    corners_to_geometry,
)
from lavis.processors.region_kinds import corner_layout


@dataclass
class Captioner:
    cfg: ResolvedConfig
    model: torch.nn.Module

    def caption(self, modality: str, item: dict[str, Any], **generation: Any) -> str:
        """The caption of one processed item (the keys a dataset of `modality` yields, `instruction` included when
        the user gave one); `generation` overrides fields of `model.generation` (num_beams, max_new_tokens, ...)."""
        batch = Collator(modality, text_tokenizer=None)([{"sample_id": "input", **item}])
        return self.model.generate(batch, **generation)[0]


def load_captioner(cfg: ResolvedConfig, ckpt: Optional[str], key: str, source: str) -> Captioner:
    """The model of `cfg` with the trainable tensors of `ckpt` (a checkpoint or a run folder; None: the initial
    weights). `key` and `source` name where `ckpt` was given, for the messages of a refused checkpoint."""
    # the checkpoint's config against this one, and the frozen weights: before the model is built
    state = load_for_inference(cfg, ckpt, key, source, Purpose.caption)
    torch.manual_seed(cfg.run.seed)  # the initial weights evaluate.py would build
    model = MODELS.get(cfg.model_arch).from_config(cfg.model)
    if state is not None:
        model.load_trainable_state_dict(state["model"])
    return Captioner(cfg, model.eval())


# ---- one input, processed as a dataset of its modality would -------------------------------------------------
# `request` is anything with the attributes modality, image and points, and either `regions` (a list of (flag,
# value) in placeholder order, flag one of REGION_FLAGS: tools/caption.py) or `box` / `box3d` (one region each: the
# web demo's fields); optionally `instruction`. The messages name the command-line flags, which the demo's mirror.
POINT_SUFFIXES = (".npy", ".npz", ".ply")
IMAGE_FLAGS = ("box", "mask")
POINT_FLAGS = ("box3d", "points_of")
REGION_FLAGS = IMAGE_FLAGS + POINT_FLAGS


def flag_name(flag: str) -> str:
    return "--" + flag.replace("_", "-")


def requested_regions(request: Any) -> list[tuple[str, Any]]:
    """The request's regions as (flag, value), in placeholder order."""
    regions = getattr(request, "regions", None)
    if regions is not None:
        return list(regions)
    pairs = [("box", getattr(request, "box", None)), ("box3d", getattr(request, "box3d", None))]
    return [(flag, value) for flag, value in pairs if value is not None]


def input_item(cfg: ResolvedConfig, args: Any) -> dict[str, Any]:
    """The processed item of --image / --points with its regions (and --instruction) for --modality, checked
    against the config: every problem is a ValueError naming the flag, raised before any weight is read."""
    modalities = cfg.model.modalities
    if args.modality not in modalities:
        raise ValueError(f"--modality {args.modality} is not one of the config's modalities {sorted(modalities)}")
    m = modalities[args.modality]
    input_key = cfg.model.encoders[m.encoder].input_key
    wanted = "image" if args.image is not None else "points"
    if input_key != wanted:
        raise ValueError(f"modality '{args.modality}' reads '{input_key}', but the input is an {wanted} file")
    regions = requested_regions(args)
    instruction = getattr(args, "instruction", None)
    check_region_count(cfg, args.modality, len(regions), instruction)
    build_item = image_item if args.image is not None else point_item
    item = build_item(cfg, args, m.region, regions)
    if instruction is not None:
        item["instruction"] = instruction
    return item


def check_region_count(cfg: ResolvedConfig, modality: str, count: int, instruction: Optional[str]) -> None:
    """One region per placeholder of --instruction; without one, the modality's template takes one region."""
    token = getattr(cfg.model, "region_token", "<region>")
    flags = "/".join(flag_name(f) for f in REGION_FLAGS)
    has_region = cfg.model.modalities[modality].region is not None
    if instruction is None:
        if count > 1:
            raise ValueError(f"{count} regions ({flags}) need --instruction with {count} '{token}' placeholders, "
                             "one per region in the order given")
        return
    found = instruction.count(token)
    if not has_region:
        if found:
            raise ValueError(f"--instruction holds {found} '{token}' placeholder(s), but modality '{modality}' has "
                             "no region; choose a --modality with a region")
        return
    if found != count:
        raise ValueError(f"--instruction has {found} '{token}' placeholder(s) but {count} region(s) were given "
                         f"({flags}); give one region per placeholder, in placeholder order")


def numbers(values: list[float]) -> str:
    return " ".join(f"{v:g}" for v in values)


def region_label(flag: str, value: Any, k: int, total: int) -> str:
    """How a message names a region: its flag and value, and its position when there are several."""
    shown = numbers(value) if flag in ("box", "box3d") else str(value)
    return f"{flag_name(flag)} {shown}" + (f" (region {k + 1} of {total})" if total > 1 else "")


def check_box3d_overlaps(corners: torch.Tensor, xyz: np.ndarray, label: str) -> None:
    """Refuse a 3D box that spans no volume or lies outside the cloud's bounds (the --box rule for images, with the
    cloud's bounding box as the image): its geometry would describe nothing the points show."""
    box_low, box_high = corners.amin(0).numpy(), corners.amax(0).numpy()
    if (box_high <= box_low).any():
        raise ValueError(f"{label}: the box spans no volume; give 8 distinct corners")
    low, high = xyz.min(0), xyz.max(0)
    if (box_high < low).any() or (box_low > high).any():
        span = ", ".join(f"{axis} [{a:g}, {b:g}]" for axis, a, b in zip("xyz", low, high))
        raise ValueError(f"{label}: the box lies outside the point cloud ({span}); give it in the cloud's own frame")


def eval_processor_config(cfg: ResolvedConfig, modality: str, attribute: str) -> Any:
    """The `eval_image` / `eval_processor` of a dataset of this modality, else of any dataset that has one."""
    datasets = sorted(cfg.datasets.values(), key=lambda ds: ds.modality != modality)
    for ds in datasets:
        if hasattr(ds, attribute):
            return getattr(ds, attribute)
    raise ConfigError(f"no dataset in the config has an {attribute} to process a '{modality}' input with; add a "
                      "dataset of that modality")


def wrong_input_flags(regions: list[tuple[str, Any]], allowed: tuple[str, ...], input_flag: str) -> None:
    other = sorted({flag_name(flag) for flag, _ in regions if flag not in allowed})
    if other:
        raise ValueError(f"{', '.join(other)} do not go with {input_flag}; it takes "
                         f"{' / '.join(flag_name(f) for f in allowed)}")


# ---- images --------------------------------------------------------------------------------------------------
def load_region_mask(path: str | Path, height: int, width: int) -> np.ndarray:
    """bool [height, width] from a mask image (PNG: nonzero pixels are the region) or a JSON file holding a COCO
    RLE {"size", "counts"}, polygons [[x1, y1, ...], ...], or an annotation with one of them as "segmentation"."""
    path = Path(path)
    if not path.is_file():
        raise ValueError("no such file")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"not a JSON file ({e})") from None
        if isinstance(data, dict) and "segmentation" in data:
            data = data["segmentation"]
        return decode_segmentation(data, height, width)  # RegionShapeError (a ValueError) saying what is wrong
    try:
        with Image.open(path) as image:
            # palette and grey images: a nonzero index or level is the region; colour images: any nonzero channel
            pixels = np.asarray(image if image.mode in ("1", "L", "P", "I", "I;16") else image.convert("L"))
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"not a readable mask image or COCO RLE .json ({e})") from None
    return check_mask_size(pixels, height, width) > 0


def image_region(flag: str, value: Any, image: Image.Image, processor: BoxImageProcessor,
                 with_mask: bool) -> tuple[list[float], Optional[np.ndarray]]:
    """(x1y1x2y2 pixel box, mask or None) of one --box / --mask as the region kind needs it: a kind with a mask
    takes a box's rectangle, a kind without one a mask's bounding box."""
    if flag == "box":
        box = check_box(value, image.width, image.height, processor.cfg.box_tolerance)
        if processor.cfg.truncate_box_pixels:  # as the evaluation datasets read their boxes
            box = truncated_box_pixels(box, image.width, image.height)
        return box, box_mask(box, image.height, image.width) if with_mask else None
    mask = load_region_mask(value, image.height, image.width)
    box = mask_box(mask)
    if box is None:
        raise ValueError("the mask covers no pixel")
    return box, mask if with_mask else None


def image_item(cfg: ResolvedConfig, args: Any, region: Optional[str], regions: list[tuple[str, Any]]
               ) -> dict[str, Any]:
    processor = BoxImageProcessor(eval_processor_config(cfg, args.modality, "eval_image"))
    wrong_input_flags(regions, IMAGE_FLAGS, "--image")
    if region is not None and kind_input(region) != "image":
        raise ValueError(f"modality '{args.modality}' expects a '{region}' region, which an image cannot give")
    image = load_rgb_image(args.image)
    if not regions:
        if region is not None:
            raise ValueError(f"modality '{args.modality}' captions a region: give --box x1 y1 x2 y2 (pixels) or "
                             "--mask PATH")
        return {"image": processor(image)[0]}
    if region is None:  # a holistic modality: caption the crop, as the BLIP-2 baseline does
        return {"image": processor(image.crop(box_pixel_bounds(crop_box(regions, image, processor))))[0]}
    with_mask = REGION_KINDS.get(region).has_mask
    boxes, masks = [], []
    for k, (flag, value) in enumerate(regions):
        try:
            box, mask = image_region(flag, value, image, processor, with_mask)
        except ValueError as e:
            hint = (f"; give x1 y1 x2 y2 in pixels, 0 <= x1 < x2 <= {image.width}, 0 <= y1 < y2 <= {image.height}"
                    if flag == "box" else "")
            raise ValueError(f"{region_label(flag, value, k, len(regions))}: {e}{hint}") from None
        boxes.append(box)
        masks.append(mask)
    if not with_mask:
        pixels, geometry = processor(image, boxes)
        return {"image": pixels, "region_geometry": geometry}
    try:
        pixels, geometry, region_mask = processor(image, boxes, np.stack(masks))
    except RegionMaskError as e:
        raise ValueError(f"{', '.join(flag_name(f) for f, _ in regions)}: {e}") from None
    return {"image": pixels, "region_geometry": geometry, "region_mask": region_mask}


def crop_box(regions: list[tuple[str, Any]], image: Image.Image, processor: BoxImageProcessor) -> list[float]:
    """The one --box a holistic modality crops its input to."""
    if len(regions) != 1 or regions[0][0] != "box":
        raise ValueError("a modality without a region takes at most one --box (the crop it captions)")
    try:
        box, _ = image_region("box", regions[0][1], image, processor, with_mask=False)
    except ValueError as e:
        raise ValueError(f"{region_label('box', regions[0][1], 0, 1)}: {e}; give x1 y1 x2 y2 in pixels, "
                         f"0 <= x1 < x2 <= {image.width}, 0 <= y1 < y2 <= {image.height}") from None
    return box


# ---- point clouds ----------------------------------------------------------------------------------------------
def point_indices(value: str) -> list[int]:
    """--points-of: a comma list of row indices ("3,4,17"), an .npy array of them, or a text file of them
    (separated by commas or whitespace)."""
    text = value.strip()
    if text and all(part.strip().isdigit() for part in text.split(",")):
        return [int(part) for part in text.split(",")]
    path = Path(value)
    if not path.is_file():
        raise ValueError("neither a comma list of point indices (e.g. 3,4,17) nor an existing file")
    if path.suffix == ".npy":
        rows = load_array(path)
        if rows.dtype.kind not in "iu":
            raise ValueError(f"holds {rows.dtype} values; save the point indices as integers")
        return [int(v) for v in rows.reshape(-1)]
    parts = path.read_text().replace(",", " ").split()
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError("a text file of point indices must hold non-negative integers separated by commas or spaces")
    return [int(p) for p in parts]


def point_region_corners(flag: str, value: Any, xyz: np.ndarray, region: str
                         ) -> tuple[torch.Tensor, Optional[np.ndarray]]:
    """(the 8 box corners in the kind's layout, point mask [N] or None) of one --box3d / --points-of, as the region
    kind needs it: a kind with a mask takes a box's points (their own box is the geometry), a corner kind without
    one the bounding box of --points-of."""
    layout, with_mask = corner_layout(region), REGION_KINDS.get(region).has_mask
    if flag == "box3d" and not with_mask:
        values = torch.tensor(value, dtype=torch.float32)
        if len(values) == 6 and (values[3:] <= 0).any():
            raise ValueError(f"size {values[3:].tolist()} must be positive")
        corners = layout(values[:3], values[3:]) if len(values) == 6 else values.reshape(8, 3)
        return corners, None
    if flag == "box3d":
        values = np.asarray(value, dtype=np.float64)
        if len(values) == 24:  # the corners' axis-aligned bounds select the points
            low, high = values.reshape(8, 3).min(0), values.reshape(8, 3).max(0)
            values = np.concatenate([(low + high) / 2, high - low])
        entry = {"box3d": [float(v) for v in values]}
    else:
        entry = {"points_of": point_indices(value)}
    center, size, mask = point_region(parse_region(entry, POINT_REGIONS), xyz, with_mask)
    return layout(torch.as_tensor(center), torch.as_tensor(size)), mask


def point_item(cfg: ResolvedConfig, args: Any, region: Optional[str], regions: list[tuple[str, Any]]
               ) -> dict[str, Any]:
    processor = PointCloudProcessor(eval_processor_config(cfg, args.modality, "eval_processor"))
    wrong_input_flags(regions, POINT_FLAGS, "--points")
    if args.points.suffix not in POINT_SUFFIXES:
        raise ValueError(f"--points {args.points}: use a {', '.join(POINT_SUFFIXES)} file")
    if not args.points.is_file():
        raise ValueError(f"--points {args.points}: no such file")
    array = read_ply_vertices(args.points) if args.points.suffix == ".ply" else load_array(args.points)
    if region is not None:
        try:
            corner_layout(region)  # the model's corner layout
        except ValueError:
            raise ValueError(f"modality '{args.modality}' expects a '{region}' region; --box3d / --points-of give "
                             "3D regions") from None
    if (region is None) != (not regions):
        need = ("takes no --box3d / --points-of" if region is None
                else "captions a region: give --box3d cx cy cz dx dy dz or --points-of INDICES")
        raise ValueError(f"modality '{args.modality}' {need}")
    whole = point_cloud(processor, array, args.points)[0]  # the cloud checked (shape, numbers) before its regions
    if region is None:
        return {"points": whole}
    xyz = np.asarray(array, dtype=np.float32)[:, :3]
    corners, masks = [], []
    for k, (flag, value) in enumerate(regions):
        label = region_label(flag, value, k, len(regions))
        try:
            box, mask = point_region_corners(flag, value, xyz, region)
        except ValueError as e:
            raise ValueError(f"{label}: {e}") from None
        check_box3d_overlaps(box, xyz, label)
        corners.append(box)
        masks.append(mask)
    stacked = torch.stack(corners)
    with_mask = REGION_KINDS.get(region).has_mask
    points, moved, *region_mask = point_cloud(processor, array, args.points, stacked,
                                              np.stack(masks) if with_mask else None)
    item = {"points": points, "region_geometry": torch.stack([corners_to_geometry(c) for c in moved])}
    if region_mask:
        item["region_mask"] = region_mask[0]
    return item


def point_cloud(processor: PointCloudProcessor, array: Any, path: Path, corners: Optional[torch.Tensor] = None,
                masks: Optional[np.ndarray] = None) -> tuple:
    """The processor's output, with its refusal of the cloud (or of an emptied region) naming --points."""
    try:
        return processor(array, corners) if masks is None else processor(array, corners, masks)
    except PointCloudError as e:
        raise ValueError(f"--points {path}: {e}") from None
