"""ScanRefer: a ScanNet scene's points, one referred object's 3D box, and its description.

On disk (the layout ScanRefer's `data/scannet/batch_load_scannet_data.py` or tools/preprocess_scannet.py writes):
    {annotation_root}/ScanRefer_filtered_{split}.json   [{scene_id, object_id, object_name, ann_id, description,
                                                         token}, ...]; object_id is ScanNet's 0-based objectId
    {scannet_data_root}/{scene_id}_aligned_vert.npy     [N, 9] float: xyz, rgb (0-255), normals (axis-aligned)
    {scannet_data_root}/{scene_id}_aligned_bbox.npy     [K, 8] float: cx cy cz dx dy dz nyu40_label object_id
A scene given as a mesh instead (`scene_mesh_pattern`, e.g. "{scene_id}/{scene_id}_vh_clean_2.ply") is read with
plyfile; it must be in the frame of its `_aligned_bbox.npy`.

Items: points (the scene, sampled), region_geometry [24] = the object's 8 box corners (the layout of `region_kind`,
see lavis/models/regionblip/region.py) in the same frame as the points (normalised or raw metres, then augmented),
text_input.
Training: one item per description. Evaluation (`one_item_per_object`): one item per (scene_id, object_id), with
image_id the string "{scene_id}|{object_id}" -- the id tools/prepare_eval_scanrefer.py writes in the ground truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
from torch.utils.data import Dataset

from lavis.datasets.annotation_io import AnnotationError, load_array, parsing, read_json
from lavis.datasets.base import BadSampleError
from lavis.datasets.datasets.objaverse import log_skipped
from lavis.processors.point_processors import PointCloudError, PointCloudProcessor, corners_to_geometry
from lavis.processors.region_kinds import corner_layout

ANNOTATION_KEYS = ("scene_id", "object_id", "description")


def object_image_id(scene_id: str, object_id) -> str:
    """The evaluation id of one referred object; shared with tools/prepare_eval_scanrefer.py."""
    return f"{scene_id}|{int(object_id)}"


def coco_ground_truth(entries: list[dict]) -> dict:
    """Annotations with ScanRefer's keys -> COCO caption ground truth: one image per referred object, under its
    `object_image_id`, each description a reference (tools/prepare_eval_scanrefer.py, tools/prepare_eval_nr3d.py)."""
    images: dict[str, None] = {}
    annotations = []
    for entry in entries:
        image_id = object_image_id(entry["scene_id"], entry["object_id"])
        images.setdefault(image_id)
        annotations.append({"image_id": image_id, "id": len(annotations), "caption": str(entry["description"]).strip()})
    return {"images": [{"id": i} for i in images], "annotations": annotations}


def read_scanrefer(path: str | Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """ScanRefer JSON -> (usable annotations, skipped [(id, reason)]): a missing key or empty description is skipped."""
    entries = read_json(path, "ScanRefer JSON")
    if not isinstance(entries, list):
        raise AnnotationError(f"{path}: expected a JSON list of annotations, got {type(entries).__name__}")
    with parsing(path, "ScanRefer JSON"):
        return _read_scanrefer(entries)


def _read_scanrefer(entries: list):
    good, skipped = [], []
    for i, entry in enumerate(entries):
        sid = f"{entry.get('scene_id')}|{entry.get('object_id')}|{entry.get('ann_id', i)}"
        missing = [k for k in ANNOTATION_KEYS if k not in entry]
        if missing:
            skipped.append((sid, f"annotation {i} lacks {missing}"))
        elif not str(entry["description"]).strip():
            skipped.append((sid, "empty description"))
        elif not str(entry["object_id"]).strip().lstrip("-").isdigit():
            skipped.append((sid, f"object_id {entry['object_id']!r} is not an integer"))
        else:
            good.append(entry)
    return good, skipped


def read_ply_vertices(path: Path) -> np.ndarray:
    """A mesh or point .ply -> [N, 3] xyz, or [N, 6] xyz rgb when the vertices carry colour. Raises ValueError
    naming the file when it is no readable .ply or has no vertices with x, y, z."""
    from plyfile import PlyData, PlyParseError

    try:
        ply = PlyData.read(str(path))
    except (PlyParseError, UnicodeDecodeError, EOFError, ValueError) as e:  # a garbage header, truncated rows
        raise ValueError(f"{path}: not a readable .ply file ({type(e).__name__}: {e})") from None
    if "vertex" not in [element.name for element in ply.elements]:
        raise ValueError(f"{path}: the .ply has no 'vertex' element (it holds {[e.name for e in ply.elements]})")
    vertex = ply["vertex"]
    names = set(vertex.data.dtype.names or ())
    if not {"x", "y", "z"} <= names:
        raise ValueError(f"{path}: the .ply vertices lack x, y or z (they have {sorted(names)})")
    if len(vertex.data) == 0:
        raise ValueError(f"{path}: the .ply has no vertices")
    columns = ["x", "y", "z"] + (["red", "green", "blue"] if {"red", "green", "blue"} <= names else [])
    return np.stack([np.asarray(vertex[c], dtype=np.float32) for c in columns], 1)


class ScanRefer(Dataset):
    def __init__(
        self,
        annotation_file: str | Path,
        scannet_data_root: str | Path,
        processor: PointCloudProcessor,
        text_processor: Callable[[str], str],
        one_item_per_object: bool = False,
        scene_mesh_pattern: str = "",
        name: str = "scanrefer",
        region_kind: str = "box3d_corners",
    ):
        self.box_corners = corner_layout(region_kind)  # (centre, size) -> corners, as the model's region kind lays them
        self.data_root = Path(scannet_data_root)
        self.processor, self.text_processor = processor, text_processor
        self.mesh_pattern = scene_mesh_pattern
        entries, self.skipped = self.read_annotations(annotation_file)
        scene_ok: dict[str, Optional[str]] = {}
        self.items: list[dict] = []
        seen: set[tuple[str, int]] = set()
        for entry in entries:
            scene_id, object_id = str(entry["scene_id"]), int(entry["object_id"])
            sample_id = f"{scene_id}|{object_id}|{entry.get('ann_id', len(self.items))}"
            if scene_id not in scene_ok:
                scene_ok[scene_id] = self._missing_files(scene_id)
            if scene_ok[scene_id]:
                self.skipped.append((sample_id, scene_ok[scene_id]))
                continue
            if one_item_per_object:
                if (scene_id, object_id) in seen:
                    continue
                seen.add((scene_id, object_id))
                sample_id = object_image_id(scene_id, object_id)
            self.items.append({"sample_id": sample_id, "scene_id": scene_id, "object_id": object_id,
                               "description": str(entry["description"])})
        log_skipped(name, self.skipped)

    def read_annotations(self, path: str | Path) -> tuple[list[dict], list[tuple[str, str]]]:
        """(annotations with ScanRefer's keys, skipped); Nr3D (lavis/datasets/datasets/nr3d.py) reads its CSV here."""
        return read_scanrefer(path)

    def _points_file(self, scene_id: str) -> Path:
        if self.mesh_pattern:
            return self.data_root / self.mesh_pattern.format(scene_id=scene_id)
        return self.data_root / f"{scene_id}_aligned_vert.npy"

    def _missing_files(self, scene_id: str) -> Optional[str]:
        for path in (self._points_file(scene_id), self.data_root / f"{scene_id}_aligned_bbox.npy"):
            if not path.is_file():
                return f"scene file missing: {path}"
        return None

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, path: Path, sample_id: str) -> np.ndarray:
        try:
            return read_ply_vertices(path) if path.suffix == ".ply" else load_array(path)
        except (OSError, EOFError, ValueError, KeyError) as e:
            raise BadSampleError(sample_id, f"cannot read {path.name}: {type(e).__name__}: {e}") from None

    def object_corners(self, scene_id: str, object_id: int, sample_id: str) -> np.ndarray:
        """The [8, 3] corners of the `_aligned_bbox.npy` row whose last column is `object_id`."""
        boxes = self._load(self.data_root / f"{scene_id}_aligned_bbox.npy", sample_id)
        if boxes.ndim != 2 or boxes.shape[1] < 8:
            raise BadSampleError(sample_id, f"{scene_id}_aligned_bbox.npy has shape {boxes.shape}, expected [K, 8]")
        rows = boxes[np.round(boxes[:, -1]).astype(np.int64) == object_id]
        if len(rows) == 0:
            raise BadSampleError(sample_id, f"object {object_id} is not among the boxes of {scene_id}")
        if not np.isfinite(rows[0, :6]).all():
            raise BadSampleError(sample_id, f"box of object {object_id} in {scene_id} is not finite")
        return self.box_corners(rows[0, :3], rows[0, 3:6]).numpy()

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        sample_id, scene_id = item["sample_id"], item["scene_id"]
        corners = self.object_corners(scene_id, item["object_id"], sample_id)
        vertices = self._load(self._points_file(scene_id), sample_id)
        try:
            points, moved = self.processor(vertices, corners[None])
        except PointCloudError as e:
            raise BadSampleError(sample_id, f"{scene_id}: {e}") from None
        text = self.text_processor(item["description"])
        if not text:
            raise BadSampleError(sample_id, f"description is empty after cleaning: {item['description']!r}")
        return {
            "sample_id": sample_id,
            "image_id": object_image_id(scene_id, item["object_id"]),
            "points": points,
            "region_geometry": corners_to_geometry(moved[0]),
            "text_input": text,
        }
