"""Image and image-region data: processors, COCO / RefCOCO datasets in their real layouts, shards, converter tools.

Every dataset is written into tmp_path in its on-disk format (jpgs, Karpathy JSON, refs(unc).p + instances.json,
flat JSON, tar shards); no network, no real data.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lavis.common.registry import DATASET_BUILDERS, PROCESSORS
from lavis.common.safe_pickle import UnsafePickleError
from lavis.datasets.base import BadSampleError, SkippedSample
from lavis.datasets.builders.image_builders import CocoCaptionConfig, RefCocoConfig, RegionShardsConfig
from lavis.datasets.datasets.refcoco import flat_records, refer_records, region_id
from lavis.datasets.datasets.region_shards import RegionSample, RegionShardDataset, write_region_shards
from lavis.datasets.loaders import Collator
from lavis.processors import image_processors
from lavis.processors.image_processors import (
    EVA_CLIP_MEAN,
    EVA_CLIP_STD,
    BoxImageConfig,
    BoxImageProcessor,
    sample_box_safe_crop,
)
from lavis.processors.text_processors import CaptionConfig, CaptionProcessor, clean_caption
from tools import inspect_dataset, prepare_eval_coco, prepare_eval_refcoco, prepare_refcoco_flat
from tools import write_region_shards as shards_tool

W, H = 64, 48  # every test image


def save_jpg(path: Path, color=(90, 120, 200), box_xyxy=None, box_color=(250, 250, 250), size=(W, H)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    if box_xyxy is not None:
        image.paste(box_color, tuple(int(v) for v in box_xyxy))
    image.save(path, quality=95)


def save_truncated_jpg(path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (W, H), (10, 200, 10)).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def to_pixels(image: torch.Tensor) -> torch.Tensor:
    """Undo the EVA-CLIP normalisation: [3, S, S] in 0..255."""
    mean, std = torch.tensor(EVA_CLIP_MEAN)[:, None, None], torch.tensor(EVA_CLIP_STD)[:, None, None]
    return (image * std + mean) * 255


def eval_processors(size: int = 32) -> tuple[BoxImageProcessor, CaptionProcessor]:
    return BoxImageProcessor(BoxImageConfig(image_size=size)), CaptionProcessor(CaptionConfig())


# ---- fixtures in the real layouts --------------------------------------------------------------------------------
def coco_file(image_id: int) -> str:
    return f"COCO_train2014_{image_id:012d}.jpg"


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    """images/train2014/*.jpg + annotations/coco_karpathy_{train,test}.json as LAVIS ships them."""
    root = tmp_path / "coco"
    for image_id in (1, 2, 3):
        save_jpg(root / "images" / "train2014" / coco_file(image_id))
    save_truncated_jpg(root / "images" / "train2014" / coco_file(4))
    train = [
        {"image": f"train2014/{coco_file(1)}", "caption": "A dog (running) on grass.", "image_id": "coco_1"},
        {"image": f"train2014/{coco_file(1)}", "caption": "a brown dog", "image_id": "coco_1"},
        {"image": f"train2014/{coco_file(2)}", "caption": "A cat on a sofa!", "image_id": "coco_2"},
        {"image": f"train2014/{coco_file(4)}", "caption": "a broken picture", "image_id": "coco_4"},
        {"image": f"train2014/{coco_file(2)}", "caption": "   ", "image_id": "coco_2"},
    ]
    test = [
        {"image": f"train2014/{coco_file(3)}", "caption": ["a red bus", "a bus on a street"]},
        {"image": f"train2014/{coco_file(2)}", "caption": ["a cat"]},
    ]
    (root / "annotations").mkdir()
    (root / "annotations" / "coco_karpathy_train.json").write_text(json.dumps(train))
    (root / "annotations" / "coco_karpathy_test.json").write_text(json.dumps(test))
    return root


# ann id -> (image id, bbox xywh). 12 has zero area, 13 sticks out of the 64x48 image, 14 is on a corrupt image.
ANNS = {10: (1, [8, 4, 24, 20]), 11: (1, [30.5, 10, 20, 30]), 12: (2, [5, 5, 0, 10]), 13: (2, [40, 30, 40, 30]),
        14: (3, [1, 1, 10, 10]), 15: (2, [2, 2, 10, 10])}
REFS = [  # (ref id, ann id, split, sentences)
    (0, 10, "train", ["Man on the Left.", "left guy"]),
    (1, 11, "train", ["the woman right"]),
    (2, 12, "train", ["zero box"]),
    (3, 13, "train", ["outside"]),
    (4, 14, "train", ["corrupt"]),
    (5, 15, "train", ["", "..."]),
    (6, 10, "val", ["man left"]),
    (7, 10, "val", ["guy in red"]),
    (8, 11, "val", ["woman"]),
    (9, 15, "testA", ["small thing"]),
    (10, 11, "testB", ["lady"]),
]


@pytest.fixture
def refer(tmp_path: Path) -> Path:
    """refer/refcoco/{refs(unc).p, instances.json} + images/train2014/*.jpg (image 3 is truncated)."""
    root = tmp_path / "refer_world"
    images = root / "images" / "train2014"
    save_jpg(images / coco_file(1), box_xyxy=(8, 4, 32, 24))
    save_jpg(images / coco_file(2))
    save_truncated_jpg(images / coco_file(3))
    instances = {
        "images": [{"id": i, "file_name": coco_file(i), "width": W, "height": H} for i in (1, 2, 3)],
        "annotations": [{"id": a, "image_id": img, "bbox": box, "category_id": 1} for a, (img, box) in ANNS.items()],
        "categories": [{"id": 1, "name": "person"}],
    }
    refs = [
        {"ref_id": ref_id, "ann_id": ann, "image_id": ANNS[ann][0], "split": split, "category_id": 1,
         "file_name": coco_file(ANNS[ann][0]).replace(".jpg", f"_{ann}.jpg"), "sent_ids": list(range(len(sents))),
         "sentences": [{"sent": s, "raw": s, "tokens": s.split(), "sent_id": k} for k, s in enumerate(sents)]}
        for ref_id, ann, split, sents in REFS
    ]
    (root / "refcoco").mkdir(parents=True)
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    with (root / "refcoco" / "refs(unc).p").open("wb") as f:
        pickle.dump(refs, f, protocol=2)  # the refer release is a Python-2 pickle
    return root


def refcoco_builder(refer: Path, **overrides):
    cfg = RefCocoConfig(modality="image_region", refer_root=str(refer), image_root=str(refer / "images" / "train2014"),
                        eval_split="val", train_image=BoxImageConfig(image_size=32),
                        eval_image=BoxImageConfig(image_size=32), **overrides)
    return DATASET_BUILDERS.get("refcoco")(cfg)


def read_all(dataset) -> tuple[dict, dict]:
    """(sample id -> item, sample id -> bad reason) over a map-style dataset."""
    good, bad = {}, {}
    for i in range(len(dataset)):
        try:
            item = dataset[i]
            good[item["sample_id"]] = item
        except BadSampleError as e:
            bad[e.sample_id] = e.reason
    return good, bad


# ---- processors --------------------------------------------------------------------------------------------------
def test_caption_cleaning_follows_blip():
    assert clean_caption("A Man (riding) a horse!!  \n", 50) == "a man riding a horse"
    assert clean_caption("The man's hat, left-most one?", 50) == "the man's hat, left-most one?"
    assert clean_caption("one two three four", 2) == "one two"
    assert CaptionProcessor(CaptionConfig(prompt="a photo of ")).__call__("A Dog.") == "a photo of a dog"
    assert CaptionProcessor(CaptionConfig(prompt="a photo of "))("...") == ""
    assert {"blip_caption", "box_image"} <= set(PROCESSORS.names())


def test_resize_keeps_box_and_pixels_together():
    image = Image.new("RGB", (200, 100), (0, 0, 0))
    image.paste((255, 255, 255), (20, 10, 120, 60))
    pixels, region = BoxImageProcessor(BoxImageConfig(image_size=50))(image, [20, 10, 120, 60])
    assert pixels.shape == (3, 50, 50) and type(pixels) is torch.Tensor
    assert torch.allclose(region, torch.tensor([20 / 200, 10 / 100, 120 / 200, 60 / 100]))
    x1, y1, x2, y2 = (region * 50).round().int().tolist()  # (5, 5, 30, 30)
    white = to_pixels(pixels).mean(0)
    assert white[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].min() > 230  # the white box is where the box says
    assert white[:, x2 + 1 :].max() < 25 and white[y2 + 1 :, :].max() < 25


def test_crop_moves_box_exactly(monkeypatch):
    image = Image.new("RGB", (200, 100), (0, 0, 0))
    image.paste((255, 255, 255), (20, 10, 120, 60))
    monkeypatch.setattr(image_processors, "sample_box_safe_crop", lambda h, w, box, s: (5, 10, 80, 160))
    processor = BoxImageProcessor(BoxImageConfig(image_size=80, crop_prob=1.0))
    pixels, region = processor(image, [20, 10, 120, 60])
    # crop (top 5, left 10, 80 x 160): box -> (10, 5, 110, 55) in a 160 x 80 canvas
    assert torch.allclose(region, torch.tensor([10 / 160, 5 / 80, 110 / 160, 55 / 80]))
    x1, y1, x2, y2 = (region * 80).round().int().tolist()  # (5, 5, 55, 55)
    white = to_pixels(pixels).mean(0)
    assert white[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].min() > 230
    assert white[:, x2 + 1 :].max() < 25


def test_horizontal_flip_mirrors_box_and_pixels_exactly():
    image = Image.new("RGB", (200, 100), (0, 0, 0))
    image.paste((255, 255, 255), (20, 10, 120, 60))
    pixels, region = BoxImageProcessor(BoxImageConfig(image_size=50, hflip_prob=1.0))(image, [20, 10, 120, 60])
    # x -> 200 - x swaps the box's x edges: (20, 120) -> (80, 180); y is unchanged
    assert torch.allclose(region, torch.tensor([80 / 200, 10 / 100, 180 / 200, 60 / 100]))
    x1, y1, x2, y2 = (region * 50).round().int().tolist()  # (20, 5, 45, 30)
    white = to_pixels(pixels).mean(0)
    assert white[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].min() > 230  # the white box moved with the region
    assert white[:, : x1 - 1].max() < 25  # where it was before the flip (x 5..30) is now black on its left part


def test_random_crops_keep_the_box_and_replay_from_the_seed():
    box = [37.5, 12.2, 80.9, 40.0]
    for seed in range(300):
        torch.manual_seed(seed)
        top, left, ch, cw = sample_box_safe_crop(100, 200, box, 0.6)
        assert left <= box[0] and left + cw >= box[2] and top <= box[1] and top + ch >= box[3]
        assert 0 <= left and left + cw <= 200 and 0 <= top and top + ch <= 100
        assert cw >= 0.6 * 200 and ch >= 0.6 * 100
    processor = BoxImageProcessor(BoxImageConfig(image_size=32, crop_prob=1.0, color_jitter=0.3))
    image = Image.new("RGB", (200, 100), (120, 30, 60))
    outputs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        outputs.append(processor(image, box))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
    assert not torch.equal(outputs[0][1], outputs[2][1])
    assert BoxImageConfig().hflip_prob == 0.0  # captions say left / right: flipping stays off unless asked


# ---- COCO captions ------------------------------------------------------------------------------------------------
def test_coco_train_is_per_caption_and_eval_per_image(coco: Path):
    cfg = CocoCaptionConfig(modality="image", image_root=str(coco / "images"), ann_root=str(coco / "annotations"),
                            eval_split="test", train_image=BoxImageConfig(image_size=32),
                            eval_image=BoxImageConfig(image_size=40))
    builder = DATASET_BUILDERS.get("coco_caption")(cfg)
    assert builder.check_paths() == []
    train = builder.build("train")
    assert len(train) == 4 and train.skipped == [("2/1", "empty caption")]
    good, bad = read_all(train)
    assert good["1/0"]["text_input"] == "a dog running on grass" and good["1/0"]["image"].shape == (3, 32, 32)
    assert set(good) == {"1/0", "1/1", "2/0"} and list(bad) == ["4/0"] and "decode" in bad["4/0"]
    test = builder.build("test")
    assert len(test) == 2
    item = test[0]
    assert item["image_id"] == 3 and item["image"].shape == (3, 40, 40) and "region_geometry" not in item
    assert test.ground_truth() == {
        "images": [{"id": 3}, {"id": 2}],
        "annotations": [{"image_id": 3, "id": 0, "caption": "a red bus"},
                        {"image_id": 3, "id": 1, "caption": "a bus on a street"},
                        {"image_id": 2, "id": 2, "caption": "a cat"}],
    }
    out = prepare_eval_coco.main(["--ann-file", str(coco / "annotations/coco_karpathy_test.json"),
                                  "--out", str(coco / "gt.json")])
    assert json.loads(out.read_text()) == test.ground_truth()


# ---- RefCOCO, refer layout -------------------------------------------------------------------------------------------
def test_refcoco_training_items_and_bad_samples(refer: Path):
    builder = refcoco_builder(refer)
    assert builder.check_paths() == []
    train = builder.build("train")
    assert len(train) == 6  # 8 train sentences, minus a zero-area box and an empty sentence
    assert sorted(train.skipped) == [("refcoco/2", "bbox [5, 5, 0, 10] has zero area"),
                                     ("refcoco/5/0", "empty sentence")]
    good, bad = read_all(train)
    assert set(good) == {"refcoco/0/0", "refcoco/0/1", "refcoco/1/0"}
    assert "outside" in bad["refcoco/3/0"] and "decode" in bad["refcoco/4/0"] and "empty" in bad["refcoco/5/1"]
    item = good["refcoco/0/0"]
    assert item["text_input"] == "man on the left" and item["image_id"] == "1_box_8_4_24_20"
    assert torch.allclose(item["region_geometry"], torch.tensor([8 / W, 4 / H, 32 / W, 24 / H]))
    white = to_pixels(item["image"]).mean(0)  # the pasted white patch is where the box says, after resizing to 32
    x1, y1, x2, y2 = (item["region_geometry"] * 32).tolist()
    assert white[math.ceil(y1) + 1 : int(y2) - 1, math.ceil(x1) + 1 : int(x2) - 1].min() > 220
    batch = Collator("image_region", None)([good["refcoco/0/0"], good["refcoco/1/0"],
                                            SkippedSample("refcoco", "refcoco/3/0", bad["refcoco/3/0"])])
    assert batch["region_geometry"].shape == (2, 4) and batch["image"].shape == (2, 3, 32, 32)
    assert len(batch["skipped"]) == 1


def test_refcoco_eval_deduplicates_regions_and_matches_ground_truth(refer: Path, tmp_path: Path):
    val = refcoco_builder(refer).build("val")
    assert [r.sample_id for r in val.records] == ["1_box_8_4_24_20", "1_box_30_10_20_30"]
    assert val.records[0].captions == ("man left", "guy in red")  # two refs of one region: one item, both sentences
    items = [val[i] for i in range(len(val))]
    assert [it["image_id"] for it in items] == ["1_box_8_4_24_20", "1_box_30_10_20_30"]
    out = prepare_eval_refcoco.main(["--refer-root", str(refer), "--split", "val", "--out", str(tmp_path / "gt.json")])
    assert json.loads(out.read_text()) == {
        "images": [{"id": "1_box_8_4_24_20"}, {"id": "1_box_30_10_20_30"}],
        "annotations": [{"image_id": "1_box_8_4_24_20", "id": 0, "caption": "man left"},
                        {"image_id": "1_box_8_4_24_20", "id": 1, "caption": "guy in red"},
                        {"image_id": "1_box_30_10_20_30", "id": 2, "caption": "woman"}],
    }
    assert {it["image_id"] for it in items} == {img["id"] for img in json.loads(out.read_text())["images"]}
    assert len(refcoco_builder(refer).build("testA")) == 1
    with pytest.raises(ValueError, match=r"no refs in split 'test'.*testA"):
        refcoco_builder(refer).build("test")


def test_refcoco_refuses_a_pickle_that_carries_code(refer: Path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with (refer / "refcoco" / "refs(unc).p").open("wb") as f:
        pickle.dump([{"ref_id": 0, "payload": Exploit()}], f)
    with pytest.raises(UnsafePickleError, match="system"):
        refer_records(refer, "refcoco", "unc", "train")


def test_refcoco_check_paths_names_keys(tmp_path: Path, refer: Path):
    problems = refcoco_builder(tmp_path / "nowhere").check_paths()
    assert len(problems) == 2 and problems[0].startswith("image_root") and problems[1].startswith("refer_root")
    assert "refs(unc).p" in problems[1]
    flat = refcoco_builder(refer, format="flat", flat_files={"train": str(tmp_path / "missing.json")})
    problems = flat.check_paths()
    assert any(p.startswith("flat_files.train") and "missing.json" in p for p in problems)
    assert any(p.startswith("flat_files.val is not set") for p in problems)
    with pytest.raises(ValueError, match="format"):
        refcoco_builder(refer, format="coco")


# ---- RefCOCO, flat layout ------------------------------------------------------------------------------------------
def test_flat_layout_from_the_converter_matches_the_refer_layout(refer: Path, tmp_path: Path):
    written = prepare_refcoco_flat.main(["--refer-root", str(refer), "--splits", "train", "val",
                                         "--out-dir", str(tmp_path / "flat")])
    assert [p.name for p in written] == ["refcoco_train.json", "refcoco_val.json"]
    entries = json.loads(written[0].read_text())
    assert entries[0] == {"image": coco_file(1), "bbox": [8.0, 4.0, 24.0, 20.0], "caption": "Man on the Left.",
                          "image_id": 1}
    flat = refcoco_builder(refer, format="flat", flat_files={"train": str(written[0]), "val": str(written[1])})
    assert flat.check_paths() == []
    flat_train, refer_train = flat.build("train"), refcoco_builder(refer).build("train")
    assert [(r.region_id, r.captions) for r in flat_train.records] == [
        (r.region_id, r.captions) for r in refer_train.records]
    assert [r.sample_id for r in flat.build("val").records] == ["1_box_8_4_24_20", "1_box_30_10_20_30"]
    gt = prepare_eval_refcoco.main(["--flat-file", str(written[1]), "--out", str(tmp_path / "gt_flat.json")])
    gt_refer = prepare_eval_refcoco.main(["--refer-root", str(refer), "--out", str(tmp_path / "gt_refer.json")])
    assert json.loads(gt.read_text()) == json.loads(gt_refer.read_text())


def test_flat_layout_counts_bad_entries(tmp_path: Path):
    entries = [
        {"image": "a.jpg", "bbox": [1, 2, 3, 4], "caption": "ok", "image_id": 7},
        {"image": "a.jpg", "bbox": [1, 2, float("nan"), 4], "caption": "nan box", "image_id": 7},
        {"image": "a.jpg", "bbox": [1, 2, 3, 4], "caption": "  ", "image_id": 7},
        {"image": "a.jpg", "bbox": [1, 2, 3], "caption": "short box", "image_id": 7},
    ]
    path = tmp_path / "Refcoco_train.json"
    path.write_text(json.dumps(entries))
    records, skipped = flat_records(path)
    assert [r.sample_id for r in records] == ["Refcoco_train#0"]
    assert [s for s, _ in skipped] == ["Refcoco_train#1", "Refcoco_train#2", "Refcoco_train#3"]
    assert "not finite" in skipped[0][1] and skipped[1][1] == "empty caption"


# ---- shards ----------------------------------------------------------------------------------------------------------
def test_shards_round_trip_from_the_tool(refer: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "shards" / "train"
    index = shards_tool.main(["--refer-root", str(refer), "--split", "train", "--max-per-shard", "1",
                                      "--image-root", str(refer / "images" / "train2014"), "--out", str(out)])
    meta = json.loads(index.read_text())
    assert meta["samples"] == 2 and meta["regions"] == 5 and len(meta["shards"]) == 2  # the truncated image is left out
    cfg = RegionShardsConfig(modality="image_region", shard_root=str(tmp_path / "shards"), eval_split="train",
                             train_split=None, eval_image=BoxImageConfig(image_size=32), access="stream")
    builder = DATASET_BUILDERS.get("region_shards")(cfg)
    assert builder.check_paths() == []
    items = list(builder.build("train"))  # not the train split here: no shuffle, one pass in order
    good = {it["sample_id"]: it for it in items if not isinstance(it, SkippedSample)}
    bad = {it.sample_id: it.reason for it in items if isinstance(it, SkippedSample)}
    cfg.access = "random"
    random_access = DATASET_BUILDERS.get("region_shards")(cfg).build("train")
    assert isinstance(random_access, torch.utils.data.Dataset) and len(random_access) == 5
    good_random, bad_random = read_all(random_access)
    assert bad_random == bad and good_random.keys() == good.keys()
    for sample_id, item in good_random.items():  # both readers give the same item
        assert all(torch.equal(item[k], good[sample_id][k]) for k in ("image", "region_geometry"))
        assert item["text_input"] == good[sample_id]["text_input"]
    records = {r.sample_id: r for r in refer_records(refer, "refcoco", "unc", "train")[0]}
    assert len(items) == 5 and len(good) == 3 and set(bad) == {f"{coco_file(2)[:-4]}/0", f"{coco_file(2)[:-4]}/1"}
    for item in good.values():
        source = next(r for r in records.values() if r.captions[0].lower().rstrip(".") == item["text_input"])
        x, y, w, h = source.box_xywh
        assert torch.allclose(item["region_geometry"], torch.tensor([x / W, y / H, (x + w) / W, (y + h) / H]))
        assert item["image_id"] == region_id(source.image_id, source.box_xywh)


def test_shards_split_by_rank_and_worker_with_a_declared_length(tmp_path: Path, monkeypatch):
    jpg = io.BytesIO()
    Image.new("RGB", (W, H), (200, 10, 10)).save(jpg, format="JPEG")
    samples = [RegionSample(f"img.{i}", jpg.getvalue(), [[i, i, 10, 10]] * 2, [f"thing {i} a", f"thing {i} b"], i)
               for i in range(7)]
    index = write_region_shards(samples, tmp_path, max_per_shard=1, progress=False)
    processor, text = eval_processors(16)

    def stream(rank: int, world: int, worker: int = 0, workers: int = 1, epoch: int = 0) -> list[str]:
        for key, value in {"RANK": rank, "WORLD_SIZE": world, "WORKER": worker, "NUM_WORKERS": workers}.items():
            monkeypatch.setenv(key, str(value))
        dataset = RegionShardDataset(index, processor, text, seed=5, shuffle_buffer=3)
        dataset.set_epoch(epoch)
        assert len(dataset) == math.ceil(14 / world)
        return [it["text_input"] for it in dataset]

    ranks = [stream(r, 2) for r in range(2)]
    assert [len(r) for r in ranks] == [7, 7]  # equal steps on every rank, even with an odd number of shards
    assert set(ranks[0]).isdisjoint(ranks[1])  # ranks read different shards
    # 14 regions in 7 shards: one rank holds 8 and yields 7 distinct, the other holds 6 and repeats one
    assert sorted(len(set(r)) for r in ranks) == [6, 7]
    workers = [stream(0, 2, w, 2) for w in range(2)]
    assert [len(w) for w in workers] == [4, 3] and set(workers[0]).isdisjoint(workers[1])
    assert len(set(workers[0]) | set(workers[1])) == 7
    assert (set(workers[0]) | set(workers[1])).isdisjoint(ranks[1])  # a rank's workers share that rank's shards
    assert stream(1, 2) == ranks[1]  # same seed and epoch: same order
    assert stream(1, 2, epoch=1) != ranks[1]
    # a worker without a shard yields nothing; its sibling covers the rank's whole share
    assert stream(3, 4, 1, 2) == [] and len(stream(3, 4, 0, 2)) == math.ceil(14 / 4)
    with pytest.raises(RuntimeError, match="shard"):
        stream(7, 8)  # 8 ranks for 7 shards: the last rank has none


def test_tools_fail_clearly_on_a_bad_input_path(tmp_path: Path, capsys):
    missing = str(tmp_path / "missing.json")
    with pytest.raises(SystemExit, match="missing.json does not exist"):
        prepare_eval_coco.main(["--ann-file", missing, "--out", str(tmp_path / "gt.json")])
    with pytest.raises(SystemExit, match=r"refs\(unc\).p does not exist"):
        prepare_refcoco_flat.main(["--refer-root", str(tmp_path), "--out-dir", str(tmp_path / "flat")])
    with pytest.raises(SystemExit, match="--image-root .* is not a folder"):
        shards_tool.main(["--flat-file", missing, "--image-root", str(tmp_path / "no_images"), "--out", str(tmp_path)])


def test_inspect_dataset_draws_an_image_with_its_box(refer: Path, tmp_path: Path, capsys):
    out = tmp_path / "inspect"
    code = inspect_dataset.main(["--builder", "refcoco", "--options", f"refer_root={refer}",
                                 f"image_root={refer / 'images' / 'train2014'}", "eval_split=val",
                                 "eval_image.image_size=96", "--split", "val", "--num", "2", "--out", str(out)])
    assert code == 0
    assert "refcoco/val: 2 items" in capsys.readouterr().out
    # the two val regions (deduplicated), both on the 64 x 48 image 1: boxes xywh (8, 4, 24, 20) and
    # (30.5, 10, 20, 30) -> x1 y1 x2 y2 in the 96 x 96 drawing
    expected = {0: (8 / 64 * 96, 4 / 48 * 96, 32 / 64 * 96, 24 / 48 * 96),
                1: (30.5 / 64 * 96, 10 / 48 * 96, 50.5 / 64 * 96, 40 / 48 * 96)}
    assert sorted(p.name for p in out.glob("*.png")) == ["refcoco_val_0.png", "refcoco_val_1.png"]
    for index, (x1, y1, x2, y2) in expected.items():
        pixels = np.asarray(Image.open(out / f"refcoco_val_{index}.png").convert("RGB"))[:96].astype(int)
        red = (pixels[..., 0] > 200) & (pixels[..., 1] < 50) & (pixels[..., 2] < 50)  # the box colour, (255, 0, 0)
        rows, cols = np.nonzero(red)
        assert abs(cols.min() - x1) <= 1 and abs(cols.max() - x2) <= 1  # the outline lies on the box ...
        assert abs(rows.min() - y1) <= 1 and abs(rows.max() - y2) <= 1
        assert red[round(y1) + 1 : round(y2) - 1, round(x1)].mean() > 0.9  # ... along its whole left edge
        assert red[round(y1), round(x1) + 1 : round(x2) - 1].mean() > 0.9  # ... and top edge
        assert not red[round(y1) + 4 : round(y2) - 4, round(x1) + 4 : round(x2) - 4].any()  # only the outline
