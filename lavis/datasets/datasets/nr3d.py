"""Nr3D (ReferIt3D): human descriptions of ScanNet objects, read as ScanRefer items over the same scannet_data.

On disk:
    nr3d.csv          ReferIt3D's CSV, one row per utterance. Read: scan_id, target_id (ScanNet's 0-based objectId,
                      the last column of `_aligned_bbox.npy`, as ScanRefer's object_id), instance_type (the object's
                      class name), utterance, assignmentid (the annotation id) and, for `tokens="csv"`, tokens (a
                      Python list literal). Other columns (stimulus_id, correct_guess, speaker_id, listener_id,
                      mentions_target_class, ...) are not used.
    a scan list       the scans of one split: ReferIt3D's referit3d/data/language/nr3d/{train,test}_scans.txt (a JSON
                      list), or one scan id a line (ScanNet's scannetv2_{train,val}.txt, Vote2Cap-DETR's
                      data/nr3d_{train,val}.txt). ReferIt3D's test split is ScanNet's official val
                      (referit3d/in_out/neural_net_oriented.py::scannet_official_train_val); Vote2Cap-DETR and LL3DA
                      call the same scans "val" (Vote2Cap-DETR data/parse_nr3d.py).
    scannet_data/     as for ScanRefer (lavis/datasets/datasets/scanrefer.py).
Items are ScanRefer's (the class below is a ScanRefer that reads the CSV): sample_id "{scan_id}|{target_id}|
{assignmentid}", image_id "{scan_id}|{target_id}" (tools/prepare_eval_nr3d.py writes the ground truth under it).
"""

from __future__ import annotations

import ast
import csv
import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from lavis.datasets.annotation_io import AnnotationError, parsing, read_lines
from lavis.datasets.datasets.scanrefer import ScanRefer
from lavis.processors.point_processors import PointCloudProcessor

REQUIRED_COLUMNS = ("scan_id", "target_id", "instance_type", "utterance")
TOKENIZATIONS = ("vote2cap_detr", "csv")


def read_scan_list(path: str | Path) -> list[str]:
    """A split's scan ids: a JSON list (ReferIt3D's *_scans.txt) or one id a line (ScanNet's scannetv2_*.txt)."""
    lines = read_lines(path, "a scan list (a JSON list or one scan id a line)")
    text = " ".join(lines)
    if text.startswith("["):
        with parsing(path, "a JSON list of scan ids"):
            scans = json.loads(text)
        if not (isinstance(scans, list) and all(isinstance(s, str) for s in scans)):
            raise AnnotationError(f"{path}: expected a JSON list of scan ids such as [\"scene0011_00\", ...]")
        return scans
    return lines


def vote2cap_detr_tokens(utterance: str) -> list[str]:
    """The reference tokens Vote2Cap-DETR (and LL3DA) score Nr3D against (data/parse_nr3d.py::parse_tokens):
    lowercase, every character other than a-z and 0-9 its own token. Whitespace-only tokens are dropped here, where
    that code would keep a tab or newline: the caption scorers split on whitespace, so the scored text is the same."""
    return re.sub(r"([^a-z0-9])", r" \1 ", utterance.lower()).split()


def csv_tokens(value: str) -> list[str]:
    """ReferIt3D's own tokenisation, the CSV's `tokens` column (a list literal), as Scan2Cap reads it
    (scripts/organize_referit3d.py)."""
    tokens = ast.literal_eval(value)
    if not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
        raise ValueError("not a list of strings")
    return tokens


def read_nr3d(path: str | Path, scans: Iterable[str], tokens: str = "vote2cap_detr"
              ) -> tuple[list[dict], list[tuple[str, str]]]:
    """The rows of `path` whose scan is in `scans`, as ScanRefer annotations {scene_id, object_id, object_name,
    ann_id, description, token}, and the skipped [(sample id, reason)]: an empty utterance, a target_id that is no
    integer, unreadable tokens. `tokens` chooses the reference tokens: "vote2cap_detr" (from the utterance) or "csv"."""
    if tokens not in TOKENIZATIONS:
        raise ValueError(f"tokens must be one of {TOKENIZATIONS}, got {tokens!r}")
    wanted = set(scans)
    with parsing(path, "ReferIt3D's Nr3D CSV"), _csv_errors(path):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            needed = REQUIRED_COLUMNS + (("tokens",) if tokens == "csv" else ())
            missing = [c for c in needed if c not in columns]
            if missing:
                raise AnnotationError(f"{path}: lacks the column(s) {missing} (its header: {columns}); expected "
                                      "ReferIt3D's nr3d.csv")
            return _read_rows(reader, wanted, tokens)


@contextmanager
def _csv_errors(path: str | Path) -> Iterator[None]:
    try:
        yield
    except csv.Error as e:  # e.g. an unterminated quote; not among the errors `parsing` names
        raise AnnotationError(f"{path}: cannot be read as ReferIt3D's Nr3D CSV: {e}") from e


def _read_rows(rows: Iterable[dict], scans: set[str], tokens: str) -> tuple[list[dict], list[tuple[str, str]]]:
    good, skipped = [], []
    for i, row in enumerate(rows):
        scene = (row["scan_id"] or "").strip()
        if scene not in scans:
            continue  # another split's scan
        target, ann_id = (row["target_id"] or "").strip(), (row.get("assignmentid") or "").strip() or f"row{i}"
        sid = f"{scene}|{target}|{ann_id}"
        utterance = (row["utterance"] or "").strip()
        if not utterance:
            skipped.append((sid, f"row {i + 2}: empty utterance"))  # +2: the header is line 1
            continue
        if not target.lstrip("-").isdigit():
            skipped.append((sid, f"row {i + 2}: target_id {target!r} is not an integer"))
            continue
        try:
            token = vote2cap_detr_tokens(utterance) if tokens == "vote2cap_detr" else csv_tokens(row["tokens"] or "")
        except (ValueError, SyntaxError) as e:
            skipped.append((sid, f"row {i + 2}: tokens {row['tokens']!r} are not a list of strings ({e})"))
            continue
        good.append({"scene_id": scene, "object_id": int(target), "object_name": (row["instance_type"] or "").strip(),
                     "ann_id": ann_id, "description": utterance, "token": token})
    return good, skipped


class Nr3D(ScanRefer):
    """ScanRefer's items, scenes and skips, with the annotations read from Nr3D's CSV for the scans of one split."""

    def __init__(
        self,
        csv_file: str | Path,
        split_scans: Iterable[str],
        scannet_data_root: str | Path,
        processor: PointCloudProcessor,
        text_processor: Callable[[str], str],
        one_item_per_object: bool = False,
        scene_mesh_pattern: str = "",
        name: str = "nr3d",
        region_kind: str = "box3d_corners",
    ):
        self.split_scans = frozenset(split_scans)  # before ScanRefer's indexing, which calls read_annotations
        super().__init__(csv_file, scannet_data_root, processor, text_processor,
                         one_item_per_object=one_item_per_object, scene_mesh_pattern=scene_mesh_pattern, name=name,
                         region_kind=region_kind)

    def read_annotations(self, path: str | Path) -> tuple[list[dict], list[tuple[str, str]]]:
        return read_nr3d(path, self.split_scans)
