"""Look at a dataset before training on it: split sizes, skipped samples, and a few items drawn to PNG.

    python tools/inspect_dataset.py --builder scanrefer \
        --options annotation_root=data/scanrefer scannet_data_root=data/scanrefer/scannet_data --num 4 --out inspect/
    python tools/inspect_dataset.py --config configs/train.yaml --dataset objaverse --num 8 --out inspect/

--config takes a run YAML (pick the entry with --dataset) or a YAML holding one dataset entry. A dataset registered
by a plugin module is found through the run YAML's `run.imports` or `--imports MODULE ...` (importable: installed, or
on PYTHONPATH). Images are drawn with their 2D box; point clouds as a top-down (x-y) and a front (x-z) orthographic
view with the 3D box's edges.
Without a model config, 3D corners are laid out as `box3d_corners`; `--options region_kind=box3d_corners_reference`
draws the reference's layout (both orders share the edges drawn).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

VIEW = 256  # pixels per view
BOX_EDGES = [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)]


def register_builders(plugins: list[str]) -> None:
    """Import the builder modules so their names are registered (the package imports all of them), then the plugin
    modules (a run YAML's `run.imports` and --imports), as a training run does."""
    importlib.import_module("lavis.datasets.builders")
    for name in plugins:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - a missing module or one failing as it imports: one clear line
            raise SystemExit(f"cannot import plugin module '{name}' (run.imports / --imports): "
                             f"{type(e).__name__}: {e}; it must be importable (installed, or on PYTHONPATH)") from None


def plugin_modules(args: argparse.Namespace) -> list[str]:
    """--imports, then the `run.imports` of a --config run YAML."""
    names = list(args.imports)
    for _, layer in config_layers(args):
        if "datasets" in layer and layer.get("run") is not None:
            names += [str(n) for n in layer.run.get("imports") or []]
    return list(dict.fromkeys(names))


def config_layers(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """--config and the run YAMLs it extends (`base:`), lowest first; [] without --config."""
    from lavis.common.config import run_yaml_layers

    return run_yaml_layers(args.config) if args.config is not None else []


def dataset_config(args: argparse.Namespace):
    from lavis.common.config import CONFIG_ROOT
    from lavis.common.config_schema import merge_checked
    from lavis.common.registry import DATASET_BUILDERS

    layers = config_layers(args)
    entries: list[tuple[str, Any]] = []  # the entry as each layer (a base, then the files extending it) sets it
    if any("datasets" in layer for _, layer in layers):
        names: dict[str, None] = {}
        for source, layer in layers:
            for key, value in (layer.get("datasets") or {}).items():
                if value is None:  # `name: null` removes what a base defined
                    names.pop(key, None)
                    entries = [] if key == args.dataset else entries
                else:
                    names[key] = None
                    if key == args.dataset:
                        entries.append((source, value))
        if args.dataset not in names:
            raise SystemExit(f"--dataset must be one of {list(names)} (the datasets of {args.config})")
    elif layers:
        entries = layers
    builder_names = [entry.get("builder") for _, entry in entries if entry.get("builder")]
    name = args.builder or (builder_names[-1] if builder_names else None) or args.dataset
    if not name:
        raise SystemExit("give --builder, or --config with --dataset")
    builder_cls = DATASET_BUILDERS.get(name)
    # a dataset never reads its modality (the batches carry it to the model): one need not be named to look at it
    sources: list[tuple[str, Any]] = [("inspect_dataset", OmegaConf.create({"modality": "(none)"}))]
    if getattr(builder_cls, "DEFAULT_CONFIG", None):
        default = CONFIG_ROOT / builder_cls.DEFAULT_CONFIG
        sources.append((str(default), OmegaConf.load(default)))
    sources += [(source, entry) for source, entry in entries]
    sources.append(("--options", OmegaConf.from_dotlist(args.options)))
    merged = merge_checked(OmegaConf.structured(builder_cls.Config), sources)
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise SystemExit(f"required key(s) not set: {', '.join(missing)}; pass them with --options key=value")
    return name, builder_cls(OmegaConf.to_object(merged))


def _to_pixels(coords: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return ((coords - lo) / max(hi - lo, 1e-6) * (VIEW - 1)).round().astype(int).clip(0, VIEW - 1)


def render_points(points: torch.Tensor, corners: torch.Tensor | None) -> Image.Image:
    """Two orthographic views side by side: top (x right, y up) and front (x right, z up)."""
    xyz = points[:, :3].numpy()
    if points.shape[1] >= 6:
        colors = (points[:, 3:6].numpy().clip(0, 1) * 255).astype(np.uint8)
    else:  # colour by height
        z = xyz[:, 2]
        t = (z - z.min()) / max(float(np.ptp(z)), 1e-6)
        colors = np.stack([255 * t, 80 + 100 * (1 - t), 255 * (1 - t)], 1).astype(np.uint8)
    box = None if corners is None else corners.reshape(8, 3).numpy()
    extent = np.abs(xyz).max() if box is None else max(np.abs(xyz).max(), np.abs(box).max())
    canvas = Image.new("RGB", (2 * VIEW + 8, VIEW), (255, 255, 255))
    for panel, (a, b) in enumerate(((0, 1), (0, 2))):
        pixels = np.full((VIEW, VIEW, 3), 255, dtype=np.uint8)
        u, v = _to_pixels(xyz[:, a], -extent, extent), VIEW - 1 - _to_pixels(xyz[:, b], -extent, extent)
        pixels[v, u] = colors
        view = Image.fromarray(pixels)
        if box is not None:
            draw = ImageDraw.Draw(view)
            bu, bv = _to_pixels(box[:, a], -extent, extent), VIEW - 1 - _to_pixels(box[:, b], -extent, extent)
            for i, j in BOX_EDGES:
                draw.line([(bu[i], bv[i]), (bu[j], bv[j])], fill=(220, 0, 0), width=2)
        canvas.paste(view, (panel * (VIEW + 8), 0))
    return canvas


def render_image(image: torch.Tensor, box: torch.Tensor | None) -> Image.Image:
    """A normalised [3, H, W] image, rescaled to its own range for display, with an (x1, y1, x2, y2) box in [0, 1]."""
    array = image.float().numpy().transpose(1, 2, 0)
    array = (array - array.min()) / max(float(np.ptp(array)), 1e-6)
    picture = Image.fromarray((array * 255).astype(np.uint8))
    if box is not None and box.numel() == 4:
        w, h = picture.size
        x1, y1, x2, y2 = box.tolist()
        ImageDraw.Draw(picture).rectangle([x1 * w, y1 * h, x2 * w, y2 * h], outline=(255, 0, 0), width=2)
    return picture


def render_item(item: dict) -> Image.Image:
    geometry = item.get("region_geometry")
    if "image" in item:
        body = render_image(item["image"], geometry)
    elif "points" in item:
        body = render_points(item["points"], geometry if geometry is not None and geometry.numel() == 24 else None)
    else:
        raise ValueError(f"item {item.get('sample_id')} has neither 'image' nor 'points'")
    label = str(item.get("text_input", item.get("class_name", "")))
    out = Image.new("RGB", (body.width, body.height + 36), (255, 255, 255))
    out.paste(body, (0, 0))
    draw = ImageDraw.Draw(out)
    draw.text((4, body.height + 2), f"{item.get('sample_id')}", fill=(0, 0, 0))
    draw.text((4, body.height + 18), label[: body.width // 6], fill=(0, 0, 0))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--builder", default=None, help="a registered dataset builder name")
    parser.add_argument("--config", type=Path, default=None, help="a run YAML or one dataset entry's YAML")
    parser.add_argument("--dataset", default=None, help="the entry of --config's datasets: to inspect")
    parser.add_argument("--options", nargs="*", default=[], help="dataset fields as key=value")
    parser.add_argument("--imports", nargs="*", default=[], metavar="MODULE",
                        help="modules that register a plugin's dataset builder (besides the run YAML's run.imports)")
    parser.add_argument("--split", default=None, help="the split to draw from (default: the first that builds)")
    parser.add_argument("--num", type=int, default=4, help="items to draw")
    parser.add_argument("--out", type=Path, default=Path("inspect"))
    args = parser.parse_args(argv)
    if args.config is not None and not args.config.is_file():
        parser.error(f"--config {args.config}: no such file")
    from lavis.common.config_schema import ConfigError
    from lavis.datasets.base import BadSampleError

    register_builders(plugin_modules(args))
    try:
        name, builder = dataset_config(args)
    except (ConfigError, KeyError) as e:
        parser.error(str(e))
    problems = builder.check_paths()
    if problems:
        print("paths missing:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    splits = list(getattr(builder, "SPLITS", ())) or [s for s in (builder.cfg.train_split, builder.cfg.eval_split) if s]
    built = {}
    for split in splits:
        try:
            dataset = builder.build(split)
        except (OSError, ValueError) as e:
            print(f"{name}/{split}: not available ({e})")
            continue
        built[split] = dataset
        skipped = getattr(dataset, "skipped", [])
        print(f"{name}/{split}: {len(dataset)} items, {len(skipped)} skipped while indexing")
        for sample_id, reason in skipped[:3]:
            print(f"    e.g. {sample_id}: {reason}")
    split = args.split or next(iter(built), None)
    if split not in built:
        parser.error(f"split '{split}' did not build; built: {list(built)}")
    dataset = built[split]
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for index in np.linspace(0, len(dataset) - 1, num=min(args.num, len(dataset))).round().astype(int):
        try:
            item = dataset[int(index)]
        except BadSampleError as e:
            print(f"  item {index}: bad sample {e.sample_id}: {e.reason}")
            continue
        path = args.out / f"{name}_{split}_{index}.png"
        render_item(item).save(path)
        print(f"  wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
