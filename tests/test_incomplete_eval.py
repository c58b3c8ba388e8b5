"""A result set that lacks ground-truth items says so: the completeness keys of a metrics file for a task with its own
scoring (finish_eval), the `*` of the tables, compare_table1 refusing such a cell, and metrics files written before
the keys existed (completeness unknown). Tiny hand-written metrics files; no model training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluate import main as evaluate_main
from lavis.common import metrics_files
from lavis.common.caption_metrics import CaptionReport, coverage, format_table
from lavis.common.registry import TASKS
from tests.conftest import REPO, write_yaml
from tests.test_evaluate import eval_config
from tools import compare_table1, metrics_table


@TASKS.register("toy_counting")
class CountingTask:
    """Scores the split's own samples (as VQA and zero-shot classification do): a metric, no ground-truth file."""

    def eval_step(self, model, batch):
        return [{"sample_id": sample_id} for sample_id in batch["sample_ids"]]

    def finish_eval(self, results, dataset, ds_cfg, stem):
        return {"metrics": {"accuracy": 1.0}}


def test_a_finish_eval_task_reports_the_samples_it_did_not_score(tmp_path):
    data = eval_config(tmp_path, "counting")
    data["run"].update(task="toy_counting", max_bad_sample_fraction=0.3)
    data["datasets"]["set_a"]["bad_every"] = 4  # 4 of 16 unreadable
    data["datasets"]["set_b"]["eval_split"] = "test"  # clean
    evaluate_main(["--cfg-path", str(write_yaml(tmp_path / "counting.yaml", data))])
    bad = json.loads((tmp_path / "counting" / "set_a_test_metrics.json").read_text())
    assert {k: bad[k] for k in ("samples", "skipped", "gt_items", "scored_items", "missing_items", "incomplete")} == {
        "samples": 12, "skipped": 4, "gt_items": 16, "scored_items": 12, "missing_items": 4, "incomplete": True}
    assert bad["missing_ids"] == ["toy-0", "toy-12", "toy-4", "toy-8"] and bad["metrics"] == {"accuracy": 1.0}
    clean = json.loads((tmp_path / "counting" / "set_b_test_metrics.json").read_text())
    assert (clean["gt_items"], clean["scored_items"], clean["missing_ids"], clean["incomplete"]) == (8, 8, [], False)


def test_coverage_lists_at_most_20_missing_ids():
    keys = coverage(100, 70, list(range(30)))
    assert keys == {"gt_items": 100, "scored_items": 70, "missing_items": 30, "missing_ids": list(range(20)),
                    "incomplete": True}
    assert coverage(5, 5, [])["incomplete"] is False


def test_caption_table_marks_only_incomplete_results():
    metrics = {"CIDEr": 0.635, "Bleu_4": 0.2}
    incomplete = format_table(CaptionReport(metrics=metrics, num_images=98, num_ground_truth=100))
    assert "63.5*" in incomplete and "20.0*" in incomplete
    assert incomplete.splitlines()[-1] == ("* incomplete: 98 of 100 ground-truth items scored; not comparable with "
                                           "full-set numbers")
    for report in (CaptionReport(metrics=metrics, num_images=100, num_ground_truth=100),
                   CaptionReport(metrics=metrics, num_images=100)):  # built without the ground-truth count
        table = format_table(report)
        assert "63.5" in table and "*" not in table


# ---- the readers: metrics_table and compare_table1 ----------------------------------------------------------------
def metrics_file(path: Path, dataset: str, split: str, cider: float, **keys) -> Path:
    """A metrics file as evaluate.py writes it; `keys` overrides or adds (None drops a key)."""
    report = {"dataset": dataset, "split": split, "modality": "image_region", "model": "regionblip_opt",
              "samples": 100, "skipped": 0, "metrics": {"CIDEr": cider, "SPICE": 0.2}, "missing": [],
              "gt_items": 100, "scored_items": 100, "missing_items": 0, "missing_ids": [], "incomplete": False,
              "provenance": {"checkpoint": {"path": str(path.parent / "ckpt.pth"), "step": 10, "sha256": "ab" * 32},
                             "config_sha256": "cd" * 32}}
    report.update(keys)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: v for k, v in report.items() if v is not None}))
    return path


INCOMPLETE = dict(samples=98, skipped=2, gt_items=100, scored_items=98, missing_items=2, missing_ids=[3, 17],
                  incomplete=True, missing=["2 of 100 ground-truth images have no result; metrics cover the 98 images "
                                            "in the results"])
OLD = dict(gt_items=None, scored_items=None, missing_items=None, missing_ids=None, incomplete=None,
           provenance=None)  # pre-change file


