"""Scan2Cap's m@kIoU dense-captioning protocol (lavis/common/dense_caption_metrics.py), the proposals reader
(lavis/datasets/proposals.py) and tools/eval_dense_captions.py, on a hand-made scene where every rule decides
something:
  p0/p1: p1 overlaps the chair more (IoU 0.778 vs 0.6) but is a same-class duplicate of the higher-scoring p0: NMS
         removes it, so p0 captions the chair; p2 (IoU 0.4545) loses to p0 under "highest IoU" at 0.25 but wins under
         Scan2Cap's "last proposal wins";
  p3: IoU with the table exactly 0.5 (matched at 0.25, not at 0.5: strict >);
  p4: IoU with the sofa exactly 0.25 (never matched);
  p5: best box is an object without references (dropped, not passed to the lamp, IoU 0.3125 > 0.25);
  p6: on the lamp but classed "no object" (Vote2Cap drops it; Scan2Cap keeps it: objectness 0.55 > 0.5);
  p7: on the bed with objectness 0.4 (Vote2Cap keeps it; Scan2Cap drops it);
  p8: on the picture, whose box holds 3 points (< 5: removed as empty);
  p9: the cabinet at IoU 0.8; the chair's first reference has 33 tokens (truncated to 30).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from lavis.common.caption_metrics import standard_scores
from lavis.common.dense_caption_metrics import (
    PLACEHOLDER,
    SceneBoxes,
    box_iou_3d,
    candidate_text,
    dense_caption_scores,
    kept_proposals,
    protocol_rules,
    scanrefer_references,
)
from lavis.datasets.proposals import ProposalsError, ground_truth_proposals, read_proposals, write_proposals
from tools import eval_dense_captions

SCENE = "scene0000_00"
# ground-truth boxes: object_id, name (None: not annotated in ScanRefer), centre, size, nyu40-style class
OBJECTS = [
    (1, "chair", (10.0, 0.0, 0.5), (1.0, 1.0, 1.0), 1),
    (2, "table", (13.0, 0.0, 0.5), (2.0, 1.0, 1.0), 2),
    (3, "lamp", (10.0, 4.0, 0.5), (1.0, 1.0, 1.0), 3),
    (4, None, (11.0, 4.0, 0.5), (1.0, 1.0, 1.0), 5),
    (5, "sofa", (10.0, -4.0, 0.5), (2.0, 1.0, 1.0), 4),
    (6, "bed", (20.0, 0.0, 0.5), (1.0, 1.0, 1.0), 6),
    (7, "picture", (20.0, 4.0, 0.5), (1.0, 1.0, 1.0), 7),
    (8, "cabinet", (20.0, -4.0, 0.5), (1.0, 1.0, 1.0), 8),
]
# proposals: centre, size, objectness, class, is_object, caption
PROPOSALS = [
    ((10.25, 0.0, 0.5), (1.0, 1.0, 1.0), 0.9, 1, True, "a brown wooden chair next to the table ."),  # p0
    ((10.125, 0.0, 0.5), (1.0, 1.0, 1.0), 0.8, 1, True, "a white chair ."),  # p1
    ((9.625, 0.0, 0.5), (1.0, 1.0, 1.0), 0.7, 1, True, "this is a chair by the wall ."),  # p2
    ((13.0, 0.0, 0.25), (2.0, 1.0, 0.5), 0.85, 2, True, "a long table in the middle of the room ."),  # p3
    ((10.0, -4.0, 0.125), (2.0, 1.0, 0.25), 0.65, 4, True, "a grey sofa ."),  # p4
    ((10.6875, 4.0, 0.5), (1.625, 1.0, 1.0), 0.6, 5, True, "a small lamp on the desk ."),  # p5
    ((10.0, 4.0, 0.5), (1.0, 1.0, 1.0), 0.55, 3, False, "a tall lamp ."),  # p6
    ((20.0, 0.0, 0.5), (1.0, 1.0, 1.0), 0.4, 6, True, "a bed with white sheets ."),  # p7
    ((20.0, 4.0, 0.5), (1.0, 1.0, 1.0), 0.95, 7, True, "a picture on the wall ."),  # p8
    ((20.125, -4.0, 0.5), (1.25, 1.0, 1.0), 0.75, 8, True, "a wooden cabinet under the window ."),  # p9
]
# ScanRefer-style references (token lists); the chair's first is longer than 30 tokens
REFERENCES = {
    1: ["this is a brown wooden chair . it is next to the table and faces the window on the left side of the room "
        "near the door and the big shelf with books".split(),
        "a brown chair next to the table .".split()],
    2: ["a long wooden table in the middle of the room .".split(), "the table is in the middle .".split()],
    3: ["a small lamp on the desk .".split()],
    5: ["a grey sofa against the wall .".split(), "the sofa is grey .".split()],
    6: ["a bed with white sheets by the window .".split()],
    7: ["a picture hanging on the wall .".split()],
    8: ["a wooden cabinet under the window .".split(), "the cabinet is brown .".split()],
}


def scene_points():
    """40 uniform points in each ground-truth box, 3 in the picture's (so its exact proposal holds < 5)."""
    rng = np.random.default_rng(0)
    chunks = []
    for object_id, _, centre, size, _ in OBJECTS:
        n = 3 if object_id == 7 else 40
        half = np.divide(size, 2)
        chunks.append(rng.uniform(np.subtract(centre, half), np.add(centre, half), (n, 3)))
    return np.concatenate(chunks)


