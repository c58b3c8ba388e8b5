"""Named LoRA adapters: zero start, independence of adapters, which tensors train, on the Q-Former and tiny HF LLMs."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

from lavis.models.lora import (
    LoraSettings,
    active_adapter,
    adapter_parameters,
    add_lora_adapters,
    get_active_adapter,
    set_active_adapter,
)
from lavis.models.qformer import QFormer, QFormerConfig

B, Q, T, N = 2, 4, 5, 6


def tiny_qformer() -> QFormer:
    torch.manual_seed(0)
    cfg = QFormerConfig(
        vocab_size=100,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        encoder_width=24,
        max_position_embeddings=64,
        dropout=0.0,
    )
    return QFormer(cfg).eval()


def qformer_forward(model: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return model(
        query_embeds=torch.randn(B, Q, 32, generator=g),
        input_ids=torch.randint(5, 100, (B, T), generator=g),
        encoder_hidden_states=torch.randn(B, N, 24, generator=g),
        text_mode="causal",
    )


def tiny_opt() -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    cfg = OPTConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        ffn_dim=64,
        num_attention_heads=2,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
        dropout=0.0,
        attention_dropout=0.0,
    )
    ids = torch.randint(3, 99, (B, T), generator=torch.Generator().manual_seed(2))
    return OPTForCausalLM(cfg).eval(), lambda m: m(input_ids=ids).logits


def tiny_t5() -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=99,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    g = torch.Generator().manual_seed(2)
    ids, labels = torch.randint(3, 99, (B, T), generator=g), torch.randint(3, 99, (B, 3), generator=g)
    return T5ForConditionalGeneration(cfg).eval(), lambda m: m(input_ids=ids, labels=labels).logits


MODELS = {
    "qformer": (lambda: (tiny_qformer(), qformer_forward), ["query", "value"]),
    "opt": (tiny_opt, ["q_proj", "v_proj"]),
    "t5": (tiny_t5, ["q", "v"]),
}


def all_adapter_params(model: nn.Module, names=("a", "b")) -> dict[str, nn.Parameter]:
    return {k: v for name in names for k, v in adapter_parameters(model, name).items()}



@pytest.mark.parametrize("kind", MODELS)
def test_adapters_start_as_identity_and_train_independently(kind, one_thread):
    build, targets = MODELS[kind]
    model, forward = build()
    base_names = {n for n, _ in model.named_parameters()}
    with torch.no_grad():
        base_out = forward(model)

    matched = add_lora_adapters(model, ["a", "b"], LoraSettings(target_modules=targets, rank=4, alpha=8.0), kind)
    assert matched and all(n.rsplit(".", 1)[-1] in targets for n in matched)

    # step 1: zero-initialised B -> every adapter reproduces the base bit for bit
    assert get_active_adapter(model) is None
    with torch.no_grad():
        for name in (None, "a", "b"):
            set_active_adapter(model, name)
            torch.testing.assert_close(forward(model), base_out, rtol=0, atol=0)

    # step 2: which tensors train: all adapter tensors, nothing else
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(all_adapter_params(model))
    assert all(".lora_A.a." in n or ".lora_B.a." in n for n in adapter_parameters(model, "a"))
    assert not any(n in base_names for n in trainable)

    # step 3: one AdamW step with adapter "a" active, the optimizer holding every trainable tensor
    with torch.no_grad():
        set_active_adapter(model, "b")
        before_b = forward(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    set_active_adapter(model, "a")
    forward(model).square().mean().backward()
    a_params, b_params = adapter_parameters(model, "a"), adapter_parameters(model, "b")
    assert all(p.grad is not None for p in a_params.values())
    assert any(p.grad.abs().sum() > 0 for n, p in a_params.items() if "lora_B" in n)
    assert all(p.grad is None for p in b_params.values())
    assert all(p.grad is None for n, p in model.named_parameters() if n not in a_params)
    optimizer.step()

    changed = {n for n, p in model.named_parameters() if not torch.equal(p, snapshot[n])}
    assert changed and changed <= set(a_params)
    assert all(p.requires_grad for p in all_adapter_params(model).values())  # switching never froze an adapter
    with torch.no_grad():
        set_active_adapter(model, "b")
        torch.testing.assert_close(forward(model), before_b, rtol=0, atol=0)
        set_active_adapter(model, None)
        torch.testing.assert_close(forward(model), base_out, rtol=0, atol=0)
        set_active_adapter(model, "a")
        assert not torch.equal(forward(model), base_out)


def test_unmatched_target_raises_naming_where_and_target():
    model = tiny_qformer()
    with pytest.raises(ValueError, match=r"llm\.pointcloud.*'q_proj'"):
        add_lora_adapters(model, ["a"], LoraSettings(target_modules=["query", "q_proj"]), "llm.pointcloud")
    assert get_active_adapter(model) is None and not any("lora_" in n for n, _ in model.named_parameters())


def test_target_must_be_a_linear():
    model = tiny_qformer()
    with pytest.raises(ValueError, match="'LayerNorm'"):
        add_lora_adapters(model, ["a"], LoraSettings(target_modules=["LayerNorm"]), "qformer")


def test_active_adapter_context_restores_previous():
    model = tiny_qformer()
    add_lora_adapters(model, ["a", "b"], LoraSettings(), "qformer")
    set_active_adapter(model, "b")
    with active_adapter(model, "a"):
        assert get_active_adapter(model) == "a"
        with active_adapter(model, None):
            assert get_active_adapter(model) is None
        assert get_active_adapter(model) == "a"
    assert get_active_adapter(model) == "b"
    with pytest.raises(RuntimeError), active_adapter(model, "a"):
        raise RuntimeError("boom")
    assert get_active_adapter(model) == "b"
    with pytest.raises(KeyError, match="'c'"):
        set_active_adapter(model, "c")


def test_adding_adapters_later_keeps_earlier_ones():
    model = tiny_qformer()
    add_lora_adapters(model, ["a"], LoraSettings(), "qformer")
    set_active_adapter(model, "a")
    for p in adapter_parameters(model, "a").values():
        p.requires_grad = False  # e.g. a modality frozen after its own stage
    add_lora_adapters(model, ["b"], LoraSettings(target_modules=["query", "key"]), "qformer")
    assert get_active_adapter(model) == "a"
    assert not any(p.requires_grad for p in adapter_parameters(model, "a").values())
    assert all(p.requires_grad for p in adapter_parameters(model, "b").values())
    assert any(".key.lora_A.b." in n for n in adapter_parameters(model, "b"))
    with pytest.raises(ValueError, match="already exist"):
        add_lora_adapters(model, ["b"], LoraSettings(), "qformer")


def test_freeze_base_false_leaves_base_trainability():
    model = tiny_qformer()
    add_lora_adapters(model, ["a"], LoraSettings(), "qformer", freeze_base=False)
    assert all(p.requires_grad for p in model.parameters())