def test_metrics_table_marks_incomplete_and_unknown_cells(tmp_path):
    full = metrics_file(tmp_path / "full" / "refcoco_test_metrics.json", "refcoco", "test", 0.635)
    part = metrics_file(tmp_path / "part" / "refcoco_test_metrics.json", "refcoco", "test", 0.582, **INCOMPLETE)
    old = metrics_file(tmp_path / "old" / "refcoco_test_metrics.json", "refcoco", "test", 0.6, **OLD)
    runs = {label: metrics_table.read_run(path.parent) for label, path in (("full", full), ("part", part),
                                                                            ("old", old))}
    lines = metrics_table.table(runs, ["CIDEr", "SPICE"], markdown=False).splitlines()
    assert lines[1].split()[-6:] == ["63.5", "58.2*", "60.0?", "20.0", "20.0*", "20.0?"]
    assert lines[2:] == [
        f"* part / refcoco (image_region, test): incomplete: 98 of 100 ground-truth items scored (2 missing, e.g. "
        f"[3, 17]; 2 bad samples skipped) ({part})",
        f"? old / refcoco (image_region, test): completeness unknown: {metrics_files.UNKNOWN} ({old})",
        f"? old / refcoco (image_region, test): {metrics_table.NO_PROVENANCE} ({old})"]
    markdown = metrics_table.table(runs, ["CIDEr"], markdown=True)
    assert r"| 63.5 | 58.2\* | 60.0? |" in markdown and r"- \* part / refcoco" in markdown


@pytest.mark.parametrize("keys, expected", [
    ({}, (False, "100 of 100 ground-truth items scored")),
    (INCOMPLETE, (True, "98 of 100 ground-truth items scored (2 missing, e.g. [3, 17]; 2 bad samples skipped)")),
    (OLD, (None, metrics_files.UNKNOWN)),
    # older files still show what they lacked: the caption scorer's message, or skipped bad samples
    ({**OLD, "missing": INCOMPLETE["missing"]}, (True, "98 of 100 ground-truth items scored")),
    ({**OLD, "samples": 12, "skipped": 1, "missing": None}, (True, "12 of 13 samples scored (1 bad samples skipped)")),
])
def test_completeness_of_new_and_old_files(tmp_path, keys, expected):
    path = metrics_file(tmp_path / "m.json", "refcoco", "test", 0.6, **keys)
    assert metrics_files.completeness(json.loads(path.read_text())) == expected


def table1_files(tmp_path: Path, **refcoco_keys) -> list[str]:
    refcoco = metrics_file(tmp_path / "refcoco_test_metrics.json", "refcoco", "test", 0.582, **refcoco_keys)
    scanrefer = metrics_file(tmp_path / "scanrefer_val_metrics.json", "scanrefer", "val", 0.6)
    return ["--result", f"opt2.7b={refcoco}", "--result", f"opt2.7b={scanrefer}"]


def opt27_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("OPT-2.7B"))


def test_compare_table1_refuses_an_incomplete_cell(tmp_path, capsys):
    args = table1_files(tmp_path, **INCOMPLETE)
    with pytest.raises(SystemExit) as exit_info:
        compare_table1.main(args)
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert "refused / 63.5" in opt27_line(captured.out) and "60.0 / 57.0 (+3.0)" in opt27_line(captured.out)
    assert "58.2" not in captured.out  # nobody copies the number
    path = tmp_path / "refcoco_test_metrics.json"
    assert (f"error: OPT-2.7B / RefCOCO: {path} is incomplete: 98 of 100 ground-truth items scored (2 missing, e.g. "
            "[3, 17]; 2 bad samples skipped)") in captured.err
    assert "refcoco_test_bad_samples.jsonl" in captured.err and "--allow-incomplete" in captured.err

    compare_table1.main(args + ["--allow-incomplete"])
    out = capsys.readouterr().out
    assert "58.2* / 63.5 (-5.3)" in opt27_line(out)
    assert "note: * OPT-2.7B / RefCOCO: incomplete: 98 of 100 ground-truth items scored" in out and str(path) in out


def test_compare_table1_shows_an_old_file_as_unknown(tmp_path, capsys):
    compare_table1.main(table1_files(tmp_path, **OLD))  # no exit: completeness is not known to be short
    out = capsys.readouterr().out
    assert "58.2? / 63.5 (-5.3)" in opt27_line(out) and "60.0 / 57.0 (+3.0)" in opt27_line(out)
    assert f"note: ? OPT-2.7B / RefCOCO: completeness unknown: {tmp_path / 'refcoco_test_metrics.json'} has no " \
           "completeness counts" in out
    with pytest.raises(SystemExit):  # an old file whose own messages show missing images is refused
        compare_table1.main(table1_files(tmp_path, **{**OLD, "missing": INCOMPLETE["missing"]}))
    assert "98 of 100 ground-truth items scored" in capsys.readouterr().err


def test_compare_table1_script_exit_status(tmp_path):
    """As eval_table1.sh runs it: a script (tools/ on sys.path, not the repository root)."""
    command = [sys.executable, str(REPO / "tools" / "compare_table1.py"), *table1_files(tmp_path, **INCOMPLETE)]
    refused = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "refused / 63.5" in refused.stdout and "is incomplete" in refused.stderr
    allowed = subprocess.run(command + ["--allow-incomplete"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=60)
    assert allowed.returncode == 0 and "58.2* / 63.5" in allowed.stdout
