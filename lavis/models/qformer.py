"""The BLIP-2 Q-Former: BERT-base whose query positions cross-attend to encoder tokens every `cross_attention_freq`-th
layer and have their own feed-forward block.

Submodule names follow LAVIS's `BertLMHeadModel` (`bert.embeddings.*`, `bert.encoder.layer.N.{attention,crossattention,
intermediate,output,intermediate_query,output_query}.*`, `cls.predictions.*`) so that the `Qformer.*` tensors of a LAVIS
BLIP-2 checkpoint load after stripping the prefix. As in LAVIS, the LM decoder weight is tied to the word embeddings.

One forward serves the three BLIP-2 uses, chosen by what is passed:
    queries only                  queries self-attend and cross-attend to the encoder tokens   (feature extraction)
    text only                     plain BERT text encoder, no cross-attention                  (ITC text features)
    queries + text, bidirectional all positions attend to all; only queries cross-attend       (ITM)
    queries + text, causal        queries see queries only; text sees all queries and earlier   (ITG)
                                  text
"""

from __future__ import annotations

import logging
import re
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from lavis.common.checkpoint_io import load_into, read_state_dict
from lavis.common.config_schema import config_from_dict
from lavis.models import lora

log = logging.getLogger(__name__)


@dataclass
class QFormerConfig:
    vocab_size: int = 30523  # bert-base-uncased + [DEC]
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    cross_attention_freq: int = 2
    encoder_width: int = 1408
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    grad_checkpointing: bool = False
    bert_init_path: Optional[str] = None  # HF BERT dir (bert-base-uncased): loaded first, as LAVIS's init_Qformer
    checkpoint_path: Optional[str] = None  # LAVIS BLIP-2 file; its `Qformer.*` tensors are loaded (over BERT's)
    tokenizer_path: Optional[str] = None  # HF bert tokenizer dir


TEXT_MODES = ("bidirectional", "causal")
# A LAVIS buffer (arange of positions) that carries no learned state.
_LAVIS_IGNORED_KEYS = ("bert.embeddings.position_ids",)
BERT_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Tensors with one row per vocabulary entry: the Q-Former's vocabulary is BERT's plus "[DEC]".
_VOCAB_KEYS = (
    "bert.embeddings.word_embeddings.weight",
    "cls.predictions.bias",
    "cls.predictions.decoder.weight",
    "cls.predictions.decoder.bias",
)
_TEXT_FFN = re.compile(r"^(bert\.encoder\.layer\.\d+\.)(intermediate|output)\.")


class Embeddings(nn.Module):
    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: Tensor | None, query_embeds: Tensor | None) -> Tensor:
        parts = [] if query_embeds is None else [query_embeds]
        if input_ids is not None:
            # text positions count from 0 even after the queries, as in LAVIS
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            parts.append(self.word_embeddings(input_ids) + self.position_embeddings(positions))
        return self.dropout(self.LayerNorm(torch.cat(parts, dim=1)))


