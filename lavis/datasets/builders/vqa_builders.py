"""Builder of VQAv2 (official question / annotation files and COCO images) for zero-shot visual question answering.

Besides its paths, the entry holds what the `vqa` task needs to ask the model: the prompt template the question
is put into and the generation settings of the answer (short, beam search), so one run YAML can evaluate datasets
that want different prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from torch.utils.data import Dataset

from lavis.common.registry import DATASET_BUILDERS
from lavis.datasets.base import DatasetConfig, ItemKeys
from lavis.datasets.datasets.vqa import VQAv2Dataset
from lavis.models.llm import GenerationConfig
from lavis.processors.image_processors import BoxImageConfig, BoxImageProcessor


def _short_answers() -> GenerationConfig:
    # BLIP-2's zero-shot VQA settings: 5 beams, at most 10 tokens, a negative length penalty favours short answers
    return GenerationConfig(num_beams=5, max_new_tokens=10, min_new_tokens=1, length_penalty=-1.0)


@dataclass
class VQAv2Config(DatasetConfig):
    ann_root: str = "???"  # holds the official question (and annotation) JSON files
    image_root: str = "???"  # holds the split's images, e.g. COCO's val2014/
    questions_pattern: str = "v2_OpenEnded_mscoco_{split}_questions.json"
    annotations_pattern: str = "v2_mscoco_{split}_annotations.json"  # "": none (test-dev): answers are not scored
    image_pattern: str = "COCO_{split}_{image_id:012d}.jpg"  # fields: split, image_id
    train_split: Optional[str] = None  # zero-shot: evaluation only
    eval_split: Optional[str] = "val2014"
    prompt: str = "Question: {} Short answer:"  # the question fills {}; the LLM prompt (OPT) or prefix (T5)
    generation: GenerationConfig = field(default_factory=_short_answers)
    eval_image: BoxImageConfig = field(default_factory=BoxImageConfig)
    # "official": GT-Vision-Lab's vqaEval.py, quirks included (what papers report); "clean": its normalisation applied
    # also when all ten answers agree (lavis/common/vqa_accuracy.py). Recorded in the metrics file.
    answer_normalization: str = "official"


@DATASET_BUILDERS.register("vqav2")
class VQAv2Builder:
    Config = VQAv2Config
    DEFAULT_CONFIG = "datasets/vqav2.yaml"

    def __init__(self, cfg: VQAv2Config):
        if "{}" not in cfg.prompt:
            raise ValueError(f"vqav2: prompt {cfg.prompt!r} has no {{}} for the question")
        if cfg.answer_normalization not in ("official", "clean"):
            raise ValueError(f"vqav2: answer_normalization must be 'official' or 'clean', not "
                             f"{cfg.answer_normalization!r}")
        self.cfg = cfg

    def item_keys(self, split: str) -> ItemKeys:
        return ItemKeys("image")

    def questions_file(self, split: str) -> Path:
        return Path(self.cfg.ann_root) / self.cfg.questions_pattern.format(split=split)

    def annotations_file(self, split: str) -> Optional[Path]:
        if not self.cfg.annotations_pattern:
            return None
        return Path(self.cfg.ann_root) / self.cfg.annotations_pattern.format(split=split)

    def check_paths(self) -> list[str]:
        cfg = self.cfg
        problems = [f"{key} = {value} is not a folder; it should hold {holds}"
                    for key, value, holds in (("ann_root", cfg.ann_root, "the VQAv2 question / annotation files"),
                                              ("image_root", cfg.image_root, "the COCO images of the split"))
                    if not value or not Path(value).is_dir()]
        if problems:
            return problems
        for split in (s for s in (cfg.train_split, cfg.eval_split) if s):
            files = [("questions_pattern", self.questions_file(split), "the official questions JSON")]
            if self.annotations_file(split) is not None:
                files.append(("annotations_pattern", self.annotations_file(split), "the official annotations JSON"))
            problems += [f"ann_root / {key}: {path} does not exist; it should be {holds} of split '{split}'"
                         for key, path, holds in files if not path.is_file()]
        return problems

    def build(self, split: str) -> Dataset:
        return VQAv2Dataset(self.questions_file(split), self.annotations_file(split), self.cfg.image_root,
                            self.cfg.image_pattern, split, BoxImageProcessor(self.cfg.eval_image))
