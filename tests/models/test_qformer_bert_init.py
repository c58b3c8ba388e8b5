"""Q-Former initialised from an HF BERT directory (as LAVIS's init_Qformer): key mapping proven by equal outputs.
Tiny BERTs with random weights are written by transformers into a temp dir; nothing is downloaded."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel

from lavis.models import lora
from lavis.models.qformer import QFormer
from tests.models.test_qformer import lavis_checkpoint_from, tiny_config

BERT_VOCAB = 99  # the Q-Former's tiny_config has 100: BERT's vocabulary plus "[DEC]"


def tiny_bert_config(**overrides) -> BertConfig:
    base = dict(vocab_size=BERT_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=64, hidden_act="gelu", layer_norm_eps=1e-12)
    return BertConfig(**{**base, **overrides})


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial LayerNorms and biases too, so a wrongly mapped tensor changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        # the Q-Former (like LAVIS's) has no token-type embedding: BERT's type-0 row would otherwise be added
        embeddings = model.bert.embeddings if hasattr(model, "bert") else model.embeddings
        embeddings.token_type_embeddings.weight.zero_()


@pytest.fixture
def mlm_dir(tmp_path):
    torch.manual_seed(0)
    bert = BertForMaskedLM(tiny_bert_config()).eval()
    randomise(bert, 1)
    bert.save_pretrained(tmp_path / "bert")
    return tmp_path / "bert", bert


def cross_attention_keys(model: QFormer) -> set[str]:
    return {k for k in model.state_dict() if ".crossattention." in k}


def text_ids(seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, BERT_VOCAB, (3, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    return ids, mask


def test_masked_lm_dir_loads_every_text_tensor(mlm_dir):
    path, bert = mlm_dir
    model = QFormer(tiny_config())
    missing, unexpected = model.load_bert_pretrained(str(path))
    assert set(missing) == cross_attention_keys(model)  # random, as in LAVIS
    assert unexpected == ["bert.embeddings.token_type_embeddings.weight"]
    reference = bert.state_dict()
    own = model.state_dict()
    for i in range(2):
        for ffn in ("intermediate", "output"):
            for key, value in own.items():
                if key.startswith(f"bert.encoder.layer.{i}.{ffn}_query."):
                    text_key = key.replace(f"{ffn}_query.", f"{ffn}.")
                    torch.testing.assert_close(value, own[text_key], rtol=0, atol=0)  # query FFN == text FFN
                    torch.testing.assert_close(value, reference[text_key], rtol=0, atol=0)
    word = own["bert.embeddings.word_embeddings.weight"]
    torch.testing.assert_close(word[:BERT_VOCAB], reference["bert.embeddings.word_embeddings.weight"], rtol=0, atol=0)
    assert own["cls.predictions.bias"][BERT_VOCAB] == 0  # the [DEC] row keeps its init (resize_token_embeddings)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


def test_text_forward_and_lm_logits_equal_hf_bert(mlm_dir):
    path, bert = mlm_dir
    model = QFormer.from_config(tiny_config(bert_init_path=str(path))).eval()
    ids, mask = text_ids()
    hidden = model(input_ids=ids, attention_mask=mask)
    with torch.no_grad():
        expected = bert.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        expected_logits = bert(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(hidden, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(model.lm_logits(hidden)[..., :BERT_VOCAB], expected_logits, rtol=0, atol=1e-5)


def test_bert_model_dir_and_legacy_gamma_beta_names(tmp_path):
    torch.manual_seed(0)
    bert = BertModel(tiny_bert_config()).eval()
    randomise(bert, 3)
    bert.save_pretrained(tmp_path / "bert_model")
    model = QFormer.from_config(tiny_config(bert_init_path=str(tmp_path / "bert_model"))).eval()
    missing, unexpected = QFormer(tiny_config()).load_bert_pretrained(str(tmp_path / "bert_model"))
    assert set(missing) == cross_attention_keys(model) | {
        k for k in model.state_dict() if k.startswith("cls.") and "decoder.weight" not in k
    }
    assert sorted(unexpected) == ["bert.embeddings.token_type_embeddings.weight", "bert.pooler.dense.bias",
                                  "bert.pooler.dense.weight"]
    ids, mask = text_ids()
    with torch.no_grad():
        expected = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask), expected, rtol=0, atol=1e-5)

    # the original bert-base-uncased files name LayerNorm parameters gamma / beta, as pytorch_model.bin
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in bert.state_dict().items()}
    (tmp_path / "legacy").mkdir()
    torch.save(legacy, tmp_path / "legacy" / "pytorch_model.bin")
    old = QFormer.from_config(tiny_config(bert_init_path=str(tmp_path / "legacy"))).eval()
    torch.testing.assert_close(old(input_ids=ids, attention_mask=mask), expected, rtol=0, atol=1e-5)


def test_blip2_checkpoint_overrides_bert_where_it_has_tensors(mlm_dir, tmp_path):
    path, bert = mlm_dir
    torch.manual_seed(5)
    blip2 = QFormer(tiny_config())
    # a stage-2 style file: no cls, no word/position embeddings, no text feed-forward
    dropped = re.compile(
        r"Qformer\.(cls\.|bert\.embeddings\.(word|position)_|bert\.encoder\.layer\.\d+\.(intermediate|output)\.)"
    )
    state = {k: v for k, v in lavis_checkpoint_from(blip2).items() if not dropped.match(k)}
    torch.save({"model": state}, tmp_path / "stage2.pth")
    model = QFormer.from_config(tiny_config(bert_init_path=str(path), checkpoint_path=str(tmp_path / "stage2.pth")))
    own, from_bert, from_blip2 = model.state_dict(), bert.state_dict(), blip2.state_dict()
    for key in ("bert.encoder.layer.0.intermediate.dense.weight", "bert.encoder.layer.1.output.LayerNorm.bias",
                "cls.predictions.transform.dense.weight"):
        torch.testing.assert_close(own[key], from_bert[key], rtol=0, atol=0)
    word = "bert.embeddings.word_embeddings.weight"
    torch.testing.assert_close(own[word][:BERT_VOCAB], from_bert[word], rtol=0, atol=0)
    for key in ("bert.encoder.layer.0.intermediate_query.dense.weight", "bert.encoder.layer.0.crossattention."
                "self.key.weight", "bert.encoder.layer.1.attention.self.query.weight"):
        torch.testing.assert_close(own[key], from_blip2[key], rtol=0, atol=0)


def test_shape_mismatch_and_bad_paths(tmp_path):
    BertForMaskedLM(tiny_bert_config(intermediate_size=48)).save_pretrained(tmp_path / "wide")
    with pytest.raises(ValueError, match=r"layer\.0\.intermediate\.dense\.weight"):
        QFormer.from_config(tiny_config(bert_init_path=str(tmp_path / "wide")))
    BertForMaskedLM(tiny_bert_config(vocab_size=120)).save_pretrained(tmp_path / "big_vocab")
    with pytest.raises(ValueError, match="word_embeddings.weight"):
        QFormer.from_config(tiny_config(bert_init_path=str(tmp_path / "big_vocab")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        QFormer.from_config(tiny_config(bert_init_path=str(tmp_path / "empty")))
    model = QFormer(tiny_config())
    lora.add_lora_adapters(model, ["a"], lora.LoraSettings(), "qformer")
    with pytest.raises(RuntimeError, match="before adding LoRA"):
        model.load_bert_pretrained(str(tmp_path / "wide"))