class SelfAttention(nn.Module):
    """Multi-head attention projections; keys and values come from `context` (itself, or the encoder tokens)."""

    def __init__(self, cfg: QFormerConfig, context_width: int):
        super().__init__()
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(f"hidden_size {cfg.hidden_size} is not a multiple of num_heads {cfg.num_heads}")
        self.num_heads = cfg.num_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(context_width, cfg.hidden_size)
        self.value = nn.Linear(context_width, cfg.hidden_size)
        self.dropout_p = cfg.dropout

    def _heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, -1).transpose(1, 2)

    def forward(self, hidden: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        q, k, v = self._heads(self.query(hidden)), self._heads(self.key(context)), self._heads(self.value(context))
        dropout_p = self.dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        return out.transpose(1, 2).flatten(2)


class ResidualOutput(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual): BERT's `*Output` blocks."""

    def __init__(self, in_features: int, cfg: QFormerConfig):
        super().__init__()
        self.dense = nn.Linear(in_features, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nn.Module):
    def __init__(self, cfg: QFormerConfig, context_width: int):
        super().__init__()
        self.self = SelfAttention(cfg, context_width)
        self.output = ResidualOutput(cfg.hidden_size, cfg)

    def forward(self, hidden: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        return self.output(self.self(hidden, context, mask), hidden)


class Intermediate(nn.Module):
    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = nn.GELU()  # BERT's exact (erf) GELU

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.dense(x))


class Layer(nn.Module):
    def __init__(self, cfg: QFormerConfig, index: int):
        super().__init__()
        self.attention = Attention(cfg, cfg.hidden_size)
        self.has_cross_attention = index % cfg.cross_attention_freq == 0
        if self.has_cross_attention:
            self.crossattention = Attention(cfg, cfg.encoder_width)
        self.intermediate = Intermediate(cfg)
        self.output = ResidualOutput(cfg.intermediate_size, cfg)
        self.intermediate_query = Intermediate(cfg)
        self.output_query = ResidualOutput(cfg.intermediate_size, cfg)
        self.grad_checkpointing = cfg.grad_checkpointing

    def forward(
        self,
        hidden: Tensor,
        self_mask: Tensor | None,
        num_queries: int,
        encoder_hidden_states: Tensor | None,
        encoder_mask: Tensor | None,
    ) -> Tensor:
        attended = self.attention(hidden, hidden, self_mask)
        if num_queries == 0:
            return self.output(self.intermediate(attended), attended)
        queries = attended[:, :num_queries]
        if self.has_cross_attention:
            queries = self.crossattention(queries, encoder_hidden_states, encoder_mask)
        out = self.output_query(self.intermediate_query(queries), queries)
        if attended.shape[1] > num_queries:
            text = attended[:, num_queries:]
            out = torch.cat([out, self.output(self.intermediate(text), text)], dim=1)
        return out


class Encoder(nn.Module):
    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg, i) for i in range(cfg.num_layers))

    def forward(self, hidden: Tensor, *args: Any) -> Tensor:
        for layer in self.layer:
            if layer.grad_checkpointing and self.training and torch.is_grad_enabled():
                hidden = torch.utils.checkpoint.checkpoint(
                    layer, hidden, *args, use_reentrant=False, context_fn=_same_adapter_on_recompute(layer)
                )
            else:
                hidden = layer(hidden, *args)
        return hidden


def _same_adapter_on_recompute(layer: nn.Module):
    """The backward recompute must see the LoRA adapter that was active in forward, even if the caller switched
    adapters (e.g. left an `active_adapter` block) before calling backward."""
    name = lora.get_active_adapter(layer)
    return lambda: (nullcontext(), lora.active_adapter(layer, name))


class Bert(nn.Module):
    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)


class PredictionHeadTransform(nn.Module):
    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = nn.GELU()
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class LMPredictionHead(nn.Module):
    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.transform = PredictionHeadTransform(cfg)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        # LAVIS registers the bias under both names, so its checkpoints hold both keys
        self.decoder.bias = self.bias

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.transform(x))


class MLMHead(nn.Module):
    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.predictions = LMPredictionHead(cfg)


