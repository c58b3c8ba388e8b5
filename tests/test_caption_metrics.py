"""Caption metrics against pycocoevalcap's own scorers, the SPICE-jar lookup, id checks, top-k accuracy and the
Table 1 comparison tool (VQA accuracy: test_vqa_accuracy.py). Java starts slowly (METEOR ~10 s): one scoring run
is shared by a module fixture."""

from __future__ import annotations

import json
import os

import pytest
import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from lavis.common.caption_metrics import (
    CORENLP_JARS,
    CaptionMetricsConfig,
    coco_caption_scores,
    find_corenlp_jars,
    format_table,
)
from lavis.common.vqa_accuracy import zero_shot_classification_accuracy
from tools import compare_table1

DOG_REFS = ["A black dog runs across a green field.", "a dog running on the grass", "A black dog is running in a park"]
OTHER_REFS = {
    4: ["two people riding bikes down a road", "cyclists on a country road"],
    5: ["a plate of pasta with tomato sauce", "spaghetti on a white plate", "a bowl of noodles"],
    6: ["a red chair next to a wooden table", "the chair beside the table"],
    7: ["an image nobody captioned"],
}
# Images 1-3 share their references (so per-image scores compare captions on equal terms); 7 has no result.
GROUND_TRUTH = {
    "images": [{"id": i} for i in range(1, 8)],
    "annotations": [{"image_id": i, "id": 10 * i + k, "caption": c}
                    for i, refs in [(1, DOG_REFS), (2, DOG_REFS), (3, DOG_REFS), *OTHER_REFS.items()]
                    for k, c in enumerate(refs)],
}
RESULTS = [
    {"image_id": 1, "caption": "A black dog runs across a green field."},  # a reference, verbatim
    {"image_id": 2, "caption": "a dog runs in a field"},
    {"image_id": 3, "caption": "a red car parked on a street"},
    {"image_id": 4, "caption": "two people ride bicycles on a road"},
    {"image_id": 5, "caption": "a plate of spaghetti"},
    {"image_id": 6, "caption": "a chair"},
]


def fixture_config() -> CaptionMetricsConfig:
    # LAVIS_TEST_CORENLP_DIR: a folder with the CoreNLP jars, to run the SPICE test where pycocoevalcap lacks them
    return CaptionMetricsConfig(spice=True, corenlp_dir=os.environ.get("LAVIS_TEST_CORENLP_DIR"))


def spice_jars_present() -> bool:
    return find_corenlp_jars(fixture_config())[1] is None


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("gt") / "captions_gt.json"
    path.write_text(json.dumps(GROUND_TRUTH))
    return coco_caption_scores(RESULTS, path, fixture_config())


