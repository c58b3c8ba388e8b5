"""Zero-shot visual question answering (VQAv2): the question, put into the dataset entry's `prompt`, becomes the
modality's LLM prompt (OPT) or prefix (T5); the answer is generated with the entry's `generation` settings (short,
beam search) and scored with the VQA accuracy (10-annotator consensus; answers normalised as the official
vqaEval.py does, or as the entry's `answer_normalization` says).

Contract: items carry `question` and `question_id`; the dataset entry has `prompt` (with {}) and `generation`; the
dataset object's `annotations()` returns the official annotations of its questions (None: answers are only
written, e.g. for test-dev).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from lavis.common.registry import TASKS
from lavis.common.vqa_accuracy import vqa_accuracy
from lavis.models.base import BaseModel
from lavis.tasks.base import BaseTask

log = logging.getLogger(__name__)


@TASKS.register("vqa")
class VQATask(BaseTask):
    def __init__(self):
        self.prompt = "{}"
        self.generation: dict[str, Any] = {}  # overrides of the model's generation settings

    def begin_eval(self, model: BaseModel, dataset, ds_cfg) -> None:
        for key in ("prompt", "generation"):
            if not hasattr(ds_cfg, key):
                raise ValueError(f"task vqa needs a dataset entry with `{key}` (e.g. builder vqav2)")
        self.prompt, self.generation = ds_cfg.prompt, dataclasses.asdict(ds_cfg.generation)

    @torch.no_grad()
    def eval_step(self, model: BaseModel, batch: dict[str, Any]) -> list[dict[str, Any]]:
        prompts = [self.prompt.format(question) for question in batch["question"]]
        answers = model.generate(batch, instructions=prompts, **self.generation)
        return [{"question_id": qid, "answer": answer} for qid, answer in zip(batch["question_id"], answers)]

    def finish_eval(self, results: list[dict[str, Any]], dataset, ds_cfg, stem: Path) -> dict[str, Any]:
        """Writes `{stem}_vqa_results.json` (the official results format) and scores it on the answered questions
        (a skipped sample is counted in the report's `skipped`, not scored as wrong)."""
        results = sorted(results, key=lambda r: str(r["question_id"]))
        stem.with_name(stem.name + "_vqa_results.json").write_text(json.dumps(results, indent=1))
        annotations = dataset.annotations() if hasattr(dataset, "annotations") else None
        if annotations is None:
            log.warning("%s: no annotations: answers written, no accuracy computed", stem.name)
            return {}
        answered = {r["question_id"] for r in results}
        rule = getattr(ds_cfg, "answer_normalization", "official")
        scored = vqa_accuracy(results, [a for a in annotations if a["question_id"] in answered], normalization=rule)
        metrics = {"accuracy": scored.overall}
        metrics.update({f"accuracy_{kind}": value for kind, value in scored.per_answer_type.items()})
        log.info("%s (%d questions): %s", stem.name, len(results),
                 "  ".join(f"{k} {100 * v:.2f}" for k, v in metrics.items()))
        return {"metrics": metrics, "answer_normalization": rule}
