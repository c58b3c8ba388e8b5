"""Scan2Cap's m@kIoU dense-captioning metrics for 3D proposals, with the rules of the public evaluation code.

Each annotated object of a scene is given the caption of the proposal that matches it (IoU above k) or, unmatched,
a placeholder; the captions are then scored against the object's references with pycocoevalcap's scorers
(BLEU-1..4, METEOR, ROUGE_L, CIDEr). `protocol` names a rule set:

- `vote2cap_detr` (default): Vote2Cap-DETR's `engine.py::evaluate_caption` (ch3cook-fdu/Vote2Cap-DETR @ 90d56dc),
  copied unchanged into LL3DA's `eval_utils/evaluate_densecap.py` (Open3DA/LL3DA); the numbers of both papers and of
  most later 3D dense-captioning work come from it.
- `scan2cap`: Scan2Cap's `lib/eval_helper.py::feed_scene_cap` / `eval_cap` (daveredrum/Scan2Cap @ b9e9610).
- `vote2cap_detr_zero_unmatched`: Vote2Cap-DETR's matching with the paper formula m@kIoU = 1/N sum_i m_i u_i
  (Scan2Cap, Sec. 5): each object's own score, 0 for an unmatched one, averaged over the N objects.

The rules, with where each one is in the public code (V = Vote2Cap-DETR, S = Scan2Cap, L = LL3DA):
1. A reference is "sos " + its first 30 ScanRefer tokens joined by spaces + " eos" (V engine.py:77,88-89;
   S lib/eval_helper.py:39-44, lib/config.py:63 MAX_DES_LEN = 30; L evaluate_densecap.py:70,81-82).
2. A candidate is "sos " + caption + " eos" (V models/captioner_dcc/captioner.py:352; S decode_caption,
   eval_helper.py:56-67; L :198 also collapses double spaces). No PTB tokenisation anywhere: the scorers split on
   whitespace (V engine.py:27-32 and S eval_helper.py:477-480 call them on the raw strings). Here runs of whitespace
   are collapsed to one space, which is what the scorers' split() sees and keeps METEOR's line protocol intact.
3. An unmatched object gets the candidate "sos eos", which is scored like any other (V engine.py:455-456;
   S eval_helper.py:69-79); under `vote2cap_detr_zero_unmatched` it scores 0 instead.
4. Boxes are axis-aligned; IoU = inter / (vol_a + vol_b - inter + 1e-8) (V utils/box_util.py:764-790;
   S utils/box_util.py:183-209).
5. Proposals kept for matching: boxes holding fewer than 5 points are dropped, unless all are, then the one with the
   highest objectness is kept (V utils/proposal_parser.py:94-107); then per-class 3D NMS by objectness, keeping the
   highest and suppressing boxes of the same class with IoU > 0.25 (strict, no epsilon)
   (V proposal_parser.py:33,177-213, utils/nms.py:120-162; S eval_helper.py:179-191). V also drops proposals whose
   class is "no object" (engine.py:390-392): here `is_object` false; they still take part in NMS, as there.
   S instead keeps only proposals with objectness argmax 1, i.e. probability > 0.5 (eval_helper.py:194-198).
6. Threshold: IoU > k, strictly (V engine.py:389; S eval_helper.py:219), k in {0.25, 0.5} (V main.py:100 default 0.5,
   S scripts/eval.py:249 default 0.25; the papers report both).
7. Matching, V: each proposal goes to the ground-truth box of highest IoU (engine.py:370-386; ties: the first box);
   an object keeps, of the proposals that went to it above k, the one of highest IoU, the earlier on a tie (strict >
   against the best so far, engine.py:424-428). A proposal whose best box is an object without references is dropped,
   not passed to its second best (engine.py:421-422, 458-462 drop keys ending in "unknown").
   S: each proposal goes to the ground-truth box whose centre is nearest (VoteNet's object_assignment,
   lib/loss_helper.py:84-111, from the proposal's vote centroid, for which the box centre stands in here), is kept if
   its IoU with that box is > k, and the last such proposal overwrites earlier ones (eval_helper.py:200-240).
   (S's VoteNet assignment also sees the zero padding boxes at the origin; this implementation does not.)
8. Scores: pycocoevalcap's Bleu(4), Meteor, Rouge, Cider `compute_score` over every annotated object (V engine.py:
   459-465, S eval_helper.py:462-480): BLEU-n is the corpus BLEU, METEOR the jar's corpus score, ROUGE_L and CIDEr the
   mean over objects (CIDEr's document frequencies from all objects' references). Objects are keyed
   "scene|object_id|object_name" and sorted (V engine.py:459-462).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from lavis.common.caption_metrics import standard_scores

IOU_THRESHOLDS = (0.25, 0.5)
PLACEHOLDER = "sos eos"
METRIC_NAMES = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
IOU_EPS = 1e-8  # rule 4


@dataclass(frozen=True)
class Protocol:
    matching: str  # "best_iou" (rule 7, V) or "nearest_centre_last" (rule 7, S)
    unmatched: str  # "placeholder" (rule 3) or "zero"
    min_objectness: Optional[float]  # S keeps objectness > 0.5; None: V's "no object" class filter (is_object)
    nms_iou: float = 0.25  # rule 5
    min_points_in_box: int = 5  # rule 5
    reference_max_tokens: int = 30  # rule 1


PROTOCOLS = {
    "vote2cap_detr": Protocol(matching="best_iou", unmatched="placeholder", min_objectness=None),
    "scan2cap": Protocol(matching="nearest_centre_last", unmatched="placeholder", min_objectness=0.5),
    "vote2cap_detr_zero_unmatched": Protocol(matching="best_iou", unmatched="zero", min_objectness=None),
}


def protocol_rules(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown dense-caption protocol '{name}'; known: {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


@dataclass
class SceneBoxes:
    """Axis-aligned boxes of one scene as centre (x, y, z) and full size (dx, dy, dz), [N, 6]. Proposals also carry
    objectness `scores` in [0, 1], integer `class_ids` (NMS suppresses within a class) and `is_object` (false: the
    detector's "no object" class, never matched). Ground truth carries `object_ids` (ScanNet's objectId)."""

    boxes: np.ndarray
    scores: Optional[np.ndarray] = None
    class_ids: Optional[np.ndarray] = None
    is_object: Optional[np.ndarray] = None
    object_ids: Optional[np.ndarray] = None


def min_max(boxes: np.ndarray) -> np.ndarray:
    """[N, 6] centre + size -> [N, 6] (x_min, y_min, z_min, x_max, y_max, z_max)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    return np.concatenate([boxes[:, :3] - boxes[:, 3:] / 2, boxes[:, :3] + boxes[:, 3:] / 2], 1)


