"""Q-Former: attention patterns per mode, masks, LAVIS checkpoint names, tokenizer. Tiny config, random weights."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from lavis.models import lora
from lavis.models.qformer import QFormer, QFormerConfig, build_qformer_tokenizer

B, Q, T, N = 2, 4, 6, 5


def tiny_config(**overrides) -> QFormerConfig:
    base = dict(
        vocab_size=100,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        cross_attention_freq=2,
        encoder_width=24,
        max_position_embeddings=64,
    )
    return QFormerConfig(**{**base, **overrides})


@pytest.fixture
def model() -> QFormer:
    torch.manual_seed(0)
    return QFormer(tiny_config()).eval()


@pytest.fixture
def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return dict(
        query_embeds=torch.randn(B, Q, 32, generator=g),
        input_ids=torch.randint(5, 100, (B, T), generator=g),
        attention_mask=torch.ones(B, T, dtype=torch.long),
        encoder_hidden_states=torch.randn(B, N, 24, generator=g),
    )


def queries_only(x):
    return {k: x[k] for k in ("query_embeds", "encoder_hidden_states")}


def text_only(x):
    return {k: x[k] for k in ("input_ids", "attention_mask")}


def test_output_shapes_per_mode(model, inputs):
    assert model(**queries_only(inputs)).shape == (B, Q, 32)
    assert model(**text_only(inputs)).shape == (B, T, 32)
    assert model(**inputs, text_mode="bidirectional").shape == (B, Q + T, 32)
    joint = model(**inputs, text_mode="causal")
    assert joint.shape == (B, Q + T, 32)
    assert model.lm_logits(joint[:, Q:]).shape == (B, T, 100)


def test_cross_attention_every_freq_layer_and_lm_head_tied():
    m = QFormer(tiny_config(num_layers=4, cross_attention_freq=2))
    assert [hasattr(layer, "crossattention") for layer in m.bert.encoder.layer] == [True, False, True, False]
    assert m.bert.encoder.layer[0].crossattention.self.key.in_features == 24
    assert m.cls.predictions.decoder.weight is m.bert.embeddings.word_embeddings.weight


def test_causal_mode_hides_text_from_queries_and_future_text(model, inputs):
    out = model(**inputs, text_mode="causal")
    changed = dict(inputs, input_ids=inputs["input_ids"].clone())
    changed["input_ids"][:, 3:] = (changed["input_ids"][:, 3:] + 7) % 100
    out2 = model(**changed, text_mode="causal")
    torch.testing.assert_close(out2[:, :Q], out[:, :Q], rtol=0, atol=1e-6)  # queries never see text
    torch.testing.assert_close(out2[:, Q : Q + 3], out[:, Q : Q + 3], rtol=0, atol=1e-6)  # text t sees only <= t
    assert not torch.allclose(out2[:, Q + 3 :], out[:, Q + 3 :])
    # in causal mode the queries are exactly the queries-only features
    torch.testing.assert_close(out[:, :Q], model(**queries_only(inputs)), rtol=0, atol=1e-6)


def test_causal_text_only_is_a_left_to_right_decoder(model, inputs):
    changed = inputs["input_ids"].clone()
    changed[:, 3:] = (changed[:, 3:] + 7) % 100
    a = model(input_ids=inputs["input_ids"], text_mode="causal")
    b = model(input_ids=changed, text_mode="causal")
    torch.testing.assert_close(b[:, :3], a[:, :3], rtol=0, atol=1e-6)


def test_bidirectional_mode_lets_queries_see_text(model, inputs):
    changed = dict(inputs, input_ids=(inputs["input_ids"] + 7) % 100)
    assert not torch.allclose(model(**changed)[:, :Q], model(**inputs)[:, :Q])


def test_causal_text_depends_on_queries(model, inputs):
    changed = dict(inputs, query_embeds=torch.randn_like(inputs["query_embeds"]))
    assert not torch.allclose(model(**changed, text_mode="causal")[:, Q:], model(**inputs, text_mode="causal")[:, Q:])


def test_text_only_mode_ignores_the_encoder(model, inputs):
    out = model(**text_only(inputs))
    other = model(**text_only(inputs), encoder_hidden_states=torch.randn(B, 9, 24), encoder_attention_mask=None)
    torch.testing.assert_close(other, out, rtol=0, atol=0)


def test_queries_see_the_encoder(model, inputs):
    changed = dict(queries_only(inputs), encoder_hidden_states=torch.randn_like(inputs["encoder_hidden_states"]))
    assert not torch.allclose(model(**changed), model(**queries_only(inputs)))


@pytest.mark.parametrize("mode", ["text", "bidirectional", "causal"])
def test_text_padding_is_masked(model, inputs, mode):
    def run(ids, mask):
        if mode == "text":
            return model(input_ids=ids, attention_mask=mask)
        return model(**dict(inputs, input_ids=ids, attention_mask=mask), text_mode=mode)

    mask = inputs["attention_mask"].clone()
    mask[0, 4:] = 0
    ids, ids2 = inputs["input_ids"], inputs["input_ids"].clone()
    ids2[0, 4:] = (ids2[0, 4:] + 11) % 100
    keep = slice(0, 4 if mode == "text" else Q + 4)
    a, b = run(ids, mask), run(ids2, mask)
    torch.testing.assert_close(b[0, keep], a[0, keep], rtol=0, atol=1e-6)
    torch.testing.assert_close(b[1], a[1], rtol=0, atol=0)
    if mode != "causal":  # without the mask the changed tokens would reach the kept positions
        assert not torch.allclose(run(ids, None)[0, keep], run(ids2, None)[0, keep])


def test_lavis_style_mask_over_queries_and_text_equals_text_mask(model, inputs):
    mask = inputs["attention_mask"].clone()
    mask[1, 3:] = 0
    full = torch.cat([torch.ones(B, Q, dtype=mask.dtype), mask], dim=1)
    for mode in ("bidirectional", "causal"):
        torch.testing.assert_close(
            model(**dict(inputs, attention_mask=full), text_mode=mode),
            model(**dict(inputs, attention_mask=mask), text_mode=mode),
            rtol=0,
            atol=0,
        )
    with pytest.raises(ValueError, match="attention_mask"):
        model(**dict(inputs, attention_mask=torch.ones(B, T + 1)))


def test_encoder_padding_is_masked(model, inputs):
    enc_mask = torch.ones(B, N, dtype=torch.long)
    enc_mask[:, 3:] = 0
    enc2 = inputs["encoder_hidden_states"].clone()
    enc2[:, 3:] += 5.0
    a = model(**inputs, encoder_attention_mask=enc_mask)
    b = model(**dict(inputs, encoder_hidden_states=enc2), encoder_attention_mask=enc_mask)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_bad_calls_raise(model, inputs):
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        model(query_embeds=inputs["query_embeds"])
    with pytest.raises(ValueError, match="text_mode"):
        model(**inputs, text_mode="prefix")
    with pytest.raises(ValueError):
        model()


def lavis_key_names(num_layers: int, freq: int) -> set[str]:
    """The `Qformer.*` tensor names of a LAVIS BLIP-2 stage-1 checkpoint (read from LAVIS's Qformer.py)."""
    keys = {"Qformer.bert.embeddings.position_ids"}
    for name in ("word_embeddings.weight", "position_embeddings.weight", "LayerNorm.weight", "LayerNorm.bias"):
        keys.add(f"Qformer.bert.embeddings.{name}")
    wb = ("weight", "bias")
    for i in range(num_layers):
        layer = f"Qformer.bert.encoder.layer.{i}"
        blocks = ["attention"] + (["crossattention"] if i % freq == 0 else [])
        for block in blocks:
            keys |= {f"{layer}.{block}.self.{p}.{s}" for p in ("query", "key", "value") for s in wb}
            keys |= {f"{layer}.{block}.output.{p}.{s}" for p in ("dense", "LayerNorm") for s in wb}
        for ffn in ("", "_query"):
            keys |= {f"{layer}.intermediate{ffn}.dense.{s}" for s in wb}
            keys |= {f"{layer}.output{ffn}.{p}.{s}" for p in ("dense", "LayerNorm") for s in wb}
    keys |= {
        "Qformer.cls.predictions.bias",
        "Qformer.cls.predictions.decoder.weight",
        "Qformer.cls.predictions.decoder.bias",
    }
    keys |= {f"Qformer.cls.predictions.transform.{p}.{s}" for p in ("dense", "LayerNorm") for s in wb}
    return keys


def lavis_checkpoint_from(source: QFormer) -> dict[str, torch.Tensor]:
    """A synthetic LAVIS BLIP-2 `model` dict: the Q-Former under `Qformer.` plus the tensors around it."""
    state = {f"Qformer.{k}": v.clone() for k, v in source.state_dict().items()}
    state["Qformer.bert.embeddings.position_ids"] = torch.arange(64).expand(1, -1)
    state["query_tokens"] = torch.zeros(1, 32, 32)
    state["vision_proj.weight"] = torch.zeros(16, 32)
    return state


def test_parameter_names_are_lavis_names(model):
    lavis = lavis_key_names(2, 2) - {"Qformer.bert.embeddings.position_ids"}
    assert {f"Qformer.{k}" for k in model.state_dict()} == lavis


def test_lavis_checkpoint_loads_and_reproduces_outputs(tmp_path, inputs):
    torch.manual_seed(3)
    source = QFormer(tiny_config()).eval()
    for p in source.parameters():  # make LayerNorms and biases non-trivial too
        p.data.add_(0.05 * torch.randn_like(p))
    state = lavis_checkpoint_from(source)
    assert {k for k in state if k.startswith("Qformer.")} == lavis_key_names(2, 2)
    path = tmp_path / "blip2_pretrained.pth"
    torch.save({"model": state}, path)

    loaded = QFormer.from_config(tiny_config(checkpoint_path=str(path))).eval()
    missing, unexpected = loaded.load_lavis_checkpoint(str(path))
    assert missing == [] and unexpected == []
    for mode in ("bidirectional", "causal"):
        torch.testing.assert_close(loaded(**inputs, text_mode=mode), source(**inputs, text_mode=mode), rtol=0, atol=0)
    text_hidden = source(**text_only(inputs))
    torch.testing.assert_close(loaded.lm_logits(text_hidden), source.lm_logits(text_hidden), rtol=0, atol=0)


def test_from_config_accepts_a_mapping(tmp_path):
    fields = dataclasses.asdict(tiny_config())
    m = QFormer.from_config(fields)
    assert m.config == tiny_config()


def test_stage2_checkpoint_reports_missing_text_parts(tmp_path, inputs):
    source = QFormer(tiny_config()).eval()
    state = lavis_checkpoint_from(source)
    # LAVIS stage 2 sets cls, word/position embeddings and each layer's text FFN (intermediate, output) to None
    dropped = re.compile(
        r"Qformer\.(cls\.|bert\.embeddings\.(word|position)_|bert\.encoder\.layer\.\d+\.(intermediate|output)\.)"
    )
    state = {k: v for k, v in state.items() if not dropped.match(k)}
    missing, unexpected = QFormer(tiny_config()).load_lavis_state_dict(state)
    assert unexpected == []
    assert "bert.embeddings.word_embeddings.weight" in missing and "cls.predictions.bias" in missing
    assert "bert.encoder.layer.1.intermediate.dense.weight" in missing
    assert not any("_query" in k or "attention" in k for k in missing)


def test_shape_mismatch_names_the_key(tmp_path):
    state = lavis_checkpoint_from(QFormer(tiny_config()))
    state["Qformer.bert.encoder.layer.0.crossattention.self.key.weight"] = torch.zeros(32, 30)
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match=r"layer\.0\.crossattention\.self\.key\.weight"):
        QFormer.from_config(tiny_config(checkpoint_path=str(path)))


