"""The frozen language models behind one interface: OPT (decoder-only) and FlanT5 (encoder-decoder).

Both are the unmodified transformers classes loaded from a local HF directory; each modality gets its own LoRA
adapter (lavis.models.lora). The input before the answer is an instruction whose region placeholders hold the
regions' soft prompts (projected Q-Former outputs), laid out by lavis.models.prompt_layout, optionally after the
whole image's soft prompt:

    OPT  input   = [whole soft prompt? | instruction with slots (</s> after leading slots) | target ids]
                   causal LM loss on the target ids only
    T5   encoder = [whole soft prompt? | instruction with slots | </s>], decoder target = target ids  (prefix LM)

RegionBLIP's fixed prompt is the one-placeholder case: [soft prompt | </s> prompt | target] and [soft | prefix </s>].
"""

from __future__ import annotations

import functools
import logging
from contextlib import nullcontext
from dataclasses import dataclass
from enum import Enum
from typing import Optional

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from lavis.models import lora

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value the HF losses skip


class LLMFamily(str, Enum):
    opt = "opt"
    t5 = "t5"


class LLMDtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@dataclass
class LLMConfig:
    family: LLMFamily = LLMFamily.opt
    path: str = "???"  # local HF directory with the weights and the tokenizer
    dtype: LLMDtype = LLMDtype.bfloat16  # of the frozen base weights; LoRA tensors are kept in float32
    # Recompute each transformer block's activations in backward instead of keeping them (HF gradient checkpointing,
    # non-reentrant): less memory per sample, about one more LLM forward per step. Only in training mode.
    grad_checkpointing: bool = False
    # random_init only: a directory holding just the architecture's config.json (e.g. configs/hf_configs/opt-2.7b),
    # built instead of `path`'s; `path` then only needs the tokenizer. The embedding matrix has the config's vocab.
    config_path: Optional[str] = None
    # OPT, a modality with an empty prompt: the last soft-prompt position is also trained to predict OPT's leading
    # </s>, as in LAVIS BLIP-2 and the reference RegionBLIP (their targets are the whole tokenized text with </s>).
    bos_target_with_empty_prompt: bool = False


@dataclass
class GenerationConfig:
    num_beams: int = 5
    max_new_tokens: int = 30
    min_new_tokens: int = 8
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0


def load_llm_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


