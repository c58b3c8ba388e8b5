"""Raw ScanNet scans -> the `scannet_data/` arrays ScanRefer reads (same files and columns as ScanRefer's
`data/scannet/batch_load_scannet_data.py`).

    python tools/preprocess_scannet.py --scans data/scannet/scans \
        --label-map data/scannet/meta_data/scannetv2-labels.combined.tsv --out data/scannet/scannet_data \
        [--scene-list meta_data/scannetv2.txt] [--max-points 50000] [--seed 0] [--overwrite]

Reads per scene {scans}/{scene}/: {scene}_vh_clean_2.ply, {scene}.aggregation.json (or the older
{scene}_vh_clean.aggregation.json), {scene}_vh_clean_2.0.010000.segs.json, {scene}.txt (axisAlignment).
Writes per scene into --out:
    {scene}_vert.npy / _aligned_vert.npy   [N, 9] float32: xyz, rgb (0-255), vertex normals; "aligned" has the
                                           scene's axisAlignment matrix applied to xyz
    {scene}_sem_label.npy                  [N] uint32 NYU40 id (0: unannotated)
    {scene}_ins_label.npy                  [N] uint32 instance id = ScanNet objectId + 1 (0: unannotated)
    {scene}_bbox.npy / _aligned_bbox.npy   [K, 8]: cx cy cz dx dy dz nyu40_id objectId, axis-aligned boxes of each
                                           object's vertices (before subsampling); wall, floor and ceiling
                                           (NYU40 1, 2, 22) are dropped when the scene has more than one box
At most --max-points vertices are kept (a seeded random subset), as ScanRefer does. A scene without annotation
(ScanNet's test scenes) gets zero labels and one all-zero box, like ScanRefer's placeholder.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

EXCLUDED_BOX_CLASSES = (1, 2, 22)  # wall, floor, ceiling


def read_label_map(path: Path) -> dict[str, int]:
    """scannetv2-labels.combined.tsv: raw_category -> nyu40id."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or "raw_category" not in rows[0] or "nyu40id" not in rows[0]:
        raise ValueError(f"{path}: expected a tab-separated file with 'raw_category' and 'nyu40id' columns")
    return {row["raw_category"]: int(row["nyu40id"]) for row in rows if row["nyu40id"].strip()}


