"""Zero-shot classification (ModelNet40 style): no training, only ITC features.

Each class name is put into the dataset's `class_prompt` ("a point cloud of {}") and embedded by the modality's
ITC text path (`model.text_features`); each sample by its ITC query embeddings (`model.query_features`). The score
of a class is the largest dot product over the sample's queries, as ITC scores a (sample, text) pair. Reports
top-1 / top-5 accuracy (top-k only where there are at least k classes) over the samples of all ranks.

Contract: the dataset object has `class_names` (label i -> name) and its items carry `label`; the dataset entry has
`class_prompt`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lavis.common.registry import TASKS
from lavis.common.vqa_accuracy import zero_shot_classification_accuracy
from lavis.models.base import BaseModel
from lavis.tasks.base import BaseTask

log = logging.getLogger(__name__)

TOPK = (1, 5)


def class_prompts(template: str, class_names: list[str]) -> list[str]:
    if "{}" not in template:
        raise ValueError(f"class_prompt {template!r} has no {{}} for the class name")
    return [template.format(name.replace("_", " ")) for name in class_names]


def class_scores(query_features: Tensor, class_features: Tensor) -> Tensor:
    """[B, Q, E] x [C, E] -> [B, C]: for each class, the best-matching query's dot product."""
    return torch.einsum("bqe,ce->bqc", query_features, class_features).amax(dim=1)


@TASKS.register("zero_shot_classification")
class ZeroShotClassificationTask(BaseTask):
    def __init__(self):
        self.class_names: list[str] = []
        self.class_features: Tensor | None = None  # [C, E], the dataset being evaluated

    @torch.no_grad()
    def begin_eval(self, model: BaseModel, dataset, ds_cfg) -> None:
        names = getattr(dataset, "class_names", None)
        template = getattr(ds_cfg, "class_prompt", None)
        if not names or template is None:
            raise ValueError(f"zero_shot_classification needs a dataset with class_names and a dataset entry with "
                             f"class_prompt (e.g. builder modelnet40); got {type(dataset).__name__}")
        self.class_names = list(names)
        texts = class_prompts(template, self.class_names)
        self.class_features = model.text_features(texts, ds_cfg.modality).float()
        log.info("zero-shot classification over %d classes, e.g. %r", len(texts), texts[0])

    @torch.no_grad()
    def eval_step(self, model: BaseModel, batch: dict[str, Any]) -> list[dict[str, Any]]:
        if "label" not in batch:
            raise KeyError(f"evaluation items of modality '{batch['modality']}' carry no label")
        scores = class_scores(model.query_features(batch).float(), self.class_features).cpu()
        return [{"sample_id": sample_id, "label": int(label), "scores": row}
                for sample_id, label, row in zip(batch["sample_ids"], batch["label"], scores)]

    def finish_eval(self, results: list[dict[str, Any]], dataset, ds_cfg, stem: Path) -> dict[str, Any]:
        """Accuracy of the gathered results; writes `{stem}_predictions.json` (the top-5 classes per sample)."""
        if not results:
            log.warning("%s: no sample was evaluated; no accuracy", stem.name)
            return {"metrics": {}}
        results = sorted(results, key=lambda r: r["sample_id"])
        scores = torch.stack([r["scores"] for r in results])
        labels = torch.tensor([r["label"] for r in results])
        topk = tuple(k for k in TOPK if k <= scores.shape[1])
        metrics = zero_shot_classification_accuracy(scores, labels, topk)
        ranked = scores.topk(max(topk), dim=1).indices.tolist()
        predictions = [{"sample_id": r["sample_id"], "label": self.class_names[r["label"]],
                        "top5": [self.class_names[i] for i in order]} for r, order in zip(results, ranked)]
        stem.with_name(stem.name + "_predictions.json").write_text(json.dumps(predictions, indent=1))
        log.info("%s (%d samples, %d classes): %s", stem.name, len(results), scores.shape[1],
                 "  ".join(f"{k} {100 * v:.2f}" for k, v in metrics.items()))
        return {"metrics": metrics, "classes": scores.shape[1]}
