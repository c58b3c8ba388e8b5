"""tools/eval_dense_captions.py with a model: the frozen encoder runs once per scene (its tokens shared by the scene's
proposals) and gives the captions of the per-proposal way; under torchrun (2 CPU processes, gloo) each rank captions
its share of the scenes and the metrics equal one process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch

from tests.conftest import REPO, tiny_demo_options
from tools import eval_dense_captions

TINY_CONFIG = REPO / "configs" / "demo" / "regionblip_tiny.yaml"
MODALITY = "pointcloud_region"


def tiny_captioner(world):
    from lavis.common.captioner import load_captioner
    from lavis.common.config import load_config

    cfg = load_config(str(TINY_CONFIG), tiny_demo_options(world))
    return cfg, load_captioner(cfg, None, "--ckpt", "the test").model


def count_encoder_calls(model) -> list[tuple[int, ...]]:
    """The input shape of every call of the point encoder, from now on."""
    calls: list[tuple[int, ...]] = []
    model.encoders["point"].register_forward_hook(lambda module, inputs, output: calls.append(tuple(inputs[0].shape)))
    return calls


def test_encoder_runs_once_per_scene_with_the_per_proposal_captions(tiny_world, one_thread):
    from lavis.common.captioner import eval_processor_config
    from lavis.datasets.loaders import Collator
    from lavis.datasets.proposals import read_scene_objects
    from lavis.processors.point_processors import PointCloudProcessor, corners_to_geometry
    from lavis.processors.region_kinds import corner_layout

    cfg, model = tiny_captioner(tiny_world)
    root = tiny_world / "scanrefer" / "scannet_data"
    scene = "scene0001_00"
    boxes = torch.as_tensor(read_scene_objects(root, [scene])[scene].boxes, dtype=torch.float32)
    processor = PointCloudProcessor(eval_processor_config(cfg, MODALITY, "eval_processor"))
    cloud, corners = processor(np.load(root / f"{scene}_aligned_vert.npy"),
                               corner_layout(cfg.model.modalities[MODALITY].region)(boxes[:, :3], boxes[:, 3:]))
    assert len(corners) >= 3
    calls = count_encoder_calls(model)
    # the per-proposal way: every item carries the scene's points, so the encoder sees them once per proposal
    collate = Collator(MODALITY, text_tokenizer=None)
    items = [{"sample_id": str(i), "points": cloud, "region_geometry": corners_to_geometry(c)}
             for i, c in enumerate(corners)]
    with torch.no_grad():
        per_proposal = [text for start in range(0, len(items), 2)
                        for text in model.generate(collate(items[start:start + 2]))]
    assert sum(shape[0] for shape in calls) == len(corners)
    calls.clear()
    with torch.no_grad():
        shared = eval_dense_captions.caption_scene(model, MODALITY, "point", cloud, corners, 2, torch.device("cpu"))
    assert calls == [(1, *cloud.shape)]  # one scene, one encoder pass, whatever the number of batches
    assert shared == per_proposal and all(text.strip() for text in shared)


def test_tool_encodes_each_scene_once(tiny_world, monkeypatch):
    """Through the tool's model path: as many encoder passes as scenes, each on one cloud."""
    import lavis.common.captioner as captioner_module

    built = []

    def counting_loader(*args, **kwargs):
        captioner = load_captioner(*args, **kwargs)
        built.append(count_encoder_calls(captioner.model))
        return captioner

    load_captioner = captioner_module.load_captioner
    monkeypatch.setattr(captioner_module, "load_captioner", counting_loader)
    args = eval_dense_captions.parse_args([
        "--scanrefer", "unused.json", "--scannet-data-root", str(tiny_world / "scanrefer" / "scannet_data"),
        "--proposals", "gt", "--cfg-path", str(TINY_CONFIG), "--batch-size", "2", "--out", "unused.json",
        "--options", *tiny_demo_options(tiny_world)])
    from lavis.datasets.proposals import ground_truth_proposals, read_scene_objects

    scenes = ["scene0001_00", "scene0002_00"]
    proposals = ground_truth_proposals(read_scene_objects(args.scannet_data_root, scenes))
    points = eval_dense_captions.scene_points(args.scannet_data_root, scenes)
    keep = {s: np.ones(len(proposals[s].boxes), bool) for s in scenes}
    captions = eval_dense_captions.model_captions(args, proposals, keep, points, torch.device("cpu"))
    assert [len(captions[s]) for s in scenes] == [len(proposals[s].boxes) for s in scenes]
    assert all(isinstance(text, str) for s in scenes for text in captions[s])
    (calls,) = built
    assert [shape[0] for shape in calls] == [1, 1]


def run_tool(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    result = subprocess.run([*launcher, "tools/eval_dense_captions.py", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_two_processes_give_the_metrics_of_one(tiny_world, tmp_path):
    # the synthetic world's training annotations: 4 scenes, 2 for each rank
    options = ["--options", *tiny_demo_options(tiny_world)]
    common = ["--scanrefer", str(tiny_world / "scanrefer" / "ScanRefer_filtered_train.json"),
              "--scannet-data-root", str(tiny_world / "scanrefer" / "scannet_data"), "--proposals", "gt",
              "--cfg-path", str(TINY_CONFIG), "--batch-size", "3", "--device", "cpu", "--thresholds", "0.5"]
    one = run_tool(1, [*common, "--out", str(tmp_path / "one.json"), *options])
    two = run_tool(2, [*common, "--out", str(tmp_path / "two.json"), *options])
    assert "rank 0/1: captioned the proposals of 4 scene(s)" in one.stderr
    # each rank captioned its half of the scenes
    assert "rank 0/2: captioned the proposals of 2 scene(s)" in two.stderr
    assert "rank 1/2: captioned the proposals of 2 scene(s)" in two.stderr
    captions_one = json.loads((tmp_path / "one_captions.json").read_text())
    captions_two = json.loads((tmp_path / "two_captions.json").read_text())
    assert len(captions_one) == 4 and captions_two == captions_one
    metrics_one, metrics_two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert metrics_one["matched_objects"] == {"0.5": metrics_one["objects"]} and metrics_one["objects"] >= 12
    assert metrics_two["metrics"] == metrics_one["metrics"] and metrics_two["per_object"] == metrics_one["per_object"]
