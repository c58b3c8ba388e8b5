"""RefCOCOg (umd) region captioning: the ground-truth converter, the eval configs, and a scoring of hand captions."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from lavis.common.caption_metrics import CaptionMetricsConfig, coco_caption_scores
from lavis.common.config import load_config
from lavis.datasets.builders.image_builders import RefCocoBuilder, RefCocoConfig
from tests.conftest import REPO
from tools.prepare_eval_refcocog import main as prepare

LLMS = ("opt2.7b", "opt6.7b", "flant5xl", "flant5xxl")


def sentences(*texts: str) -> list[dict]:
    return [{"sent": t, "raw": t, "tokens": t.split(), "sent_id": k} for k, t in enumerate(texts)]


@pytest.fixture()
def refer_root(tmp_path: Path) -> Path:
    """refcocog/refs(umd).p + instances.json: two refs of one box in val, one in val on another image, one in test,
    one in train (which no eval file may hold)."""
    folder = tmp_path / "refer" / "refcocog"
    folder.mkdir(parents=True)
    refs = [
        {"ref_id": 1, "ann_id": 10, "image_id": 100, "split": "val", "sentences": sentences("a man in a red coat")},
        {"ref_id": 2, "ann_id": 10, "image_id": 100, "split": "val",
         "sentences": sentences("the person on the left", "man holding an umbrella")},
        {"ref_id": 3, "ann_id": 11, "image_id": 101, "split": "val", "sentences": sentences("a brown dog lying down")},
        {"ref_id": 4, "ann_id": 12, "image_id": 102, "split": "test", "sentences": sentences("white cup on a table")},
        {"ref_id": 5, "ann_id": 13, "image_id": 103, "split": "train", "sentences": sentences("a tree")},
    ]
    (folder / "refs(umd).p").write_bytes(pickle.dumps(refs))
    images = [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "width": 640, "height": 480}
              for i in (100, 101, 102, 103)]
    annotations = [{"id": 10, "image_id": 100, "bbox": [10.7, 20.2, 100.0, 200.9]},
                   {"id": 11, "image_id": 101, "bbox": [5, 6, 50, 60]},
                   {"id": 12, "image_id": 102, "bbox": [1, 2, 3, 4]}, {"id": 13, "image_id": 103, "bbox": [0, 0, 9, 9]}]
    (folder / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return tmp_path / "refer"


def test_converter_writes_every_sentence_of_each_box_per_split(refer_root: Path, tmp_path: Path):
    written = prepare(["--refer-root", str(refer_root), "--out-dir", str(tmp_path / "gt")])
    assert [p.name for p in written] == ["refcocog_umd_val.json", "refcocog_umd_test.json"]
    val = json.loads(written[0].read_text())
    assert [img["id"] for img in val["images"]] == ["100_box_10_20_100_200", "101_box_5_6_50_60"]
    by_id: dict[str, list[str]] = {}
    for ann in val["annotations"]:
        by_id.setdefault(ann["image_id"], []).append(ann["caption"])
    first = ["a man in a red coat", "the person on the left", "man holding an umbrella"]
    assert by_id == {"100_box_10_20_100_200": first, "101_box_5_6_50_60": ["a brown dog lying down"]}
    assert len({ann["id"] for ann in val["annotations"]}) == 4
    test = json.loads(written[1].read_text())
    assert [img["id"] for img in test["images"]] == ["102_box_1_2_3_4"]


def test_converter_names_a_missing_refs_file(tmp_path: Path):
    with pytest.raises(SystemExit, match=r"refs\(umd\)\.p does not exist"):
        prepare(["--refer-root", str(tmp_path), "--out-dir", str(tmp_path / "gt")])


def test_eval_items_carry_the_ground_truth_ids(refer_root: Path, tmp_path: Path):
    [val] = prepare(["--refer-root", str(refer_root), "--out-dir", str(tmp_path / "gt"), "--splits", "val"])
    builder = RefCocoBuilder(RefCocoConfig(dataset="refcocog", split_by="umd", refer_root=str(refer_root),
                                           image_root=str(tmp_path), train_split=None, eval_split="val"))
    dataset = builder.build("val")
    assert [r.region_id for r in dataset.records] == [img["id"] for img in json.loads(val.read_text())["images"]]
    assert dataset.ground_truth() == json.loads(val.read_text())


@pytest.mark.parametrize("llm", LLMS)
def test_eval_config_reads_refcocog_umd_val(llm: str, tmp_path: Path):
    root = tmp_path / "w"
    (root / "bert").mkdir(parents=True)
    (root / "llm").mkdir()
    (root / "blip2.pth").touch()
    (root / "pb.pt").touch()
    cfg = load_config(str(REPO / "configs" / "eval" / f"regionblip_{llm}_refcocog.yaml"), [
        f"model.blip2_checkpoint_path={root / 'blip2.pth'}",
        f"model.encoders.point.params.checkpoint_path={root / 'pb.pt'}",
        f"model.qformers.blip2.config.tokenizer_path={root / 'bert'}",
        f"model.qformers.point.config.tokenizer_path={root / 'bert'}", f"model.llm.path={root / 'llm'}"])
    [(name, ds)] = cfg.datasets.items()
    assert name == "refcocog" and (ds.dataset, ds.split_by, ds.eval_split) == ("refcocog", "umd", "val")
    assert ds.eval_gt_file == "data/gt/refcocog_umd_val.json" and ds.eval_image.image_size == 364
    assert cfg.yaml.model.model_type == llm and cfg.run.task == "captioning"


def test_hand_captions_score_through_the_evaluator_metrics(refer_root: Path, tmp_path: Path):
    [val] = prepare(["--refer-root", str(refer_root), "--out-dir", str(tmp_path / "gt"), "--splits", "val"])
    exact = [{"image_id": "100_box_10_20_100_200", "caption": "a man in a red coat"},
             {"image_id": "101_box_5_6_50_60", "caption": "a brown dog lying down"}]
    wrong = [{"image_id": "100_box_10_20_100_200", "caption": "green boat"},
             {"image_id": "101_box_5_6_50_60", "caption": "a kitchen sink"}]
    good = coco_caption_scores(exact, val, CaptionMetricsConfig(spice=False))
    bad = coco_caption_scores(wrong, val, CaptionMetricsConfig(spice=False))
    assert good.num_images == good.num_ground_truth == 2 and not good.incomplete
    assert good.metrics["METEOR"] > bad.metrics["METEOR"] and good.metrics["CIDEr"] > bad.metrics["CIDEr"]
    assert good.metrics["Bleu_1"] == pytest.approx(1.0, abs=1e-6) and bad.metrics["CIDEr"] < 0.05
    partial = coco_caption_scores(exact[:1], val, CaptionMetricsConfig(spice=False))
    assert partial.incomplete and partial.unscored_ids == ["101_box_5_6_50_60"]