def test_metrics_equal_pycocoevalcap_scorers_called_directly(report):
    ids = [r["image_id"] for r in RESULTS]
    tokenizer = PTBTokenizer()  # as pycocoevalcap's COCOEvalCap: references and candidates tokenized separately
    gts = tokenizer.tokenize({i: [{"caption": a["caption"]} for a in GROUND_TRUTH["annotations"] if a["image_id"] == i]
                              for i in ids})
    res = tokenizer.tokenize({r["image_id"]: [{"caption": r["caption"]}] for r in RESULTS})
    expected = dict(zip(["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"], Bleu(4).compute_score(gts, res, verbose=0)[0]))
    meteor = Meteor()
    expected["METEOR"] = meteor.compute_score(gts, res)[0]
    del meteor
    expected["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    expected["CIDEr"] = Cider().compute_score(gts, res)[0]
    assert {k: v for k, v in report.metrics.items() if k != "SPICE"} == pytest.approx(expected, abs=1e-12)
    assert report.num_images == 6
    assert set(report.per_image) == set(ids)


def test_perfect_caption_scores_highest(report):
    perfect, partial, wrong = (report.per_image[i] for i in (1, 2, 3))
    assert perfect["Bleu_1"] == pytest.approx(1.0)
    assert perfect["CIDEr"] > partial["CIDEr"] > wrong["CIDEr"]
    assert perfect["METEOR"] > partial["METEOR"] > wrong["METEOR"]
    assert max(scores["Bleu_1"] for scores in report.per_image.values()) == perfect["Bleu_1"]


def test_ground_truth_images_without_result_are_reported(report):
    assert any("1 of 7 ground-truth samples have no result" in message for message in report.missing)
    assert (report.num_ground_truth, report.num_images, report.unscored_ids, report.incomplete) == (7, 6, [7], True)


def test_missing_spice_jars_leave_spice_out_and_say_where(report, tmp_path):
    # corenlp_dir names an empty folder, so the jars are missing wherever this runs (installed ones are not used)
    empty = tmp_path / "corenlp"
    empty.mkdir()
    gt = tmp_path / "captions_gt.json"
    gt.write_text(json.dumps(GROUND_TRUTH))
    without = coco_caption_scores(RESULTS, gt, CaptionMetricsConfig(spice=True, corenlp_dir=str(empty)))
    assert "SPICE" not in without.metrics
    assert {"Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"} <= set(without.metrics)
    assert without.metrics == pytest.approx({k: v for k, v in report.metrics.items() if k != "SPICE"}, abs=1e-12)
    (message,) = [m for m in without.missing if m.startswith("SPICE not computed")]
    assert all(str(empty / jar) in message for jar in CORENLP_JARS)  # exactly which files, and where to put them
    assert "run.caption_metrics.corenlp_dir" in message


def test_spice_is_computed_when_jars_are_present(report):
    if not spice_jars_present():
        pytest.skip("stanford-corenlp-3.6.0 jars absent (set LAVIS_TEST_CORENLP_DIR to a folder holding them)")
    assert 0.0 < report.metrics["SPICE"] <= 1.0
    assert not [m for m in report.missing if "SPICE" in m]


def test_corenlp_dir_lookup(tmp_path):
    jars, message = find_corenlp_jars(CaptionMetricsConfig(corenlp_dir=str(tmp_path)))
    assert jars == [] and str(tmp_path / CORENLP_JARS[0]) in message and str(tmp_path / CORENLP_JARS[1]) in message
    for name in CORENLP_JARS:
        (tmp_path / name).write_bytes(b"")
    jars, message = find_corenlp_jars(CaptionMetricsConfig(corenlp_dir=str(tmp_path)))
    assert message is None and jars == [tmp_path / name for name in CORENLP_JARS]


def test_format_table_shows_percentages(report):
    table = format_table(report)
    assert f"{100 * report.metrics['CIDEr']:.1f}" in table and "Bleu_4" in table and "6 samples" in table
    # image 7 has no result: every number is marked, and the footnote says how much was scored
    assert f"{100 * report.metrics['CIDEr']:.1f}*" in table
    assert table.splitlines()[-1] == ("* incomplete: 6 of 7 ground-truth items scored; not comparable with full-set "
                                      "numbers")


@pytest.mark.parametrize("results, pattern", [
    (RESULTS + [{"image_id": 2, "caption": "again"}], r"more than once in the results, e\.g\. \[2\]"),
    (RESULTS + [{"image_id": 99, "caption": "x"}, {"image_id": 98, "caption": "y"}],
     r"not in the ground truth.*99, 98"),
    ([{"image_id": "1", "caption": "x"}], r"\['1'\].*int vs str"),
    ([], "no results"),
])
def test_bad_result_ids_raise_and_name_them(results, pattern):
    with pytest.raises(ValueError, match=pattern):
        coco_caption_scores(results, GROUND_TRUTH, CaptionMetricsConfig(spice=False))


# ---- VQA accuracy ---------------------------------------------------------------------------------------------------
def test_topk_accuracy_on_a_hand_made_matrix():
    scores = torch.tensor([
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # label 0: rank 1
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # label 1: rank 5
        [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # label 5: rank 6
        [0.0, 0.3, 0.9, 0.2, 0.1, 0.0],  # label 1: rank 2
    ])
    labels = torch.tensor([0, 1, 5, 1])
    assert zero_shot_classification_accuracy(scores, labels) == pytest.approx({"top1": 0.25, "top5": 0.75})
    assert zero_shot_classification_accuracy(scores, labels, topk=(2,)) == pytest.approx({"top2": 0.5})
    with pytest.raises(ValueError, match="at least 7 classes"):
        zero_shot_classification_accuracy(scores, labels, topk=(7,))


# ---- Table 1 comparison ----------------------------------------------------------------------------------------------
def test_compare_table1_prints_paper_and_ours(tmp_path, capsys):
    metrics = {"dataset": "refcoco", "split": "test", "task": "captioning", "model": "regionblip_opt",
               "metrics": {"CIDEr": 0.612, "Bleu_4": 0.2}, "gt_items": 5, "scored_items": 5, "missing_items": 0,
               "missing_ids": [], "incomplete": False}
    (tmp_path / "refcoco.json").write_text(json.dumps(metrics))
    (tmp_path / "scan.json").write_text(json.dumps({**metrics, "dataset": "scanrefer", "split": "test"}))
    compare_table1.main(["--result", f"OPT-2.7B={tmp_path / 'refcoco.json'}",
                         "--result", f"flant5xxl={tmp_path / 'scan.json'}"])
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith(("OPT", "FlanT5"))}
    assert "61.2 / 63.5 (-2.3)" in lines["OPT-2.7B"] and "- / 112.7" in lines["OPT-2.7B"]
    assert "- / 64.2" in lines["OPT-6.7B"] and "- / 59.3" in lines["OPT-6.7B"]
    assert "61.2 / 53.6 (+7.6)" in lines["FlanT5-XXL"] and "- / 56.1" in lines["FlanT5-XXL"]
    assert "- / 47.6" in lines["FlanT5-XL"] and "- / 108.1" in lines["FlanT5-XL"]
    assert "split 'test', the paper reports 'val'" in out
    with pytest.raises(SystemExit):
        compare_table1.main(["--result", f"llama={tmp_path / 'refcoco.json'}"])
    assert "unknown LLM 'llama'" in capsys.readouterr().err


def test_training_and_benchmarks_import_without_pycocoevalcap():
    """pycocoevalcap (with its jars, ~100 MB) is needed only to score captions: the framework imports without it, and
    scoring then says what to install."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['pycocoevalcap'] = None\n"  # `import pycocoevalcap...` now raises ImportError
        "import lavis.common.config, lavis.runners.runner, lavis.runners.benchmark, lavis.tasks.captioning\n"
        "from lavis.common.caption_metrics import CaptionMetricsConfig, coco_caption_scores\n"
        "gt = {'images': [{'id': 1}], 'annotations': [{'image_id': 1, 'id': 1, 'caption': 'a cat'}]}\n"
        "try:\n"
        "    coco_caption_scores([{'image_id': 1, 'caption': 'a cat'}], gt, CaptionMetricsConfig(spice=False))\n"
        "except ImportError as e:\n"
        "    print('refused:', e)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "refused: caption metrics need pycocoevalcap (pip install pycocoevalcap)" in proc.stdout
