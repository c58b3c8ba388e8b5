"""A tiny image-region model registered from outside the package (through `run.imports`), for training the real
runner on region-shard data: it regresses the normalised box from a pooled image, so it consumes exactly the
keys an image_region batch carries (image, region_geometry, text_input)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from lavis.common.registry import MODELS
from lavis.models.base import BaseModel, ModelOutput


@dataclass
class ToyBoxRegressorConfig:
    pool: int = 4  # the image is average-pooled to pool x pool before the linear head


@MODELS.register("toy_box_regressor")
class ToyBoxRegressor(BaseModel):
    Config = ToyBoxRegressorConfig
    DEFAULT_CONFIGS: dict[str, str] = {}

    def __init__(self, cfg: ToyBoxRegressorConfig):
        super().__init__()
        self.cfg = cfg
        self.head = nn.Linear(3 * cfg.pool * cfg.pool, 4)

    @classmethod
    def from_config(cls, cfg: ToyBoxRegressorConfig) -> ToyBoxRegressor:
        return cls(cfg)

    def loss_weights(self, modality: str) -> dict[str, float]:
        return {"reg": 1.0}

    def forward(self, batch) -> ModelOutput:
        assert len(batch["text_input"]) == batch["image"].shape[0]
        pooled = F.adaptive_avg_pool2d(batch["image"], self.cfg.pool).flatten(1)
        return ModelOutput(losses={"reg": F.l1_loss(self.head(pooled), batch["region_geometry"])})
