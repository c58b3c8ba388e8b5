"""The BLIP-2 crop baseline of Table 1: RefCOCO with `crop_to_box` yields the box's pixels resized as a plain image,
under the same evaluation ids as the region items, so one ground-truth file scores both."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from lavis.common.registry import DATASET_BUILDERS
from lavis.datasets.builders.image_builders import RefCocoConfig
from lavis.processors.image_processors import EVA_CLIP_MEAN, EVA_CLIP_STD, BoxImageConfig
from tools import prepare_eval_refcoco

W, H, SIZE = 64, 48, 32
BOXES = {10: [8.4, 4.6, 20.3, 17.2], 11: [30, 10, 20, 30], 12: [0, 0, 64, 48]}  # ann id -> xywh pixels


@pytest.fixture
def refer(tmp_path: Path) -> Path:
    """A miniature refer layout: one noise image (PNG, so pixels are exact), three refs in the val split."""
    root = tmp_path / "refer"
    (root / "images").mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "images" / "img1.png")
    instances = {"images": [{"id": 1, "file_name": "img1.png", "width": W, "height": H}],
                 "annotations": [{"id": a, "image_id": 1, "bbox": box, "category_id": 1} for a, box in BOXES.items()]}
    refs = [{"ref_id": a, "ann_id": a, "image_id": 1, "split": "val", "category_id": 1,
             "sentences": [{"sent": f"thing {a}", "raw": f"thing {a}", "tokens": [], "sent_id": 0},
                           {"sent": f"object {a}", "raw": f"object {a}", "tokens": [], "sent_id": 1}]}
            for a in BOXES]
    (root / "refcoco").mkdir()
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    with (root / "refcoco" / "refs(unc).p").open("wb") as f:
        pickle.dump(refs, f, protocol=2)
    return root


def build(refer: Path, crop_to_box: bool):
    cfg = RefCocoConfig(modality="image" if crop_to_box else "image_region", refer_root=str(refer),
                        image_root=str(refer / "images"), train_split=None, eval_split="val",
                        eval_image=BoxImageConfig(image_size=SIZE), crop_to_box=crop_to_box)
    return DATASET_BUILDERS.get("refcoco")(cfg).build("val")


def expected_crop(image_file: Path, box_xywh: list[float]) -> torch.Tensor:
    """By hand: the whole pixels the box touches, cropped, resized with PIL's bicubic filter (BLIP's), normalised."""
    x, y, w, h = box_xywh
    left, top, right, bottom = math.floor(x), math.floor(y), math.ceil(x + w), math.ceil(y + h)
    region = Image.open(image_file).convert("RGB").crop((left, top, right, bottom))
    assert region.size == (right - left, bottom - top)
    resized = torch.from_numpy(np.array(region.resize((SIZE, SIZE), Image.BICUBIC))).permute(2, 0, 1)
    return F.normalize(resized.float() / 255, mean=list(EVA_CLIP_MEAN), std=list(EVA_CLIP_STD))


def test_crop_items_are_the_box_pixels_resized(refer: Path):
    crops = build(refer, crop_to_box=True)
    assert len(crops) == len(BOXES)
    for index, box in enumerate(BOXES.values()):
        item = crops[index]
        assert "region_geometry" not in item  # the plain image path: nothing tells the model where the box is
        assert item["image"].shape == (3, SIZE, SIZE)
        torch.testing.assert_close(item["image"], expected_crop(refer / "images" / "img1.png", box), atol=1e-5,
                                   rtol=0)
    # the whole-image box crops to the whole image: the same pixels as the region item's image
    regions = build(refer, crop_to_box=False)
    torch.testing.assert_close(crops[2]["image"], regions[2]["image"])
    assert not torch.allclose(crops[0]["image"], regions[0]["image"])


def test_crop_items_keep_the_region_ids_of_the_ground_truth(refer: Path, tmp_path: Path):
    crops, regions = build(refer, crop_to_box=True), build(refer, crop_to_box=False)
    crop_ids = [crops[i]["image_id"] for i in range(len(crops))]
    assert crop_ids == [regions[i]["image_id"] for i in range(len(regions))]
    assert [crops[i]["text_input"] for i in range(len(crops))] == [regions[i]["text_input"] for i in range(len(crops))]
    gt_file = prepare_eval_refcoco.main(["--refer-root", str(refer), "--split", "val", "--out",
                                         str(tmp_path / "gt.json")])
    truth = json.loads(gt_file.read_text())
    assert sorted(crop_ids) == sorted(image["id"] for image in truth["images"])
    assert crop_ids[0] == "1_box_8_4_20_17"
