"""Captioning: trains like pre-training, evaluates by generating one caption per sample and scoring it with
the COCO caption metrics against a ground-truth file."""

from __future__ import annotations

from typing import Any

import torch

from lavis.common.caption_metrics import CaptionMetricsConfig, CaptionReport, coco_caption_scores
from lavis.common.registry import TASKS
from lavis.models.base import BaseModel
from lavis.tasks.pretrain import PretrainTask


@TASKS.register("captioning")
class CaptioningTask(PretrainTask):
    @torch.no_grad()
    def eval_step(self, model: BaseModel, batch: dict[str, Any]) -> list[dict[str, Any]]:
        if "image_id" not in batch:
            raise KeyError(f"evaluation items of modality '{batch['modality']}' carry no image_id; the dataset's "
                           "eval split must yield one (the id used in its ground-truth file)")
        captions = model.generate(batch)
        return [{"image_id": image_id, "caption": caption} for image_id, caption in zip(batch["image_id"], captions)]

    def score(self, results: list[dict[str, Any]], ground_truth_file: str, cfg: CaptionMetricsConfig) -> CaptionReport:
        return coco_caption_scores(results, ground_truth_file, cfg)
