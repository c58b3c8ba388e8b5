"""Every experiment YAML under configs/train and configs/eval loads and validates, and each one sets the model,
dataset, split, image size and task of the paper cell its name claims (Tables 1 and 2). No model is built."""

from __future__ import annotations

from pathlib import Path

import pytest

import lavis  # noqa: F401  (registers the built-in models and datasets)
from lavis.common.config import load_config
from tests.conftest import REPO

LLMS = ("opt2.7b", "opt6.7b", "flant5xl", "flant5xxl")
# cell -> (builder, modality, eval split, eval image size or None for point clouds)
CELLS = {
    "coco": ("coco_caption", "image", "test", 364),
    "refcoco": ("refcoco", "image_region", "test", 364),
    "objaverse": ("objaverse_cap3d", "pointcloud", "test", None),
    "scanrefer": ("scanrefer", "pointcloud_region", "val", None),
    "vqav2": ("vqav2", "image", "val2014", 224),  # zero-shot, BLIP-2's VQA image size
    "refcocog": ("refcoco", "image_region", "val", 364),  # beyond the paper: the protocol region-captioning papers use
    "nr3d": ("nr3d", "pointcloud_region", "test", None),  # beyond the paper: the 3D captioning literature's second set
}
TRAIN_SETS = {"refcoco": "image_region", "objaverse_cap3d": "pointcloud", "scanrefer": "pointcloud_region"}
TRAIN_DIR = REPO / "configs" / "train"
EVAL_DIR = REPO / "configs" / "eval"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> list[str]:
    """--options for the `???` weight paths, pointing at empty stand-ins (validation only checks they exist)."""
    root = tmp_path_factory.mktemp("weights")
    for name in ("blip2.pth", "point_bert.pt"):
        (root / name).touch()
    for name in ("bert-base-uncased", "llm"):
        (root / name).mkdir()
    return [
        f"model.blip2_checkpoint_path={root / 'blip2.pth'}",
        f"model.encoders.point.params.checkpoint_path={root / 'point_bert.pt'}",
        f"model.qformers.blip2.config.tokenizer_path={root / 'bert-base-uncased'}",
        f"model.qformers.point.config.tokenizer_path={root / 'bert-base-uncased'}",
        f"model.llm.path={root / 'llm'}",
    ]


def expected_eval_files() -> set[str]:
    names = {f"regionblip_{llm}_{cell}.yaml" for llm in LLMS for cell in CELLS}
    names |= {f"blip2_crop_refcoco_{llm}.yaml" for llm in LLMS}
    names |= {f"regionblip_opt2.7b_no_pafe_{cell}.yaml" for cell in ("refcoco", "objaverse", "scanrefer")}
    return names


def test_there_is_one_file_per_paper_cell():
    assert {p.name for p in EVAL_DIR.glob("*.yaml")} == expected_eval_files()
    assert {p.name for p in TRAIN_DIR.glob("*.yaml")} == {f"regionblip_{llm}.yaml" for llm in LLMS} | {
        "regionblip_opt2.7b_no_pafe.yaml"}


def no_pafe(cfg) -> bool:
    regions = [cfg.model.modalities[m] for m in ("image_region", "pointcloud_region")]
    return all(m.region is None and not m.losses.get("reg") for m in regions)


