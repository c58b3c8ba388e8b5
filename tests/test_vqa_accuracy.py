"""VQA accuracy against hand-worked values of the official VQA evaluation rules (GT-Vision-Lab/VQA vqaEval.py).

Each expected value below was reasoned out from those rules, not computed with the module:
- the answers and the prediction lose newlines/tabs (to spaces) and outer spaces; nothing else happens to either
  side when the ten cleaned answers are all the same;
- otherwise both sides are processed: a punctuation mark touching a space somewhere in the text is deleted, else
  replaced by a space, and every mark is deleted if a digit-comma-digit occurs; a period is deleted unless a digit
  follows (32 at most); then lower-case, number words to digits, articles dropped, the contraction table;
- score: mean over the left-out answer entries of min(1, matches among the other entries / 3).
"""

from __future__ import annotations

import logging

import pytest

from lavis.common.vqa_accuracy import normalize_answer, question_accuracy, vqa_accuracy

EXACT = 1e-12


def answers_with(answer: str, k: int, total: int = 10) -> list[dict]:
    """k annotators gave `answer`, the rest "other" (so the answers disagree unless k == total)."""
    return [{"answer": answer if i < k else "other", "answer_id": i + 1} for i in range(total)]


# ---- the all-agree branch: whitespace only -----------------------------------------------------------------------
@pytest.mark.parametrize("prediction, expected", [
    ("yes", 1.0),
    (" yes\n", 1.0),     # newline to space, then stripped
    ("\tyes  ", 1.0),
    ("Yes", 0.0),        # no lower-casing here
    ("yes.", 0.0),       # nor period removal
    ("yes!", 0.0),       # nor punctuation
    ("the yes", 0.0),    # nor articles
])
def test_all_agree_branch_only_cleans_whitespace(prediction, expected):
    assert question_accuracy(prediction, answers_with("yes", 10)) == expected


def test_all_agree_branch_number_words_are_not_mapped():
    assert question_accuracy("two", ["2"] * 10) == 0.0
    assert question_accuracy("2", ["2"] * 10) == 1.0


def test_answers_that_differ_only_in_whitespace_count_as_agreeing():
    answers = ["yes", " yes", "yes\t", "yes\n"] + ["yes"] * 6  # all "yes" once cleaned: the all-agree branch
    assert question_accuracy("Yes", answers) == 0.0
    assert question_accuracy("yes", answers) == 1.0


def test_disagreeing_answers_normalise_both_sides():
    assert question_accuracy("Yes", answers_with("yes", 4)) == 1.0  # 4 matches: every subset keeps >= 3
    assert question_accuracy("2", answers_with("two", 4)) == 1.0    # the answers are processed too
    assert question_accuracy("dont", answers_with("don't", 4)) == 1.0
    assert question_accuracy("lets", answers_with("let's", 4)) == 0.0  # "lets" is not in the table
    assert question_accuracy("im", answers_with("i'm", 4)) == 0.0      # nor "im" (its key is "Im")


def test_clean_normalization_also_processes_agreeing_answers():
    assert question_accuracy("Yes", ["yes"] * 10, normalization="clean") == 1.0
    assert question_accuracy("two.", ["2"] * 10, normalization="clean") == 1.0
    assert question_accuracy("no", ["yes"] * 10, normalization="clean") == 0.0
    with pytest.raises(ValueError, match="normalization"):
        question_accuracy("yes", ["yes"] * 10, normalization="lenient")


