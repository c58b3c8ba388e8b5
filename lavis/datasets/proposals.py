"""3D box proposals for dense captioning (lavis/common/dense_caption_metrics.py), and the ground-truth boxes.

A proposals file is JSON, boxes in the frame of ScanNet's `{scene_id}_aligned_bbox.npy` (metres, axis-aligned):
    {"box_format": "center_size",
     "scenes": {"scene0011_00": {"boxes": [[cx, cy, cz, dx, dy, dz], ...],   # centre and full size, size > 0
                                 "scores": [0.93, ...],                      # objectness probability in [0, 1]
                                 "class_ids": [4, ...],                      # semantic class; NMS is per class
                                 "is_object": [true, ...]},                  # optional, default all true
                ...}}
`is_object` false marks a proposal the detector classed as "no object": it takes part in NMS but is never matched
(Vote2Cap-DETR's rule). A scene may have no proposals (empty lists). A malformed file raises ProposalsError naming
the file, the scene and the fault.

Captions of proposals (`read_proposal_captions`): {"scene0011_00": ["a brown chair ...", null, ...], ...}, one entry
per proposal in the proposals file's order, null for a proposal not captioned.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lavis.common.dense_caption_metrics import SceneBoxes
from lavis.datasets.annotation_io import AnnotationError, load_array, read_json

BOX_FORMAT = "center_size"


class ProposalsError(AnnotationError):
    pass


def read_proposals(path: str | Path) -> dict[str, SceneBoxes]:
    data = read_json(path, "a proposals JSON file")
    if not isinstance(data, dict) or "scenes" not in data:
        raise ProposalsError(f"{path}: expected a JSON object with 'box_format' and 'scenes'")
    if data.get("box_format") != BOX_FORMAT:
        raise ProposalsError(f"{path}: box_format must be '{BOX_FORMAT}' (cx, cy, cz, dx, dy, dz), "
                             f"got {data.get('box_format')!r}")
    if not isinstance(data["scenes"], dict):
        raise ProposalsError(f"{path}: 'scenes' must map scene ids to proposals, got {type(data['scenes']).__name__}")
    return {str(scene): _scene(path, str(scene), entry) for scene, entry in data["scenes"].items()}


def _scene(path: str | Path, scene: str, entry: Any) -> SceneBoxes:
    where = f"{path}: scene {scene}"
    if not isinstance(entry, dict):
        raise ProposalsError(f"{where}: expected an object with boxes, scores, class_ids")
    missing = [k for k in ("boxes", "scores", "class_ids") if k not in entry]
    if missing:
        raise ProposalsError(f"{where}: lacks {missing}")
    boxes = _numbers(where, "boxes", entry["boxes"], None, 6)
    count = len(boxes)
    scores = _numbers(where, "scores", entry["scores"], count)
    class_ids = _numbers(where, "class_ids", entry["class_ids"], count)
    is_object = entry.get("is_object", [True] * count)
    if not (isinstance(is_object, list) and len(is_object) == count and all(isinstance(v, bool) for v in is_object)):
        raise ProposalsError(f"{where}: is_object must be a list of {count} true/false values")
    if (boxes[:, 3:] <= 0).any():
        row = int(np.flatnonzero((boxes[:, 3:] <= 0).any(1))[0])
        raise ProposalsError(f"{where}: box {row} has a size that is not positive: {boxes[row].tolist()}")
    if ((scores < 0) | (scores > 1)).any():
        raise ProposalsError(f"{where}: scores must be objectness probabilities in [0, 1]")
    if (class_ids != np.round(class_ids)).any():
        raise ProposalsError(f"{where}: class_ids must be integers")
    return SceneBoxes(boxes=boxes, scores=scores, class_ids=class_ids.astype(np.int64),
                      is_object=np.array(is_object, dtype=bool))


def _numbers(where: str, name: str, values: Any, rows: Optional[int], columns: Optional[int] = None) -> np.ndarray:
    """`values` as a float array of `rows` x `columns` (None: any number of rows / a flat list)."""
    try:
        array = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ProposalsError(f"{where}: {name} must hold numbers only") from None
    if columns is not None and array.size == 0:
        array = array.reshape(0, columns)
    good = array.ndim == (1 if columns is None else 2) and (columns is None or array.shape[1] == columns)
    if not good or (rows is not None and len(array) != rows):
        layout = "[[cx, cy, cz, dx, dy, dz], ...]" if columns else f"a list of {rows} numbers, one per box"
        raise ProposalsError(f"{where}: {name} has shape {list(array.shape)}, expected {layout}")
    if not np.isfinite(array).all():
        raise ProposalsError(f"{where}: {name} holds NaN or infinite values")
    return array


def write_proposals(path: str | Path, proposals: dict[str, SceneBoxes]) -> None:
    scenes = {scene: {"boxes": p.boxes.tolist(), "scores": p.scores.tolist(), "class_ids": p.class_ids.tolist(),
                      "is_object": p.is_object.tolist()} for scene, p in proposals.items()}
    Path(path).write_text(json.dumps({"box_format": BOX_FORMAT, "scenes": scenes}))


def read_proposal_captions(path: str | Path, proposals: dict[str, SceneBoxes]) -> dict[str, list[Optional[str]]]:
    data = read_json(path, "a proposal captions JSON file")
    if not isinstance(data, dict):
        raise ProposalsError(f"{path}: expected an object mapping scene ids to lists of captions")
    for scene, captions in data.items():
        if scene not in proposals:
            raise ProposalsError(f"{path}: scene {scene} is not in the proposals")
        count = len(proposals[scene].boxes)
        if not (isinstance(captions, list) and len(captions) == count
                and all(c is None or isinstance(c, str) for c in captions)):
            raise ProposalsError(f"{path}: scene {scene}: expected a list of {count} captions (strings or null), "
                                 "one per proposal")
    return data


def read_scene_objects(scannet_data_root: str | Path, scene_ids: list[str]) -> dict[str, SceneBoxes]:
    """Every ground-truth box of each scene from `{scene_id}_aligned_bbox.npy` ([K, 8]: cx cy cz dx dy dz
    nyu40_label object_id, the file lavis/datasets/datasets/scanrefer.py reads)."""
    objects = {}
    for scene in scene_ids:
        path = Path(scannet_data_root) / f"{scene}_aligned_bbox.npy"
        if not path.is_file():
            raise ProposalsError(f"{path}: no such file (the ground-truth boxes of scene {scene})")
        rows = load_array(path)
        if rows.ndim != 2 or rows.shape[1] < 8 or not np.isfinite(rows[:, :8]).all():
            raise ProposalsError(f"{path}: expected a finite [K, 8] array, got shape {list(rows.shape)}")
        objects[scene] = SceneBoxes(boxes=rows[:, :6].astype(np.float64),
                                    class_ids=np.round(rows[:, 6]).astype(np.int64),
                                    object_ids=np.round(rows[:, 7]).astype(np.int64))
    return objects


def ground_truth_proposals(objects: dict[str, SceneBoxes]) -> dict[str, SceneBoxes]:
    """The ground-truth boxes as proposals (the upper bound: every object has a perfect box); score with
    `suppress=False`, so that NMS and the empty-box rule drop no object."""
    return {scene: SceneBoxes(boxes=o.boxes.copy(), scores=np.ones(len(o.boxes)),
                              class_ids=o.class_ids.copy() if o.class_ids is not None else np.zeros(len(o.boxes), int),
                              is_object=np.ones(len(o.boxes), dtype=bool)) for scene, o in objects.items()}