@pytest.mark.parametrize("path", sorted(TRAIN_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_training_config_follows_the_paper(path: Path, weights):
    cfg = load_config(str(path), weights)
    llm = path.stem.removeprefix("regionblip_").removesuffix("_no_pafe")
    assert cfg.yaml.model.model_type == llm
    assert cfg.model.llm.family == ("opt" if llm.startswith("opt") else "t5")
    assert {name: ds.modality for name, ds in cfg.datasets.items()} == TRAIN_SETS
    assert all(ds.train_split == "train" and ds.eval_split is None for ds in cfg.datasets.values())
    assert [cfg.builder_of(name).__name__ for name in TRAIN_SETS] == [
        "RefCocoBuilder", "ObjaverseCap3DBuilder", "ScanReferBuilder"]
    run = cfg.run
    assert run.task == "pretrain" and run.output_dir == f"output/train/{path.stem}"
    assert run.optimizer.weight_decay == 0.05 and list(run.optimizer.betas) == [0.9, 0.999]
    schedule = run.lr_schedule
    assert (schedule.name, schedule.init_lr, schedule.min_lr, schedule.warmup_steps) == (
        "linear_warmup_cosine", 1e-4, 1e-5, 200)
    assert cfg.datasets["refcoco"].train_image.image_size == 224
    assert cfg.model.encoders["vision"].params["img_size"] == 224
    assert cfg.model.encoders["point"].params["num_groups"] == 512
    objects, scenes = cfg.datasets["objaverse_cap3d"].train_processor, cfg.datasets["scanrefer"].train_processor
    assert objects.dropout_max_ratio > 0 and objects.scale_low < objects.scale_high and objects.rotate_z_max_deg > 0
    assert scenes.dropout_max_ratio > 0 and scenes.scale_low < scenes.scale_high
    assert no_pafe(cfg) == path.stem.endswith("_no_pafe")
    assert_reference_conventions(cfg, training=True)


def assert_reference_conventions(cfg, training: bool) -> None:
    """The reference's data conventions where they are not bugs: whole-pixel 2D boxes, ScanRefer in raw metres
    (Objaverse normalised), FPS from a random point in training only; its y/z-swapped 3D corners are not the default."""
    for name, ds in cfg.datasets.items():
        builder = ds.builder or name
        if builder == "refcoco" and not getattr(ds, "crop_to_box", False):
            assert (ds.train_image if training else ds.eval_image).truncate_box_pixels
        if builder in ("objaverse_cap3d", "scanrefer", "nr3d"):
            points = ds.train_processor if training else ds.eval_processor
            assert points.normalize == (builder == "objaverse_cap3d")
            assert points.fps_start == ("random" if training else "first")
            assert not points.use_color
        region = cfg.model.modalities[ds.modality].region
        assert ds.region_kind == region  # resolved from the modality
        assert region in (None, "box2d", "box3d_corners")


def claim_of(stem: str) -> tuple[str, str, str]:
    """file stem -> (kind, llm, cell), kind one of regionblip, no_pafe, blip2_crop."""
    if stem.startswith("blip2_crop_refcoco_"):
        return "blip2_crop", stem.removeprefix("blip2_crop_refcoco_"), "refcoco"
    if stem.startswith("regionblip_opt2.7b_no_pafe_"):
        return "no_pafe", "opt2.7b", stem.removeprefix("regionblip_opt2.7b_no_pafe_")
    llm, cell = stem.removeprefix("regionblip_").split("_")
    return "regionblip", llm, cell


@pytest.mark.parametrize("path", sorted(EVAL_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_eval_config_matches_its_paper_cell(path: Path, weights):
    kind, llm, cell = claim_of(path.stem)
    builder, modality, split, image_size = CELLS[cell]
    cfg = load_config(str(path), weights)
    assert cfg.yaml.model.model_type == llm
    assert cfg.run.output_dir == f"output/eval/{path.stem}"
    [(name, ds)] = cfg.datasets.items()
    assert (ds.builder or name) == builder
    assert (ds.train_split, ds.eval_split) == (None, split)
    if image_size is not None:
        assert ds.eval_image.image_size == image_size
        assert cfg.model.encoders["vision"].params["img_size"] == image_size
    if cell == "vqav2":  # BLIP-2's zero-shot VQA through the frozen image path: no trained checkpoint is read
        assert cfg.run.task == "vqa" and ds.modality == modality
        vqa = cfg.builder_of(name)(ds)
        assert str(vqa.questions_file(split)) == "data/vqav2/v2_OpenEnded_mscoco_val2014_questions.json"
        assert str(vqa.annotations_file(split)) == "data/vqav2/v2_mscoco_val2014_annotations.json"
        assert ds.image_root == "data/coco/images/val2014"
        assert ds.image_pattern.format(split=split, image_id=42) == "COCO_val2014_000000000042.jpg"
        assert ds.prompt == "Question: {} Short answer:"
        assert (ds.generation.num_beams, ds.generation.max_new_tokens, ds.generation.length_penalty) == (5, 10, -1.0)
        assert cfg.model.modalities["image"].lora is False and cfg.run.load_ckpt_path is None
        return
    assert cfg.run.task == "captioning"
    gt_name = {"coco": "coco_karpathy", "refcocog": "refcocog_umd"}.get(cell, cell)
    # Nr3D's converter writes two files: the m@kIoU references in ScanRefer's layout and evaluate.py's COCO one
    suffix = "__coco_gt" if cell == "nr3d" else ""
    assert ds.eval_gt_file == f"data/gt/{gt_name}_{split}{suffix}.json"
    assert_reference_conventions(cfg, training=False)
    if kind == "blip2_crop":
        assert ds.modality == "image" and ds.crop_to_box and not ds.eval_image.truncate_box_pixels
        assert cfg.model.modalities["image"].lora is False and cfg.run.load_ckpt_path is None
        return
    assert ds.modality == modality and not getattr(ds, "crop_to_box", False)
    # the checkpoint is the one the matching training config writes (its run directory: the latest checkpoint)
    train_stem = f"regionblip_{llm}" + ("_no_pafe" if kind == "no_pafe" else "")
    train = load_config(str(TRAIN_DIR / f"{train_stem}.yaml"), weights)
    assert cfg.run.load_ckpt_path == train.run.output_dir
    assert no_pafe(cfg) == (kind == "no_pafe")
    assert cfg.model.modalities == train.model.modalities  # the model the checkpoint was trained as