class QFormer(nn.Module):
    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.config = cfg
        self.bert = Bert(cfg)
        self.cls = MLMHead(cfg)
        self.apply(_init_bert_weights)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    @classmethod
    def from_config(cls, cfg: QFormerConfig | Any) -> QFormer:
        """Build from a `QFormerConfig` (or a mapping of its fields); load `bert_init_path`, then `checkpoint_path`
        (whose tensors replace BERT's where it has them), if set."""
        if not isinstance(cfg, QFormerConfig):
            cfg = config_from_dict(QFormerConfig, cfg, "qformer")
        model = cls(cfg)
        if cfg.bert_init_path:
            model.load_bert_pretrained(cfg.bert_init_path)
        if cfg.checkpoint_path:
            model.load_lavis_checkpoint(cfg.checkpoint_path)
        return model

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for layer in self.bert.encoder.layer:
            layer.grad_checkpointing = enable

    def load_bert_pretrained(self, path: str) -> tuple[list[str], list[str]]:
        """Initialise from an HF BERT directory as LAVIS's `init_Qformer` does; returns (missing, unexpected).

        Every BERT tensor goes to its namesake; each layer's query feed-forward (`intermediate_query`,
        `output_query`) starts as a copy of that layer's text feed-forward; cross-attention stays random (reported
        missing). BERT's vocabulary rows fill the first rows of the word embeddings and the LM head, the extra
        "[DEC]" row keeps its random init (LAVIS's `resize_token_embeddings`). BERT's token-type embeddings,
        pooler and next-sentence head have no place in the Q-Former (reported unexpected). A shape mismatch is an
        error naming the key."""
        where = f"Q-Former from BERT {path}"
        if lora.adapter_names_in(self):
            raise RuntimeError(f"{where}: load the BERT weights before adding LoRA adapters (they rename the Linears)")
        state = bert_qformer_state(read_state_dict(bert_weight_file(path), key=None))
        if not set(state) & set(self.state_dict()):
            raise ValueError(f"{where}: no BERT tensor names (bert.*, cls.*, or embeddings.*, encoder.*) in the file")
        return load_into(self, self._fit_vocabulary(state, where), where)

    def _fit_vocabulary(self, state: dict[str, Tensor], where: str) -> dict[str, Tensor]:
        own = self.state_dict()
        fitted = dict(state)
        for key in _VOCAB_KEYS:
            if key not in state or key not in own or state[key].shape == own[key].shape:
                continue
            rows = state[key].shape[0]
            if rows > own[key].shape[0] or state[key].shape[1:] != own[key].shape[1:]:
                raise ValueError(f"{where}: shape mismatch for {key}: file {tuple(state[key].shape)} vs model "
                                 f"{tuple(own[key].shape)} (vocab_size must be >= BERT's vocabulary)")
            fitted[key] = own[key].clone()
            fitted[key][:rows] = state[key]
        return fitted

    def load_lavis_checkpoint(self, path: str) -> tuple[list[str], list[str]]:
        """Load the `Qformer.*` tensors of a LAVIS BLIP-2 file; returns (missing, unexpected) key names.

        Stage-2 LAVIS files drop the text-only parts (`cls`, word/position embeddings, text FFN); those are reported
        as missing, not an error. A shape mismatch is an error naming the key."""
        return self.load_lavis_state_dict(read_state_dict(path), where=f"Q-Former from {path}")

    def load_lavis_state_dict(
        self, state: dict[str, Tensor], where: str = "Q-Former", prefix: str = "Qformer."
    ) -> tuple[list[str], list[str]]:
        if lora.adapter_names_in(self):
            raise RuntimeError(f"{where}: load the LAVIS weights before adding LoRA adapters (they rename the Linears)")
        own = lavis_qformer_state(state, prefix)
        if not own:
            raise ValueError(f"{where}: no tensors named '{prefix}*' in the state dict")
        return load_into(self, own, where)

    def forward(
        self,
        *,
        query_embeds: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        text_mode: str = "bidirectional",
    ) -> Tensor:
        """Hidden states `[B, Q + T, H]`, queries first.

        query_embeds           [B, Q, H] learned queries (plus any position embedding); needs encoder_hidden_states
        input_ids              [B, T] token ids, [CLS] or [DEC] first
        attention_mask         [B, T] text padding mask (1 = token), or [B, Q + T] covering the queries too (LAVIS)
        encoder_hidden_states  [B, N, encoder_width] image / point tokens; ignored when no queries are given
        encoder_attention_mask [B, N] (1 = token)
        text_mode              "bidirectional" or "causal" (text attends to all queries and to earlier text only)
        """
        if query_embeds is None and input_ids is None:
            raise ValueError("QFormer.forward needs query_embeds, input_ids, or both")
        if text_mode not in TEXT_MODES:
            raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {text_mode!r}")
        num_queries = 0 if query_embeds is None else query_embeds.shape[1]
        if num_queries and encoder_hidden_states is None:
            raise ValueError("query_embeds cross-attend to the encoder: pass encoder_hidden_states")
        if not num_queries:
            encoder_hidden_states = encoder_attention_mask = None

        # step 1: embeddings (queries first)
        hidden = self.bert.embeddings(input_ids, query_embeds)
        # step 2: masks (boolean, True = may attend), broadcast over heads
        causal = text_mode == "causal" and input_ids is not None
        self_mask = _self_attention_mask(attention_mask, num_queries, hidden.shape[1], causal, hidden.device)
        encoder_mask = None if encoder_attention_mask is None else encoder_attention_mask.bool()[:, None, None, :]
        # step 3: the layers
        return self.bert.encoder(hidden, self_mask, num_queries, encoder_hidden_states, encoder_mask)

    def lm_logits(self, text_hidden: Tensor) -> Tensor:
        """Next-token logits `[B, T, vocab]` from the text part of the hidden states."""
        return self.cls.predictions(text_hidden)


