"""The LLM loss builds its own 4-D attention masks (so transformers never reads the padding mask back to the host):
the same loss and gradients as transformers' own masks from the 2-D padding mask, for OPT and T5, SDPA and eager
attention, with padded and unpadded targets; and no host read in the loss's forward and backward."""

from __future__ import annotations

import pytest
import torch

from lavis.models import lora
from lavis.models.llm import LLMConfig, build_llm
from lavis.models.tiny_assets import write_tiny_opt, write_tiny_t5
from tests.host_reads import HostReads

WRITERS = {"opt": (write_tiny_opt, ["q_proj", "v_proj"]), "t5": (write_tiny_t5, ["q", "v"])}


@pytest.fixture(scope="module")
def llm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("llms")
    return {family: writer(root / family) for family, (writer, _) in WRITERS.items()}


def _build(family: str, path, attention: str):
    torch.manual_seed(0)
    cfg = LLMConfig(family=family, path=str(path), dtype="float32")
    lm = build_llm(cfg, ["a"], lora.LoraSettings(target_modules=WRITERS[family][1], rank=4, alpha=8.0))
    lm.model.set_attn_implementation(attention)
    assert lm.model.config._attn_implementation == attention
    with torch.no_grad():  # B starts at zero, which would make every A gradient zero
        for name, p in sorted(lora.adapter_parameters(lm.model, "a").items()):
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    return lm


def _loss_and_grads(lm, target_mask: torch.Tensor):
    g = torch.Generator().manual_seed(1)
    soft_prompt = torch.randn(2, 4, lm.hidden_size, generator=g, requires_grad=True)
    prompt_ids = lm.tokenizer("a photo of", return_tensors="pt").input_ids
    target_ids = torch.randint(3, len(lm.tokenizer), tuple(target_mask.shape), generator=g)
    with lora.active_adapter(lm.model, "a"):
        prompt_ids = prompt_ids.expand(2, -1)
        embeds, mask = lm.prompt_inputs(prompt_ids, torch.ones_like(prompt_ids), torch.zeros(0, dtype=torch.long),
                                        None, lead=soft_prompt)
        loss = lm.loss(embeds, mask, target_ids, target_mask)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in lm.model.named_parameters() if p.requires_grad}
    lm.model.zero_grad(set_to_none=True)
    return loss.detach(), soft_prompt.grad, grads


MASKS = {"padded": torch.tensor([[1] * 6, [1] * 3 + [0] * 3]), "unpadded": torch.ones(2, 6, dtype=torch.long)}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", WRITERS)
@pytest.mark.parametrize("targets", MASKS)
def test_own_masks_give_transformers_loss_and_gradients(family, attention, targets, llm_dirs, one_thread,
                                                        monkeypatch):
    lm = _build(family, llm_dirs[family], attention)
    lm.model.train()
    loss, prompt_grad, grads = _loss_and_grads(lm, MASKS[targets])
    # transformers' path: the 2-D padding masks, from which it builds its own
    monkeypatch.setattr(lm, "_prepared_mask", lambda mask, causal, dtype: mask)
    ref_loss, ref_prompt_grad, ref_grads = _loss_and_grads(lm, MASKS[targets])

    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(prompt_grad, ref_prompt_grad, rtol=1e-5, atol=1e-7)
    assert grads.keys() == ref_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("family", WRITERS)
def test_the_loss_reads_nothing_back_to_the_host(family, llm_dirs):
    lm = _build(family, llm_dirs[family], "sdpa")
    lm.model.train()
    with HostReads() as reads:
        _loss_and_grads(lm, MASKS["padded"])
    assert reads.found == [], reads.report()


def test_other_attention_implementations_get_the_2d_mask(llm_dirs):
    lm = _build("opt", llm_dirs["opt"], "sdpa")
    mask = MASKS["padded"]
    assert lm._prepared_mask(mask, causal=True, dtype=torch.float32).shape == (2, 1, 6, 6)
    lm.model.config._attn_implementation = "flash_attention_2"  # not installed here: only the dispatch is checked
    assert lm._prepared_mask(mask, causal=True, dtype=torch.float32) is mask