# Vote2Cap-DETR's own engine.evaluate_caption (ch3cook-fdu/Vote2Cap-DETR @ 90d56dc: engine.py, utils/box_util.py,
# utils/proposal_parser.py, utils/nms.py, utils/capeval) run on this scene outside the repository, on the CPU
# (Tensor.cuda patched to the identity, torch.cuda.max_memory_allocated to 0; METEOR with pycocoevalcap 1.2's
# meteor-1.5.jar and paraphrase-en.gz, which the mirror held as LFS pointers; a stand-in model returning these
# proposals as box corners in the upright-camera frame, the sem-class logits, objectness and "sos ... eos" captions).
# Its reported BLEU-4, CiDEr, Rouge, METEOR at --test_min_iou 0.25 and 0.5:
VOTE2CAP_PUBLIC = {
    "Bleu_4@0.25": 0.5277387188867753, "CIDEr@0.25": 2.912525224515778,
    "ROUGE_L@0.25": 0.684132399230663, "METEOR@0.25": 0.3968278501772867,
    "Bleu_4@0.5": 0.391376777098787, "CIDEr@0.5": 2.1684387904524156,
    "ROUGE_L@0.5": 0.5945721433101131, "METEOR@0.5": 0.34028623608883635,
}
# The same run's pred_gt_val.json: each object's own scores, summed over the matched objects and divided by the 7
# annotated objects (m@kIoU = 1/N sum m_i u_i, the `vote2cap_detr_zero_unmatched` rule).
ZERO_UNMATCHED_FROM_PUBLIC = {
    "Bleu_4@0.25": 0.45099871268667485, "CIDEr@0.25": 2.912525224515778,
    "ROUGE_L@0.25": 0.533220981081224, "METEOR@0.25": 0.35998053880326414,
    "Bleu_4@0.5": 0.34132254578728727, "CIDEr@0.5": 2.1684387904524156,
    "ROUGE_L@0.5": 0.3970602667955096, "METEOR@0.5": 0.28499054962010967,
}
# Which proposal's caption each object gets (the public run's pred_val.json for Vote2Cap-DETR; for Scan2Cap derived
# by hand from lib/eval_helper.py's rules: running its feed_scene_cap needs its VoteNet outputs, not done).
CHOSEN = {
    ("vote2cap_detr", "0.25"): {1: 0, 2: 3, 6: 7, 8: 9},
    ("vote2cap_detr", "0.5"): {1: 0, 6: 7, 8: 9},
    ("scan2cap", "0.25"): {1: 2, 2: 3, 3: 6, 8: 9},
    ("scan2cap", "0.5"): {1: 0, 3: 6, 8: 9},
}


def scene_inputs():
    proposals = {SCENE: SceneBoxes(
        boxes=np.array([[*c, *s] for c, s, *_ in PROPOSALS]), scores=np.array([p[2] for p in PROPOSALS]),
        class_ids=np.array([p[3] for p in PROPOSALS]), is_object=np.array([p[4] for p in PROPOSALS]))}
    objects = {SCENE: SceneBoxes(boxes=np.array([[*c, *s] for _, _, c, s, _ in OBJECTS]),
                                 class_ids=np.array([o[4] for o in OBJECTS]),
                                 object_ids=np.array([o[0] for o in OBJECTS]))}
    entries = [{"scene_id": SCENE, "object_id": str(o), "object_name": name, "token": tokens}
               for o, name, *_ in OBJECTS if name for tokens in REFERENCES[o]]
    return proposals, objects, entries


@pytest.fixture(scope="module")
def reports():
    proposals, objects, entries = scene_inputs()
    references = scanrefer_references(entries)
    captions = {SCENE: [p[5] for p in PROPOSALS]}
    return {protocol: dense_caption_scores(proposals, captions, objects, references, protocol=protocol,
                                           points={SCENE: scene_points()})
            for protocol in ("vote2cap_detr", "scan2cap", "vote2cap_detr_zero_unmatched")}


