"""The frozen-encoder feature cache on the synthetic world: cached rows equal the encoder's output bit for bit, a
model's losses do not change when its batches come from the cache, the key follows the encoder's config, weights
file and the processor config (and a changed key means a new folder that must be filled), and augmentation is
refused."""

from __future__ import annotations

import os

import pytest
import torch

from lavis.common.config import load_config
from lavis.datasets.feature_cache import FeatureCachedBuilder, FeatureCacheError, FeatureStore
from lavis.datasets.loaders import Collator
from lavis.runners.features import build_frozen_encoders, precompute_features
from lavis.runners.setup import set_up_run
from tests.conftest import write_yaml


def run_config(world, tmp_path) -> dict:
    assets = world / "assets"
    cache = str(tmp_path / "cache")
    tokenizer = {"config": {"tokenizer_path": str(assets / "bert_tokenizer")}}
    return {
        "model": {"arch": "regionblip", "model_type": "tiny", "qformers": {"blip2": tokenizer, "point": tokenizer},
                  "llm": {"path": str(assets / "opt")}},
        "datasets": {
            "coco": {"builder": "coco_caption", "modality": "image", "batch_size": 4,
                     "image_root": str(world / "images"), "ann_root": str(world), "eval_split": "test",
                     "train_image": {"image_size": 32, "crop_prob": 0.0, "color_jitter": 0.0},
                     "eval_image": {"image_size": 32}, "feature_cache_dir": cache},
            "objaverse": {"builder": "objaverse_cap3d", "modality": "pointcloud", "batch_size": 4,
                          "points_root": str(world / "objaverse"),
                          "caption_file": str(world / "Cap3D_automated_Objaverse.csv"),
                          "test_uids_file": str(world / "objaverse" / "test_uids.txt"),
                          "train_split": None, "eval_split": "test",
                          "eval_processor": {"num_points": 256, "sampling": "stride"}, "feature_cache_dir": cache},
        },
        "run": {"output_dir": str(tmp_path / "out"), "num_workers": 0, "seed": 3, "tensorboard": False},
    }


def load(world, tmp_path, *options: str):
    path = write_yaml(tmp_path / "run.yaml", run_config(world, tmp_path))
    return load_config(str(path), list(options)), str(path)


def folders_by_name(folders) -> dict[str, object]:
    return {f"{f.parent.parent.name}/{f.parent.name}": f for f in folders}


def test_cached_features_are_bit_identical_to_recomputed(tiny_world, tmp_path):
    cfg, path = load(tiny_world, tmp_path)
    folders = folders_by_name(precompute_features(cfg, path))
    assert set(folders) == {"coco/train", "coco/test", "objaverse/test"}
    torch.manual_seed(cfg.run.seed)
    encoders = build_frozen_encoders(cfg.model)
    for name, split, key, input_key in (("coco", "train", "vision", "image"), ("objaverse", "test", "point", "points")):
        dataset = cfg.builder_of(name)(cfg.datasets[name]).build(split)
        store = FeatureStore(folders[f"{name}/{split}"], name)
        assert len(store) == len(dataset)
        for index in range(0, len(dataset), max(1, len(dataset) // 6)):
            item = dataset[index]
            cached, _ = store.lookup(item["sample_id"])
            with torch.no_grad():
                recomputed = encoders[key](item[input_key][None])[0]
            assert cached.dtype == torch.float32
            assert torch.equal(cached, recomputed), f"{name}/{split} sample {item['sample_id']}"


def test_losses_with_the_cache_equal_losses_without(tiny_world, tmp_path):
    cfg, path = load(tiny_world, tmp_path)
    precompute_features(cfg, path)
    setup = set_up_run(cfg, path)
    model = setup.model.eval()
    for name, split in (("coco", "train"), ("objaverse", "test")):
        builder = setup.builders[name]
        assert isinstance(builder, FeatureCachedBuilder)
        cached, plain = builder.build(split), builder.builder.build(split)
        collate = Collator(cfg.datasets[name].modality, model.text_tokenizer)
        count = min(4, len(plain))
        cached_batch = collate([cached[i] for i in range(count)])
        plain_batch = collate([plain[i] for i in range(count)])
        assert "encoder_tokens" in cached_batch and cached_batch.keys().isdisjoint({"image", "points"})
        torch.manual_seed(0)
        with_cache = model(cached_batch).losses
        torch.manual_seed(0)
        without = model(plain_batch).losses
        assert with_cache.keys() == without.keys() and with_cache
        for term in without:
            assert torch.equal(with_cache[term], without[term]), f"{name}: loss {term}"


def test_the_key_follows_encoder_weights_and_processor_config(tiny_world, tmp_path):
    cfg, path = load(tiny_world, tmp_path)
    torch.manual_seed(cfg.run.seed)
    weights = tmp_path / "vit.pth"
    torch.save(build_frozen_encoders(cfg.model)["vision"].state_dict(), weights)
    with_file = [f"model.encoders.vision.params.checkpoint_path={weights}"]
    cfg, path = load(tiny_world, tmp_path, *with_file)
    first = folders_by_name(precompute_features(cfg, path, datasets=["coco"], splits=["test"]))["coco/test"]

    changed = {
        "processor": load(tiny_world, tmp_path, *with_file, "datasets.coco.eval_image.mean=[0.5,0.5,0.5]"),
        "encoder config": load(tiny_world, tmp_path, *with_file,
                               "model.encoders.vision.params.grad_checkpointing=true"),
        "storage dtype": load(tiny_world, tmp_path, *with_file, "datasets.coco.feature_cache_dtype=bfloat16"),
    }
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    changed["weights file mtime"] = load(tiny_world, tmp_path, *with_file)
    seen = {first}
    for what, (new_cfg, new_path) in changed.items():
        setup = set_up_run(new_cfg, new_path)
        with pytest.raises(FeatureCacheError, match="missing or incomplete"):  # not filled for this key yet
            setup.builders["coco"].build("test")
        folder = folders_by_name(precompute_features(new_cfg, new_path, datasets=["coco"], splits=["test"]))
        assert folder["coco/test"] not in seen, what
        seen.add(folder["coco/test"])
        item = setup.builders["coco"].build("test")[0]  # filled: the run reads it now
        assert item["encoder_tokens"].shape[-1] == 32 and "image" not in item
    mean_changed = FeatureStore(folders_by_name(precompute_features(
        *changed["processor"], datasets=["coco"], splits=["test"]))["coco/test"])
    original = FeatureStore(first)
    sample = next(iter(original.location))
    assert not torch.equal(mean_changed.lookup(sample)[0], original.lookup(sample)[0])  # rebuilt, not copied


def test_refuses_processors_with_augmentation(tiny_world, tmp_path):
    cfg, path = load(tiny_world, tmp_path, "datasets.coco.train_image.crop_prob=0.5")
    refusal = r"datasets\.coco: .*split 'train'.*datasets\.coco\.train_image\.crop_prob"
    with pytest.raises(FeatureCacheError, match=refusal):
        precompute_features(cfg, path, datasets=["coco"])
    with pytest.raises(FeatureCacheError, match=r"datasets\.coco\.train_image\.crop_prob"):
        set_up_run(cfg, path).builders["coco"].build("train")
    cfg, path = load(tiny_world, tmp_path, "datasets.objaverse.eval_processor.sampling=random",
                     "datasets.objaverse.eval_processor.rotate_z_max_deg=90")
    with pytest.raises(FeatureCacheError, match=r"eval_processor\.sampling=random.*eval_processor\.rotate_z_max_deg"):
        precompute_features(cfg, path, datasets=["objaverse"])
