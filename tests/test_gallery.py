"""evaluate.py's gallery (lavis/common/gallery.py): on the tiny demo model, an image-region and a point-cloud-region
dataset each get run.gallery_samples thumbnails of their worst and best samples by CIDEr on one page, holding the
generated and ground-truth captions, and the same images in TensorBoard; 0 writes none."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from evaluate import main as evaluate_main
from lavis.common.gallery import THUMB_PX, box_edges, pick_samples
from tests.conftest import REPO, write_yaml
from tests.test_eval_end_to_end import path_options, write_ground_truth

SETS = {"refcoco": "test", "scanrefer": "val"}


def evaluate(world, tmp_path, *options: str):
    gt = write_ground_truth(world)
    config = yaml.safe_load((REPO / "configs" / "demo" / "regionblip_tiny.yaml").read_text())
    config["datasets"] = {name: {**config["datasets"][name], "train_split": None} for name in SETS}
    cfg_path = write_yaml(tmp_path / "eval.yaml", config)
    out = tmp_path / "out"
    dropped = ("datasets.coco", "datasets.obj", "datasets.refcoco_crop")  # the sets not evaluated here
    all_options = [o for o in path_options(world, gt, out) if not o.startswith(dropped)]
    evaluate_main(["--cfg-path", str(cfg_path), "--options", *all_options, *options])
    return out, gt


def test_gallery_shows_worst_and_best_with_their_captions(tiny_world, tmp_path):
    out, gt = evaluate(tiny_world, tmp_path, "run.gallery_samples=4", "run.tensorboard=true")
    page = (out / "gallery" / "index.html").read_text()
    for name, split in SETS.items():
        fragment = json.loads((out / "gallery" / f"{name}_{split}.json").read_text())
        entries = fragment["entries"]
        assert [e["rank"] for e in entries] == ["worst", "worst", "best", "best"]
        scores = [e["cider"] for e in entries]
        assert scores[0] <= scores[1] <= min(scores[2:]) and scores[2] >= scores[3]
        metrics = json.loads((out / f"{name}_{split}_metrics.json").read_text())["metrics"]
        assert scores[0] <= metrics["CIDEr"] <= scores[2]  # the corpus CIDEr is the mean of the per-sample ones
        results = json.loads((out / f"{name}_{split}_captions.json").read_text())
        captions = {r["image_id"]: r["caption"] for r in results}
        truth = json.loads(Path(gt[name]).read_text())
        for e in entries:
            assert e["caption"] == captions[e["image_id"]]
            assert e["references"] == [a["caption"] for a in truth["annotations"] if a["image_id"] == e["image_id"]]
            for text in (e["caption"], *e["references"]):
                assert text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in page
            assert f'src="{e["png"]}"' in page
            image = Image.open(out / "gallery" / e["png"])
            assert image.size == (THUMB_PX, THUMB_PX)
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
            assert pixels.std() > 5  # not blank
            magenta = (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] > 200)
            assert magenta.sum() > 20, e["png"]  # the box is drawn in
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for event_file in events:
        accumulator = EventAccumulator(str(event_file), size_guidance={"images": 0})
        accumulator.Reload()
        tags |= set(accumulator.Tags()["images"])
    assert len(tags) == 8 and all(re.match(r"gallery/(refcoco_test|scanrefer_val)/00[0-3]_(worst|best)", t)
                                  for t in tags)


def test_zero_samples_writes_no_gallery(tiny_world, tmp_path):
    out, _ = evaluate(tiny_world, tmp_path, "run.gallery_samples=0", "run.tensorboard=false")
    assert (out / "refcoco_test_captions.json").is_file() and not (out / "gallery").exists()


@pytest.mark.parametrize("count, expected", [(3, [("a", "worst"), ("b", "worst"), ("d", "best")]),
                                             (10, [("a", "worst"), ("b", "worst"), ("d", "best"), ("c", "best")])])
def test_pick_samples_takes_the_lowest_then_the_highest(count, expected):
    per_image = {"c": {"CIDEr": 0.5}, "a": {"CIDEr": 0.0}, "d": {"CIDEr": 2.0}, "b": {"CIDEr": 0.0}}
    assert pick_samples(per_image, count)[:len(expected)] == expected
    assert len({i for i, _ in pick_samples(per_image, count)}) == min(count, 4)


def test_box_edges_are_the_twelve_edges_of_a_shuffled_box():
    bits = np.array([[k & 1, k >> 1 & 1, k >> 2 & 1] for k in range(8)], dtype=np.float32)
    corners = (bits * [2.0, 1.0, 0.5] + 3.0)[[5, 2, 7, 0, 3, 6, 1, 4]]
    edges = box_edges(corners)
    assert len(edges) == 12
    assert all(np.isclose(np.abs(corners[a] - corners[b]).max(), [2.0, 1.0, 0.5]).any() for a, b in edges)
