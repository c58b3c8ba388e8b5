"""evaluate.py end to end on miniature data of each modality (image, image region, point cloud, point-cloud
region) and on the BLIP-2 crop baseline: the tiny demo model, the synthetic world in the real formats, ground truth
from the tools/prepare_eval_*.py converters, one caption per evaluation sample and a metrics file per dataset."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from evaluate import main as evaluate_main
from tests.conftest import REPO, tiny_demo_options, write_yaml
from tools import prepare_eval_coco, prepare_eval_objaverse, prepare_eval_refcoco, prepare_eval_scanrefer
from tools.compare_table1 import load_results

DATASETS = {  # name in the demo config -> (modality, eval split)
    "coco": ("image", "test"),
    "refcoco": ("image_region", "test"),
    "objaverse": ("pointcloud", "test"),
    "scanrefer": ("pointcloud_region", "val"),
    "refcoco_crop": ("image", "test"),
}


def write_ground_truth(world) -> dict[str, str]:
    gt = world / "gt"
    prepare_eval_coco.main(["--ann-file", str(world / "coco_karpathy_test.json"), "--out", str(gt / "coco.json")])
    prepare_eval_refcoco.main(["--refer-root", str(world), "--split", "test", "--out", str(gt / "refcoco.json")])
    prepare_eval_objaverse.main(["-i", str(world / "Cap3D_automated_Objaverse.csv"), "--test-uids",
                                 str(world / "objaverse" / "test_uids.txt"), "-o", str(gt / "objaverse.json")])
    prepare_eval_scanrefer.main(["-i", str(world / "scanrefer" / "ScanRefer_filtered_val.json"), "-o",
                                 str(gt / "scanrefer.json")])
    return {name: str(gt / f"{name}.json") for name in ("coco", "refcoco", "objaverse", "scanrefer")}


def path_options(world, gt: dict[str, str], out) -> list[str]:
    images = world / "images"
    return [
        *tiny_demo_options(world),
        f"datasets.coco.image_root={images}", f"datasets.coco.ann_root={world}",
        f"datasets.coco.eval_gt_file={gt['coco']}",
        f"datasets.refcoco.refer_root={world}", f"datasets.refcoco.image_root={images / 'train2014'}",
        f"datasets.refcoco.eval_gt_file={gt['refcoco']}",
        f"datasets.refcoco_crop.refer_root={world}", f"datasets.refcoco_crop.image_root={images / 'train2014'}",
        f"datasets.refcoco_crop.eval_gt_file={gt['refcoco']}",
        f"datasets.objaverse.points_root={world / 'objaverse'}",
        f"datasets.objaverse.caption_file={world / 'Cap3D_automated_Objaverse.csv'}",
        f"datasets.objaverse.test_uids_file={world / 'objaverse' / 'test_uids.txt'}",
        f"datasets.objaverse.eval_gt_file={gt['objaverse']}",
        f"datasets.scanrefer.annotation_root={world / 'scanrefer'}",
        f"datasets.scanrefer.scannet_data_root={world / 'scanrefer' / 'scannet_data'}",
        f"datasets.scanrefer.eval_gt_file={gt['scanrefer']}",
        f"run.output_dir={out}", "run.num_workers=0",
    ]


def test_every_modality_is_captioned_and_scored(tiny_world, tmp_path):
    gt = write_ground_truth(tiny_world)
    config = yaml.safe_load((REPO / "configs" / "demo" / "regionblip_tiny.yaml").read_text())
    # the BLIP-2 crop baseline: the same RefCOCO regions, cropped, through the holistic image modality
    config["datasets"]["refcoco_crop"] = {**config["datasets"]["refcoco"], "modality": "image", "crop_to_box": True}
    for entry in config["datasets"].values():
        entry["train_split"] = None  # evaluation only: no training files are read
    cfg_path = write_yaml(tmp_path / "eval.yaml", config)
    out = tmp_path / "out"
    evaluate_main(["--cfg-path", str(cfg_path), "--options", *path_options(tiny_world, gt, out)])

    for name, (modality, split) in DATASETS.items():
        truth = json.loads(Path(gt[name.removesuffix("_crop")]).read_text())
        captions = json.loads((out / f"{name}_{split}_captions.json").read_text())
        # one non-empty caption per evaluation sample, under the ground truth's ids
        assert sorted(str(r["image_id"]) for r in captions) == sorted(str(i["id"]) for i in truth["images"])
        assert all(isinstance(r["caption"], str) and r["caption"].strip() for r in captions)
        report = json.loads((out / f"{name}_{split}_metrics.json").read_text())
        assert (report["dataset"], report["modality"], report["split"]) == (name, modality, split)
        assert report["samples"] == len(truth["images"]) and report["skipped"] == 0
        assert {"Bleu_4", "METEOR", "ROUGE_L", "CIDEr"} <= set(report["metrics"])
        assert all(0.0 <= value for value in report["metrics"].values())

    # the files feed the Table 1 comparison
    cells, _ = load_results([f"opt2.7b={out / 'refcoco_test_metrics.json'}",
                             f"opt2.7b={out / 'objaverse_test_metrics.json'}",
                             f"opt2.7b={out / 'scanrefer_val_metrics.json'}"])
    assert set(cells) == {("opt2.7b", "refcoco"), ("opt2.7b", "objaverse"), ("opt2.7b", "scanrefer")}
