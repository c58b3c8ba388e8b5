"""VQAv2 accuracy as the official evaluation script computes it (GT-Vision-Lab/VQA,
PythonEvaluationTools/vqaEvaluation/vqaEval.py, current version), quirks included, and top-k classification
accuracy."""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

log = logging.getLogger(__name__)

# The official marks, each removed or turned into a space; the period has its own rule; the apostrophe and the
# colon are not in the list, so they stay.
PUNCTUATION = tuple(";/[]\"{}()=+\\_-><@`,?!")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
# The official contraction table, entry for entry. Its oddities are kept: the keys "Im", "Ive", "Id've", "I'dve"
# never match (words are lower-cased first), "lets" and "id" are absent, "let's" and "she's" map to themselves and
# "somebody'd" maps the other way, to "somebodyd".
CONTRACTIONS = dict(pair.split("=") for pair in """
    aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
    couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
    hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's howd=how'd
    howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd itd've=it'd've
    it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't mightnt've=mightn't've
    mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've neednt=needn't notve=not've
    oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't
    shed've=she'd've she'dve=she'd've she's=she's shouldve=should've shouldnt=shouldn't
    shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd somebodyd've=somebody'd've
    somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's someoned=someone'd
    someoned've=someone'd've someone'dve=someone'd've someonell=someone'll someones=someone's
    somethingd=something'd somethingd've=something'd've something'dve=something'd've somethingll=something'll
    thats=that's thered=there'd thered've=there'd've there'dve=there'd've therere=there're theres=there's
    theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've
    twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll
    whatre=what're whats=what's whatve=what've whens=when's whered=where'd wheres=where's whereve=where've
    whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's whove=who've whyll=why'll whyre=why're
    whys=why's wont=won't wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've
    yall=y'all yall'll=y'all'll y'allll=y'all'll yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've
    youd=you'd youd've=you'd've you'dve=you'd've youll=you'll youre=you're youve=you've
""".split())
# Digits are ASCII: the official script is Python 2 and its patterns carry no re.UNICODE flag.
_DIGIT_COMMA_DIGIT = re.compile(r"[0-9],[0-9]")
# The official period pattern opens with a broken lookbehind ("(?!<=" is a lookahead for the text "<=" and always
# passes), so a period is dropped unless a digit follows: "2.5", ".5" and "v.2" keep theirs.
_PERIOD = re.compile(r"\.(?![0-9])")
# The official script passes re.UNICODE (= 32) where re.sub takes its count: at most 32 periods go.
_PERIOD_LIMIT = 32
NORMALIZATIONS = ("official", "clean")


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    # Decided per mark on the input text: a mark next to a space anywhere is deleted everywhere, otherwise every
    # copy becomes a space; a digit-comma-digit anywhere ("1,000") deletes every mark ("1,000 t-shirts" ->
    # "1000 tshirts").
    drop_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        delete = drop_all or f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if delete else " ")
    return _PERIOD.sub("", out, count=_PERIOD_LIMIT)


def _lower(text: str) -> str:
    # Python 2 lower-cases char by char (simple case mapping): "\u0130" -> "i", and a final sigma is not special
    return text.lower() if text.isascii() else "".join(ch.lower()[:1] for ch in text)


def _process_words(text: str) -> str:
    # number words become digits before the articles go; contractions come last
    words = [NUMBER_WORDS.get(word, word) for word in _lower(text).split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_answer(answer: str) -> str:
    """The official answer processing: newline/tab to space and strip, punctuation, then lower-case, number words
    to digits, articles dropped, apostrophe-less contractions restored ("dont" -> "don't")."""
    return _process_words(_process_punctuation(_clean_whitespace(answer)))


def _score(prediction: str, gt_answers: Sequence[str | dict], normalization: str) -> tuple[float, bool]:
    """(accuracy, whether some answer entries are equal and so are left out together)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if not gt_answers:
        raise ValueError("VQA accuracy needs at least one ground-truth answer")
    texts = [_clean_whitespace(a["answer"] if isinstance(a, dict) else a) for a in gt_answers]
    prediction = _clean_whitespace(prediction)
    # Official quirk: when the (whitespace-cleaned) answers all agree, neither side is processed further, so
    # "Yes" or "yes." against ten "yes" scores 0. "clean" processes both sides always.
    if normalization == "clean" or len(set(texts)) > 1:
        texts = [_process_words(_process_punctuation(t)) for t in texts]
        prediction = _process_words(_process_punctuation(prediction))
    # Official quirk: "the other answers" are the entries unequal to the left-out one, compared as whole dicts
    # (after processing). VQAv2's answer_id keeps them distinct; entries without one that are equal are left out
    # together. A plain string is one annotator.
    entries = [{**a, "answer": t} if isinstance(a, dict) else i for i, (a, t) in enumerate(zip(gt_answers, texts))]
    shared = False
    per_left_out = []
    for left_out in entries:
        others = [t for entry, t in zip(entries, texts) if entry != left_out]
        shared = shared or len(others) < len(entries) - 1
        per_left_out.append(min(1, sum(t == prediction for t in others) / 3))
    return sum(per_left_out) / len(per_left_out), shared


def question_accuracy(prediction: str, gt_answers: Sequence[str | dict], normalization: str = "official") -> float:
    """The mean over the left-out annotators of min(1, matches among the others / 3): with 10 distinct annotators
    1 match scores 0.3, 2 score 0.6, 3 score 0.9 and 4 or more 1.0 (a single answer scores 0, as there).
    gt_answers: strings or VQA answer dicts ({"answer", "answer_id", ...})."""
    return _score(prediction, gt_answers, normalization)[0]


@dataclass
class VQAReport:
    overall: float  # in [0, 1], unrounded (the official script reports round(100 * x, 2))
    per_answer_type: dict[str, float] = field(default_factory=dict)
    per_question: dict[Any, float] = field(default_factory=dict)
    per_question_type: dict[str, float] = field(default_factory=dict)


def vqa_accuracy(predictions: list[dict], annotations: list[dict], normalization: str = "official") -> VQAReport:
    """predictions: VQA results [{"question_id", "answer"}]; annotations: VQA annotations
    [{"question_id", "answers": [{"answer", ...}, ...] or [str, ...], "answer_type", "question_type" (both
    optional)}]. Every annotated question must be answered exactly once. normalization: "official" (default) or
    "clean" (the same processing, applied also when all answers agree)."""
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
    by_type: dict[str, dict[str, list[float]]] = {"answer_type": defaultdict(list), "question_type": defaultdict(list)}
    shared = []
    answers = {p["question_id"]: p["answer"] for p in predictions}
    for question_id, annotation in by_question.items():  # annotation order, as there: same float sums
        accuracy, has_shared = _score(answers[question_id], annotation["answers"], normalization)
        per_question[question_id] = accuracy
        if has_shared:
            shared.append(question_id)
        for key, lists in by_type.items():
            if key in annotation:
                lists[annotation[key]].append(accuracy)
    if shared:
        log.warning("%d questions have equal answer entries (no answer_id?), left out together as the official "
                    "script does, e.g. %s", len(shared), shared[:5])
    overall = sum(per_question.values()) / max(len(per_question), 1)
    means = {key: {t: sum(v) / len(v) for t, v in sorted(lists.items())} for key, lists in by_type.items()}
    return VQAReport(overall=overall, per_answer_type=means["answer_type"], per_question=per_question,
                     per_question_type=means["question_type"])


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
