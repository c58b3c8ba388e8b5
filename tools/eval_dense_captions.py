"""Scan2Cap's m@kIoU dense-captioning metrics (CIDEr, BLEU-4, METEOR, ROUGE_L at IoU 0.25 and 0.5) for 3D proposals.

Captions from a model (every proposal kept by the protocol's NMS is captioned as a point-cloud region):
    python tools/eval_dense_captions.py --scanrefer data/scanrefer/ScanRefer_filtered_val.json \
        --scannet-data-root data/scanrefer/scannet_data --proposals proposals.json \
        --cfg-path configs/eval/regionblip_opt2.7b_scanrefer.yaml --ckpt RUN_DIR --out output/densecap/metrics.json
Captions given per proposal (any model's output; see lavis/datasets/proposals.py for both formats):
    python tools/eval_dense_captions.py --scanrefer ... --scannet-data-root ... --proposals proposals.json \
        --captions proposal_captions.json --out metrics.json
`--proposals gt` uses the ground-truth boxes as proposals (the upper bound: no NMS, each object its own box).
The rules are lavis/common/dense_caption_metrics.py's (`--protocol`, default vote2cap_detr). Writes the metrics JSON
(`--out`) and, with a model, the captions of the kept proposals beside it (`*_captions.json`, the --captions format).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

import lavis  # noqa: F401  (registers the built-in models and datasets)
from lavis.common.dense_caption_metrics import (
    IOU_THRESHOLDS,
    PROTOCOLS,
    SceneBoxes,
    dense_caption_scores,
    format_table,
    kept_proposals,
    protocol_rules,
    scanrefer_references,
)
from lavis.datasets.annotation_io import AnnotationError, load_array, read_json
from lavis.datasets.proposals import (
    ground_truth_proposals,
    read_proposal_captions,
    read_proposals,
    read_scene_objects,
)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scanrefer", required=True, type=Path, help="ScanRefer JSON with tokens (the references)")
    parser.add_argument("--scannet-data-root", required=True, type=Path,
                        help="{scene}_aligned_bbox.npy (ground-truth boxes) and {scene}_aligned_vert.npy (points)")
    parser.add_argument("--proposals", required=True, help="a proposals JSON file, or 'gt' for the ground-truth boxes")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--captions", type=Path, help="captions per proposal (JSON), instead of a model")
    source.add_argument("--cfg-path", help="a run YAML whose model captions the proposals")
    parser.add_argument("--ckpt", default=None, help="checkpoint file or training run directory (with --cfg-path)")
    parser.add_argument("--modality", default="pointcloud_region", help="the model's point-cloud region modality")
    parser.add_argument("--batch-size", type=int, default=8, help="proposals captioned per generate call")
    parser.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--protocol", default="vote2cap_detr", choices=sorted(PROTOCOLS))
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(IOU_THRESHOLDS))
    parser.add_argument("--out", required=True, type=Path, help="the metrics JSON to write")
    args = parser.parse_args(argv)
    if args.ckpt is not None and args.cfg_path is None:
        parser.error("--ckpt goes with --cfg-path")
    return args


def scene_points(root: Path, scenes: list[str]) -> dict[str, np.ndarray]:
    points = {}
    for scene in scenes:
        path = root / f"{scene}_aligned_vert.npy"
        if not path.is_file():
            raise AnnotationError(f"{path}: no such file (the points of scene {scene})")
        points[scene] = load_array(path)
    return points


def model_captions(args: argparse.Namespace, proposals: dict[str, SceneBoxes], keep: dict[str, np.ndarray],
                   points: dict[str, np.ndarray]) -> dict[str, list[Optional[str]]]:
    """The model's caption of every kept proposal (None for the others): each scene is processed once with all its
    kept boxes, as the evaluation processor of the config's datasets processes a ScanRefer item."""
    from lavis.common.captioner import eval_processor_config, load_captioner
    from lavis.common.config import load_config
    from lavis.datasets.loaders import Collator
    from lavis.processors.point_processors import PointCloudProcessor, corners_to_geometry
    from lavis.processors.region_kinds import corner_layout

    cfg = load_config(args.cfg_path, args.options)
    if args.modality not in cfg.model.modalities or cfg.model.modalities[args.modality].region is None:
        raise ValueError(f"--modality {args.modality} must be a region modality of the config "
                         f"(it has {sorted(cfg.model.modalities)})")
    layout = corner_layout(cfg.model.modalities[args.modality].region)
    processor = PointCloudProcessor(eval_processor_config(cfg, args.modality, "eval_processor"))
    captioner = load_captioner(cfg, args.ckpt, "--ckpt", "the command line")
    collate = Collator(args.modality, text_tokenizer=None)
    captions: dict[str, list[Optional[str]]] = {}
    with torch.no_grad():
        for scene, boxes in proposals.items():
            captions[scene] = [None] * len(boxes.boxes)
            wanted = np.flatnonzero(keep.get(scene, np.zeros(0, bool)))
            if not len(wanted):
                continue
            chosen = torch.as_tensor(boxes.boxes[wanted], dtype=torch.float32)
            cloud, corners = processor(points[scene], layout(chosen[:, :3], chosen[:, 3:]))
            items = [{"sample_id": f"{scene}|{p}", "points": cloud, "region_geometry": corners_to_geometry(c)}
                     for p, c in zip(wanted, corners)]
            for start in range(0, len(items), args.batch_size):
                texts = captioner.model.generate(collate(items[start:start + args.batch_size]))
                for p, text in zip(wanted[start:start + args.batch_size], texts):
                    captions[scene][int(p)] = text
    return captions


def evaluate(args: argparse.Namespace) -> dict:
    references = scanrefer_references(read_json(args.scanrefer, "ScanRefer JSON"),
                                      protocol_rules(args.protocol).reference_max_tokens)
    scenes = sorted(references)
    objects = read_scene_objects(args.scannet_data_root, scenes)
    ground_truth = args.proposals == "gt"
    proposals = ground_truth_proposals(objects) if ground_truth else read_proposals(args.proposals)
    points = scene_points(args.scannet_data_root, [s for s in scenes if s in proposals])
    if args.captions is not None:
        captions = read_proposal_captions(args.captions, proposals)
    else:
        rules = protocol_rules(args.protocol)
        keep = {s: kept_proposals(proposals[s], rules, points[s], suppress=not ground_truth) for s in points}
        captions = model_captions(args, {s: proposals[s] for s in points}, keep, points)
        written = args.out.with_name(args.out.stem + "_captions.json")
        written.parent.mkdir(parents=True, exist_ok=True)
        written.write_text(json.dumps(captions, indent=1))
    report = dense_caption_scores(proposals, captions, objects, references, protocol=args.protocol,
                                  thresholds=tuple(args.thresholds), points=points, suppress=not ground_truth)
    result = {**report.to_json(), "proposals": args.proposals, "scanrefer": str(args.scanrefer),
              "captions": str(args.captions) if args.captions else None, "checkpoint": args.ckpt,
              "per_object": report.per_object}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(format_table(report))
    return result


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    try:
        return evaluate(args)
    except (ValueError, FileNotFoundError) as e:  # AnnotationError and ProposalsError are ValueErrors
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