def vertex_normals(xyz: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Per-vertex normals: the sum of the unit normals of the faces around a vertex, normalised."""
    normals = np.zeros_like(xyz, dtype=np.float64)
    if len(faces):
        tris = xyz[faces].astype(np.float64)
        face_n = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
        face_n /= np.maximum(np.linalg.norm(face_n, axis=1, keepdims=True), 1e-12)
        for corner in range(3):
            np.add.at(normals, faces[:, corner], face_n)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    return normals


def read_mesh(path: Path) -> np.ndarray:
    """[N, 9] float32 xyz rgb normals from a ScanNet `_vh_clean_2.ply`."""
    from plyfile import PlyData

    ply = PlyData.read(str(path))
    vertex = ply["vertex"]
    out = np.zeros((vertex.count, 9), dtype=np.float32)
    for i, name in enumerate(("x", "y", "z", "red", "green", "blue")):
        out[:, i] = vertex[name]
    faces = np.zeros((0, 3), dtype=np.int64)
    if any(e.name == "face" for e in ply.elements) and ply["face"].count:
        faces = np.stack([np.asarray(f, dtype=np.int64)[:3] for f in ply["face"]["vertex_indices"]])
    out[:, 6:] = vertex_normals(out[:, :3], faces)
    return out


def read_axis_alignment(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        if line.strip().startswith("axisAlignment"):
            values = [float(v) for v in line.split("=", 1)[1].split()]
            if len(values) != 16:
                raise ValueError(f"{path}: axisAlignment has {len(values)} numbers, expected 16")
            return np.array(values).reshape(4, 4)
    return None


def vertex_labels(agg_file: Path, seg_file: Path, label_map: dict[str, int], num_verts: int):
    """-> (semantic ids [N], instance ids [N], {instance id: nyu40 id}) from the aggregation and segment files."""
    seg_indices = np.asarray(json.loads(seg_file.read_text())["segIndices"])
    if len(seg_indices) != num_verts:
        raise ValueError(f"{seg_file}: {len(seg_indices)} segment indices for a mesh of {num_verts} vertices")
    sem = np.zeros(num_verts, dtype=np.uint32)
    ins = np.zeros(num_verts, dtype=np.uint32)
    label_of: dict[int, int] = {}
    groups = json.loads(agg_file.read_text())["segGroups"]
    for group in groups:  # semantic labels first, all objects; then instances (as ScanRefer orders them)
        sem[np.isin(seg_indices, group["segments"])] = label_map.get(group["label"], 0)
    for group in groups:
        instance = int(group["objectId"]) + 1
        mask = np.isin(seg_indices, group["segments"])
        ins[mask] = instance
        if mask.any():
            label_of.setdefault(instance, int(sem[mask][0]))
    return sem, ins, label_of


def instance_boxes(xyz: np.ndarray, ins: np.ndarray, label_of: dict[int, int]) -> np.ndarray:
    rows = []
    for instance, label in sorted(label_of.items()):
        pts = xyz[ins == instance]
        if len(pts) == 0:
            continue
        lo, hi = pts.min(0), pts.max(0)
        rows.append([*((lo + hi) / 2), *(hi - lo), label, instance - 1])
    return np.array(rows, dtype=np.float64).reshape(-1, 8)


def export_scene(scan_dir: Path, out_dir: Path, label_map: dict[str, int], max_points: int, seed: int) -> int:
    scene = scan_dir.name
    vertices = read_mesh(scan_dir / f"{scene}_vh_clean_2.ply")
    aligned = vertices.copy()
    matrix = read_axis_alignment(scan_dir / f"{scene}.txt")
    if matrix is not None:
        homogeneous = np.concatenate([vertices[:, :3], np.ones((len(vertices), 1))], 1)
        aligned[:, :3] = (homogeneous @ matrix.T)[:, :3]
    agg = next((p for p in (scan_dir / f"{scene}.aggregation.json", scan_dir / f"{scene}_vh_clean.aggregation.json")
                if p.is_file()), None)
    seg = scan_dir / f"{scene}_vh_clean_2.0.010000.segs.json"
    if agg is not None and seg.is_file():
        sem, ins, label_of = vertex_labels(agg, seg, label_map, len(vertices))
        boxes = instance_boxes(vertices[:, :3], ins, label_of)
        aligned_boxes = instance_boxes(aligned[:, :3], ins, label_of)
        if len(boxes) > 1:
            keep = ~np.isin(boxes[:, -2], EXCLUDED_BOX_CLASSES)
            boxes, aligned_boxes = boxes[keep], aligned_boxes[keep]
    else:  # test scenes carry no annotation
        sem = np.zeros(len(vertices), dtype=np.uint32)
        ins = np.zeros(len(vertices), dtype=np.uint32)
        boxes = aligned_boxes = np.zeros((1, 8))
    if len(vertices) > max_points:
        rng = np.random.default_rng([seed, zlib.crc32(scene.encode())])
        keep_idx = rng.choice(len(vertices), max_points, replace=False)
        vertices, aligned, sem, ins = vertices[keep_idx], aligned[keep_idx], sem[keep_idx], ins[keep_idx]
    prefix = out_dir / scene
    for suffix, array in (("_vert", vertices), ("_aligned_vert", aligned), ("_sem_label", sem),
                          ("_ins_label", ins), ("_bbox", boxes), ("_aligned_bbox", aligned_boxes)):
        np.save(f"{prefix}{suffix}.npy", array)
    return len(boxes)


def scene_dirs(scans: Path, scene_list: Path | None) -> list[Path]:
    if scene_list is not None:
        names = [line.strip() for line in scene_list.read_text().splitlines() if line.strip()]
        return [scans / name for name in names]
    return sorted(p for p in scans.iterdir() if (p / f"{p.name}_vh_clean_2.ply").is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=Path, required=True, help="ScanNet's scans/ folder of {scene}/ directories")
    parser.add_argument("--label-map", type=Path, required=True, help="scannetv2-labels.combined.tsv")
    parser.add_argument("--out", type=Path, required=True, help="output folder (scannet_data/)")
    parser.add_argument("--scene-list", type=Path, default=None, help="scene names, one per line (default: all)")
    parser.add_argument("--max-points", type=int, default=50000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="redo scenes whose output already exists")
    args = parser.parse_args(argv)
    for flag, path, is_dir in (("--scans", args.scans, True), ("--label-map", args.label_map, False),
                               ("--scene-list", args.scene_list, False)):
        if path is not None and not (path.is_dir() if is_dir else path.is_file()):
            parser.error(f"{flag} {path}: no such {'directory' if is_dir else 'file'}")
    label_map = read_label_map(args.label_map)
    scenes = scene_dirs(args.scans, args.scene_list)
    if not scenes:
        parser.error(f"--scans {args.scans}: no {{scene}}/{{scene}}_vh_clean_2.ply found")
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for scan_dir in tqdm(scenes, desc="scenes", unit="scene"):
        if not args.overwrite and (args.out / f"{scan_dir.name}_aligned_bbox.npy").is_file():
            continue
        try:
            export_scene(scan_dir, args.out, label_map, args.max_points, args.seed)
        except (OSError, ValueError, KeyError) as e:
            failed.append(f"{scan_dir.name}: {type(e).__name__}: {e}")
    print(f"exported {len(scenes) - len(failed)} of {len(scenes)} scenes to {args.out}")
    for line in failed:
        print(f"  failed {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
