"""A task owns the loss terms and the batch-key contract; the model only computes them."""

from __future__ import annotations

from typing import Any

import torch

from lavis.models.base import BaseModel


class BaseTask:
    def train_step(self, model: BaseModel, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError
