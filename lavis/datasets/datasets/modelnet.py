"""ModelNet40 for zero-shot 3D classification, in either of its common on-disk layouts.

    {data_root}/modelnet40_shape_names.txt              the 40 class names, one per line; line i is label i
    ULIP / Point-BERT pickle:
    {data_root}/modelnet40_{split}_{n}pts_fps.dat       (list of [n, 6] xyz+normals arrays, list of labels ([1] int
                                                        arrays or ints)), read with the restricted unpickler
    plain folders (`modelnet40_normal_resampled`):
    {data_root}/modelnet40_{split}.txt                  shape ids, e.g. airplane_0627 (class = id up to the last _)
    {data_root}/{class}/{shape_id}.txt | .npy           comma-separated xyz[,nx,ny,nz] rows, or an [N, 3+] array
Items: points, label (int), class_name, sample_id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from torch.utils.data import Dataset

from lavis.common.safe_pickle import load_pickle
from lavis.datasets.annotation_io import load_array, read_lines
from lavis.datasets.base import BadSampleError
from lavis.datasets.datasets.objaverse import log_skipped
from lavis.processors.point_processors import PointCloudError, PointCloudProcessor


def read_shape_names(path: str | Path) -> list[str]:
    names = read_lines(path, "one class name per line")
    if not names:
        raise ValueError(f"{path}: no class names")
    return names


def read_modelnet_dat(path: str | Path) -> tuple[list, list[int]]:
    """A ULIP `.dat` -> (point arrays, int labels); the file may only hold plain data (see safe_pickle)."""
    data = load_pickle(path)
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError(f"{path}: expected a pickled (points list, labels list), got {type(data).__name__}")
    points, labels = data
    if len(points) != len(labels):
        raise ValueError(f"{path}: {len(points)} point clouds but {len(labels)} labels")
    return list(points), [int(np.asarray(label).reshape(-1)[0]) for label in labels]


def load_shape_file(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return load_array(path)
    return np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)


class ModelNet40(Dataset):
    def __init__(
        self,
        class_names: list[str],
        processor: PointCloudProcessor,
        *,
        dat_file: Optional[str | Path] = None,
        folder_root: Optional[str | Path] = None,
        split_file: Optional[str | Path] = None,
        name: str = "modelnet40",
    ):
        self.class_names, self.processor = class_names, processor
        self.skipped: list[tuple[str, str]] = []
        self.arrays: Optional[list] = None
        self.items: list[tuple[str, int, int | Path]] = []  # (sample id, label, index into arrays or file)
        if dat_file is not None:
            self._index_dat(Path(dat_file))
        elif folder_root is not None and split_file is not None:
            self._index_folder(Path(folder_root), Path(split_file))
        else:
            raise ValueError("ModelNet40 needs either dat_file or folder_root and split_file")
        log_skipped(name, self.skipped)

    def _index_dat(self, path: Path) -> None:
        self.arrays, labels = read_modelnet_dat(path)
        for i, label in enumerate(labels):
            sample_id = f"{path.stem}/{i}"
            if not 0 <= label < len(self.class_names):
                self.skipped.append((sample_id, f"label {label} outside the {len(self.class_names)} class names"))
                continue
            self.items.append((sample_id, label, i))

    def _index_folder(self, root: Path, split_file: Path) -> None:
        index = {name: i for i, name in enumerate(self.class_names)}
        for shape_id in (line.strip() for line in split_file.read_text().splitlines()):
            if not shape_id:
                continue
            class_name = shape_id.rsplit("_", 1)[0]
            if class_name not in index:
                self.skipped.append((shape_id, f"class '{class_name}' is not in the class names"))
                continue
            path = next((p for p in (root / class_name / f"{shape_id}{ext}" for ext in (".txt", ".npy"))
                         if p.is_file()), None)
            if path is None:
                self.skipped.append((shape_id, f"no {root / class_name / shape_id}.txt or .npy"))
                continue
            self.items.append((shape_id, index[class_name], path))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        sample_id, label, source = self.items[index]
        try:
            raw = load_shape_file(source) if isinstance(source, Path) else self.arrays[source]
            points, _ = self.processor(raw)
        except (OSError, ValueError, PointCloudError) as e:
            raise BadSampleError(sample_id, str(e)) from None
        return {"sample_id": sample_id, "points": points, "label": label, "class_name": self.class_names[label]}
