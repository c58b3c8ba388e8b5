"""The text side of a batch, tokenized in the data-loader workers (never inside forward).

`RegionTextTokenizer` is small and picklable: the Q-Former tokenizer(s), the LLM tokenizer, how each family lays out
its target, and the instruction layout (lavis/models/prompt_layout.py). It returns, dynamically padded:
    qformer_text_ids, qformer_text_mask  [B, T]  [CLS] caption [SEP]           (ITC, ITM; ITG swaps [CLS] for [DEC])
    llm_target_ids, llm_target_mask      [B, T'] OPT: caption + "\\n"; T5: caption + </s>   (right padded)
and the instruction (each sample's, with its region count; by default the modality's template):
    llm_prompt_ids, llm_prompt_mask      [B, P]  the instruction around its region slots (prompt_layout)
    llm_region_slots                     [R * Q] where each region's soft prompt goes
With OPT's `bos_target_with_empty_prompt`, an instruction without text leaves its </s> to the target, which then
starts with it (LAVIS BLIP-2's targets: the whole tokenized text with </s>).
"""

from __future__ import annotations

from typing import Optional

import torch

from lavis.models.llm import LLMFamily
from lavis.models.prompt_layout import PromptLayout


class RegionTextTokenizer:
    def __init__(self, qformer_tokenizers: dict[str, object], llm_tokenizer, family: LLMFamily, max_text_len: int,
                 layout: PromptLayout, templates: dict[str, str], regional: set[str],
                 bos_target_with_empty_prompt: bool = False):
        self.qformer_tokenizers = qformer_tokenizers  # by modality (modalities sharing a Q-Former share one)
        self.llm_tokenizer = llm_tokenizer
        self.llm_tokenizer.padding_side = "right"
        self.family = LLMFamily(family)
        self.max_text_len = max_text_len
        self.layout = layout
        self.templates = templates  # by modality: the instruction of samples that bring none
        # modalities with a region kind; a holistic one ignores the regions its items may carry (e.g. the PaFE-off
        # ablation trains a region: null modality on RefCOCO's boxes)
        self.regional = set(regional)
        self.bos_target = bos_target_with_empty_prompt and self.family is LLMFamily.opt

    def __call__(self, texts: list[str], modality: str, instructions: Optional[list[str]] = None,
                 region_counts: Optional[list[int]] = None) -> dict[str, torch.Tensor]:
        if modality not in self.qformer_tokenizers:
            raise KeyError(f"unknown modality '{modality}'; modalities: {sorted(self.qformer_tokenizers)}")
        common = {"padding": "longest", "truncation": True, "max_length": self.max_text_len, "return_tensors": "pt"}
        qformer = self.qformer_tokenizers[modality](list(texts), **common)
        out = {"qformer_text_ids": qformer.input_ids, "qformer_text_mask": qformer.attention_mask}
        if instructions is None:
            template = self.templates[modality]
            instructions = [template] * len(texts)
            region_counts = [template.count(self.layout.region_token)] * len(texts)
        elif modality in self.regional and region_counts is None:  # items without region_counts: one region each
            region_counts = [1] * len(texts)
        prompt, has_text = self.prompt(list(instructions), modality, region_counts, bos_in_prompt=not self.bos_target)
        out.update(prompt)
        out.update(self._targets(texts, [self.bos_target and not t for t in has_text]))
        return out

    def prompt(self, instructions: list[str], modality: str, region_counts: Optional[list[int]],
               bos_in_prompt: bool) -> tuple[dict[str, torch.Tensor], list[bool]]:
        """The layout of `modality`'s instructions (training's collate, and generation with `bos_in_prompt`)."""
        if modality not in self.regional or region_counts is None:
            region_counts = [0] * len(instructions)
        return self.layout(instructions, list(region_counts), bos_in_prompt=bos_in_prompt)

    def _targets(self, texts: list[str], bos_first: list[bool]) -> dict[str, torch.Tensor]:
        """OPT: caption + "\\n" (after </s> where it is a target); T5: caption + </s>. Truncated to max_text_len
        before the </s> target is put first (the prompt's </s> never counted against it either)."""
        if self.family is LLMFamily.opt:
            rows = self.llm_tokenizer([t + "\n" for t in texts], add_special_tokens=False, truncation=True,
                                      max_length=self.max_text_len).input_ids
            rows = [[self.llm_tokenizer.bos_token_id] + r if first else r for r, first in zip(rows, bos_first)]
        else:
            rows = self.llm_tokenizer(list(texts), truncation=True, max_length=self.max_text_len).input_ids
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.llm_tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row, dtype=torch.long), 1
        return {"llm_target_ids": ids, "llm_target_mask": mask}
