"""run.compile: the repeated blocks (EVA ViT and Point-BERT blocks, Q-Former layers) are compiled in place, parameter
names and state_dict keys stay as they were, and compiled training steps give the eager losses while two modalities
with their own LoRA adapters in one Q-Former alternate (the active adapter is honoured by dynamo's guards)."""

from __future__ import annotations

import copy

import pytest
import torch

from lavis.common.checkpoint import load_checkpoint, save_atomic
from lavis.common.compile import apply_run_compile, block_types, compile_blocks, is_compiled
from lavis.common.config import RunConfig, load_config
from lavis.common.registry import TASKS
from lavis.models import lora
from lavis.models.tiny_assets import write_tiny_assets
from lavis.runners.benchmark import build_model, modality_inputs, synthetic_batch
from tests.test_benchmark import DEMO, small_options


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("compile")
    assets = write_tiny_assets(root / "assets")
    return root, small_options(assets)


def _model_with_distinct_adapters(cfg):
    """Random LoRA B (fresh adapters are zero, so any adapter would give the same outputs): switching matters."""
    model = build_model(cfg, torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


def test_compile_is_off_by_default_and_keeps_names(tiny):
    root, options = tiny
    assert RunConfig().compile is False
    cfg = load_config(DEMO, options + ["run.compile=true"])
    assert cfg.run.compile is True
    eager = build_model(load_config(DEMO, options), torch.device("cpu"))
    assert not any(is_compiled(m) for m in eager.modules())
    compiled = build_model(cfg, torch.device("cpu"))  # build_model honours run.compile, as set_up_run does
    blocks = [m for m in compiled.modules() if isinstance(m, block_types())]
    assert blocks and all(is_compiled(m) for m in blocks)
    kinds = {type(m).__name__ for m in blocks}
    assert {"EvaBlock", "Block", "Layer"} <= kinds  # EVA ViT, Point-BERT, Q-Former
    assert not is_compiled(compiled)  # only the blocks: the model itself stays eager
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert [n for n, _ in compiled.named_parameters()] == [n for n, _ in eager.named_parameters()]
    assert [n for n, _ in compiled.named_modules()] == [n for n, _ in eager.named_modules()]
    assert compile_blocks(compiled) == {}  # idempotent
    assert apply_run_compile(eager, False) is eager and not any(is_compiled(m) for m in eager.modules())


@pytest.mark.slow  # compiling the blocks takes ~1-2 min on one CPU thread
def test_compiled_steps_match_eager_while_adapters_alternate(tiny, tmp_path, one_thread):
    root, options = tiny
    cfg = load_config(DEMO, options)
    eager = _model_with_distinct_adapters(cfg)
    compiled = copy.deepcopy(eager)
    compile_blocks(compiled)
    # image and image_region share the blip2 Q-Former, each with its own adapter
    modalities = ["image", "image_region"]
    assert eager.cfg.modalities["image"].qformer == eager.cfg.modalities["image_region"].qformer
    assert {"image", "image_region"} <= lora.adapter_names_in(eager.qformers["blip2"])
    specs = {m: modality_inputs(eager, cfg, m, tmp_path / "cache", 2, torch.device("cpu"), use_cache=False)
             for m in modalities}
    task = TASKS.get(cfg.run.task)()

    def losses(model):
        gen = torch.Generator().manual_seed(3)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        out = []
        for _ in range(3):
            for m in modalities:
                loss, _ = task.train_step(model, synthetic_batch(model, specs[m], 2, gen))
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                out.append(loss.item())
        return out

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    expected, got = losses(eager), losses(compiled)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # it did compile
    assert got == pytest.approx(expected, rel=1e-5)
    # the compiled Q-Former itself, adapter by adapter: the eager outputs, and the adapters really differ
    gen = torch.Generator().manual_seed(4)
    batch = synthetic_batch(eager, specs["image"], 2, gen)
    queries = eager.heads["image"].query_embeds(2, None)
    width = eager.qformers["blip2"].config.encoder_width
    tokens = torch.randn(2, 5, width, generator=gen)
    mask = torch.ones(2, 5, dtype=torch.long)
    outs = {}
    with torch.no_grad():
        for adapter in ["image", "image_region", "image", None]:
            for model in (eager, compiled):
                with lora.active_adapter(model.qformers["blip2"], adapter):
                    outs[adapter, model is compiled] = model.qformers["blip2"](
                        query_embeds=queries, encoder_hidden_states=tokens, encoder_attention_mask=mask)
            torch.testing.assert_close(outs[adapter, True], outs[adapter, False], rtol=1e-5, atol=1e-5)
        own = task.train_step(compiled, batch)[0].item()
    assert not torch.allclose(outs["image", False], outs["image_region", False], rtol=1e-3, atol=1e-3)

    # a checkpoint of the compiled model's trainable tensors loads into an eager model, with the same outputs
    path = tmp_path / "ckpt.pth"
    save_atomic({"model": compiled.trainable_state_dict()}, path)
    fresh = build_model(cfg, torch.device("cpu"))
    fresh.load_trainable_state_dict(load_checkpoint(path)["model"])
    state, trained = fresh.state_dict(), compiled.state_dict()
    assert list(state) == list(trained)
    for key, value in trained.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    with torch.no_grad():
        assert task.train_step(fresh, batch)[0].item() == pytest.approx(own, rel=1e-5)

