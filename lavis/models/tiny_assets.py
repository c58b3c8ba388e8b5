"""Tiny, random, offline stand-ins for the pretrained assets: a BERT WordPiece tokenizer (Q-Former), an OPT
directory and a T5 directory (random weights plus a tokenizer trained on a small corpus).

They exercise the same loading code as the real `bert-base-uncased`, `facebook/opt-*` and `google/flan-t5-*`
directories (`from_pretrained(..., local_files_only=True)`), in seconds and without a network. Tests and the demo
write them into a temporary directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

DEFAULT_CORPUS = (
    "a photo of a red car parked on the street",
    "a man riding a horse on the beach",
    "the dog on the left of the sofa",
    "a point cloud of a wooden chair with four legs",
    "a small white table next to the bed",
    "the lamp on the desk near the window",
    "two people playing frisbee in a park",
    "a blue bus driving down a city road",
    "a cat sleeping on a brown couch",
    "the tall plant in the corner of the room",
    "a 3d model of a green toy airplane",
    "a black office chair in front of a computer",
)

_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True)
class TinyAssets:
    bert_tokenizer: Path
    opt: Path
    t5: Path


def _words(corpus: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for line in corpus:
        for word in re.findall(r"\w+|[^\w\s]", line.lower()):
            seen.setdefault(word, None)
    return list(seen)


def write_bert_tokenizer(out_dir: str | Path, corpus: Iterable[str] = DEFAULT_CORPUS) -> Path:
    """A lower-casing BERT WordPiece tokenizer whose vocabulary is the corpus words and their characters."""
    from transformers import BertTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    words = _words(corpus)
    chars = sorted({c for w in words for c in w})
    vocab = list(dict.fromkeys([*_BERT_SPECIALS, *chars, *(f"##{c}" for c in chars), *words, ".", ","]))
    BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True).save_pretrained(out)
    return out


def _fast_tokenizer(tokenizer_object, **special_tokens):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, **special_tokens)


def write_tiny_opt(
    out_dir: str | Path, corpus: Iterable[str] = DEFAULT_CORPUS, *, hidden: int = 32, layers: int = 2, heads: int = 2
) -> Path:
    """A random `OPTForCausalLM` and a byte-level BPE tokenizer that, like OPT's, prepends `</s>`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import OPTConfig, OPTForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator([line + "\n" for line in corpus], trainer=trainer)
    eos = bpe.token_to_id("</s>")
    bpe.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A $B", special_tokens=[("</s>", eos)]
    )
    _fast_tokenizer(bpe, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>").save_pretrained(out)

    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=bpe.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers, ffn_dim=2 * hidden,
        num_attention_heads=heads, max_position_embeddings=128, word_embed_proj_dim=hidden,
        pad_token_id=bpe.token_to_id("<pad>"), bos_token_id=eos, eos_token_id=eos,
        # no dropout: trained on a few hundred captions, a 32-wide LM learns to copy from its context only without it
        dropout=0.0, attention_dropout=0.0,
    )
    OPTForCausalLM(config).save_pretrained(out)
    return out


def write_tiny_t5(
    out_dir: str | Path, corpus: Iterable[str] = DEFAULT_CORPUS, *, d_model: int = 32, layers: int = 2, heads: int = 2
) -> Path:
    """A random `T5ForConditionalGeneration` and a Unigram tokenizer with T5's special ids (pad 0, eos 1, unk 2)
    that appends `</s>`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import T5Config, T5ForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    unigram.train_from_iterator(list(corpus), trainer=trainer)
    eos = unigram.token_to_id("</s>")
    unigram.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    _fast_tokenizer(unigram, eos_token="</s>", pad_token="<pad>", unk_token="<unk>").save_pretrained(out)

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=unigram.get_vocab_size(), d_model=d_model, d_kv=d_model // heads, d_ff=2 * d_model,
        num_layers=layers, num_decoder_layers=layers, num_heads=heads, feed_forward_proj="gated-gelu",
        pad_token_id=0, eos_token_id=eos, decoder_start_token_id=0, tie_word_embeddings=False, dropout_rate=0.0,
    )
    T5ForConditionalGeneration(config).save_pretrained(out)
    return out


def write_tiny_assets(root: str | Path, corpus: Iterable[str] = DEFAULT_CORPUS) -> TinyAssets:
    root = Path(root)
    corpus = list(corpus)
    return TinyAssets(
        bert_tokenizer=write_bert_tokenizer(root / "bert_tokenizer", corpus),
        opt=write_tiny_opt(root / "opt", corpus),
        t5=write_tiny_t5(root / "t5", corpus),
    )
