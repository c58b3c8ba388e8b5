"""Scan2Cap's m@kIoU dense-captioning metrics (CIDEr, BLEU-4, METEOR, ROUGE_L at IoU 0.25 and 0.5) for 3D proposals.

Captions from a model (every proposal kept by the protocol's NMS is captioned as a point-cloud region):
    python tools/eval_dense_captions.py --scanrefer data/scanrefer/ScanRefer_filtered_val.json \
        --scannet-data-root data/scanrefer/scannet_data --proposals proposals.json \
        --cfg-path configs/eval/regionblip_opt2.7b_scanrefer.yaml --ckpt RUN_DIR --out output/densecap/metrics.json
Captions given per proposal (any model's output; see lavis/datasets/proposals.py for both formats):
    python tools/eval_dense_captions.py --scanrefer ... --scannet-data-root ... --proposals proposals.json \
        --captions proposal_captions.json --out metrics.json
`--proposals gt` uses the ground-truth boxes as proposals (the upper bound: no NMS, each object its own box).
Nr3D: `--scanrefer` takes the nr3d_{split}.json that tools/prepare_eval_nr3d.py writes (the same layout).
Under torchrun each rank captions its share of the scenes (the frozen encoder once per scene); rank 0 scores.
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
from lavis.common import dist as dist_utils
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
    parser.add_argument("--scanrefer", required=True, type=Path,
                        help="ScanRefer JSON with tokens (the references), or Nr3D's from tools/prepare_eval_nr3d.py")
    parser.add_argument("--scannet-data-root", required=True, type=Path,
                        help="{scene}_aligned_bbox.npy (ground-truth boxes) and {scene}_aligned_vert.npy (points)")
    parser.add_argument("--proposals", required=True, help="a proposals JSON file, or 'gt' for the ground-truth boxes")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--captions", type=Path, help="captions per proposal (JSON), instead of a model")
    source.add_argument("--cfg-path", help="a run YAML whose model captions the proposals")
    parser.add_argument("--ckpt", default=None, help="checkpoint file or training run directory (with --cfg-path)")
    parser.add_argument("--modality", default="pointcloud_region", help="the model's point-cloud region modality")
    parser.add_argument("--batch-size", type=int, default=8, help="proposals captioned per generate call")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where the model captions (auto: this rank's GPU if there is one)")
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


# A rank gathers the others' captions only once it has captioned its own scenes: the wait is as long as the slowest
# rank's share, so the collective's timeout is hours, not the usual minutes.
GATHER_TIMEOUT_S = 4 * 3600


def model_captions(args: argparse.Namespace, proposals: dict[str, SceneBoxes], keep: dict[str, np.ndarray],
                   points: dict[str, np.ndarray], device: torch.device) -> dict[str, list[Optional[str]]]:
    """The model's caption of every kept proposal (None for the others): each scene is processed once with all its
    kept boxes, as the evaluation processor of the config's datasets processes a ScanRefer item."""
    from lavis.common.captioner import eval_processor_config, load_captioner
    from lavis.common.config import load_config
    from lavis.processors.point_processors import PointCloudProcessor
    from lavis.processors.region_kinds import corner_layout

    cfg = load_config(args.cfg_path, args.options)
    if args.modality not in cfg.model.modalities or cfg.model.modalities[args.modality].region is None:
        raise ValueError(f"--modality {args.modality} must be a region modality of the config "
                         f"(it has {sorted(cfg.model.modalities)})")
    layout = corner_layout(cfg.model.modalities[args.modality].region)
    encoder = cfg.model.modalities[args.modality].encoder
    processor = PointCloudProcessor(eval_processor_config(cfg, args.modality, "eval_processor"))
    model = load_captioner(cfg, args.ckpt, "--ckpt", "the command line").model.to(device)
    captions: dict[str, list[Optional[str]]] = {}
    with torch.no_grad():
        for scene, boxes in proposals.items():
            captions[scene] = [None] * len(boxes.boxes)
            wanted = np.flatnonzero(keep.get(scene, np.zeros(0, bool)))
            if not len(wanted):
                continue
            chosen = torch.as_tensor(boxes.boxes[wanted], dtype=torch.float32)
            cloud, corners = processor(points[scene], layout(chosen[:, :3], chosen[:, 3:]))
            texts = caption_scene(model, args.modality, encoder, cloud, corners, args.batch_size, device)
            for p, text in zip(wanted, texts):
                captions[scene][int(p)] = text
    return captions


