"""tools/benchmark.py on the tiny demo config: every modality runs, rates are finite, the FLOP count is the one
FlopCounterMode reports for the same step, the feature cache removes the encoder's FLOPs, and `random_init` builds a
model whose weight files do not exist (the LLM from its config.json alone)."""

from __future__ import annotations

import math
import shutil

import torch
from torch.utils.flop_counter import FlopCounterMode

from lavis.common.config import load_config
from lavis.common.registry import TASKS
from lavis.models.tiny_assets import write_tiny_assets
from lavis.runners.benchmark import benchmark_modality, build_model, modality_inputs, synthetic_batch
from tests.conftest import REPO
from tools.benchmark import main as benchmark_main

DEMO = str(REPO / "configs" / "demo" / "regionblip_tiny.yaml")


def small_options(assets) -> list[str]:
    return [f"model.qformers.blip2.config.tokenizer_path={assets.bert_tokenizer}",
            f"model.qformers.point.config.tokenizer_path={assets.bert_tokenizer}",
            f"model.llm.path={assets.opt}", "model.random_init=true",
            "datasets.objaverse.train_processor.num_points=256", "datasets.scanrefer.train_processor.num_points=256"]


def test_every_modality_reports_rates_and_the_flops_of_its_step(tmp_path):
    assets = write_tiny_assets(tmp_path / "assets")
    cfg = load_config(DEMO, small_options(assets))
    device = torch.device("cpu")
    model = build_model(cfg, device)
    task = TASKS.get(cfg.run.task)()
    for modality in model.cfg.modalities:
        spec = modality_inputs(model, cfg, modality, tmp_path / "cache", 2, device)
        result = benchmark_modality(model, cfg, spec, steps=2, batch_size=2, device=device, generate_steps=0, seed=5)
        assert math.isfinite(result.samples_per_s) and result.samples_per_s > 0
        assert all(math.isfinite(v) and v >= 0 for k, v in result.parts_ms.items() if k != "other_fwd")
        assert result.parts_ms["encoder"] > 0 and result.parts_ms["qformer"] > 0 and result.parts_ms["llm"] > 0
        # the counted step is the second batch drawn from the seeded generator (after the warm-up batch)
        gen = torch.Generator().manual_seed(5)
        synthetic_batch(model, spec, 2, gen)
        batch = synthetic_batch(model, spec, 2, gen)
        with FlopCounterMode(display=False) as counter:
            loss, _ = task.train_step(model, batch)
            loss.backward()
        model.zero_grad(set_to_none=True)
        assert result.flops_per_sample > 0
        assert result.flops_per_sample * 2 == counter.get_total_flops(), modality


def test_compare_with_the_feature_cache_removes_the_encoder(tmp_path, capsys):
    assets = write_tiny_assets(tmp_path / "assets")
    out = benchmark_main(["--cfg-path", DEMO, "--options", *small_options(assets), "--modalities", "image",
                          "pointcloud", "--steps", "1", "--batch-size", "2", "--generate-steps", "1", "--compare",
                          f"datasets.coco.feature_cache_dir={tmp_path / 'cache'}",
                          f"datasets.objaverse.feature_cache_dir={tmp_path / 'cache'}",
                          "datasets.objaverse.train_processor.dropout_max_ratio=0",
                          "datasets.objaverse.train_processor.rotate_z_max_deg=0",
                          "datasets.objaverse.train_processor.scale_low=1.0",
                          "datasets.objaverse.train_processor.scale_high=1.0",
                          "datasets.objaverse.train_processor.sampling=stride"])
    printed = capsys.readouterr().out
    assert "candidate / baseline" in printed
    for base, cand in zip(out["baseline"], out["candidate"]):
        assert not base.cached and cand.cached
        assert cand.parts_ms["encoder"] == 0 and base.parts_ms["encoder"] > 0
        assert 0 < cand.flops_per_sample < base.flops_per_sample
        assert math.isfinite(cand.generate_samples_per_s) and cand.generate_samples_per_s > 0


def test_random_init_needs_no_weight_files(tmp_path):
    assets = write_tiny_assets(tmp_path / "assets")
    config_only = tmp_path / "opt_config_only"
    shutil.copytree(assets.opt, config_only, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    options = small_options(assets) + [f"model.llm.path={config_only}",
                                       f"model.blip2_checkpoint_path={tmp_path / 'absent_blip2.pth'}",
                                       f"model.encoders.vision.params.checkpoint_path={tmp_path / 'absent_vit.pth'}"]
    cfg = load_config(DEMO, options)
    model = build_model(cfg, torch.device("cpu"))
    assert model.llm.hidden_size > 0
    assert not any(p.requires_grad for p in model.encoders.parameters())
