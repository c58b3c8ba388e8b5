"""Semi-hybrid pre-training: every batch is one modality; its enabled loss terms are weighted and summed."""

from __future__ import annotations

from typing import Any

import torch

from lavis.common.registry import TASKS
from lavis.models.base import BaseModel
from lavis.tasks.base import BaseTask


@TASKS.register("pretrain")
class PretrainTask(BaseTask):
    def train_step(self, model: BaseModel, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """loss = sum_k w_k * L_k over the modality's enabled terms (the paper's eq. 2, weights from YAML)."""
        output = model(batch)
        weights = model.loss_weights(batch["modality"])
        missing = sorted(set(weights) - set(output.losses))
        if missing:
            raise KeyError(f"modality '{batch['modality']}' enables loss terms {missing} that the model did not return")
        loss = sum(weights[name] * output.losses[name] for name in weights)
        report = {f"loss_{name}": output.losses[name].detach() for name in weights}
        report["loss"] = loss.detach()
        return loss, report