def _self_attention_mask(
    attention_mask: Tensor | None, num_queries: int, length: int, causal: bool, device: torch.device
) -> Tensor | None:
    key_mask = None
    if attention_mask is not None:
        key_mask = attention_mask.to(device=device).bool()
        if key_mask.shape[1] == length - num_queries and num_queries:
            key_mask = F.pad(key_mask, (num_queries, 0), value=True)
        elif key_mask.shape[1] != length:
            raise ValueError(
                f"attention_mask has {key_mask.shape[1]} positions; expected {length - num_queries} (text) "
                f"or {length} (queries + text)"
            )
        key_mask = key_mask[:, None, None, :]
    if not causal:
        return key_mask
    # queries see queries; text sees every query and the text up to itself
    structure = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    structure[:, :num_queries] = True
    structure[:num_queries, num_queries:] = False
    return structure if key_mask is None else structure & key_mask


def _init_bert_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def lavis_qformer_state(state: dict[str, Tensor], prefix: str = "Qformer.") -> dict[str, Tensor]:
    """The Q-Former tensors of a LAVIS BLIP-2 state dict, named as in `QFormer` (prefix stripped, buffers dropped)."""
    own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return {k: v for k, v in own.items() if k not in _LAVIS_IGNORED_KEYS}


def bert_weight_file(path: str | Path) -> Path:
    """The weight file of an HF BERT directory (or `path` itself when it names a file)."""
    path = Path(path)
    if path.is_file():
        return path
    for name in BERT_WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"{path}: no BERT weights ({' or '.join(BERT_WEIGHT_FILES)}); it should be an HF "
                            f"bert-base-uncased directory")


def bert_qformer_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF BERT tensors named as in `QFormer`: BertForMaskedLM / BertForPreTraining keys (`bert.*`, `cls.*`) or
    BertModel keys (no prefix); old `LayerNorm.gamma/beta` names; the text feed-forward copied to the query one;
    the tied LM decoder taken from the word embeddings and its bias when the file leaves them out."""
    prefixed = any(k.startswith("bert.") for k in state)
    own: dict[str, Tensor] = {}
    for key, value in state.items():
        if not prefixed and not key.startswith("cls."):
            key = f"bert.{key}"
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key))
        if key not in _LAVIS_IGNORED_KEYS:
            own[key] = value
    for key, value in list(own.items()):
        text_ffn = _TEXT_FFN.match(key)
        if text_ffn:
            own[f"{text_ffn[1]}{text_ffn[2]}_query.{key[text_ffn.end():]}"] = value
    if "bert.embeddings.word_embeddings.weight" in own:
        own.setdefault("cls.predictions.decoder.weight", own["bert.embeddings.word_embeddings.weight"])
    if "cls.predictions.bias" in own:
        own.setdefault("cls.predictions.decoder.bias", own["cls.predictions.bias"])
    return own


def build_qformer_tokenizer(path: str):
    """BLIP-2's Q-Former tokenizer: the BERT tokenizer at `path` plus "[DEC]" as bos token, truncating on the right."""
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(path, truncation_side="right")
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    return tokenizer
