"""tools/generate_region_captions.py on the tiny demo model and the synthetic world: shards the region_shards
dataset reads, every region captioned once with its prompt and model recorded, the global caption in the prompt
(and not with --no-global-context), the encoder once per image, a crashed run resumed to the same output, mask and
point-cloud regions, and bad arguments refused before the model is built."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lavis.common.checkpoint import checkpoint_digest
from lavis.common.config import load_config
from lavis.common.registry import MODELS
from lavis.datasets.datasets.region_shards import RegionShardMapDataset
from lavis.processors.image_processors import BoxImageConfig, BoxImageProcessor
from lavis.processors.point_processors import PointCloudProcessor, PointCloudProcessorConfig
from lavis.processors.text_processors import CaptionConfig, CaptionProcessor
from tests.conftest import REPO, tiny_demo_options
from tools import generate_region_captions as gen

DEMO = str(REPO / "configs" / "demo" / "regionblip_tiny.yaml")
FAST = ["model.generation.num_beams=1", "model.generation.max_new_tokens=4", "model.generation.min_new_tokens=1"]
# image file index -> its regions: (x, y, w, h, category id); category 3 has no entry in `categories` (no class name)
REGIONS = {0: [(4, 4, 30, 20, 1), (50, 40, 30, 40, 2)], 1: [(10, 10, 40, 40, 1)],
           2: [(0, 0, 96, 96, 2), (20, 60, 30, 30, 3), (60, 5, 20, 20, 1)], 3: [(30, 30, 10, 12, 2)]}
NAMES = {1: "disc", 2: "ring"}


@pytest.fixture(scope="module")
def run_dir(tiny_world, tmp_path_factory) -> Path:
    """A training run folder holding the demo model's trainable tensors, perturbed (so it is not the init)."""
    cfg = load_config(DEMO, tiny_demo_options(tiny_world))
    torch.manual_seed(cfg.run.seed)
    state = MODELS.get(cfg.model_arch).from_config(cfg.model).trainable_state_dict()
    state = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    path = tmp_path_factory.mktemp("run")
    torch.save({"model": state}, path / "checkpoint_00000002.pth")
    return path