def test_file_without_qformer_tensors_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="Qformer"):
        QFormer(tiny_config()).load_lavis_state_dict({"visual_encoder.cls_token": torch.zeros(1)})


def test_loading_after_lora_is_refused():
    model = QFormer(tiny_config())
    state = lavis_checkpoint_from(model)
    lora.add_lora_adapters(model, ["a"], lora.LoraSettings(), "qformer")
    with pytest.raises(RuntimeError, match="before adding LoRA"):
        model.load_lavis_state_dict(state)


def test_grad_checkpointing_matches_and_keeps_forward_adapter(inputs):
    torch.manual_seed(0)
    plain = QFormer(tiny_config(dropout=0.0)).train()
    lora.add_lora_adapters(plain, ["a", "b"], lora.LoraSettings(rank=2), "qformer")
    for name in ("a", "b"):  # non-zero B so adapters change the output
        for pname, p in lora.adapter_parameters(plain, name).items():
            if "lora_B" in pname:
                torch.nn.init.normal_(p, std=0.1)

    def grads(model: QFormer) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        with lora.active_adapter(model, "a"):
            out = model(**inputs, text_mode="causal")
        out.square().sum().backward()  # backward after the adapter block has been left
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    reference = grads(plain)
    plain.set_grad_checkpointing(True)
    checkpointed = grads(plain)
    assert reference.keys() == checkpointed.keys()
    assert all(".a." in n for n in reference)
    for n in reference:
        torch.testing.assert_close(checkpointed[n], reference[n])


def test_tokenizer_adds_dec_as_bos(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "dog"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = build_qformer_tokenizer(str(tmp_path))
    assert tok.bos_token == "[DEC]" and tok.bos_token_id == len(words)
    assert len(tok) == len(words) + 1
    assert tok.truncation_side == "right"
    ids = tok(["a photo of cat dog"], truncation=True, max_length=4)["input_ids"][0]
    assert ids == [2, 5, 6, 3]  # [CLS] a photo [SEP]: cut on the right
