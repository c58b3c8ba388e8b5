"""m@kIoU on the demo's synthetic scenes (tools/make_synthetic_world.py, ScanRefer layout) through
tools/eval_dense_captions.py, with a deterministic stand-in captioner (captions given per proposal):
ground-truth boxes as proposals give the plain caption metrics of the same captions at every threshold (each object
is matched by its own box, and the protocol wraps and scores texts as the plain scorers do); proposals moved off
their objects keep those scores while their IoU stays above k and fall to the unmatched placeholder's below it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lavis.common.caption_metrics import standard_scores
from lavis.common.dense_caption_metrics import METRIC_NAMES, SceneBoxes, candidate_text, scanrefer_references
from lavis.datasets.proposals import read_scene_objects, write_proposals
from tools import eval_dense_captions

SPLIT = "ScanRefer_filtered_train.json"  # 4 scenes of 3-4 objects each


def stand_in_caption(description: str) -> str:
    """What the stand-in captioner says of an object: the first five words of its description (right, but short)."""
    return " ".join(description.split()[:5])


@pytest.fixture(scope="module")
def scenes(tiny_world):
    root = tiny_world / "scanrefer"
    entries = json.loads((root / SPLIT).read_text())
    said = {(e["scene_id"], int(e["object_id"])): stand_in_caption(e["description"]) for e in entries}
    objects = read_scene_objects(root / "scannet_data", sorted({e["scene_id"] for e in entries}))
    return root, entries, said, objects


def run(root, tmp_path, name: str, proposals: str, captions: dict, thresholds=("0.25", "0.5")) -> dict:
    (tmp_path / f"{name}_captions.json").write_text(json.dumps(captions))
    return eval_dense_captions.main([
        "--scanrefer", str(root / SPLIT), "--scannet-data-root", str(root / "scannet_data"), "--proposals", proposals,
        "--captions", str(tmp_path / f"{name}_captions.json"), "--thresholds", *thresholds,
        "--out", str(tmp_path / f"{name}.json")])


def test_synthetic_scenes_ground_truth_boxes_then_jitter(scenes, tmp_path):
    root, entries, said, objects = scenes
    own = {s: [said[(s, int(o))] for o in objects[s].object_ids] for s in objects}  # in the bbox files' order
    gt = run(root, tmp_path, "gt", "gt", own)
    assert gt["matched_objects"] == {"0.25": gt["objects"], "0.5": gt["objects"]} and gt["objects"] == len(said)

    # the plain caption metrics of the same captions against the same references, no matching involved
    references = scanrefer_references(entries)
    keys = sorted((f"{s}|{o}|{r.name}", s, o) for s, objs in references.items() for o, r in objs.items())
    plain, _ = standard_scores({k: references[s][o].captions for k, s, o in keys},
                               {k: [candidate_text(said[(s, o)])] for k, s, o in keys})
    for k in ("0.25", "0.5"):
        for name in METRIC_NAMES:
            assert gt["metrics"][f"{name}@{k}"] == pytest.approx(plain[name], rel=1e-12), (name, k)
    assert plain["CIDEr"] > 0.5  # the stand-in is good enough that a fall below is visible

    # proposals: each object's box lifted by a fraction of its height, IoU with its object (1 - f) / (1 + f); upwards,
    # where no other object is (the objects stand side by side along x). One class per proposal, so that per-class
    # NMS never decides between two objects' boxes.
    cider = {"0.25": [gt["metrics"]["CIDEr@0.25"]], "0.5": [gt["metrics"]["CIDEr@0.5"]]}
    matched = {"0.25": [gt["objects"]], "0.5": [gt["objects"]]}
    for fraction in (0.5, 1.2):  # IoU 1/3: matched at 0.25, not at 0.5; then no overlap at all
        moved = {}
        for s, o in objects.items():
            boxes = o.boxes.copy()
            boxes[:, 2] += fraction * boxes[:, 5]
            moved[s] = SceneBoxes(boxes=boxes, scores=np.ones(len(boxes)), class_ids=np.arange(len(boxes)),
                                  is_object=np.ones(len(boxes), bool))
        write_proposals(tmp_path / f"moved_{fraction}.json", moved)
        report = run(root, tmp_path, f"moved_{fraction}", str(tmp_path / f"moved_{fraction}.json"), own,
                     thresholds=("0.25", "0.5") if fraction < 1 else ("0.25",))
        for k in report["matched_objects"]:
            cider[k].append(report["metrics"][f"CIDEr@{k}"])
            matched[k].append(report["matched_objects"][k])
        if fraction == 0.5:  # above 0.25 the same caption wins each object: the same scores as its own box
            assert report["matched_objects"] == {"0.25": gt["objects"], "0.5": 0}
            assert report["metrics"]["CIDEr@0.25"] == pytest.approx(gt["metrics"]["CIDEr@0.25"], rel=1e-12)
    assert matched == {"0.25": [gt["objects"]] * 2 + [0], "0.5": [gt["objects"], 0]}
    # lower IoU, lower scores: an unmatched object's "sos eos" scores next to nothing
    assert cider["0.25"][0] == pytest.approx(cider["0.25"][1]) and cider["0.25"][1] > cider["0.25"][2]
    assert cider["0.5"][0] > cider["0.5"][1] and cider["0.5"][1] < 0.1 * cider["0.5"][0]
