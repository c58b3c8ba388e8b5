"""A model loaded once for captioning single inputs: tools/caption.py (one caption, then exit) and tools/web_demo.py
(many captions, one model) share this, so both check the checkpoint and build the model exactly as evaluate.py does.
Below it, how one user-given input (an image and box, a cloud and 3D box) becomes the item a dataset of its modality
would yield (`input_item`), used by both tools and by tools/eval_dense_captions.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from lavis.common.checkpoint_compat import Purpose
from lavis.common.config import ResolvedConfig
from lavis.common.config_schema import ConfigError
from lavis.common.preflight import load_for_inference
from lavis.common.registry import MODELS
from lavis.datasets.annotation_io import load_array
from lavis.datasets.datasets.refcoco import box_pixel_bounds
from lavis.datasets.datasets.scanrefer import read_ply_vertices
from lavis.datasets.loaders import Collator
from lavis.processors.image_processors import (
    BoxImageProcessor,
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
        """The caption of one processed item (the keys a dataset of `modality` yields); `generation` overrides
        fields of `model.generation` (num_beams, max_new_tokens, ...)."""
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
# `request` is anything with the attributes modality, image, box, points and box3d (tools/caption.py's parsed
# arguments, or the web demo's fields); the messages name the command-line flags, which the demo's fields mirror.
POINT_SUFFIXES = (".npy", ".npz", ".ply")


def input_item(cfg: ResolvedConfig, args: Any) -> dict[str, Any]:
    """The processed item of --image / --points (with --box / --box3d) for --modality, checked against the config."""
    modalities = cfg.model.modalities
    if args.modality not in modalities:
        raise ValueError(f"--modality {args.modality} is not one of the config's modalities {sorted(modalities)}")
    m = modalities[args.modality]
    input_key = cfg.model.encoders[m.encoder].input_key
    wanted = "image" if args.image is not None else "points"
    if input_key != wanted:
        raise ValueError(f"modality '{args.modality}' reads '{input_key}', but the input is an {wanted} file")
    build_item = image_item if args.image is not None else point_item
    return build_item(cfg, args, m.region)


def numbers(values: list[float]) -> str:
    return " ".join(f"{v:g}" for v in values)


def check_box3d_overlaps(corners: torch.Tensor, xyz: np.ndarray, given: list[float]) -> None:
    """Refuse a 3D box that spans no volume or lies outside the cloud's bounds (the --box rule for images, with the
    cloud's bounding box as the image): its geometry would describe nothing the points show."""
    box_low, box_high = corners.amin(0).numpy(), corners.amax(0).numpy()
    if (box_high <= box_low).any():
        raise ValueError(f"--box3d {numbers(given)}: the box spans no volume; give 8 distinct corners")
    low, high = xyz.min(0), xyz.max(0)
    if (box_high < low).any() or (box_low > high).any():
        span = ", ".join(f"{axis} [{a:g}, {b:g}]" for axis, a, b in zip("xyz", low, high))
        raise ValueError(f"--box3d {numbers(given)}: the box lies outside the point cloud ({span}); give it in the "
                         "cloud's own frame")


def eval_processor_config(cfg: ResolvedConfig, modality: str, attribute: str) -> Any:
    """The `eval_image` / `eval_processor` of a dataset of this modality, else of any dataset that has one."""
    datasets = sorted(cfg.datasets.values(), key=lambda ds: ds.modality != modality)
    for ds in datasets:
        if hasattr(ds, attribute):
            return getattr(ds, attribute)
    raise ConfigError(f"no dataset in the config has an {attribute} to process a '{modality}' input with; add a "
                      "dataset of that modality")


def image_item(cfg: ResolvedConfig, args: Any, region: Optional[str]) -> dict[str, Any]:
    processor = BoxImageProcessor(eval_processor_config(cfg, args.modality, "eval_image"))
    image = load_rgb_image(args.image)
    if region is not None and region != "box2d":
        raise ValueError(f"modality '{args.modality}' expects a '{region}' region; an image gives a box2d")
    if args.box is None:
        if region is not None:
            raise ValueError(f"modality '{args.modality}' captions a region: give --box x1 y1 x2 y2 (pixels)")
        return {"image": processor(image)[0]}
    try:
        box = check_box(args.box, image.width, image.height, processor.cfg.box_tolerance)
    except ValueError as e:
        raise ValueError(f"--box {' '.join(f'{v:g}' for v in args.box)}: {e}; give x1 y1 x2 y2 in pixels, "
                         f"0 <= x1 < x2 <= {image.width}, 0 <= y1 < y2 <= {image.height}") from None
    if processor.cfg.truncate_box_pixels:  # as the evaluation datasets read their boxes
        box = truncated_box_pixels(box, image.width, image.height)
    if region is None:  # a holistic modality: caption the crop, as the BLIP-2 baseline does
        return {"image": processor(image.crop(box_pixel_bounds(box)))[0]}
    pixels, geometry = processor(image, box)
    return {"image": pixels, "region_geometry": geometry}


def point_item(cfg: ResolvedConfig, args: Any, region: Optional[str]) -> dict[str, Any]:
    processor = PointCloudProcessor(eval_processor_config(cfg, args.modality, "eval_processor"))
    if args.points.suffix not in POINT_SUFFIXES:
        raise ValueError(f"--points {args.points}: use a {', '.join(POINT_SUFFIXES)} file")
    if not args.points.is_file():
        raise ValueError(f"--points {args.points}: no such file")
    array = read_ply_vertices(args.points) if args.points.suffix == ".ply" else load_array(args.points)
    try:
        layout = None if region is None else corner_layout(region)  # the model's corner layout
    except ValueError:
        raise ValueError(f"modality '{args.modality}' expects a '{region}' region; --box3d gives 3D box "
                         "corners") from None
    if (region is None) != (args.box3d is None):
        need = "takes no --box3d" if region is None else "captions a region: give --box3d cx cy cz dx dy dz"
        raise ValueError(f"modality '{args.modality}' {need}")
    corners = None
    if args.box3d is not None:
        values = torch.tensor(args.box3d, dtype=torch.float32)
        corners = layout(values[:3], values[3:]) if len(values) == 6 else values.reshape(8, 3)
        if len(values) == 6 and (values[3:] <= 0).any():
            raise ValueError(f"--box3d size {values[3:].tolist()} must be positive")
    try:
        points, moved = processor(array, None if corners is None else corners[None])
    except PointCloudError as e:
        raise ValueError(f"--points {args.points}: {e}") from None
    if corners is not None:  # the cloud is valid here: [N, >=3], finite
        check_box3d_overlaps(corners, np.asarray(array, dtype=np.float32)[:, :3], args.box3d)
    item = {"points": points}
    if moved is not None:
        item["region_geometry"] = corners_to_geometry(moved[0])
    return item
