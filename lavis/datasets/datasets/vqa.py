"""VQAv2 in its official files, for (zero-shot) evaluation.

    questions    v2_OpenEnded_mscoco_{split}_questions.json  {"questions": [{image_id, question, question_id}]}
    annotations  v2_mscoco_{split}_annotations.json          {"annotations": [{question_id, answers: [{answer}],
                                                              answer_type, multiple_choice_answer, ...}]}
    images       {image_root}/COCO_{split}_{image_id:012d}.jpg  (the file-name pattern is configurable)
Items: image, question, question_id, answers (the annotators' answers; [] without an annotation file), sample_id.
A question whose annotation is missing or has fewer than two answers cannot be scored; it is skipped at indexing
and reported, like an unreadable image at reading time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from torch.utils.data import Dataset

from lavis.datasets.annotation_io import AnnotationError, read_json
from lavis.datasets.base import BadSampleError
from lavis.processors.image_processors import BoxImageProcessor, ImageReadError, load_rgb_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VQARecord:
    question_id: int
    image_id: int
    question: str
    annotation: Optional[dict]  # the official annotation entry; None without an annotation file


def _read_list(path: str | Path, key: str) -> list[dict]:
    data = read_json(path, "VQAv2 JSON")
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise AnnotationError(f"{path}: expected a JSON object with a '{key}' list (the official VQAv2 format)")
    return data[key]


def vqa_records(questions_file: str | Path,
                annotations_file: Optional[str | Path]) -> tuple[list[VQARecord], list[tuple[str, str]]]:
    """The questions that can be evaluated, and the (question id, reason) of those that cannot."""
    annotations = None
    if annotations_file is not None:
        annotations = {a.get("question_id"): a for a in _read_list(annotations_file, "annotations")}
    records, skipped, seen = [], [], set()
    for position, q in enumerate(_read_list(questions_file, "questions")):
        question_id, image_id, text = q.get("question_id"), q.get("image_id"), q.get("question")
        if question_id is None or image_id is None or not isinstance(text, str) or not text.strip():
            skipped.append((f"{Path(questions_file).name}#{position}", "needs question_id, image_id and question"))
            continue
        if question_id in seen:
            skipped.append((str(question_id), "question_id appears more than once"))
            continue
        seen.add(question_id)
        annotation = None
        if annotations is not None:
            annotation = annotations.get(question_id)
            if annotation is None:
                skipped.append((str(question_id), "no annotation for this question"))
                continue
            if len(annotation.get("answers") or []) < 2:
                skipped.append((str(question_id), "fewer than 2 annotated answers (VQA accuracy needs them)"))
                continue
        records.append(VQARecord(question_id, image_id, text.strip(), annotation))
    return records, skipped


def answer_texts(annotation: Optional[dict]) -> list[str]:
    if annotation is None:
        return []
    return [a["answer"] if isinstance(a, dict) else str(a) for a in annotation["answers"]]


class VQAv2Dataset(Dataset):
    def __init__(
        self,
        questions_file: str | Path,
        annotations_file: Optional[str | Path],
        image_root: str | Path,
        image_pattern: str,
        split: str,
        image_processor: BoxImageProcessor,
    ):
        self.image_root, self.image_pattern, self.split = Path(image_root), image_pattern, split
        self.image_processor = image_processor
        self.has_annotations = annotations_file is not None
        self.records, self.skipped = vqa_records(questions_file, annotations_file)
        if self.skipped:
            log.warning("%s: skipped %d questions while indexing, e.g. %s", questions_file, len(self.skipped),
                        self.skipped[0])

    def __len__(self) -> int:
        return len(self.records)

    def annotations(self) -> Optional[list[dict[str, Any]]]:
        """The annotations of the indexed questions (vqa_accuracy's input); None without an annotation file."""
        if not self.has_annotations:
            return None
        return [r.annotation for r in self.records]

    def image_path(self, record: VQARecord) -> Path:
        return self.image_root / self.image_pattern.format(split=self.split, image_id=record.image_id)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        try:
            image = load_rgb_image(self.image_path(record))
        except ImageReadError as e:
            raise BadSampleError(str(record.question_id), str(e)) from None
        pixels, _ = self.image_processor(image)
        return {"sample_id": str(record.question_id), "image": pixels, "question": record.question,
                "question_id": record.question_id, "answers": answer_texts(record.annotation)}