# ---- the answer processing -------------------------------------------------------------------------------------
@pytest.mark.parametrize("answer, expected", [
    # periods: deleted unless a digit follows
    ("2.5", "2.5"), (".5", ".5"), ("v.2", "v.2"), ("2.", "2"), ("a.b", "ab"), ("end.", "end"), ("5..5", "5.5"),
    ("yes" + "." * 32, "yes"), ("yes" + "." * 33, "yes."),  # 32 periods at most
    ("5.\u0663", "5\u0663"),  # only ASCII digits count as digits
    # punctuation next to a space anywhere is deleted, else it becomes a space
    ("hello, world", "hello world"), ("hello,world", "hello world"), ("t-shirts", "t shirts"),
    ("red - blue", "red blue"), ("(red)", "red"), ("a (red)", "red"), ("yes!", "yes"), ("yes !", "yes"),
    # a digit-comma-digit anywhere deletes every mark
    ("1,000", "1000"), ("1,000 t-shirts", "1000 tshirts"), ("\u0663,\u0663 t-shirts", "\u0663 \u0663 t shirts"),
    ("10:30", "10:30"), ("don't", "don't"),  # colon and apostrophe are not punctuation here
    # contractions
    ("dont", "don't"), ("oclock", "o'clock"), ("yall", "y'all"), ("twas", "'twas"), ("somebody'd", "somebodyd"),
    ("im", "im"), ("Im", "im"), ("lets", "lets"), ("id", "id"), ("ive", "ive"), ("Couldnt've", "couldn't've"),
    # number words and articles
    ("Two", "2"), ("none", "0"), ("ten", "10"), ("eleven", "eleven"), ("one two three", "1 2 3"),
    ("the dog", "dog"), ("An apple", "apple"), ("a an the", ""), ("theater", "theater"),
    # whitespace and case
    (" Yes\n", "yes"), ("big\tdog", "big dog"), ("\u0130", "i"),  # Python 2's character-wise lower-casing
])
def test_normalize_answer(answer, expected):
    assert normalize_answer(answer) == expected


def test_processing_can_keep_a_prediction_from_matching():
    # the prediction "1000 tshirts" (comma rule) against answers "1000 t shirts" (no comma: hyphen to space)
    answers = ["1000 t-shirts"] * 4 + ["other"] * 6
    assert question_accuracy("1,000 t-shirts", answers) == 0.0
    assert question_accuracy("1000 t-shirts", answers) == 1.0


# ---- the leave-one-out score -----------------------------------------------------------------------------------
@pytest.mark.parametrize("k, expected", [
    (0, 0.0),
    (1, 0.3),   # 9 subsets hold the match (1/3 each), 1 does not: 3/10
    (2, 0.6),   # 8 subsets hold both (2/3), 2 hold one (1/3): (16/3 + 2/3) / 10
    (3, 0.9),   # 7 subsets hold all 3 (1), 3 hold two (2/3): (7 + 2) / 10
    (4, 1.0),   # every subset holds >= 3
    (9, 1.0),
    (10, 1.0),
])
def test_leave_one_out_with_ten_annotators(k, expected):
    assert question_accuracy("dog", answers_with("dog", k)) == pytest.approx(expected, abs=EXACT)


def test_leave_one_out_with_other_answer_counts():
    # 5 answers, 2 match: the 2 matching subsets hold 1 (1/3), the 3 others hold 2 (2/3): (2/3 + 2) / 5
    assert question_accuracy("dog", answers_with("dog", 2, total=5)) == pytest.approx(8 / 15, abs=EXACT)
    # 3 answers, all "dog": each subset holds 2 matches: 2/3
    assert question_accuracy("dog", ["dog"] * 3) == pytest.approx(2 / 3, abs=EXACT)
    assert question_accuracy("dog", ["dog"]) == 0.0  # one answer: leaving it out leaves nothing
    with pytest.raises(ValueError, match="at least one"):
        question_accuracy("dog", [])


