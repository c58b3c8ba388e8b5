"""How an instruction with region placeholders becomes the LLM's input ids, for both LLM families.

An instruction is text holding `region_token` placeholders ("Is <region> left of <region>?"). Each placeholder
becomes `slots_per_region` slot positions that the model fills with that region's projected query outputs (the
region's soft prompt). The text between placeholders is tokenized piece by piece, without special tokens, and the
family's special token is placed as BLIP-2 places it around its soft prompt:

    OPT  [leading placeholders' slots | </s> | text and slots ...]   (left padded, so every prompt ends where the
         answer or generation starts)
    T5   [text and slots ... | </s>]                                  (right padded encoder input)

So RegionBLIP's fixed prompt is the simplest case: "<region>" + prompt gives [region slots | </s> prompt] (OPT) and
[region slots | prefix </s>] (T5), the reference's layout exactly.

OPT with `bos_target_with_empty_prompt` (LAVIS BLIP-2, the reference RegionBLIP): when the instruction has no text,
its </s> is the first target token in training (predicted by the last slot) rather than part of the prompt. The input
sequence is the same either way; only the labels differ, so training puts it in the target and generation in the
prompt.

Everything here runs in the data-loader workers (training) or once per generate call: never per step on the device.
The slot positions come out as flat indices into the [B, P] prompt, so the model fills them with one `index_copy`
(no Python loop per region, no host sync).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lavis.models.llm import LLMFamily

SLOT = -1  # marks a slot position in `PromptPieces.ids` before padding


@dataclass
class PromptPieces:
    ids: list[int]  # the prompt's ids, SLOT at slot positions
    has_text: bool  # the instruction has text beside its placeholders


def count_placeholders(instruction: str, region_token: str) -> int:
    return instruction.count(region_token)


class PromptLayout:
    """Picklable: an LLM tokenizer and the layout rules. Call it on a batch of instructions."""

    def __init__(self, tokenizer, family: LLMFamily, region_token: str, slots_per_region: int):
        if not region_token:
            raise ValueError("the region placeholder token must not be empty")
        self.tokenizer = tokenizer
        self.family = LLMFamily(family)
        self.region_token = region_token
        self.slots_per_region = slots_per_region

    @property
    def special_id(self) -> int:
        """OPT's leading </s> (its BOS) or T5's closing </s> (its EOS)."""
        return self.tokenizer.bos_token_id if self.family is LLMFamily.opt else self.tokenizer.eos_token_id

    def pieces(self, instruction: str, bos_in_prompt: bool = True) -> PromptPieces:
        """The ids of one instruction; `bos_in_prompt=False` leaves OPT's </s> out of an instruction without text
        (it is then the first target token)."""
        texts = instruction.split(self.region_token)
        segments = [self.tokenizer(t, add_special_tokens=False).input_ids if t else [] for t in texts]
        has_text = any(segments)
        slots = [SLOT] * self.slots_per_region
        ids: list[int] = []
        special_placed = False
        for k, segment in enumerate(segments):
            if k > 0:
                ids += slots
            if self.family is LLMFamily.opt and segment and not special_placed:
                ids.append(self.special_id)  # after the leading placeholders, before the first text
                special_placed = True
            ids += segment
        if self.family is LLMFamily.opt and not special_placed and (has_text or bos_in_prompt):
            ids.append(self.special_id)  # no text: </s> follows the slots, as BLIP-2's empty prompt
        if self.family is LLMFamily.t5:
            ids.append(self.special_id)
        return PromptPieces(ids, has_text)

    def __call__(self, instructions: list[str], region_counts: list[int],
                 bos_in_prompt: bool = True) -> tuple[dict[str, torch.Tensor], list[bool]]:
        """(llm_prompt_ids / llm_prompt_mask [B, P] (pad id at slots and padding) and llm_region_slots [R * Q]: the
        flat positions (into B * P) of every region's slots, sample after sample, regions in placeholder order;
        whether each instruction has text). ValueError when an instruction's placeholders and its region count
        differ."""
        rows, has_text = [], []
        for i, (text, count) in enumerate(zip(instructions, region_counts)):
            found = count_placeholders(text, self.region_token)
            if found != count:
                raise ValueError(f"instruction {i} ({text!r}) has {found} '{self.region_token}' placeholder(s) for "
                                 f"{count} region(s)")
            pieces = self.pieces(text, bos_in_prompt)
            rows.append(pieces.ids)
            has_text.append(pieces.has_text)
        width = max((len(r) for r in rows), default=0)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        slots = []
        for i, row in enumerate(rows):
            start = width - len(row) if self.family is LLMFamily.opt else 0
            values = torch.tensor(row, dtype=torch.long)
            is_slot = values == SLOT
            ids[i, start:start + len(row)] = values.masked_fill(is_slot, pad)
            mask[i, start:start + len(row)] = 1
            slots.append(i * width + start + is_slot.nonzero().flatten())
        region_slots = torch.cat(slots) if slots else torch.zeros(0, dtype=torch.long)
        return {"llm_prompt_ids": ids, "llm_prompt_mask": mask, "llm_region_slots": region_slots}, has_text