class LanguageModel(nn.Module):
    """A frozen HF LLM with per-modality LoRA adapters; `family` decides how the soft prompt and text are laid out."""

    def __init__(self, cfg: LLMConfig, model: nn.Module, tokenizer):
        super().__init__()
        self.family = LLMFamily(cfg.family)
        self.model = model
        self.tokenizer = tokenizer
        # OPT captions end with "\n" (BLIP-2's convention), so generation stops there; T5 stops at </s>.
        if self.family is LLMFamily.opt:
            self.stop_token_id = tokenizer("\n", add_special_tokens=False).input_ids[0]
        else:
            self.stop_token_id = tokenizer.eos_token_id

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    def _embed(self, ids: Tensor) -> Tensor:
        return self.model.get_input_embeddings()(ids)

    def prompt_inputs(self, prompt_ids: Tensor, prompt_mask: Tensor, region_slots: Tensor,
                      region_soft: Optional[Tensor], lead: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """The LLM's input embeddings and mask before the answer: `lead` [B, Q, D] (the whole image's or scene's soft
        prompt, when it precedes the text), then the instruction's embeddings [B, P, D] with every region's soft
        prompt `region_soft` [R, Q, D] written at its slots (`region_slots` [R * Q], flat positions into B * P, as
        lavis.models.prompt_layout lays them out). One index_copy: no loop per region, no read-back to the host.
        The ids must already be on the LLM's device (the batch's move does that, off the step's critical path)."""
        embeds = self._embed(prompt_ids)
        if region_soft is not None and region_slots.numel():
            flat = embeds.flatten(0, 1).index_copy(0, region_slots, region_soft.flatten(0, 1).to(embeds.dtype))
            embeds = flat.view_as(embeds)
        mask = prompt_mask.to(torch.long)
        if lead is not None:
            embeds = torch.cat([lead.to(embeds.dtype), embeds], dim=1)
            mask = torch.cat([mask.new_ones(lead.shape[:2]), mask], dim=1)
        return embeds, mask

    def sequence_labels(self, prefix_len: int, target_ids: Tensor, target_mask: Tensor) -> Tensor:
        """OPT: the labels of the whole input [B, prefix_len + T] (IGNORE_INDEX where nothing is predicted): the
        target ids only. The LAVIS layout, the reference's `targets`."""
        ignored = torch.full((target_ids.shape[0], prefix_len), IGNORE_INDEX, dtype=target_ids.dtype,
                             device=target_ids.device)
        return torch.cat([ignored, target_ids.masked_fill(target_mask == 0, IGNORE_INDEX)], dim=1)

    def loss(self, embeds: Tensor, mask: Tensor, target_ids: Tensor, target_mask: Tensor) -> Tensor:
        """Mean next-token cross-entropy over the target tokens (the answer only).

        embeds / mask [B, L, D] / [B, L]: what precedes the answer (`prompt_inputs`); target_ids / target_mask
        [B, T], right-padded. OPT: input = [embeds | target], the last prefix position predicting the first target
        token; T5: the prefix is the encoder input and the target the decoder's."""
        if self.family is LLMFamily.opt:
            labels = target_ids.masked_fill(target_mask == 0, IGNORE_INDEX)
            embeds = torch.cat([embeds, self._embed(target_ids)], dim=1)
            mask = torch.cat([mask, target_mask], dim=1)
            # Logits only where a target is predicted (from the last prefix position on), not over the prefix: the
            # vocabulary projection is the largest activation of the step.
            out = self.model(
                inputs_embeds=embeds,
                attention_mask=self._prepared_mask(mask, causal=True, dtype=embeds.dtype),
                position_ids=mask.cumsum(1) * mask - 1,  # OPT's own rule, which it cannot apply to a 4-D mask
                logits_to_keep=labels.shape[1] + 1,
            )
            logits = out.logits[:, :-1]  # position t predicts target token t
            return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
        out = self.model(
            inputs_embeds=embeds, labels=target_ids.masked_fill(target_mask == 0, IGNORE_INDEX),
            attention_mask=self._prepared_mask(mask, causal=False, dtype=embeds.dtype),
            decoder_attention_mask=self._prepared_mask(target_mask, causal=True, dtype=embeds.dtype),
        )
        return out.loss

    def _prepared_mask(self, mask: Tensor, causal: bool, dtype: torch.dtype) -> Tensor:
        """`mask` [B, L] (1 = token) as the 4-D mask the attention takes: [B, 1, L, L] causal and padding, or
        [B, 1, 1, L] key padding (broadcast over the queries: right for T5's encoder and its cross-attention too).
        SDPA takes bool (True = attend), eager attention an additive float mask; other implementations get the 2-D
        mask back. transformers builds the same masks, but for SDPA it first reads the padding mask back to the host
        (to drop the mask when nothing is padded), which makes every training step wait for the GPU at the LLM."""
        impl = self.model.config._attn_implementation
        if impl not in ("sdpa", "eager"):
            return mask
        keep = mask.bool()[:, None, None, :]
        if causal:
            length = mask.shape[1]
            keep = keep & torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
        if impl == "sdpa":
            return keep
        return torch.zeros(keep.shape, dtype=dtype, device=mask.device).masked_fill(~keep, torch.finfo(dtype).min)

    def decode(self, ids: Tensor) -> list[str]:
        return [text.strip() for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    @torch.no_grad()
    def generate_ids(self, embeds: Tensor, mask: Tensor, gen: GenerationConfig) -> Tensor:
        """Beam search after `prompt_inputs`' embeddings; returns the new token ids [B, L], finished rows padded with
        the pad id."""
        return self.model.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            do_sample=False,
            num_beams=gen.num_beams,
            max_new_tokens=gen.max_new_tokens,
            min_new_tokens=gen.min_new_tokens,
            repetition_penalty=gen.repetition_penalty,
            length_penalty=gen.length_penalty,
            eos_token_id=self.stop_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )


def build_llm(cfg: LLMConfig, adapter_names: list[str], lora_settings: lora.LoraSettings, *,
              random_init: bool = False) -> LanguageModel:
    """Load the frozen LLM and its tokenizer from `cfg.path` (no network) and add one LoRA adapter per name.
    `random_init`: build the architecture of `cfg.config_path`'s (else `cfg.path`'s) config.json with random weights
    (no weight file needed)."""
    from transformers import AutoConfig, AutoModelForCausalLM, T5ForConditionalGeneration

    family = LLMFamily(cfg.family)
    dtype = getattr(torch, LLMDtype(cfg.dtype).value)
    if cfg.config_path and not random_init:
        raise ValueError(f"llm.config_path ({cfg.config_path}) is only for random_init: pretrained weights come with "
                         f"their own config.json in llm.path ({cfg.path})")
    tokenizer = load_llm_tokenizer(cfg.path)
    if random_init:
        config = AutoConfig.from_pretrained(cfg.config_path or cfg.path, local_files_only=True)
        if len(tokenizer) > config.vocab_size:
            raise ValueError(f"the tokenizer in {cfg.path} has {len(tokenizer)} tokens, more than the vocab_size "
                             f"{config.vocab_size} of {cfg.config_path or cfg.path}/config.json")
        if family is LLMFamily.opt:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        else:
            model = T5ForConditionalGeneration(config).to(dtype)
        model.eval()  # as from_pretrained leaves it
    else:
        model_cls = AutoModelForCausalLM if family is LLMFamily.opt else T5ForConditionalGeneration
        model = model_cls.from_pretrained(cfg.path, dtype=dtype, local_files_only=True)
    model.requires_grad_(False)
    if adapter_names:
        lora.add_lora_adapters(model, adapter_names, lora_settings, where=f"llm ({cfg.path})")
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # optimizer state and updates of the small adapters in full precision
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model)
    log.info("LLM %s (%s, %s) with LoRA adapters %s", cfg.path, family.value, dtype, adapter_names)
    return LanguageModel(cfg, model, tokenizer)