def box_iou_3d(a: np.ndarray, b: np.ndarray, eps: float = IOU_EPS) -> np.ndarray:
    """IoU of every box of `a` [P, 6] with every box of `b` [G, 6] (centre + size), [P, G] at once."""
    a, b = min_max(a)[:, None], min_max(b)[None]
    overlap = np.clip(np.minimum(a[..., 3:], b[..., 3:]) - np.maximum(a[..., :3], b[..., :3]), 0, None)
    inter = overlap.prod(-1)
    volume_a, volume_b = (a[..., 3:] - a[..., :3]).prod(-1), (b[..., 3:] - b[..., :3]).prod(-1)
    return inter / (volume_a + volume_b - inter + eps)


def points_in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """How many of `points` [N, >=3] lie in each box [P, 6] (bounds inclusive), [P]."""
    bounds = min_max(boxes)
    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    inside = (xyz[None] >= bounds[:, None, :3]) & (xyz[None] <= bounds[:, None, 3:])
    return inside.all(-1).sum(1)


def class_nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by per-class NMS: highest score first, suppressing same-class boxes with IoU > threshold."""
    order = np.argsort(scores)  # ascending, the last is taken next: V utils/nms.py:131-136
    iou = box_iou_3d(boxes, boxes, eps=0.0)
    picked = []
    while order.size:
        best = order[-1]
        picked.append(int(best))
        rest = order[:-1]
        suppressed = (iou[best, rest] > threshold) & (class_ids[rest] == class_ids[best])
        order = rest[~suppressed]
    return np.array(sorted(picked), dtype=np.int64)


def kept_proposals(proposals: SceneBoxes, protocol: Protocol, points: Optional[np.ndarray] = None,
                   suppress: bool = True) -> np.ndarray:
    """Boolean [P]: the proposals that may be matched (rule 5). `points` (the scene's cloud) enables the empty-box
    rule; `suppress=False` skips NMS and the empty-box rule (ground-truth boxes as proposals)."""
    count = len(proposals.boxes)
    keep = np.zeros(count, dtype=bool)
    if count == 0:
        return keep
    if not suppress:
        keep[:] = True
    else:
        candidates = np.arange(count)
        if points is not None:
            nonempty = points_in_boxes(points, proposals.boxes) >= protocol.min_points_in_box
            candidates = np.flatnonzero(nonempty) if nonempty.any() else np.array([np.argmax(proposals.scores)])
        picked = class_nms(proposals.boxes[candidates], proposals.scores[candidates],
                           proposals.class_ids[candidates], protocol.nms_iou)
        keep[candidates[picked]] = True
    if protocol.min_objectness is None:
        keep &= proposals.is_object.astype(bool)
    else:
        keep &= proposals.scores > protocol.min_objectness
    return keep


def match_objects(proposals: SceneBoxes, objects: SceneBoxes, keep: np.ndarray, threshold: float,
                  protocol: Protocol, annotated: set[int]) -> dict[int, int]:
    """object id -> index of the proposal whose caption it gets (rule 7), for the annotated objects matched."""
    if len(proposals.boxes) == 0 or len(objects.boxes) == 0:
        return {}
    iou = box_iou_3d(proposals.boxes, objects.boxes)
    if protocol.matching == "best_iou":
        assigned = iou.argmax(1)
    else:
        centres = np.asarray(proposals.boxes, dtype=np.float64)[:, None, :3]
        assigned = np.linalg.norm(centres - np.asarray(objects.boxes, dtype=np.float64)[None, :, :3], axis=-1).argmin(1)
    best_iou: dict[int, float] = {}
    matched: dict[int, int] = {}
    for p in np.flatnonzero(keep):
        g = int(assigned[p])
        value = float(iou[p, g])
        object_id = int(objects.object_ids[g])
        if value <= threshold or object_id not in annotated:
            continue
        if protocol.matching == "nearest_centre_last" or value > best_iou.get(object_id, 0.0):
            best_iou[object_id], matched[object_id] = value, int(p)
    return matched


def reference_text(tokens: list[str], max_tokens: int) -> str:
    return " ".join(["sos", *tokens[:max_tokens], "eos"])  # rule 1


def candidate_text(caption: str) -> str:
    return " ".join(["sos", *caption.split(), "eos"])  # rule 2


@dataclass
class ObjectReferences:
    name: str
    captions: list[str]  # reference texts, already "sos ... eos"


def scanrefer_references(entries: list[dict], max_tokens: int = 30) -> dict[str, dict[int, ObjectReferences]]:
    """ScanRefer annotations [{scene_id, object_id, object_name, token}] -> scene -> object id -> references."""
    references: dict[str, dict[int, ObjectReferences]] = {}
    for i, entry in enumerate(entries):
        missing = [k for k in ("scene_id", "object_id", "object_name", "token") if k not in entry]
        if missing:
            raise ValueError(f"ScanRefer annotation {i} lacks {missing}; the protocol's references are its tokens")
        scene = references.setdefault(str(entry["scene_id"]), {})
        obj = scene.setdefault(int(entry["object_id"]), ObjectReferences(str(entry["object_name"]), []))
        obj.captions.append(reference_text([str(t) for t in entry["token"]], max_tokens))
    return references


@dataclass
class DenseCaptionReport:
    metrics: dict[str, float]  # "CIDEr@0.5" ... in [0, 1] (CIDEr can exceed 1)
    matched: dict[str, int]  # "0.5" -> objects matched at that threshold
    num_objects: int
    protocol: str
    per_object: dict[str, dict[str, Any]] = field(default_factory=dict)  # "k" -> object key -> caption, scores

    def to_json(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "metrics": self.metrics, "objects": self.num_objects,
                "matched_objects": self.matched}


def object_key(scene_id: str, object_id: int, name: str) -> str:
    return f"{scene_id}|{object_id}|{name}"  # rule 8


def dense_caption_scores(
    proposals: dict[str, SceneBoxes],
    captions: dict[str, list[Optional[str]]],
    objects: dict[str, SceneBoxes],
    references: dict[str, dict[int, ObjectReferences]],
    protocol: str = "vote2cap_detr",
    thresholds: tuple[float, ...] = IOU_THRESHOLDS,
    points: Optional[dict[str, np.ndarray]] = None,
    suppress: bool = True,
) -> DenseCaptionReport:
    """m@kIoU for every k of `thresholds`. `captions[scene][p]` is proposal p's caption (None: not captioned; only
    proposals kept by rule 5 need one); `objects[scene]` all ground-truth boxes of the scene (annotated or not);
    `references` the annotated objects, every one of which is scored (a scene without proposals matches nothing)."""
    rules = protocol_rules(protocol)
    missing_objects = [s for s in references if s not in objects]
    if missing_objects:
        raise ValueError(f"{len(missing_objects)} annotated scenes have no ground-truth boxes, "
                         f"e.g. {missing_objects[:5]}")
    keys = sorted((object_key(s, o, r.name), s, o) for s, objs in references.items() for o, r in objs.items())
    kept = {s: kept_proposals(proposals[s], rules, None if points is None else points.get(s), suppress)
            for s in references if s in proposals}
    metrics: dict[str, float] = {}
    matched_counts: dict[str, int] = {}
    per_object: dict[str, dict[str, Any]] = {}
    for k in thresholds:
        candidates: dict[str, list[str]] = {}
        matched_keys = set()
        for s, keep in kept.items():
            annotated = set(references[s])
            for object_id, p in match_objects(proposals[s], objects[s], keep, k, rules, annotated).items():
                caption = captions.get(s, [])[p] if p < len(captions.get(s, [])) else None
                if caption is None:
                    raise ValueError(f"scene {s}: proposal {p} is matched to object {object_id} at IoU > {k} but "
                                     "has no caption")
                candidates[object_key(s, object_id, references[s][object_id].name)] = [candidate_text(caption)]
        for key, _, _ in keys:
            if key in candidates:
                matched_keys.add(key)
            else:
                candidates[key] = [PLACEHOLDER]
        gts = {key: references[s][o].captions for key, s, o in keys}
        res = {key: candidates[key] for key, _, _ in keys}
        corpus, per_image = standard_scores(gts, res)
        if rules.unmatched == "zero":
            corpus = {name: sum(per_image[key][name] for key in matched_keys) / len(keys) for name in METRIC_NAMES}
        for name in METRIC_NAMES:
            metrics[f"{name}@{k:g}"] = float(corpus[name])
        matched_counts[f"{k:g}"] = len(matched_keys)
        per_object[f"{k:g}"] = {key: {"caption": res[key][0], "matched": key in matched_keys, **per_image[key]}
                                for key, _, _ in keys}
    return DenseCaptionReport(metrics=metrics, matched=matched_counts, num_objects=len(keys), protocol=protocol,
                              per_object=per_object)


def format_table(report: DenseCaptionReport) -> str:
    """The metrics x100, one threshold per column, as the papers print them."""
    ks = list(report.matched)
    lines = [f"{'metric':<8}" + "".join(f"  {'@' + k + 'IoU':>9}" for k in ks)]
    for name in METRIC_NAMES:
        lines.append(f"{name:<8}" + "".join(f"  {100 * report.metrics[f'{name}@{k}']:9.2f}" for k in ks))
    lines.append(f"{'matched':<8}" + "".join(f"  {report.matched[k]:>4}/{report.num_objects:<4}" for k in ks))
    return "\n".join(lines) + f"\n(protocol {report.protocol})"
