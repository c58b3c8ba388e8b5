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
import math
import sys
from pathlib import Path
from typing import Optional

import lavis  # noqa: F401  (registers the built-in models and datasets)
from lavis.common.captioner import input_item, load_captioner, numbers
from lavis.common.config import load_config
from lavis.common.config_schema import ConfigError
from lavis.processors.image_processors import ImageReadError


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
    if args.box3d is not None and not all(math.isfinite(v) for v in args.box3d):
        parser.error(f"--box3d {numbers(args.box3d)}: every value must be a finite number (no nan / inf)")
    if args.modality is None:
        if args.image is not None:
            args.modality = "image_region" if args.box is not None else "image"
        else:
            args.modality = "pointcloud_region" if args.box3d is not None else "pointcloud"
    return args


def caption(args: argparse.Namespace) -> str:
    cfg = load_config(args.cfg_path, args.options)
    item = input_item(cfg, args)  # inputs are checked before any weight is read
    return load_captioner(cfg, args.ckpt, "--ckpt", "the command line").caption(args.modality, item)


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