def caption_scene(model: torch.nn.Module, modality: str, encoder: str, cloud: torch.Tensor, corners: torch.Tensor,
                  batch_size: int, device: torch.device) -> list[str]:
    """The captions of one scene's boxes (`corners` [P, 8, 3], in the frame of the processed `cloud`). The frozen
    encoder runs once on the scene and its tokens are shared by every box (RegionBLIP's `extract` takes a batch's
    `encoder_tokens` in place of running the encoder), not once per proposal on P copies of the same cloud."""
    from lavis.datasets.loaders import Collator, move_to
    from lavis.processors.point_processors import corners_to_geometry

    tokens = model.encoders[encoder](cloud[None].to(device))  # [1, N, C], before the encoder's width adapter
    collate = Collator(modality, text_tokenizer=None)
    texts: list[str] = []
    for start in range(0, len(corners), batch_size):
        items = [{"sample_id": str(start + i), "region_geometry": corners_to_geometry(c)}
                 for i, c in enumerate(corners[start:start + batch_size])]
        batch = move_to(collate(items), device)
        batch["encoder_tokens"] = tokens.expand(len(items), -1, -1)
        texts += model.generate(batch)
    return texts


def captions_of_this_rank(args: argparse.Namespace, proposals: dict[str, SceneBoxes], scenes: list[str],
                          ground_truth: bool, info: dist_utils.DistInfo
                          ) -> tuple[dict[str, list[Optional[str]]], dict[str, np.ndarray]]:
    """(captions of this rank's share of `scenes`, every world_size-th; the points it read: rank 0 reads every
    scene's, which scoring needs for rule 5). The log line says which share."""
    mine = scenes[info.rank::info.world_size]
    points = scene_points(args.scannet_data_root, scenes if info.is_main else mine)
    rules = protocol_rules(args.protocol)
    keep = {s: kept_proposals(proposals[s], rules, points[s], suppress=not ground_truth) for s in mine}
    captions = model_captions(args, {s: proposals[s] for s in mine}, keep, points, info.device)
    print(f"rank {info.rank}/{info.world_size}: captioned the proposals of {len(mine)} scene(s)", file=sys.stderr)
    return captions, points


def gathered_captions(args: argparse.Namespace, proposals: dict[str, SceneBoxes], scenes: list[str],
                      ground_truth: bool, info: dist_utils.DistInfo
                      ) -> tuple[dict[str, list[Optional[str]]], dict[str, np.ndarray]]:
    """(every scene's captions, each scene captioned by one rank; the points this rank read)."""
    try:
        part, points = captions_of_this_rank(args, proposals, scenes, ground_truth, info)
    except (ValueError, FileNotFoundError) as e:  # sent to every rank, so that all stop and none waits in the gather
        part, points = e, {}
    parts = dist_utils.all_gather_objects(part)
    for failed in parts:
        if isinstance(failed, Exception):
            raise failed
    merged = {scene: texts for part in parts for scene, texts in part.items()}
    return {scene: merged[scene] for scene in scenes}, points  # in scene order, whichever rank captioned a scene


def evaluate(args: argparse.Namespace) -> Optional[dict]:
    """The metrics (on rank 0; None on the other ranks of a torchrun job, which only caption)."""
    info = dist_utils.init_distributed(args.device, GATHER_TIMEOUT_S)
    try:
        return score(args, info)
    finally:
        dist_utils.shutdown()


def score(args: argparse.Namespace, info: dist_utils.DistInfo) -> Optional[dict]:
    references = scanrefer_references(read_json(args.scanrefer, "ScanRefer JSON"),
                                      protocol_rules(args.protocol).reference_max_tokens)
    scenes = sorted(references)
    objects = read_scene_objects(args.scannet_data_root, scenes)
    ground_truth = args.proposals == "gt"
    proposals = ground_truth_proposals(objects) if ground_truth else read_proposals(args.proposals)
    with_proposals = [s for s in scenes if s in proposals]
    if args.captions is None:
        captions, points = gathered_captions(args, proposals, with_proposals, ground_truth, info)
    if not info.is_main:
        return None
    if args.captions is not None:
        points = scene_points(args.scannet_data_root, with_proposals)
        captions = read_proposal_captions(args.captions, proposals)
    else:
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


def main(argv: Optional[list[str]] = None) -> Optional[dict]:
    args = parse_args(argv)
    try:
        return evaluate(args)
    except (ValueError, FileNotFoundError) as e:  # AnnotationError and ProposalsError are ValueErrors
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