def enable_grad_checkpointing(model: nn.Module) -> None:
    """HF gradient checkpointing (non-reentrant) whose recompute runs with the LoRA adapter of the forward.

    The model switches adapters per modality in a scope that ends before `backward` (lavis.models.lora), so without
    this the recompute would run whatever adapter is active then, and the gradients would be of another function.
    HF gives every checkpointing module (per transformer block in transformers 5; the decoder / stack in 4.x) its own
    `_gradient_checkpointing_func`; each is replaced by one whose context reads that module's active adapter at
    forward and re-enters it for the recompute, so a switch touches only that module's LoRA layers."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False) and hasattr(module, "_gradient_checkpointing_func"):
            module._gradient_checkpointing_func = functools.partial(
                torch.utils.checkpoint.checkpoint, use_reentrant=False, context_fn=_forward_adapter_context(module)
            )
    # HF (5.x) also hooks the input embeddings so their output requires grad, which only the reentrant checkpoint
    # needs; here the inputs are `inputs_embeds` from the trainable projection, and the non-reentrant checkpoint
    # reaches the LoRA tensors without it, so the hook would only add gradients of the prompt / target embeddings.
    if getattr(model, "_require_grads_hook", None) is not None:
        model.disable_input_require_grads()


def _forward_adapter_context(module: nn.Module):
    def context_fn():
        name = lora.get_active_adapter(module)  # called at forward time, once per checkpointed call
        return nullcontext(), lora.active_adapter(module, name)
    return context_fn
