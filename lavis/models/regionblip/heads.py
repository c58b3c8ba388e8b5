"""The tensors one modality owns: its learnable queries, PaFE (region modalities), LLM projection, ITC projections
and temperature, ITM head and regression head. Only the parts its enabled losses use
are built, so every trainable tensor of a modality receives a gradient from that modality's batches.

`ItcTextHead` is the text side of ITC (the [CLS] projection and the temperature): each modality's own by default, or
one shared by every modality (`shared_itc_text_head`), as the reference RegionBLIP's `stage1_proj_text` and `temp`."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from lavis.models.regionblip.region import PaFE

TEMP_INIT, TEMP_MIN, TEMP_MAX = 0.07, 0.001, 0.5  # BLIP-2's ITC temperature and its clamp


class ItcTextHead(nn.Module):
    """The text [CLS] projection and the temperature of ITC."""

    def __init__(self, width: int, embed_dim: int):
        super().__init__()
        self.text_proj = nn.Linear(width, embed_dim)
        self.temp = nn.Parameter(torch.tensor(TEMP_INIT))

    def clamp_temperature(self) -> None:
        with torch.no_grad():
            self.temp.clamp_(TEMP_MIN, TEMP_MAX)


class ModalityHeads(nn.Module):
    def __init__(
        self,
        *,
        num_queries: int,
        width: int,
        llm_width: int,
        embed_dim: int,
        region_dim: Optional[int],
        pafe_hidden: int,
        losses: dict[str, float],
        own_text_head: bool = True,
    ):
        super().__init__()
        on = {term for term, weight in losses.items() if weight > 0}
        self.queries = nn.Parameter(torch.randn(1, num_queries, width) * 0.02)  # BERT's initializer_range
        self.pafe = PaFE(region_dim, pafe_hidden, width) if region_dim else None
        self.llm_proj = nn.Linear(width, llm_width)  # always: generation needs it
        contrastive = bool(on & {"itc", "itm"})  # ITM samples its negatives from the ITC similarities
        self.vision_proj = nn.Linear(width, embed_dim) if contrastive else None
        # the text side: its own unless the model shares one ItcTextHead between modalities
        self.text_proj = nn.Linear(width, embed_dim) if contrastive and own_text_head else None
        self.temp = nn.Parameter(torch.tensor(TEMP_INIT)) if contrastive and own_text_head else None
        self.itm_head = nn.Linear(width, 2) if "itm" in on else None
        self.reg_head = nn.Linear(width, region_dim) if region_dim and "reg" in on else None

    def plain_queries(self, batch_size: int) -> Tensor:
        """[B, Q, H]: the learnable queries alone (a holistic modality's, or a region modality's whole-input rows)."""
        return self.queries.expand(batch_size, -1, -1)

    def query_embeds(self, batch_size: int, region_geometry: Optional[Tensor]) -> Tensor:
        """[B, Q, H]: the learnable queries, plus PaFE's position embedding of the region when there is one."""
        queries = self.queries.expand(batch_size, -1, -1)
        if self.pafe is None:
            return queries
        if region_geometry is None:
            raise KeyError("this modality has a region kind: the batch needs 'region_geometry'")
        return queries + self.pafe(region_geometry.to(queries.dtype))

    def clamp_temperature(self) -> None:
        if self.temp is not None:
            with torch.no_grad():
                self.temp.clamp_(TEMP_MIN, TEMP_MAX)