def chosen_captions(report, k: str) -> dict[int, int]:
    by_caption = {candidate_text(p[5]): i for i, p in enumerate(PROPOSALS)}
    return {int(key.split("|")[1]): by_caption[entry["caption"]]
            for key, entry in report.per_object[k].items() if entry["matched"]}


def test_vote2cap_detr_protocol_gives_the_public_code_numbers(reports):
    report = reports["vote2cap_detr"]
    for name, value in VOTE2CAP_PUBLIC.items():
        assert report.metrics[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    assert report.matched == {"0.25": 4, "0.5": 3} and report.num_objects == 7
    for k in ("0.25", "0.5"):
        assert chosen_captions(report, k) == CHOSEN[("vote2cap_detr", k)]
        unmatched = [e["caption"] for e in report.per_object[k].values() if not e["matched"]]
        assert unmatched and all(c == PLACEHOLDER for c in unmatched)


def test_scan2cap_matching_and_zero_unmatched_variant(reports):
    for k in ("0.25", "0.5"):
        assert chosen_captions(reports["scan2cap"], k) == CHOSEN[("scan2cap", k)]
    zero = reports["vote2cap_detr_zero_unmatched"]
    for name, value in ZERO_UNMATCHED_FROM_PUBLIC.items():
        assert zero.metrics[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    # the placeholder scores above zero in BLEU / METEOR / ROUGE, so the two aggregations differ
    assert zero.metrics["METEOR@0.5"] < reports["vote2cap_detr"].metrics["METEOR@0.5"]


def test_each_rule_decides_an_object():
    proposals, objects, entries = scene_inputs()
    rules = protocol_rules("vote2cap_detr")
    keep = kept_proposals(proposals[SCENE], rules, scene_points())
    assert keep.tolist() == [True, False, True, True, True, True, False, True, False, True]  # NMS, no-object, empty
    assert kept_proposals(proposals[SCENE], rules, None)[8]  # without points the empty-box rule is off
    iou = box_iou_3d(proposals[SCENE].boxes, objects[SCENE].boxes)
    assert iou.shape == (10, 8)
    assert iou[1, 0] > iou[0, 0] == pytest.approx(0.6)  # the suppressed duplicate would have won the chair
    assert iou[3, 1] == pytest.approx(0.5) and iou[3, 1] < 0.5  # exactly half, below it by the 1e-8 of the public code
    assert iou[4, 4] == pytest.approx(0.25) and iou[5, 2] == pytest.approx(0.3125) and iou[5, 3] > iou[5, 2]
    references = scanrefer_references(entries)
    first = references[SCENE][1].captions[0].split()
    assert len(first) == 32 and first[0] == "sos" and first[-1] == "eos"  # 30 tokens kept of 33


def test_ground_truth_boxes_give_the_plain_caption_metrics():
    """Each object captioned at its own box: the dense metrics at every threshold are the caption metrics of those
    captions against the references (the same 'sos ... eos' texts, no re-tokenisation)."""
    _, objects, entries = scene_inputs()
    references = scanrefer_references(entries)
    gt = ground_truth_proposals(objects)
    names = {o[0]: o[1] for o in OBJECTS}
    own = {1: "a brown chair next to the table .", 2: "a wooden table .", 3: "a lamp .", 4: "a door .",
           5: "a grey sofa .", 6: "a white bed .", 7: "a picture .", 8: "the cabinet is brown ."}
    captions = {SCENE: [own[o] for o in objects[SCENE].object_ids.tolist()]}
    report = dense_caption_scores(gt, captions, objects, references, suppress=False)
    keys = sorted(f"{SCENE}|{o}|{names[o]}" for o in REFERENCES)
    plain, _ = standard_scores({k: references[SCENE][int(k.split("|")[1])].captions for k in keys},
                               {k: [candidate_text(own[int(k.split("|")[1])])] for k in keys})
    assert report.matched == {"0.25": 7, "0.5": 7}
    for k in ("0.25", "0.5"):
        for name in ("Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"):
            assert report.metrics[f"{name}@{k}"] == pytest.approx(plain[name], rel=1e-12)


def test_jittered_proposals_score_lower_as_iou_falls():
    _, objects, entries = scene_inputs()
    references = scanrefer_references(entries)
    gt = ground_truth_proposals(objects)
    captions = {SCENE: [" ".join(REFERENCES[o][0]) if o in REFERENCES else "a door ."
                        for o in objects[SCENE].object_ids.tolist()]}
    cider, matched = [], []
    for shift in (0.0, 0.2, 0.45):  # along x: IoU 1, then about 0.67 / 0.45 for unit boxes, lower for wider ones
        moved = SceneBoxes(boxes=gt[SCENE].boxes + [shift, 0, 0, 0, 0, 0], scores=gt[SCENE].scores,
                           class_ids=gt[SCENE].class_ids, is_object=gt[SCENE].is_object)
        report = dense_caption_scores({SCENE: moved}, captions, objects, references, thresholds=(0.5,),
                                      suppress=False)
        cider.append(report.metrics["CIDEr@0.5"])
        matched.append(report.matched["0.5"])
    assert matched[0] == 7 and matched[2] < matched[1] <= matched[0]
    assert cider[0] > cider[2] and cider[0] >= cider[1] >= cider[2]


def good_file() -> dict:
    return {"box_format": "center_size",
            "scenes": {SCENE: {"boxes": [[10, 0, 0.5, 1, 1, 1]], "scores": [0.9], "class_ids": [1]}}}


@pytest.mark.parametrize("fault, change", [
    ("box_format", lambda d: d.update(box_format="min_max")),
    ("shape [1, 5]", lambda d: d["scenes"][SCENE].update(boxes=[[10, 0, 0.5, 1, 1]])),
    ("not positive", lambda d: d["scenes"][SCENE].update(boxes=[[10, 0, 0.5, 1, 0, 1]])),
    ("scores", lambda d: d["scenes"][SCENE].update(scores=[1.5])),
    ("lacks ['class_ids']", lambda d: d["scenes"][SCENE].pop("class_ids")),
    ("NaN", lambda d: d["scenes"][SCENE].update(boxes=[[10, 0, float("nan"), 1, 1, 1]])),
    ("is_object", lambda d: d["scenes"][SCENE].update(is_object=[1])),
])
def test_reader_rejects_a_malformed_file_naming_it(tmp_path, fault, change):
    data = good_file()
    change(data)
    path = tmp_path / "broken_proposals.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProposalsError) as error:
        read_proposals(path)
    assert str(path) in str(error.value) and fault in str(error.value)
    path.write_text('{"box_format": "center_size", "scenes": {')  # truncated
    with pytest.raises(ValueError, match="broken_proposals.json"):
        read_proposals(path)


def test_tool_scores_precomputed_captions(tmp_path):
    proposals, objects, entries = scene_inputs()
    root = tmp_path / "scannet_data"
    root.mkdir()
    rows = [[*c, *s, cls, o] for o, _, c, s, cls in OBJECTS]
    np.save(root / f"{SCENE}_aligned_bbox.npy", np.array(rows, dtype=np.float32))
    np.save(root / f"{SCENE}_aligned_vert.npy", scene_points().astype(np.float32))
    (tmp_path / "scanrefer.json").write_text(json.dumps(entries))
    write_proposals(tmp_path / "proposals.json", proposals)
    assert read_proposals(tmp_path / "proposals.json")[SCENE].is_object.tolist() == [p[4] for p in PROPOSALS]
    (tmp_path / "captions.json").write_text(json.dumps({SCENE: [p[5] for p in PROPOSALS]}))
    out = tmp_path / "out" / "metrics.json"
    eval_dense_captions.main(["--scanrefer", str(tmp_path / "scanrefer.json"), "--scannet-data-root", str(root),
                              "--proposals", str(tmp_path / "proposals.json"),
                              "--captions", str(tmp_path / "captions.json"), "--out", str(out)])
    metrics = json.loads(out.read_text())["metrics"]
    for name, value in VOTE2CAP_PUBLIC.items():
        assert metrics[name] == pytest.approx(value, rel=1e-6), name  # the boxes went through float32


def test_tool_captions_ground_truth_boxes_with_the_tiny_model(tiny_world, tmp_path):
    from tests.conftest import REPO, tiny_demo_options

    out = tmp_path / "metrics.json"
    result = eval_dense_captions.main([
        "--scanrefer", str(tiny_world / "scanrefer" / "ScanRefer_filtered_val.json"),
        "--scannet-data-root", str(tiny_world / "scanrefer" / "scannet_data"), "--proposals", "gt",
        "--cfg-path", str(REPO / "configs" / "demo" / "regionblip_tiny.yaml"), "--batch-size", "4",
        "--out", str(out), "--options", *tiny_demo_options(tiny_world)])
    captions = json.loads((tmp_path / "metrics_captions.json").read_text())
    assert captions and all(all(isinstance(c, str) for c in scene) for scene in captions.values())
    # every annotated object is matched by its own box at both thresholds
    assert result["matched_objects"] == {"0.25": result["objects"], "0.5": result["objects"]} and result["objects"]
    assert json.loads(out.read_text())["metrics"].keys() >= {"CIDEr@0.25", "CIDEr@0.5", "Bleu_4@0.5"}