def test_equal_answer_entries_are_left_out_together():
    # without an answer_id, equal dicts count as one entry: leaving one out leaves out all of them
    assert question_accuracy("yes", [{"answer": "yes"}] * 10) == 0.0
    # 2 "dog" dicts and 8 equal "cat" dicts: leaving a dog out leaves the cats (0); a cat, the 2 dogs (2/3):
    # (8 * 2/3) / 10
    answers = [{"answer": "dog"}] * 2 + [{"answer": "cat"}] * 8
    assert question_accuracy("dog", answers) == pytest.approx(16 / 30, abs=EXACT)
    # the other keys count: 8 "yes" + 2 "yes"/maybe dicts; leaving out a plain one leaves the 2 (2/3), a maybe one
    # leaves the 8 (1): (8 * 2/3 + 2) / 10
    answers = [{"answer": "yes"}] * 8 + [{"answer": "yes", "answer_confidence": "maybe"}] * 2
    assert question_accuracy("yes", answers) == pytest.approx(22 / 30, abs=EXACT)
    # equality is judged after processing: "Dog!" and "dog" become the same entry
    answers = [{"answer": "Dog!"}, {"answer": "dog"}] + [{"answer": f"cat {i}"} for i in range(8)]
    assert question_accuracy("dog", answers) == pytest.approx(8 * (2 / 3) / 10, abs=EXACT)
    # plain strings are separate annotators
    assert question_accuracy("dog", ["dog"] * 2 + ["cat"] * 8) == pytest.approx(0.6, abs=EXACT)


# ---- the report --------------------------------------------------------------------------------------------------
def test_vqa_accuracy_report():
    annotations = [
        {"question_id": 1, "answer_type": "number", "question_type": "how many",
         "answers": [{"answer": "2", "answer_id": i} for i in range(10)]},
        {"question_id": 2, "answer_type": "other", "question_type": "what is",
         "answers": ["a dog"] + ["cat"] * 9},
        {"question_id": 3, "answer_type": "yes/no", "question_type": "is the",
         "answers": ["no"] * 9 + ["yes"]},
        {"question_id": 4, "answer_type": "other", "question_type": "what is", "answers": ["red"] * 10},
    ]
    predictions = [{"question_id": 4, "answer": "Red"}, {"question_id": 1, "answer": "2"},
                   {"question_id": 2, "answer": "Dog"}, {"question_id": 3, "answer": "No."}]
    # 1: all agree, exact -> 1; 2: 1 match once processed -> 0.3; 3: 9 matches -> 1; 4: all agree, "Red" -> 0
    result = vqa_accuracy(predictions, annotations)
    assert result.per_question == pytest.approx({1: 1.0, 2: 0.3, 3: 1.0, 4: 0.0}, abs=EXACT)
    assert list(result.per_question) == [1, 2, 3, 4]  # annotation order
    assert result.overall == pytest.approx(2.3 / 4, abs=EXACT)
    assert result.per_answer_type == pytest.approx({"number": 1.0, "other": 0.15, "yes/no": 1.0}, abs=EXACT)
    assert result.per_question_type == pytest.approx({"how many": 1.0, "is the": 1.0, "what is": 0.15}, abs=EXACT)
    assert vqa_accuracy(predictions, annotations, normalization="clean").per_question[4] == 1.0
    with pytest.raises(ValueError, match=r"not answered, e\.g\. \[3\]"):
        vqa_accuracy([p for p in predictions if p["question_id"] != 3], annotations)
    with pytest.raises(ValueError, match=r"more than once, e\.g\. \[1\]"):
        vqa_accuracy(predictions + predictions[1:2], annotations)
    with pytest.raises(ValueError, match=r"not in the annotations, e\.g\. \[7\]"):
        vqa_accuracy(predictions + [{"question_id": 7, "answer": "x"}], annotations)


def test_vqa_accuracy_warns_about_equal_answer_entries():
    annotations = [{"question_id": 1, "answers": [{"answer": "yes"}] * 10}]
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # the tests run with pytest's logging plugin off (no caplog)
    logger = logging.getLogger("lavis.common.vqa_accuracy")
    logger.addHandler(handler)
    try:
        result = vqa_accuracy([{"question_id": 1, "answer": "yes"}], annotations)
    finally:
        logger.removeHandler(handler)
    assert result.overall == 0.0 and result.per_answer_type == {} and result.per_question_type == {}
    assert len(records) == 1 and "equal answer entries" in records[0].getMessage()
