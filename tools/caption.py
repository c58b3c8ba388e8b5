"""Caption one image (optionally one box in it) or one point cloud (optionally one 3D box in it) from the command line.

    python tools/caption.py --cfg-path configs/eval/regionblip_opt2.7b_refcoco.yaml \
        --ckpt output/train/regionblip_opt2.7b --image photo.jpg --box 10 20 200 180 [--options model.llm.path=... ...]
    python tools/caption.py --cfg-path CONFIG.yaml --ckpt CKPT --points scene.npy --box3d 1.0 2.0 0.5 0.6 0.6 1.2

--box is x1 y1 x2 y2 in pixels; --box3d is the box's centre and full size (cx cy cz dx dy dz), or its 8 corners
(24 numbers, in the corner layout of the modality's region kind), in the cloud's own frame.
--modality defaults to image_region / image (with / without --box) and pointcloud_region / pointcloud. A box given
to a modality without a region is cropped out and captioned as a plain image (the BLIP-2 crop baseline).
The input goes through the evaluation processor of a dataset of that modality in the config (image size, number
of points, colour), exactly as evaluate.py would process it. --ckpt is a checkpoint or a training run directory
(its latest checkpoint); without it the model's pretrained and initial weights are used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

import torch

import lavis  # noqa: F401  (registers the built-in models and datasets)
from lavis.common.checkpoint import load_checkpoint
from lavis.common.config import ResolvedConfig, load_config
from lavis.common.config_schema import ConfigError
from lavis.common.registry import MODELS
from lavis.datasets.annotation_io import load_array
from lavis.datasets.datasets.refcoco import box_pixel_bounds
from lavis.datasets.datasets.scanrefer import read_ply_vertices
from lavis.datasets.loaders import Collator
from lavis.processors.image_processors import (
    BoxImageProcessor,
    ImageReadError,
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
from lavis.runners.setup import resolve_load_path

POINT_SUFFIXES = (".npy", ".npz", ".ply")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg-path", required=True, help="a run YAML (model section; its datasets give processors)")
    parser.add_argument("--ckpt", default=None, help="checkpoint file or training run directory")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", type=Path, help="an image file")
    source.add_argument("--points", type=Path, help="a point cloud: .npy / .npz ([N, 3 or 6+]) or .ply")
    parser.add_argument("--box", type=float, nargs=4, metavar=("X1", "Y1", "X2", "Y2"), help="pixels")
    parser.add_argument("--box3d", type=float, nargs="+", metavar="V", help="cx cy cz dx dy dz, or 8 corners x y z")
    parser.add_argument("--modality", default=None, help="a key of model.modalities (default: from the input)")
    parser.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args(argv)
    if args.image is not None and args.box3d is not None:
        parser.error("--box3d goes with --points; an image takes --box x1 y1 x2 y2")
    if args.points is not None and args.box is not None:
        parser.error("--box goes with --image; a point cloud takes --box3d cx cy cz dx dy dz")
    if args.box3d is not None and len(args.box3d) not in (6, 24):
        parser.error(f"--box3d takes 6 numbers (centre, size) or 24 (8 corners), got {len(args.box3d)}")
    if args.modality is None:
        if args.image is not None:
            args.modality = "image_region" if args.box is not None else "image"
        else:
            args.modality = "pointcloud_region" if args.box3d is not None else "pointcloud"
    return args


def eval_processor_config(cfg: ResolvedConfig, modality: str, attribute: str) -> Any:
    """The `eval_image` / `eval_processor` of a dataset of this modality, else of any dataset that has one."""
    datasets = sorted(cfg.datasets.values(), key=lambda ds: ds.modality != modality)
    for ds in datasets:
        if hasattr(ds, attribute):
            return getattr(ds, attribute)
    raise ConfigError(f"no dataset in the config has an {attribute} to process a '{modality}' input with; add a "
                      "dataset of that modality")


def image_item(cfg: ResolvedConfig, args: argparse.Namespace, region: Optional[str]) -> dict[str, Any]:
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


def point_item(cfg: ResolvedConfig, args: argparse.Namespace, region: Optional[str]) -> dict[str, Any]:
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
    item = {"points": points}
    if moved is not None:
        item["region_geometry"] = corners_to_geometry(moved[0])
    return item


def caption(args: argparse.Namespace) -> str:
    cfg = load_config(args.cfg_path, args.options)
    modalities = cfg.model.modalities
    if args.modality not in modalities:
        raise ValueError(f"--modality {args.modality} is not one of the config's modalities {sorted(modalities)}")
    m = modalities[args.modality]
    input_key = cfg.model.encoders[m.encoder].input_key
    wanted = "image" if args.image is not None else "points"
    if input_key != wanted:
        raise ValueError(f"modality '{args.modality}' reads '{input_key}', but the input is an {wanted} file")
    build_item = image_item if args.image is not None else point_item
    item = build_item(cfg, args, m.region)  # inputs are checked before any weight is read
    torch.manual_seed(cfg.run.seed)
    model = MODELS.get(cfg.model_arch).from_config(cfg.model)
    if args.ckpt:
        model.load_trainable_state_dict(load_checkpoint(resolve_load_path(args.ckpt))["model"])
    model.eval()
    batch = Collator(args.modality, text_tokenizer=None)([{"sample_id": "input", **item}])
    return model.generate(batch)[0]


def main(argv: Optional[list[str]] = None) -> str:
    args = parse_args(argv)
    try:
        text = caption(args)
    except (ValueError, ImageReadError, ConfigError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(text)
    return text


if __name__ == "__main__":
    main()
