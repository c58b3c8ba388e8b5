"""tools/convert_to_instructions.py: RefCOCO (refer pickle + instances.json) and ScanRefer (JSON + scannet_data
arrays), written tiny into tmp_path, converted to instruction JSONL and read back by the instruction datasets."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lavis.common.registry import DATASET_BUILDERS
from lavis.datasets.builders.instruction_builders import InstructionsConfig
from lavis.processors.image_processors import BoxImageConfig
from lavis.processors.point_processors import PointCloudProcessorConfig
from tests.datasets.test_instructions import save_image
from tools import convert_to_instructions as tool

BOXES = {10: (1, [4, 4, 20, 16]), 11: (1, [30, 10, 20, 20]), 12: (2, [2, 2, 10, 10]), 13: (1, [0, 0, 8, 8])}
REFS = [(0, 10, "train", ["the man on the left", "left guy"]), (1, 11, "train", ["woman on the right."]),
        (2, 12, "train", ["a dog"]), (3, 13, "val", ["corner"])]


def write_refer(root: Path, reverse: bool = False) -> Path:
    for image_id in (1, 2):
        save_image(root / "images" / f"COCO_train2014_{image_id:012d}.jpg")
    instances = {"images": [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "width": 64, "height": 48}
                            for i in (1, 2)],
                 "annotations": [{"id": a, "image_id": img, "bbox": box, "category_id": 1}
                                 for a, (img, box) in BOXES.items()]}
    refs = [{"ref_id": ref_id, "ann_id": ann, "image_id": BOXES[ann][0], "split": split,
             "sentences": [{"sent": s, "raw": s, "tokens": s.split(), "sent_id": k} for k, s in enumerate(sents)]}
            for ref_id, ann, split, sents in REFS]
    (root / "refcoco").mkdir(parents=True)
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    with (root / "refcoco" / "refs(unc).p").open("wb") as f:
        pickle.dump(refs[::-1] if reverse else refs, f, protocol=2)
    return root


def read_jsonl(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def convert_refcoco(root: Path, out: Path, *extra: str) -> int:
    return tool.main(["refcoco", "--refer-root", str(root), "--split", "train", "--out", str(out), *extra])


def test_refcoco_describe_and_choice_records(tmp_path: Path, capsys):
    root = write_refer(tmp_path / "refer")
    out = tmp_path / "refcoco.jsonl"
    assert convert_refcoco(root, out) == 0
    assert "4 describe, 3 choice records; not made: 1 x choice: no other region" in capsys.readouterr().out
    records = read_jsonl(out)
    describe = records["refcoco/0/1/describe"]
    assert describe["image"] == "COCO_train2014_000000000001.jpg" and describe["regions"] == [{"box": [4, 4, 20, 16]}]
    assert describe["conversations"] == [{"from": "human", "value": "Describe <region>."},
                                         {"from": "gpt", "value": "left guy"}]
    assert "refcoco/2/0/choice" not in records  # the only referred region of image 2
    for sample in ("refcoco/0/0", "refcoco/0/1", "refcoco/1/0"):
        choice = records[f"{sample}/choice"]
        question, answer = (turn["value"] for turn in choice["conversations"])
        target = records[f"{sample}/describe"]["regions"][0]
        assert question.startswith('Which object does "') and question.count("<region>") == 2
        assert len(choice["regions"]) == 2 and choice["regions"][0] != choice["regions"][1]
        assert choice["regions"][tool.ANSWERS.index(answer)] == target
    question = records["refcoco/1/0/choice"]["conversations"][0]["value"]
    assert question.startswith('Which object does "woman on the right" describe: ')  # its final "." dropped


def test_refcoco_conversion_is_seeded_and_independent_of_annotation_order(tmp_path: Path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    convert_refcoco(write_refer(tmp_path / "refer"), first)
    convert_refcoco(write_refer(tmp_path / "reversed", reverse=True), second)
    assert read_jsonl(first) == read_jsonl(second)
    draws = [tool.choice_order(0, f"sample{k}", ["x", "y"])[1] for k in range(400)]
    assert 0.4 < sum(draws) / len(draws) < 0.6  # the right answer is first about half of the time


def test_refcoco_records_train_through_the_instruction_dataset(tmp_path: Path):
    root = write_refer(tmp_path / "refer")
    out = tmp_path / "refcoco.jsonl"
    convert_refcoco(root, out)
    cfg = InstructionsConfig(modality="image_region", region_kind="box2d", files={"train": str(out)},
                             media_root=str(root / "images"), train_image=BoxImageConfig(image_size=16))
    dataset = DATASET_BUILDERS.get("instructions")(cfg).build("train")
    assert len(dataset) == 7 and dataset.skipped == []
    counts = sorted(len(dataset[i]["region_geometry"]) for i in range(len(dataset)))
    assert counts == [1, 1, 1, 1, 2, 2, 2]


def test_tool_errors_name_the_missing_input_and_refuse_to_overwrite(tmp_path: Path):
    with pytest.raises(SystemExit, match=r"refs\(unc\).p does not exist"):
        convert_refcoco(tmp_path / "nowhere", tmp_path / "x.jsonl")
    out = tmp_path / "exists.jsonl"
    out.write_text("")
    with pytest.raises(SystemExit, match="pass --overwrite"):
        convert_refcoco(write_refer(tmp_path / "refer"), out)
    with pytest.raises(SystemExit, match="no refs in split"):
        tool.main(["refcoco", "--refer-root", str(tmp_path / "refer"), "--split", "testA",
                   "--out", str(tmp_path / "y.jsonl")])
    assert not (tmp_path / "y.jsonl.partial").exists()


# ---- ScanRefer -------------------------------------------------------------------------------------------------
def write_scannet(root: Path) -> tuple[Path, Path, np.ndarray]:
    data = root / "scannet_data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0, 0.5], [3, 0, 0.5], [0, 3, 0.5]], dtype=np.float32)
    xyz = np.concatenate([c + rng.uniform(-0.4, 0.4, (30, 3)) for c in centres]).astype(np.float32)
    vert = np.concatenate([xyz, np.full((90, 3), 128, np.float32), np.zeros((90, 3), np.float32)], 1)
    labels = np.repeat(np.arange(3) + 1, 30).astype(np.uint32)  # ScanNet: objectId + 1
    boxes = [[*((xyz[labels == k + 1].min(0) + xyz[labels == k + 1].max(0)) / 2),
              *(xyz[labels == k + 1].max(0) - xyz[labels == k + 1].min(0)), 5, k] for k in range(3)]
    np.save(data / "scene0000_00_aligned_vert.npy", vert)
    np.save(data / "scene0000_00_ins_label.npy", labels)
    np.save(data / "scene0000_00_aligned_bbox.npy", np.array(boxes, np.float32))
    entries = [{"scene_id": "scene0000_00", "object_id": str(k), "object_name": "box", "ann_id": "0",
                "description": f"object {k}. it is a box", "token": []} for k in (0, 1, 7)]
    annotations = root / "ScanRefer_filtered_train.json"
    annotations.write_text(json.dumps(entries))
    return annotations, data, labels


def test_scanrefer_points_of_records_hold_the_instance_rows(tmp_path: Path, capsys):
    annotations, data, labels = write_scannet(tmp_path)
    out = tmp_path / "scanrefer.jsonl"
    assert tool.main(["scanrefer", "--annotations", str(annotations), "--scannet-data-root", str(data),
                      "--region", "points_of", "--out", str(out)]) == 0
    assert "1 x object not in its scene's points" in capsys.readouterr().out
    records = read_jsonl(out)
    describe = records["scene0000_00|1|0/describe"]
    assert describe["points"] == "scene0000_00_aligned_vert.npy"
    assert describe["regions"] == [{"points_of": np.flatnonzero(labels == 2).tolist()}]
    assert describe["conversations"][1]["value"] == "object 1. it is a box"
    choice = records["scene0000_00|1|0/choice"]
    assert choice["regions"][tool.ANSWERS.index(choice["conversations"][1]["value"])] == describe["regions"][0]

    cfg = InstructionsConfig(modality="pointcloud_region", region_kind="point_set", files={"train": str(out)},
                             media_root=str(data), train_points=PointCloudProcessorConfig(num_points=90,
                                                                                         sampling="stride"))
    dataset = DATASET_BUILDERS.get("instructions")(cfg).build("train")
    item = next(dataset[i] for i in range(len(dataset)) if dataset[i]["sample_id"] == "scene0000_00|1|0/describe#0")
    assert torch.equal(item["region_mask"][0], torch.as_tensor(labels == 2))  # stride of 90 of 90: every row


def test_scanrefer_box3d_records_hold_the_bbox_rows(tmp_path: Path):
    annotations, data, _ = write_scannet(tmp_path)
    out = tmp_path / "scanrefer.jsonl"
    tool.main(["scanrefer", "--annotations", str(annotations), "--scannet-data-root", str(data), "--region", "box3d",
               "--tasks", "describe", "--out", str(out)])
    records = read_jsonl(out)
    assert set(records) == {"scene0000_00|0|0/describe", "scene0000_00|1|0/describe"}
    box = np.load(data / "scene0000_00_aligned_bbox.npy")[0, :6]
    assert np.allclose(records["scene0000_00|0|0/describe"]["regions"][0]["box3d"], box)
