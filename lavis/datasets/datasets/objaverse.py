"""Objaverse point clouds as ULIP ships them, with Cap3D captions.

On disk:
    {points_root}/{uid}/{uid}_8192.npz     key `arr_0`, [8192, 3] xyz (ULIP)
    {points_root}/{uid}.npy                [N, 3] xyz or [N, 6] xyz rgb (other exports)
    caption_file                           Cap3D CSV, one `uid,caption` per line; the caption may itself contain
                                           commas, so a line is split on its first comma only
The held-out test split: the paper holds out 20k random objects. `heldout_uids` draws them reproducibly from the
sorted uids with a seed; an explicit uid list (`test_uids_file`) or a separate test caption file replaces the draw.
Items: points, text_input, sample_id = image_id = uid (the id in the ground truth of tools/prepare_eval_objaverse.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch.utils.data import Dataset

from lavis.datasets.annotation_io import load_array, parsing, read_lines
from lavis.datasets.base import BadSampleError, cleaned_caption
from lavis.processors.point_processors import PointCloudError, PointCloudProcessor

log = logging.getLogger(__name__)

DEFAULT_FILE_PATTERNS = ("{uid}/{uid}_8192.npz", "{uid}.npz", "{uid}.npy", "{uid}/{uid}.npy")


def read_cap3d_captions(path: str | Path) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Cap3D CSV -> ({uid: caption}, skipped [(line id, reason)]); splits each line on its first comma only."""
    captions: dict[str, str] = {}
    skipped: list[tuple[str, str]] = []
    with parsing(path, "a Cap3D CSV of `uid,caption` lines"), Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            uid, sep, caption = line.partition(",")
            uid, caption = uid.strip(), _unquote(caption.strip())
            if not sep or not uid:
                skipped.append((f"{Path(path).name}:{number}", "no 'uid,caption' on this line"))
            elif not caption:
                skipped.append((uid, "empty caption"))
            elif uid in captions:
                skipped.append((uid, f"duplicate uid (line {number}); the first caption is kept"))
            else:
                captions[uid] = caption
    return captions, skipped


def _unquote(field: str) -> str:
    """Undo CSV quoting of a field that holds commas or quotes (a doubled quote inside stands for one)."""
    if len(field) >= 2 and field[0] == field[-1] == '"':
        return field[1:-1].replace('""', '"')
    return field


def heldout_uids(uids: Iterable[str], num_test: int, seed: int) -> set[str]:
    """The `num_test` uids held out for testing: a seeded permutation of the sorted uids, independent of file order."""
    ordered = sorted(set(uids))
    if num_test >= len(ordered):
        raise ValueError(f"cannot hold out {num_test} of {len(ordered)} objects for testing; lower num_test")
    order = torch.randperm(len(ordered), generator=torch.Generator().manual_seed(seed))
    return {ordered[i] for i in order[:num_test].tolist()}


def read_uid_list(path: str | Path) -> list[str]:
    return read_lines(path, "one uid per line")


def log_skipped(name: str, skipped: Sequence[tuple[str, str]], examples: int = 5) -> None:
    if skipped:
        shown = "; ".join(f"{sid}: {why}" for sid, why in skipped[:examples])
        log.warning("%s: skipped %d sample(s) while indexing, e.g. %s", name, len(skipped), shown)


class ObjaverseCap3D(Dataset):
    """One item per (object, caption) of the split; a missing point file is counted in `skipped` at index time."""

    def __init__(
        self,
        points_root: str | Path,
        captions: dict[str, str],
        uids: Iterable[str],
        processor: PointCloudProcessor,
        text_processor: Callable[[str], str],
        file_patterns: Sequence[str] = DEFAULT_FILE_PATTERNS,
        check_files: bool = True,
        name: str = "objaverse_cap3d",
        skipped: Optional[list[tuple[str, str]]] = None,
    ):
        self.root = Path(points_root)
        self.processor, self.text_processor = processor, text_processor
        self.patterns = tuple(file_patterns)
        self.skipped: list[tuple[str, str]] = list(skipped or [])
        self.items: list[tuple[str, str, Optional[Path]]] = []
        for uid in sorted(uids):
            if uid not in captions:
                self.skipped.append((uid, "listed for this split but has no caption"))
                continue
            path = self._find(uid) if check_files else None
            if check_files and path is None:
                self.skipped.append((uid, f"no point file under {self.root} matching {list(self.patterns)}"))
                continue
            self.items.append((uid, captions[uid], path))
        log_skipped(name, self.skipped)

    def _find(self, uid: str) -> Optional[Path]:
        for pattern in self.patterns:
            path = self.root / pattern.format(uid=uid)
            if path.is_file():
                return path
        return None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        uid, caption, path = self.items[index]
        path = path or self._find(uid)
        if path is None:
            raise BadSampleError(uid, f"no point file under {self.root} matching {list(self.patterns)}")
        try:
            points, _ = self.processor(load_array(path))
        except (ValueError, PointCloudError) as e:
            raise BadSampleError(uid, f"{path.name}: {e}") from None
        text = cleaned_caption(self.text_processor, caption, uid)
        return {"sample_id": uid, "image_id": uid, "points": points, "text_input": text}
