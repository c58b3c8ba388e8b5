"""llm.grad_checkpointing: the same loss and the same gradients (LoRA tensors, soft prompt) as without it, on tiny
OPT and T5, with the adapter switched away before backward (the recompute must use the forward's adapter)."""

from __future__ import annotations

import pytest
import torch

from lavis.models import lora
from lavis.models.llm import LLMConfig, build_llm
from lavis.models.tiny_assets import write_tiny_opt, write_tiny_t5

WRITERS = {"opt": (write_tiny_opt, ["q_proj", "v_proj"]), "t5": (write_tiny_t5, ["q", "v"])}



def _loss_and_grads(family: str, path, checkpointing: bool):
    writer, targets = WRITERS[family]
    torch.manual_seed(0)  # the LoRA A matrices
    cfg = LLMConfig(family=family, path=str(path), dtype="float32", grad_checkpointing=checkpointing)
    lm = build_llm(cfg, ["a", "b"], lora.LoraSettings(target_modules=targets, rank=4, alpha=8.0))
    with torch.no_grad():  # B starts at zero, which would make every A gradient zero
        for name, p in sorted(lora.adapter_parameters(lm.model, "a").items()):
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    lm.model.train()  # HF checkpoints only in training mode

    # count the calls of one LoRA-wrapped projection, and the adapter it ran with
    seen: list[str | None] = []
    layer = next(m for _, m in lora._lora_layers(lm.model))
    layer.register_forward_hook(lambda module, args, out: seen.append(lora.get_active_adapter(module)))

    g = torch.Generator().manual_seed(1)
    soft_prompt = torch.randn(2, 4, lm.hidden_size, generator=g, requires_grad=True)
    prompt_ids = lm.tokenizer("a photo of", return_tensors="pt").input_ids
    target_ids = torch.randint(3, len(lm.tokenizer), (2, 6), generator=g)
    target_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    lora.set_active_adapter(lm.model, "b")  # what is active outside the modality's scope, and during backward
    with lora.active_adapter(lm.model, "a"):
        prompt_ids = prompt_ids.expand(2, -1)
        embeds, mask = lm.prompt_inputs(prompt_ids, torch.ones_like(prompt_ids), torch.zeros(0, dtype=torch.long),
                                        None, lead=soft_prompt)
        loss = lm.loss(embeds, mask, target_ids, target_mask)
    loss.backward()
    grads = {name: p.grad for name, p in lm.model.named_parameters() if p.requires_grad}
    return loss.detach(), soft_prompt.grad, grads, seen


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """fp32 rounding relative to the tensor's scale. Not bit for bit: under checkpointing HF's T5 attention marks its
    all-zero position bias (decoder cross-attention) as requiring grad, which picks another attention kernel path
    (differences of a few ulps from the second decoder block on); OPT matches exactly. A wrong adapter in the recompute
    would differ in the leading digits."""
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item(), msg=what)


@pytest.mark.parametrize("family", WRITERS)
def test_checkpointing_gives_the_same_loss_and_gradients(family, tmp_path, one_thread):
    path = WRITERS[family][0](tmp_path / family)
    loss, prompt_grad, grads, seen = _loss_and_grads(family, path, checkpointing=False)
    loss_ckpt, prompt_grad_ckpt, grads_ckpt, seen_ckpt = _loss_and_grads(family, path, checkpointing=True)

    assert seen == ["a"], "without checkpointing the projection runs once"
    assert seen_ckpt == ["a", "a"], "checkpointing recomputes it in backward, with the forward's adapter"
    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-6, atol=0)
    _assert_close(prompt_grad_ckpt, prompt_grad, "soft prompt")
    assert prompt_grad.abs().sum() > 0
    assert grads.keys() == grads_ckpt.keys()
    for name in grads:
        if ".a." in name:  # the active adapter's tensors: real, equal gradients
            assert grads[name] is not None and grads[name].abs().sum() > 0, name
            _assert_close(grads_ckpt[name], grads[name], name)
        else:  # the inactive adapter took no part, in forward or in the recompute
            assert grads[name] is None and grads_ckpt[name] is None, name


def test_config_path_needs_random_init(tmp_path):
    cfg = LLMConfig(family="opt", path=str(tmp_path), config_path=str(tmp_path))
    with pytest.raises(ValueError, match="only for random_init"):
        build_llm(cfg, [], lora.LoraSettings())
