"""The frozen language models behind one interface: OPT (decoder-only) and FlanT5 (encoder-decoder).

Both are the unmodified transformers classes loaded from a local HF directory; each modality gets its own LoRA
adapter (lavis.models.lora). The soft prompt (projected Q-Former outputs) always comes first:

    OPT  input   = [soft prompt | prompt ids (</s> first) | target ids]   causal LM loss on the target ids only
    T5   encoder = [soft prompt | prefix ids (</s> last)], decoder target = target ids   (prefix LM)
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

    def _inputs(self, soft_prompt: Tensor, prompt_ids: Tensor,
                prompt_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """[soft prompt | prompt] embeddings and their attention mask. prompt_ids is [1, P] (one prompt for the
        batch, mask all ones) or [B, P] with prompt_mask [B, P] (per-sample prompts, padded). The ids must already be
        on the LLM's device (RegionBLIP keeps its fixed prompts there as buffers): moving them here would be a
        blocking host-to-device copy in every step."""
        batch = soft_prompt.shape[0]
        prompt = self._embed(prompt_ids.expand(batch, -1))
        embeds = torch.cat([soft_prompt.to(prompt.dtype), prompt], dim=1)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        if prompt_mask is not None:
            mask[:, soft_prompt.shape[1]:] = prompt_mask.to(mask)
        return embeds, mask

    def tokenize_prompts(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Per-sample prompts -> ids and mask [B, P], laid out like the fixed prompt (OPT: </s> first, T5: </s>
        last). OPT pads on the left, so every prompt ends right where generation starts (the padding sits between
        the soft prompt and the text, masked; OPT's positions follow the mask); T5's encoder is padded on the right."""
        rows = [self.tokenizer(text).input_ids for text in prompts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if self.family is LLMFamily.opt else slice(0, len(row))
            ids[i, span], mask[i, span] = torch.tensor(row), 1
        device = self.model.get_input_embeddings().weight.device  # one copy per generate call, not per step
        return ids.to(device), mask.to(device)

    def sequence_labels(self, num_soft: int, prompt_ids: Tensor, target_ids: Tensor, target_mask: Tensor,
                        prompt_is_target: bool = False) -> Tensor:
        """OPT: the labels of the whole input [B, num_soft + P + T] (IGNORE_INDEX where nothing is predicted): the
        target ids, and the prompt ids too when `prompt_is_target`. The LAVIS layout, the reference's `targets`."""
        batch = target_ids.shape[0]
        prompt = prompt_ids.expand(batch, -1)
        ignored = torch.full((batch, num_soft), IGNORE_INDEX, dtype=target_ids.dtype, device=target_ids.device)
        return torch.cat([ignored, prompt if prompt_is_target else torch.full_like(prompt, IGNORE_INDEX),
                          target_ids.masked_fill(target_mask == 0, IGNORE_INDEX)], dim=1)

    def loss(self, soft_prompt: Tensor, prompt_ids: Tensor, target_ids: Tensor, target_mask: Tensor,
             prompt_is_target: bool = False) -> Tensor:
        """Mean next-token cross-entropy over the target tokens.

        soft_prompt [B, Q, D]; prompt_ids [1, P] (the same for the whole batch); target_ids / target_mask [B, T],
        right-padded. `prompt_is_target` (OPT): the prompt ids are targets too, the first predicted by the last
        soft-prompt position (`bos_target_with_empty_prompt`, where the prompt is OPT's </s> alone)."""
        embeds, mask = self._inputs(soft_prompt, prompt_ids)
        if self.family is LLMFamily.opt:
            labels = self.sequence_labels(soft_prompt.shape[1], prompt_ids, target_ids, target_mask,
                                          prompt_is_target)[:, soft_prompt.shape[1]:]
            embeds = torch.cat([embeds, self._embed(target_ids)], dim=1)
            mask = torch.cat([mask, target_mask], dim=1)
            # Logits only where the prompt and target are predicted (from the last soft-prompt position on), not
            # over the soft prompt: the vocabulary projection is the largest activation of the step.
            out = self.model(
                inputs_embeds=embeds,
                attention_mask=self._prepared_mask(mask, causal=True, dtype=embeds.dtype),
                position_ids=mask.cumsum(1) * mask - 1,  # OPT's own rule, which it cannot apply to a 4-D mask
                logits_to_keep=labels.shape[1] + 1,
            )
            logits = out.logits[:, :-1]  # position t predicts target token t
            return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
        else:
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
    def generate_ids(self, soft_prompt: Tensor, prompt_ids: Tensor, gen: GenerationConfig,
                     prompt_mask: Tensor | None = None) -> Tensor:
        """Beam search from the soft prompt (+ prompt / prefix); returns the new token ids [B, L], finished rows
        padded with the pad id."""
        embeds, mask = self._inputs(soft_prompt, prompt_ids, prompt_mask)
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
