"""Caption one image or point cloud from the command line: the whole input, one region of it, or an instruction
about several regions.

    python tools/caption.py --cfg-path configs/eval/regionblip_opt2.7b_refcoco.yaml \
        --ckpt output/train/regionblip_opt2.7b --image photo.jpg --box 10 20 200 180 [--options model.llm.path=... ...]
    python tools/caption.py --cfg-path CONFIG.yaml --ckpt CKPT --points scene.npy --box3d 1.0 2.0 0.5 0.6 0.6 1.2
    python tools/caption.py --cfg-path CONFIG.yaml --ckpt CKPT --image photo.jpg \
        --instruction "Is <region> left of <region>?" --box 10 20 200 180 --mask dog.png

Regions, each flag repeatable, in the order of the instruction's placeholders (model.region_token, "<region>"):
  --box X1 Y1 X2 Y2     pixels of the image
  --mask PATH           a mask image (PNG; nonzero pixels are the region) or a .json COCO RLE {"size", "counts"}
                        (or polygons, or an annotation with a "segmentation"), at the image's size
  --box3d V...          centre and full size (cx cy cz dx dy dz), or 8 corners (24 numbers, in the corner layout of
                        the modality's region kind), in the cloud's own frame
  --points-of INDICES   rows of the cloud: a comma list (3,4,17), an .npy of integers, or a text file of them
The region kind of --modality decides what a region becomes: a box2d modality takes a mask's bounding box, a mask2d
one a box's rectangle; box3d_corners takes the bounding box of --points-of, point_set the points inside a --box3d.
Without --instruction, one region is captioned with the modality's template. --modality defaults to image_region /
image (with / without a region) and pointcloud_region / pointcloud. One --box given to a modality without a region
is cropped out and captioned as a plain image (the BLIP-2 crop baseline).
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
from lavis.common.captioner import IMAGE_FLAGS, POINT_FLAGS, flag_name, input_item, load_captioner, numbers
from lavis.common.config import load_config
from lavis.common.config_schema import ConfigError
from lavis.processors.image_processors import ImageReadError


def region_action(flag: str) -> type[argparse.Action]:
    """An action appending (flag, value) to the one `regions` list, so mixed flags keep their command-line order."""

    class AppendRegion(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), (flag, values)])

    return AppendRegion


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg-path", required=True, help="a run YAML (model section; its datasets give processors)")
    parser.add_argument("--ckpt", default=None, help="checkpoint file or training run directory")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", type=Path, help="an image file")
    source.add_argument("--points", type=Path, help="a point cloud: .npy / .npz ([N, 3 or 6+]) or .ply")
    parser.add_argument("--instruction", default=None,
                        help="the LLM input, with one region placeholder per region argument (e.g. 'What colour is "
                        "<region>?')")
    regions = parser.add_argument_group("regions (repeatable, in placeholder order)")
    parser.set_defaults(regions=[])
    regions.add_argument("--box", type=float, nargs=4, metavar=("X1", "Y1", "X2", "Y2"), action=region_action("box"),
                         dest="regions", help="pixels")
    regions.add_argument("--mask", action=region_action("mask"), dest="regions", metavar="PATH",
                         help="a mask PNG or a COCO-RLE .json")
    regions.add_argument("--box3d", type=float, nargs="+", metavar="V", action=region_action("box3d"),
                         dest="regions", help="cx cy cz dx dy dz, or 8 corners x y z")
    regions.add_argument("--points-of", action=region_action("points_of"), dest="regions", metavar="INDICES",
                         help="point rows: 3,4,17 or an .npy / text file of them")
    parser.add_argument("--modality", default=None, help="a key of model.modalities (default: from the input)")
    parser.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args(argv)
    check_region_flags(parser, args)
    if args.modality is None:
        if args.image is not None:
            args.modality = "image_region" if args.regions else "image"
        else:
            args.modality = "pointcloud_region" if args.regions else "pointcloud"
    return args


def check_region_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What argparse alone cannot say: region flags that do not fit the input, and --box3d's numbers."""
    flags = {flag for flag, _ in args.regions}
    if args.image is not None and flags & set(POINT_FLAGS):
        parser.error(f"{'/'.join(flag_name(f) for f in sorted(flags & set(POINT_FLAGS)))} go with --points; an "
                     "image takes --box x1 y1 x2 y2 or --mask PATH")
    if args.points is not None and flags & set(IMAGE_FLAGS):
        parser.error(f"{'/'.join(flag_name(f) for f in sorted(flags & set(IMAGE_FLAGS)))} go with --image; a point "
                     "cloud takes --box3d cx cy cz dx dy dz or --points-of INDICES")
    for flag, values in args.regions:
        if flag != "box3d":
            continue
        if len(values) not in (6, 24):
            parser.error(f"--box3d takes 6 numbers (centre, size) or 24 (8 corners), got {len(values)}")
        if not all(math.isfinite(v) for v in values):
            parser.error(f"--box3d {numbers(values)}: every value must be a finite number (no nan / inf)")


def caption(args: argparse.Namespace) -> str:
    cfg = load_config(args.cfg_path, args.options)
    item = input_item(cfg, args)  # inputs (and the placeholder count) are checked before any weight is read
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
