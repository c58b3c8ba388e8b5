"""Osprey-724K's JSON files (their structure as CircleRadon/Osprey's osprey/datasets/osprey_724k.py reads them), written
tiny into tmp_path, read into instruction records and items."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lavis.common.registry import DATASET_BUILDERS
from lavis.datasets.builders.instruction_builders import Osprey724kConfig
from lavis.datasets.datasets.instructions import instruction_samples
from lavis.datasets.datasets.osprey import OspreyFileConfig, osprey_image, read_osprey
from lavis.processors.image_processors import BoxImageConfig
from tests.datasets.test_instructions import RECT, H, S, W, compressed_rle, rect_mask, save_image, whiteness

CORNER = (0, 0, 6, 6)  # the second region: a dark corner square
X1, Y1, X2, Y2 = RECT
RECT_POLYGON = [[X1, Y1, X2, Y1, X2, Y2, X1, Y2]]
ANNOTATION = [{"segmentation": RECT_POLYGON, "bbox": [X1, Y1, X2 - X1, Y2 - Y1]},
              {"segmentation": compressed_rle(rect_mask(CORNER)), "bbox": [0, 0, 6, 6]}]
COCO_NAME = "COCO_train2014_000000000001.jpg"


def turns(*texts: str) -> list[dict]:
    return [{"from": ("human", "gpt")[k % 2], "value": text} for k, text in enumerate(texts)]


def write_osprey(root: Path) -> Path:
    conversation = [
        {"file_name": COCO_NAME, "height": H, "width": W, "annotation": ANNOTATION,
         "conversations": turns("What is <region1> next to <region2>?", "<region1> is a white box.",
                                "Is <region2> dark?", "yes", "A question left unanswered?")},
        {"file_name": COCO_NAME, "height": H, "width": W, "annotation": ANNOTATION,
         "conversations": turns("What is <region3>?", "nothing")},
    ]
    lvis = [
        {"file_name": "000000000001.jpg", "height": H, "width": W, "annotation": ANNOTATION,
         "conversations": turns("Is <region2> a cat?", "No", "Is <region1> a box?", "Yes")},
        {"height": H, "width": W, "annotation": ANNOTATION, "conversations": turns("Is <region1> a box?", "Yes")},
    ]
    description = [
        {"file_name": COCO_NAME, "height": H, "width": W, "annotation": ANNOTATION,
         "description": ["<region1>: A white rectangle on black.", "<region2>: A dark corner."]},
        {"file_name": COCO_NAME, "height": H, "width": W, "annotation": ANNOTATION,
         "description": ["<region1>: only one"]},
        {"file_name": COCO_NAME, "height": H, "width": W, "annotation": [{"segmentation": None}],
         "description": ["<region1>: no mask"]},
    ]
    ann = root / "Osprey-724K"
    ann.mkdir(parents=True)
    for name, data in (("osprey_conversation", conversation), ("osprey_lvis_positive_negative", lvis),
                       ("osprey_detail_description", description)):
        (ann / f"{name}.json").write_text(json.dumps(data))
    save_image(root / "coco" / "000000000001.jpg")
    return ann


def test_image_path_follows_osprey_rule():
    assert osprey_image(COCO_NAME) == "000000000001.jpg"
    assert osprey_image("000000000001.jpg") == "000000000001.jpg"


def test_preamble_announces_every_region_and_names_become_words(tmp_path: Path):
    ann = write_osprey(tmp_path)
    records, skipped = read_osprey(ann / "osprey_conversation.json", "preamble", " Be brief.", "<region>",
                                   "Describe {region}.")
    assert skipped == [("osprey_conversation#1", "a turn names <region3> but the record has 2 region(s)")]
    (record,) = records
    assert record.media == "000000000001.jpg"
    assert [r.source for r in record.regions] == ["polygon", "mask"]
    assert record.turns[0][1] == ("There are 2 regions in the picture: region1 <region>, region2 <region>. "
                                  "What is region1 next to region2? Be brief.")
    assert record.turns[1] == ("gpt", "region1 is a white box.")
    assert len(record.turns) == 4  # the unanswered last question is no turn
    samples, left_out = instruction_samples(records, "<region>")
    assert not left_out and [len(s.regions) for s in samples] == [2, 2]


def test_inline_puts_placeholders_where_regions_are_named_in_that_order(tmp_path: Path):
    ann = write_osprey(tmp_path)
    records, skipped = read_osprey(ann / "osprey_lvis_positive_negative.json", "inline", "", "<R>", "{region}")
    assert skipped == [("osprey_lvis_positive_negative#1", "record has no 'file_name'")]
    (record,) = records
    assert record.turns[0][1] == "Is <R> a cat?" and record.turns[2][1] == "Is <R> a box?"
    assert [r.source for r in record.regions] == ["mask", "polygon"]  # region2 is named first
    samples, _ = instruction_samples(records, "<R>")
    assert [[r.source for r in s.regions] for s in samples] == [["mask"], ["mask", "polygon"]]


def test_descriptions_become_one_record_per_region(tmp_path: Path):
    ann = write_osprey(tmp_path)
    records, skipped = read_osprey(ann / "osprey_detail_description.json", "inline", "", "<region>",
                                   "Please describe {region} in detail.")
    assert [r.record_id for r in records] == ["osprey_detail_description#0/0", "osprey_detail_description#0/1"]
    assert records[1].turns == (("human", "Please describe <region> in detail."), ("gpt", "A dark corner."))
    assert records[1].regions[0].source == "mask"
    reasons = dict(skipped)
    assert "per annotation (2), got 1" in reasons["osprey_detail_description#1"]
    assert "annotation 0 has no 'segmentation'" in reasons["osprey_detail_description#2"]


def build(root: Path, kind: str):
    cfg = Osprey724kConfig(
        modality="image_mask", region_kind=kind, annotation_root=str(root / "Osprey-724K"),
        image_root=str(root / "coco"), train_image=BoxImageConfig(image_size=S),
        files=[OspreyFileConfig("osprey_conversation.json", regions="preamble"),
               OspreyFileConfig("osprey_lvis_positive_negative.json", regions="inline"),
               OspreyFileConfig("osprey_detail_description.json", regions="inline")])
    builder = DATASET_BUILDERS.get("osprey724k")(cfg)
    assert builder.check_paths() == []
    return builder, builder.build("train")


def test_osprey_items_carry_the_masks_of_the_named_regions(tmp_path: Path):
    write_osprey(tmp_path)
    builder, dataset = build(tmp_path, "mask2d")
    assert builder.item_keys("train").geometry_dim == 4
    assert len(dataset.skipped) == 4  # the out-of-range name, the record without file, the two bad descriptions
    items = {dataset[i]["sample_id"]: dataset[i] for i in range(len(dataset))}
    assert set(items) == {"osprey_conversation#0#0", "osprey_conversation#0#1", "osprey_lvis_positive_negative#0#0",
                          "osprey_lvis_positive_negative#0#1", "osprey_detail_description#0/0#0",
                          "osprey_detail_description#0/1#0"}
    cat = items["osprey_lvis_positive_negative#0#0"]  # "Is <region2> a cat?": the corner square alone
    assert cat["region_mask"].shape == (1, S, S) and cat["text_input"] == "no"
    assert torch.allclose(cat["region_geometry"][0], torch.tensor([0, 0, 6 / W, 6 / H]))
    white = whiteness(items["osprey_conversation#0#0"]["image"])
    rect = items["osprey_conversation#0#0"]["region_mask"][0]  # region1: the white rectangle's polygon
    assert white[rect].mean() > 200 and white[~rect].mean() < 30
    assert items["osprey_detail_description#0/0#0"]["text_input"] == "a white rectangle on black"


def test_osprey_refuses_a_3d_kind_and_a_question_without_its_placeholder(tmp_path: Path):
    write_osprey(tmp_path)
    with pytest.raises(ValueError, match="image masks"):
        build(tmp_path, "point_set")[0].item_keys("train")
    with pytest.raises(ValueError, match="must hold '\\{region\\}'"):
        DATASET_BUILDERS.get("osprey724k")(Osprey724kConfig(describe_question="Describe it."))


def test_box_kind_reads_osprey_masks_as_their_boxes(tmp_path: Path):
    write_osprey(tmp_path)
    _, dataset = build(tmp_path, "box2d")
    item = dataset[0]
    assert "region_mask" not in item and item["region_geometry"].shape == (2, 4)
    assert np.allclose(item["region_geometry"][0].numpy(), [X1 / W, Y1 / H, X2 / W, Y2 / H], atol=1e-6)
