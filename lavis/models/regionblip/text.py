"""The text side of a batch, tokenized in the data-loader workers (never inside forward).

`RegionTextTokenizer` is small and picklable: the Q-Former tokenizer(s), the LLM tokenizer and how each family lays
out its target. It returns, dynamically padded to the longest text of the batch:
    qformer_text_ids, qformer_text_mask  [B, T]  [CLS] caption [SEP]           (ITC, ITM; ITG swaps [CLS] for [DEC])
    llm_target_ids, llm_target_mask      [B, T'] OPT: caption + "\\n"; T5: caption + </s>   (right padded)
"""

from __future__ import annotations

import torch

from lavis.models.llm import LLMFamily


class RegionTextTokenizer:
    def __init__(self, qformer_tokenizers: dict[str, object], llm_tokenizer, family: LLMFamily, max_text_len: int):
        self.qformer_tokenizers = qformer_tokenizers  # by modality (modalities sharing a Q-Former share one)
        self.llm_tokenizer = llm_tokenizer
        self.llm_tokenizer.padding_side = "right"
        self.family = LLMFamily(family)
        self.max_text_len = max_text_len

    def __call__(self, texts: list[str], modality: str) -> dict[str, torch.Tensor]:
        if modality not in self.qformer_tokenizers:
            raise KeyError(f"unknown modality '{modality}'; modalities: {sorted(self.qformer_tokenizers)}")
        common = {"padding": "longest", "truncation": True, "max_length": self.max_text_len, "return_tensors": "pt"}
        qformer = self.qformer_tokenizers[modality](list(texts), **common)
        if self.family is LLMFamily.opt:
            # the prompt (with OPT's leading </s>) comes from the model; the target ends with "\n" as in BLIP-2
            llm = self.llm_tokenizer([t + "\n" for t in texts], add_special_tokens=False, **common)
        else:
            llm = self.llm_tokenizer(list(texts), **common)
        return {
            "qformer_text_ids": qformer.input_ids,
            "qformer_text_mask": qformer.attention_mask,
            "llm_target_ids": llm.input_ids,
            "llm_target_mask": llm.attention_mask,
        }
