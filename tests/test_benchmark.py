"""tools/benchmark.py on the tiny demo config: every modality runs, rates are finite, the FLOP count is the one
FlopCounterMode reports for the same step, the feature cache removes the encoder's FLOPs, `random_init` builds a
model whose weight files do not exist (the LLM from its config.json alone, or from configs/hf_configs at real size),
the naive path gives the optimised path's losses, and the largest-batch search finds the OOM threshold."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lavis.common.config import load_config
from lavis.common.registry import TASKS
from lavis.models import lora
from lavis.models.llm import LLMConfig, build_llm
from lavis.models.tiny_assets import write_tiny_assets
from lavis.runners.benchmark import (
    _max_batch,
    benchmark_modality,
    build_model,
    find_max_batch,
    modality_inputs,
    per_sample_encoders,
    synthetic_batch,
)
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


def test_naive_path_gives_the_same_losses_and_the_tool_prints_the_ratios(tmp_path, capsys):
    assets = write_tiny_assets(tmp_path / "assets")
    out = benchmark_main(["--cfg-path", DEMO, "--options", *small_options(assets), "--steps", "2", "--batch-size",
                          "2", "--generate-steps", "0", "--compare-naive"])
    printed = capsys.readouterr().out
    assert "baseline, naive: no feature cache, encoder one sample at a time, fp32" in printed
    assert "candidate / baseline" in printed and "speed-up" in printed
    naive, optimised = out["baseline"], out["candidate"]
    assert [r.modality for r in naive] == [r.modality for r in optimised] == list(load_config(DEMO, small_options(
        assets)).model.modalities)
    for slow, fast in zip(naive, optimised):
        # same weights, batches and RNG draws: warm-up, FLOP-counted and 2 timed steps, AdamW updating in between;
        # only the encoder's batched vs per-sample matmuls round differently (fp32)
        assert len(slow.losses) == len(fast.losses) == 4
        torch.testing.assert_close(torch.tensor(fast.losses), torch.tensor(slow.losses), rtol=1e-4, atol=1e-5,
                                   msg=slow.modality)
        assert slow.flops_per_sample == pytest.approx(fast.flops_per_sample, rel=1e-6)  # the same work, batched


def test_per_sample_encoders_run_one_sample_at_a_time_and_restore(tmp_path):
    assets = write_tiny_assets(tmp_path / "assets")
    model = build_model(load_config(DEMO, small_options(assets)), torch.device("cpu"))
    encoder = model.encoders["vision"]
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batched = encoder(images)
        seen = []
        patch_embed = encoder.visual_encoder.patch_embed
        handle = patch_embed.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
        with per_sample_encoders(model):
            one_by_one = encoder(images)
        handle.remove()
    assert seen == [1, 1, 1]
    torch.testing.assert_close(one_by_one, batched, rtol=1e-5, atol=1e-5)
    assert "forward" not in vars(encoder)  # the class's batched forward again


@pytest.mark.parametrize("threshold", [0, 1, 2, 3, 5, 16, 17, 100, 1000])
@pytest.mark.parametrize("start", [1, 4, 16])
def test_find_max_batch_finds_the_oom_threshold(threshold, start):
    tried, released = [], []

    def step(batch: int) -> None:
        tried.append(batch)
        if batch > threshold:
            raise torch.cuda.OutOfMemoryError(f"fake: {batch} > {threshold}")

    found = find_max_batch(step, start=start, limit=512, release=lambda: released.append(True))
    assert found == min(threshold, 512)
    assert len(released) == sum(b > threshold for b in tried)  # memory released after every OOM, only then
    assert len(tried) <= 2 * math.log2(512) + 2 and len(set(tried)) == len(tried)  # no batch tried twice


def test_find_max_batch_lets_other_errors_through():
    def step(batch: int) -> None:
        raise ValueError("not an OOM")

    with pytest.raises(ValueError, match="not an OOM"):
        find_max_batch(step)


def test_max_batch_search_runs_real_train_steps(tmp_path):
    """The search's step on the tiny model (no OOM on CPU, so it stops at the limit): the wiring runs real steps."""
    assets = write_tiny_assets(tmp_path / "assets")
    cfg = load_config(DEMO, small_options(assets))
    device = torch.device("cpu")
    model = build_model(cfg, device)
    spec = modality_inputs(model, cfg, "pointcloud", tmp_path / "cache", 2, device)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert _max_batch(model, cfg, spec, device, start=2, limit=3) == 3
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)


def test_find_max_batch_refuses_the_cpu(tmp_path, capsys):
    assets = write_tiny_assets(tmp_path / "assets")
    with pytest.raises(SystemExit):
        benchmark_main(["--cfg-path", DEMO, "--options", *small_options(assets), "run.device=cpu",
                        "--find-max-batch"])
    assert "--find-max-batch needs a CUDA GPU" in capsys.readouterr().err


# (config.json, family, parameters of the base model in billions: the public counts, with T5's lm_head tied to its
# embeddings or not, depending on the transformers version)
REAL_SIZES = {"opt-2.7b": ("opt", 2.65, 2.66), "opt-6.7b": ("opt", 6.65, 6.67),
              "flan-t5-xl": ("t5", 2.78, 2.86), "flan-t5-xxl": ("t5", 11.0, 11.14)}


@pytest.mark.parametrize("name", REAL_SIZES)
def test_real_llm_sizes_from_their_config_json_on_the_meta_device(name, tmp_path):
    """The committed config.json builds the real architecture (without allocating it: meta tensors) with a tokenizer
    from elsewhere; the embedding matrix has the config's vocabulary, not the tokenizer's."""
    family, low, high = REAL_SIZES[name]
    assets = write_tiny_assets(tmp_path / "assets")
    tokenizer_dir = assets.opt if family == "opt" else assets.t5
    cfg = LLMConfig(family=family, path=str(tokenizer_dir), config_path=str(REPO / "configs" / "hf_configs" / name))
    targets = ["q_proj", "v_proj"] if family == "opt" else ["q", "v"]
    with torch.device("meta"):
        lm = build_llm(cfg, ["image"], lora.LoraSettings(target_modules=targets), random_init=True)
    assert all(p.is_meta for p in lm.model.parameters())
    base = sum(p.numel() for name, p in lm.model.named_parameters() if ".lora_" not in name)
    assert low * 1e9 <= base <= high * 1e9, base
    assert lm.model.get_input_embeddings().num_embeddings == (50272 if family == "opt" else 32128)
    assert len(lm.tokenizer) < 1000  # the tiny tokenizer
