"""Nr3D (ReferIt3D's nr3d.csv + its scan lists) over ScanRefer's scannet_data/, on a miniature CSV and two scenes
written in the real formats: items, skips, ids shared with the ground-truth converter and the dense-caption tool."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lavis.common.config_schema import config_from_dict
from lavis.common.registry import DATASET_BUILDERS
from lavis.datasets.annotation_io import AnnotationError
from lavis.datasets.base import BadSampleError
from lavis.datasets.builders.point_builders import Nr3DBuilder, ScanReferBuilder
from lavis.datasets.datasets.nr3d import read_nr3d, read_scan_list, vote2cap_detr_tokens
from tests.datasets.test_point_datasets import write_scene
from tools import eval_dense_captions, prepare_eval_nr3d

# nr3d.csv's header, in ReferIt3D's order; the reader uses scan_id, target_id, instance_type, utterance,
# assignmentid and tokens, and ignores the rest
HEADER = ["assignmentid", "stimulus_id", "utterance", "correct_guess", "speaker_id", "listener_id", "scan_id",
          "instance_type", "target_id", "tokens", "mentions_target_class", "uses_object_lang", "uses_spatial_lang",
          "uses_color_lang", "uses_shape_lang", "dataset"]
TRAIN_SCAN, TEST_SCAN = "scene0000_00", "scene0001_00"


def row(assignment: str, scan: str, target, instance: str, utterance: str, tokens=None) -> dict:
    tokens = utterance.lower().replace(",", "").split() if tokens is None else tokens
    return {"assignmentid": assignment, "stimulus_id": f"{scan}-{instance}-2-{target}-1", "utterance": utterance,
            "correct_guess": "True", "speaker_id": "s1", "listener_id": "l1", "scan_id": scan,
            "instance_type": instance, "target_id": str(target), "tokens": repr(tokens),
            "mentions_target_class": "True", "uses_object_lang": "True", "uses_spatial_lang": "True",
            "uses_color_lang": "False", "uses_shape_lang": "False", "dataset": "nr3d"}


ROWS = [
    row("a1", TRAIN_SCAN, 3, "chair", "The brown chair, next to the table."),
    row("a2", TRAIN_SCAN, 9, "lamp", "A lamp that is not among the boxes."),
    row("a3", "scene0999_00", 1, "door", "A scan in the split that was never exported."),
    row("a4", TEST_SCAN, 3, "chair", "The chair by the table's corner."),
    row("a5", TEST_SCAN, 3, "chair", "Small brown chair"),
    row("a6", TEST_SCAN, 7, "table", "the long table"),
    row("a7", TEST_SCAN, 7, "table", "   "),
    row("a8", TEST_SCAN, "x7", "table", "A target id that is no number."),
    row("a9", "scene0500_00", 2, "sofa", "A scan of neither split."),
]


def write_nr3d(root: Path, rows: list[dict] = ROWS) -> dict:
    """nr3d.csv, ReferIt3D's {train,test}_scans.txt (JSON lists) and scannet_data/ with two exported scenes."""
    data_root = root / "scannet_data"
    data_root.mkdir(parents=True)
    write_scene(data_root, TRAIN_SCAN, np.random.default_rng(0))
    write_scene(data_root, TEST_SCAN, np.random.default_rng(1))
    with (root / "nr3d.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HEADER)
        writer.writeheader()
        writer.writerows(rows)
    (root / "train_scans.txt").write_text(json.dumps([TRAIN_SCAN, "scene0999_00"]))
    (root / "test_scans.txt").write_text(json.dumps([TEST_SCAN]))
    return {"csv_file": str(root / "nr3d.csv"), "scannet_data_root": str(data_root),
            "scan_files": {"train": str(root / "train_scans.txt"), "test": str(root / "test_scans.txt")}}


def nr3d_builder(paths: dict, **kw) -> Nr3DBuilder:
    return Nr3DBuilder(config_from_dict(Nr3DBuilder.Config, {"modality": "pointcloud_region", **paths, **kw}, "test"))


def test_nr3d_items_skips_and_eval_ids(tmp_path):
    paths = write_nr3d(tmp_path)
    builder = nr3d_builder(paths, train_processor={"num_points": 64}, eval_processor={"num_points": 64})
    assert builder.check_paths() == []
    train, test = builder.build("train"), builder.build("test")
    # train: the unexported scan is skipped at index time; the object missing from the boxes fails when read
    assert [it["sample_id"] for it in train.items] == [f"{TRAIN_SCAN}|3|a1", f"{TRAIN_SCAN}|9|a2"]
    assert [sid for sid, _ in train.skipped] == ["scene0999_00|1|a3"]
    assert "scene file missing" in train.skipped[0][1]
    with pytest.raises(BadSampleError, match="object 9 is not among the boxes") as err:
        train[1]
    assert err.value.sample_id == f"{TRAIN_SCAN}|9|a2"
    # test: one item per target object; the blank utterance and the non-integer target are skipped with the CSV row;
    # the scan of neither split is no skip, just another split's
    assert [it["sample_id"] for it in test.items] == [f"{TEST_SCAN}|3", f"{TEST_SCAN}|7"]
    reasons = dict(test.skipped)
    assert set(reasons) == {f"{TEST_SCAN}|7|a7", f"{TEST_SCAN}|x7|a8"}
    assert "row 8: empty utterance" in reasons[f"{TEST_SCAN}|7|a7"]
    assert "row 9: target_id 'x7' is not an integer" in reasons[f"{TEST_SCAN}|x7|a8"]
    item = test[0]
    assert item["image_id"] == f"{TEST_SCAN}|3" and item["text_input"] == "the chair by the table's corner"
    assert item["points"].shape == (64, 3) and item["region_geometry"].shape == (24,)


def test_nr3d_boxes_are_scanrefers_for_the_same_object(tmp_path):
    """target_id names the same `_aligned_bbox.npy` row as ScanRefer's object_id: the same corners, same frame."""
    paths = write_nr3d(tmp_path)
    proc = {"num_points": 300, "sampling": "stride", "use_color": True}
    nr3d_item = nr3d_builder(paths, eval_processor=proc).build("test")[1]  # object 7
    (tmp_path / "ScanRefer_filtered_val.json").write_text(json.dumps([
        {"scene_id": TEST_SCAN, "object_id": "7", "object_name": "table", "ann_id": "0", "description": "a table",
         "token": ["a", "table"]}]))
    scanrefer = ScanReferBuilder(config_from_dict(ScanReferBuilder.Config, {
        "modality": "pointcloud_region", "annotation_root": str(tmp_path),
        "scannet_data_root": paths["scannet_data_root"], "eval_processor": proc}, "test")).build("val")
    assert torch.equal(nr3d_item["region_geometry"], scanrefer[0]["region_geometry"])
    assert torch.equal(nr3d_item["points"], scanrefer[0]["points"])


def test_scan_lists_in_both_formats(tmp_path):
    (tmp_path / "referit3d.txt").write_text('["scene0011_00", "scene0015_00"]')
    (tmp_path / "scannet.txt").write_text("scene0011_00\nscene0015_00\n")
    assert read_scan_list(tmp_path / "referit3d.txt") == read_scan_list(tmp_path / "scannet.txt")
    (tmp_path / "broken.txt").write_text('["scene0011_00", ')
    with pytest.raises(AnnotationError, match="broken.txt"):
        read_scan_list(tmp_path / "broken.txt")
    (tmp_path / "numbers.txt").write_text("[11, 15]")
    with pytest.raises(AnnotationError, match="numbers.txt: expected a JSON list of scan ids"):
        read_scan_list(tmp_path / "numbers.txt")


def test_csv_without_a_needed_column_is_refused_naming_it(tmp_path):
    with (tmp_path / "nr3d.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[c for c in HEADER if c != "target_id"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(ROWS[:2])
    with pytest.raises(AnnotationError, match=r"nr3d.csv: lacks the column\(s\) \['target_id'\]"):
        read_nr3d(tmp_path / "nr3d.csv", [TRAIN_SCAN])


def test_reference_tokens_follow_vote2cap_detr_or_the_csv(tmp_path):
    # Vote2Cap-DETR data/parse_nr3d.py::parse_tokens: lowercase, each non-alphanumeric character its own token
    assert vote2cap_detr_tokens("The chair's back,\tfacing 2 doors.") == [
        "the", "chair", "'", "s", "back", ",", "facing", "2", "doors", "."]
    write_nr3d(tmp_path)
    by_utterance, _ = read_nr3d(tmp_path / "nr3d.csv", [TEST_SCAN])
    from_csv, _ = read_nr3d(tmp_path / "nr3d.csv", [TEST_SCAN], tokens="csv")
    assert by_utterance[0]["token"] == ["the", "chair", "by", "the", "table", "'", "s", "corner", "."]
    assert from_csv[0]["token"] == ["the", "chair", "by", "the", "table's", "corner."]  # the CSV's own column
    broken = [row("b1", TEST_SCAN, 3, "chair", "a chair", tokens=None)]
    broken[0]["tokens"] = "['a', 'chair'"
    (tmp_path / "broken").mkdir()
    write_nr3d(tmp_path / "broken", broken)
    entries, skipped = read_nr3d(tmp_path / "broken" / "nr3d.csv", [TEST_SCAN], tokens="csv")
    assert entries == [] and skipped[0][0] == f"{TEST_SCAN}|3|b1" and "are not a list of strings" in skipped[0][1]


def test_converter_writes_ground_truth_under_the_dataset_ids_and_feeds_dense_captions(tmp_path):
    paths = write_nr3d(tmp_path)
    out = tmp_path / "gt"
    assert prepare_eval_nr3d.main(["-i", paths["csv_file"], "--scans", paths["scan_files"]["test"],
                                   "--split", "test", "--out-dir", str(out)]) == 0
    coco = json.loads((out / "nr3d_test__coco_gt.json").read_text())
    test = nr3d_builder(paths, eval_processor={"num_points": 8}).build("test")
    assert [i["id"] for i in coco["images"]] == [it["sample_id"] for it in test.items]
    assert sorted(a["caption"] for a in coco["annotations"] if a["image_id"] == f"{TEST_SCAN}|3") == [
        "Small brown chair", "The chair by the table's corner."]
    layout = json.loads((out / "nr3d_test.json").read_text())
    assert [(e["object_id"], e["object_name"], e["ann_id"]) for e in layout] == [
        ("3", "chair", "a4"), ("3", "chair", "a5"), ("7", "table", "a6")]

    # the dense-caption tool reads it as it reads ScanRefer: ground-truth boxes, given captions, both objects matched
    boxes = np.load(Path(paths["scannet_data_root"]) / f"{TEST_SCAN}_aligned_bbox.npy")
    given = {3: "a small brown chair", 7: "the long table"}
    (tmp_path / "captions.json").write_text(json.dumps({TEST_SCAN: [given[int(b[-1])] for b in boxes]}))
    result = eval_dense_captions.main([
        "--scanrefer", str(out / "nr3d_test.json"), "--scannet-data-root", paths["scannet_data_root"],
        "--proposals", "gt", "--captions", str(tmp_path / "captions.json"), "--thresholds", "0.5",
        "--out", str(tmp_path / "densecap.json")])
    assert result["objects"] == 2 and result["matched_objects"] == {"0.5": 2}
    per_object = result["per_object"]["0.5"]
    assert set(per_object) == {f"{TEST_SCAN}|3|chair", f"{TEST_SCAN}|7|table"}
    assert per_object[f"{TEST_SCAN}|7|table"]["caption"] == "sos the long table eos"
    assert result["metrics"]["Bleu_1@0.5"] > 0

    (tmp_path / "other_scans.txt").write_text("scene0777_00\n")
    with pytest.raises(SystemExit):  # scan ids that match nothing are refused, not written as empty ground truth
        prepare_eval_nr3d.main(["-i", paths["csv_file"], "--scans", str(tmp_path / "other_scans.txt"),
                                "--out-dir", str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()


def test_check_paths_names_the_missing_scan_file_and_the_builder_is_registered(tmp_path):
    from lavis.common.config import CONFIG_ROOT

    paths = write_nr3d(tmp_path)
    problems = nr3d_builder({**paths, "scan_files": {"train": paths["scan_files"]["train"]}}).check_paths()
    assert len(problems) == 1 and "scan_files.test is not set" in problems[0]
    problems = nr3d_builder({**paths, "csv_file": str(tmp_path / "nope.csv")}).check_paths()
    assert len(problems) == 1 and "csv_file" in problems[0] and "nope.csv" in problems[0]
    assert (CONFIG_ROOT / DATASET_BUILDERS.get("nr3d").DEFAULT_CONFIG).is_file()
