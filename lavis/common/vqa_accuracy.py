"""VQAv2 accuracy (answer normalisation and the 10-annotator consensus score) and top-k classification accuracy."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

# Punctuation the VQA evaluation removes (joined to a word, e.g. "yes!") or turns into a space (between words).
# The apostrophe is kept for contractions, the period is handled separately so that "2.5" keeps its decimal point.
PUNCTUATION = set(";/[]\"{}()=+\\_-><@`,?!")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
# Contractions written without their apostrophe, mapped to the usual spelling. Words that are also ordinary words
# without an apostrophe ("its", "were", "ill", "well", "hell", "shell") are deliberately absent.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "couldve": "could've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "hows": "how's", "id": "i'd",
    "im": "i'm", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "ive": "i've", "lets": "let's",
    "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't",
    "shant": "shan't", "shes": "she's", "shouldnt": "shouldn't", "shouldve": "should've", "thats": "that's",
    "theres": "there's", "theyd": "they'd", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "wasnt": "wasn't", "wed": "we'd", "werent": "weren't", "weve": "we've", "whats": "what's",
    "whered": "where'd", "wheres": "where's", "whod": "who'd", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyd": "why'd", "whys": "why's", "wont": "won't", "wouldnt": "wouldn't",
    "wouldve": "would've", "youd": "you'd", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d)")  # "1,000": the comma is dropped, not turned into a space
_PERIOD_NOT_DECIMAL = re.compile(r"(?<!\d)\.|\.(?!\d)")


def normalize_answer(answer: str) -> str:
    """Lower-case; punctuation removed or turned into spaces; number words to digits; articles dropped;
    apostrophe-less contractions restored ("dont" -> "don't")."""
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    text = _THOUSANDS_COMMA.sub("", text)
    for mark in PUNCTUATION & set(text):
        # a mark touching a space ("yes !", "(red") is noise; one inside a word ("t-shirt") separates words
        joined = f"{mark} " in text or f" {mark}" in text
        text = text.replace(mark, "" if joined else " ")
    text = _PERIOD_NOT_DECIMAL.sub("", text)
    words = [NUMBER_WORDS.get(word, word) for word in text.split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def question_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """Mean over the leave-one-annotator-out subsets of min(1, matches / 3); with 10 annotators, 1 match scores
    0.3, 2 score 0.6, 3 score 0.9 and 4 or more 1.0. Both sides are normalised.

    (The official script leaves the references unnormalised when all of them agree; normalising them always only
    differs where that single shared reference is itself unnormalised, e.g. ten times "Two".)"""
    if len(gt_answers) < 2:
        raise ValueError(f"leave-one-annotator-out needs at least 2 ground-truth answers, got {len(gt_answers)}")
    prediction = normalize_answer(prediction)
    matches = [normalize_answer(answer) == prediction for answer in gt_answers]
    total = sum(matches)
    return sum(min(1.0, (total - left_out) / 3) for left_out in matches) / len(matches)


@dataclass
class VQAReport:
    overall: float  # in [0, 1]
    per_answer_type: dict[str, float] = field(default_factory=dict)
    per_question: dict[Any, float] = field(default_factory=dict)


def vqa_accuracy(predictions: list[dict], annotations: list[dict]) -> VQAReport:
    """predictions: VQA results [{"question_id", "answer"}]; annotations: VQA annotations
    [{"question_id", "answers": [{"answer"}, ...] or [str, ...], "answer_type" (optional)}]. Every annotated
    question must be answered exactly once."""
    by_question = {a["question_id"]: a for a in annotations}
    counts = Counter(p["question_id"] for p in predictions)
    duplicated = [q for q, n in counts.items() if n > 1]
    unknown = [q for q in counts if q not in by_question]
    unanswered = [q for q in by_question if q not in counts]
    for problem, ids in (("answered more than once", duplicated), ("not in the annotations", unknown),
                         ("not answered", unanswered)):
        if ids:
            raise ValueError(f"{len(ids)} question ids are {problem}, e.g. {ids[:5]}")
    per_question: dict[Any, float] = {}
    by_type: dict[str, list[float]] = defaultdict(list)
    for p in predictions:
        annotation = by_question[p["question_id"]]
        answers = [a["answer"] if isinstance(a, dict) else a for a in annotation["answers"]]
        accuracy = question_accuracy(p["answer"], answers)
        per_question[p["question_id"]] = accuracy
        if "answer_type" in annotation:
            by_type[annotation["answer_type"]].append(accuracy)
    overall = sum(per_question.values()) / max(len(per_question), 1)
    return VQAReport(overall=overall, per_answer_type={t: sum(v) / len(v) for t, v in sorted(by_type.items())},
                     per_question=per_question)


def zero_shot_classification_accuracy(logits_or_scores: torch.Tensor, labels: torch.Tensor,
                                      topk: Sequence[int] = (1, 5)) -> dict[str, float]:
    """{"top1": ..., "top5": ...}: the fraction of rows whose label is among the k highest scores."""
    if logits_or_scores.ndim != 2 or labels.shape != logits_or_scores.shape[:1]:
        raise ValueError(f"expected scores [N, C] and labels [N], got {tuple(logits_or_scores.shape)} and "
                         f"{tuple(labels.shape)}")
    num_classes = logits_or_scores.shape[1]
    if max(topk) > num_classes:
        raise ValueError(f"top-{max(topk)} accuracy needs at least {max(topk)} classes, the scores have {num_classes}")
    ranked = logits_or_scores.topk(max(topk), dim=1).indices
    hits = ranked == labels.to(ranked.device).unsqueeze(1)
    return {f"top{k}": hits[:, :k].any(dim=1).float().mean().item() for k in topk}