@pytest.fixture(scope="module")
def coco_source(tiny_world, tmp_path_factory) -> Path:
    """COCO instances over four of the world's images, with a polygon per box (a mask kind reads it), a crowd
    annotation (left out) and a region whose category has no name."""
    images = sorted((tiny_world / "images" / "train2014").glob("*.jpg"))[:4]
    data = {"images": [{"id": 100 + i, "file_name": p.name, "width": 96, "height": 96} for i, p in enumerate(images)],
            "annotations": [], "categories": [{"id": c, "name": n} for c, n in NAMES.items()]}
    for i, regions in REGIONS.items():
        for x, y, w, h, category in regions:
            data["annotations"].append({"id": len(data["annotations"]), "image_id": 100 + i, "bbox": [x, y, w, h],
                                        "category_id": category, "iscrowd": 0,
                                        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    data["annotations"].append({"id": 99, "image_id": 100, "bbox": [0, 0, 50, 50], "category_id": 1, "iscrowd": 1,
                                "segmentation": {"size": [96, 96], "counts": [0, 96 * 96]}})
    path = tmp_path_factory.mktemp("coco") / "instances.json"
    path.write_text(json.dumps(data))
    return path


def tool_args(world: Path, source: Path, out: Path, run_dir: Path, *extra: str, options=()) -> list[str]:
    return ["--cfg-path", DEMO, "--ckpt", str(run_dir), "--coco-instances", str(source),
            "--media-root", str(world / "images" / "train2014"), "--out", str(out), "--batch-size", "3",
            "--images-per-shard", "2", "--device", "cpu", *extra,
            "--options", *tiny_demo_options(world), *FAST, *options]


def count_encoder_calls(monkeypatch, encoder: str = "vision") -> list[int]:
    """The batch size of every call of the built model's `encoder`."""
    calls: list[int] = []
    original = gen.load_captioner

    def counting(*args, **kwargs):
        captioner = original(*args, **kwargs)
        captioner.model.encoders[encoder].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
        return captioner

    monkeypatch.setattr(gen, "load_captioner", counting)
    return calls


def shard_metas(out: Path) -> list[dict]:
    """Every tar sample's JSON, in the order of the combined index."""
    index = json.loads((out / "index.json").read_text())
    metas = []
    for shard in index["shards"]:
        with tarfile.open(out / shard["file"]) as tar:
            metas += [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    return metas


def read_shards(out: Path, processor=None) -> RegionShardMapDataset:
    processor = processor or BoxImageProcessor(BoxImageConfig(image_size=64))
    return RegionShardMapDataset(out / "index.json", processor, CaptionProcessor(CaptionConfig()))


def test_captions_every_region_once_with_its_context_and_resumes_after_a_crash(
        tiny_world, coco_source, run_dir, tmp_path, monkeypatch):
    calls = count_encoder_calls(monkeypatch)
    full = tmp_path / "full"
    gen.main(tool_args(tiny_world, coco_source, full, run_dir))
    # parts of 2 images, batches of <= 3 regions of whole images: images 0+1 (3 regions), 2 (3), 3 (1); every image
    # is encoded once, for both stages
    assert calls == [2, 1, 1]

    metas = shard_metas(full)
    dataset = read_shards(full)
    assert len(dataset) == sum(len(r) for r in REGIONS.values())  # the crowd annotation is left out
    assert len({dataset[i]["image_id"] for i in range(len(dataset))}) == len(dataset)  # each region once
    checkpoint = run_dir / "checkpoint_00000002.pth"
    for meta in metas:
        i = int(meta["image_id"]) - 100
        assert meta["boxes"] == [[float(v) for v in r[:4]] for r in REGIONS[i]]
        assert meta["model"]["checkpoint"] == str(checkpoint.resolve())
        assert meta["model"]["checkpoint_digest"] == checkpoint_digest(checkpoint)
        context = gen.clean_context(meta["global_caption"], "<region>")
        assert context and meta["global_prompt"] == ""  # OPT's image prompt: the model's own, empty
        for prompt, (*_, category) in zip(meta["prompts"], REGIONS[i]):
            name = NAMES.get(category)
            thing = f"the {name} in the close-up region" if name else "the close-up region"
            assert prompt == f"In the context of the entire image, {context}, describe {thing} <region> in detail."
        assert meta["class_names"] == [NAMES.get(r[4]) for r in REGIONS[i]]

    # a crash while writing the second part: the first part survives, the half-written one is discarded
    crashed = tmp_path / "crashed"
    writes = []
    original_write = gen.write_region_shards

    def crash_on_second_part(samples, out_dir, **kwargs):
        writes.append(out_dir)
        if len(writes) == 2:
            Path(out_dir).mkdir(parents=True)
            (Path(out_dir) / "regions-000000.tar").write_bytes(b"half a tar")
            raise KeyboardInterrupt
        return original_write(samples, out_dir, **kwargs)

    monkeypatch.setattr(gen, "write_region_shards", crash_on_second_part)
    with pytest.raises(KeyboardInterrupt):
        gen.main(tool_args(tiny_world, coco_source, crashed, run_dir))
    monkeypatch.setattr(gen, "write_region_shards", original_write)
    assert [p.name for p in gen.ShardFolder(crashed).parts()] == ["part-000000"]
    calls.clear()
    gen.main(tool_args(tiny_world, coco_source, crashed, run_dir))
    assert calls == [1, 1]  # only the second part's two images are captioned again
    assert shard_metas(crashed) == metas
    assert (crashed / "index.json").read_text() == (full / "index.json").read_text()
    calls.clear()
    gen.main(tool_args(tiny_world, coco_source, crashed, run_dir))  # all done: nothing to caption
    assert calls == []

    # the ablation: no global caption is made, and the prompts say nothing of one
    plain = tmp_path / "plain"
    gen.main(tool_args(tiny_world, coco_source, plain, run_dir, "--no-global-context"))
    assert calls == [2, 1, 1]
    for meta in shard_metas(plain):
        assert meta["global_caption"] is None and meta["model"]["global_modality"] is None
        assert all(p.startswith("Describe the ") and "context" not in p for p in meta["prompts"])


def test_mask_regions_and_point_cloud_scenes(tiny_world, coco_source, run_dir, tmp_path, monkeypatch):
    """A mask2d modality reads the polygons and the model gets their masks; a point-cloud JSONL gives
    point shards with box corners in the scene's frame and the corner kind recorded."""
    seen = []  # the region masks of the batches handed to the model
    model_cls = MODELS.get("regionblip")
    original = model_cls.generate

    def recording(self, batch, *args, **kwargs):
        if "region_mask" in batch:
            seen.extend(batch["region_mask"])
        return original(self, batch, *args, **kwargs)

    monkeypatch.setattr(model_cls, "generate", recording)
    out = tmp_path / "masks"
    gen.main(tool_args(tiny_world, coco_source, out, run_dir, "--limit", "1",
                       options=["model.modalities.image_region.region=mask2d"]))
    (x, y, w, h, _), second = REGIONS[0]
    assert len(seen) == 2 and seen[0].shape == (64, 64)  # at the processed image's size
    rows, cols = seen[0].any(1).nonzero().flatten(), seen[0].any(0).nonzero().flatten()
    scale = 64 / 96
    edges = [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]  # the polygon's rectangle, resized
    assert np.abs(np.array(edges) - np.array([x, y, x + w, y + h]) * scale).max() <= 1
    metas = shard_metas(out)
    assert metas[0]["source_regions"][1] == {"polygon": [[50, 40, 80, 40, 80, 80, 50, 80]]}
    assert metas[0]["boxes"][1] == [float(v) for v in second[:4]]  # the polygon's box

    scenes = tiny_world / "scanrefer" / "scannet_data"
    records = []
    for scene in ("scene0000_00", "scene0001_00"):
        boxes = np.load(scenes / f"{scene}_aligned_bbox.npy")
        for k, box in enumerate(boxes[:2]):
            regions = [{"box3d": [float(v) for v in box[:6]]}]
            records.append({"id": f"{scene}-{k}", "points": f"{scene}_aligned_vert.npy", "regions": regions,
                            "conversations": [{"from": "human", "value": "Describe <region>."},
                                              {"from": "gpt", "value": "a thing"}]})
    records.append(dict(records[0], id="again"))  # the same region again: captioned once
    source = tmp_path / "scenes.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in records) + "\nnot json\n")
    points_out = tmp_path / "points"
    gen.main(["--cfg-path", DEMO, "--ckpt", str(run_dir), "--instructions", str(source), "--media-root",
              str(scenes), "--out", str(points_out), "--device", "cpu", "--options", *tiny_demo_options(tiny_world),
              *FAST])
    index = json.loads((points_out / "index.json").read_text())
    assert index["payload"] == "npy" and index["region_kind"] == "box3d_corners" and index["regions"] == 4
    metas = shard_metas(points_out)
    assert [m["key"] for m in metas] == ["scene0000_00_aligned_vert", "scene0001_00_aligned_vert"]
    assert all(p.startswith("In the context of the entire scene, ") for m in metas for p in m["prompts"])
    corners = np.array(metas[0]["boxes"][0])
    box = np.load(scenes / "scene0000_00_aligned_bbox.npy")[0]
    np.testing.assert_allclose((corners.min(0) + corners.max(0)) / 2, box[:3], atol=1e-5)
    items = read_shards(points_out, PointCloudProcessor(PointCloudProcessorConfig(num_points=2048, use_color=True)))
    assert len(items) == 4 and items[0]["region_geometry"].shape == (24,)


@pytest.mark.parametrize("change, expected", [
    (["--coco-instances", "missing.json"], "--coco-instances missing.json does not exist"),
    (["--prompt", "Describe {region}."], "has no {caption} field for the global caption; without it, pass "
                                         "--no-global-context"),
    (["--prompt", "In {caption}, what is {thing} {region}?"], "unknown field(s) ['thing']"),
    (["--plain-prompt", "Describe it.", "--no-global-context"], "holds 0 region placeholders"),
    (["--modality", "image"], "--modality image has no region"),
    (["--global-modality", "pointcloud"], "--global-modality pointcloud must be a modality without a region that "
                                          "reads 'image'"),
])
def test_refuses_bad_arguments_before_building_the_model(tiny_world, coco_source, run_dir, tmp_path, monkeypatch,
                                                         change, expected):
    monkeypatch.setattr(gen, "load_captioner", lambda *a, **kw: pytest.fail("the model was built"))
    args = tool_args(tiny_world, coco_source, tmp_path / "out", run_dir)
    flag = change[0]
    if flag in args:  # replace the flag's value
        args[args.index(flag) + 1] = change[1]
        change = change[2:]
    with pytest.raises(SystemExit) as exit_info:
        gen.main(args[:args.index("--options")] + change + args[args.index("--options"):])
    assert expected in str(exit_info.value)


def test_refuses_to_continue_a_folder_made_with_other_settings(tiny_world, coco_source, run_dir, tmp_path):
    out = tmp_path / "out"
    gen.main(tool_args(tiny_world, coco_source, out, run_dir, "--limit", "1"))
    with pytest.raises(SystemExit) as exit_info:
        gen.main(tool_args(tiny_world, coco_source, out, run_dir, "--limit", "1", "--prompt",
                           "Given {caption}, describe {region}."))
    message = str(exit_info.value)
    assert f"--out {out} was made with other settings (prompt: " in message and "write to another --out" in message


def test_unreadable_images_are_reported_not_fatal(tiny_world, coco_source, run_dir, tmp_path, capsys):
    media = tmp_path / "media"
    media.mkdir()
    data = json.loads(coco_source.read_text())
    for i, image in enumerate(data["images"][:2]):
        if i == 0:
            (media / image["file_name"]).write_bytes(b"not an image")
        else:
            Image.open(tiny_world / "images" / "train2014" / image["file_name"]).save(media / image["file_name"])
    args = tool_args(tiny_world, coco_source, tmp_path / "out", run_dir, "--limit", "2")
    args[args.index("--media-root") + 1] = str(media)
    index = json.loads(gen.main(args).read_text())
    assert index["samples"] == 1 and index["regions"] == len(REGIONS[1])
    assert "1 problems" in capsys.readouterr().out


def test_generated_captions_are_scored_against_the_regions_ground_truth(tiny_world, tmp_path):
    """tools/score_generated_captions.py: every region the ground truth holds is scored by its evaluation id (image id
    and integer box), the rest counted and left out; a caption equal to its reference scores BLEU-1 1."""
    from lavis.datasets.datasets.refcoco import region_id
    from lavis.datasets.datasets.region_shards import RegionSample, write_region_shards
    from tools import score_generated_captions as score

    jpg = next((tiny_world / "images" / "train2014").glob("*.jpg")).read_bytes()
    samples = [RegionSample("a", jpg, [[1, 2, 30, 40], [50.7, 5, 20, 20]], ["a red circle", "a blue square"], 7),
               RegionSample("b", jpg, [[0, 0, 10, 10]], ["a green triangle"], 8)]
    write_region_shards(samples, tmp_path / "shards", progress=False)
    references = {region_id(7, [1, 2, 30, 40]): "a red circle", region_id(7, [50, 5, 20, 20]): "a blue square"}
    gt = {"images": [{"id": i} for i in references],
          "annotations": [{"image_id": i, "id": n, "caption": c} for n, (i, c) in enumerate(references.items())]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    result = score.main(["--shards", str(tmp_path / "shards"), "--gt", str(tmp_path / "gt.json"), "--no-spice",
                         "--json", str(tmp_path / "scores.json")])
    assert (result["scored"], result["outside"]) == (2, 1)
    assert result["metrics"]["Bleu_1"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "scores.json").read_text())["scored"] == 2
    with pytest.raises(SystemExit):
        score.main(["--shards", str(tmp_path / "shards"), "--gt", str(tmp_path / "missing.json")])
