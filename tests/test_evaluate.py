"""evaluate.py end to end on the toy plugin: one caption per sample, metrics, 1 process == 2 processes, and bad
samples listed, with too many of them stopping the run."""

import json

import pytest

from evaluate import main as evaluate_main
from tests.conftest import REPO, toy_run_config, write_yaml
from tests.test_distributed import torchrun


def eval_config(tmp_path, out_name):
    data = toy_run_config(tmp_path, task="captioning", caption_metrics={"spice": False})
    data["run"]["output_dir"] = str(tmp_path / out_name)
    gt = {"images": [{"id": i} for i in range(16)],
          "annotations": [{"image_id": i, "id": i, "caption": " ".join(["a"] * (1 + i % 7))} for i in range(16)]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    data["datasets"]["set_a"].update(eval_split="test", eval_gt_file=str(tmp_path / "gt.json"), batch_size=3)
    data["datasets"]["set_b"]["train_split"] = None
    return data


def test_single_and_two_process_evaluation_agree(tmp_path):
    cfg_path = write_yaml(tmp_path / "eval.yaml", eval_config(tmp_path, "one"))
    evaluate_main(["--cfg-path", str(cfg_path)])
    one = tmp_path / "one"
    captions = json.loads((one / "set_a_test_captions.json").read_text())
    assert sorted(r["image_id"] for r in captions) == list(range(16))  # one caption per sample
    metrics = json.loads((one / "set_a_test_metrics.json").read_text())
    assert {"Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"} <= set(metrics["metrics"])
    assert metrics["samples"] == 16 and metrics["skipped"] == 0
    assert (metrics["gt_items"], metrics["scored_items"], metrics["missing_items"]) == (16, 16, 0)
    assert metrics["missing_ids"] == [] and metrics["incomplete"] is False

    cfg_path = write_yaml(tmp_path / "eval2.yaml", eval_config(tmp_path, "two"))
    result = torchrun(2, str(REPO / "evaluate.py"), "--cfg-path", str(cfg_path))
    assert result.returncode == 0, result.stderr[-3000:]
    two = tmp_path / "two"
    assert json.loads((two / "set_a_test_captions.json").read_text()) == captions
    assert json.loads((two / "set_a_test_metrics.json").read_text())["metrics"] == metrics["metrics"]


def test_bad_samples_are_listed_and_too_many_stop_the_run(tmp_path, capfd):
    from lavis.runners.runner import BadDataError

    data = eval_config(tmp_path, "tolerant")
    data["datasets"]["set_a"]["bad_every"] = 4  # toy-0, -4, -8, -12: 4 of 16 samples are unreadable
    data["datasets"]["set_b"]["eval_split"] = "test"  # a clean dataset in the same run, without ground truth
    data["run"]["max_bad_sample_fraction"] = 0.3
    evaluate_main(["--cfg-path", str(write_yaml(tmp_path / "tolerant.yaml", data))])
    out = tmp_path / "tolerant"
    metrics = json.loads((out / "set_a_test_metrics.json").read_text())
    assert metrics["samples"] == 12 and metrics["skipped"] == 4 and "CIDEr" in metrics["metrics"]
    # scored over 12 of the 16 ground-truth images: the file says so
    assert (metrics["gt_items"], metrics["scored_items"], metrics["missing_items"]) == (16, 12, 4)
    assert metrics["missing_ids"] == [0, 4, 8, 12] and metrics["incomplete"] is True
    assert "gt_items" not in json.loads((out / "set_b_test_metrics.json").read_text())  # no ground truth to count
    log = capfd.readouterr().err
    assert "CIDEr" in log and "* incomplete: 12 of 16 ground-truth items scored" in log  # the table's footnote
    assert (f"set_a (test): incomplete: 12 of 16 ground-truth items scored; not comparable with full-set numbers (4 "
            f"missing, e.g. [0, 4, 8, 12]; 4 bad samples skipped, listed in {out / 'set_a_test_bad_samples.jsonl'}); "
            f"{out / 'set_a_test_metrics.json'} says incomplete: true") in log
    rows = [json.loads(line) for line in (out / "set_a_test_bad_samples.jsonl").read_text().splitlines()]
    assert sorted(r["sample_id"] for r in rows) == ["toy-0", "toy-12", "toy-4", "toy-8"]
    assert all(r["reason"] == "unreadable on purpose" for r in rows)
    assert not (out / "set_b_test_bad_samples.jsonl").exists()

    data["run"].update(max_bad_sample_fraction=0.2, output_dir=str(tmp_path / "strict"))  # 25% > 20%
    with pytest.raises(BadDataError, match=r"set_a \(test\): 4 of 16 samples were bad \(25\.00% > "
                                           r"run\.max_bad_sample_fraction = 20\.00%\).*set_a_test_bad_samples\.jsonl"):
        evaluate_main(["--cfg-path", str(write_yaml(tmp_path / "strict.yaml", data))])
    strict = tmp_path / "strict"
    assert not (strict / "set_a_test_metrics.json").exists()  # not scored: the numbers would cover 12 of 16
    assert (strict / "set_a_test_bad_samples.jsonl").read_text() == (out / "set_a_test_bad_samples.jsonl").read_text()
    assert json.loads((strict / "set_b_test_metrics.json").read_text())["samples"] == 8  # the others still evaluated
