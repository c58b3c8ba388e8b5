"""evaluate.py end to end on the toy plugin: one caption per sample, metrics, 1 process == 2 processes."""

import json

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

    cfg_path = write_yaml(tmp_path / "eval2.yaml", eval_config(tmp_path, "two"))
    result = torchrun(2, str(REPO / "evaluate.py"), "--cfg-path", str(cfg_path))
    assert result.returncode == 0, result.stderr[-3000:]
    two = tmp_path / "two"
    assert json.loads((two / "set_a_test_captions.json").read_text()) == captions
    assert json.loads((two / "set_a_test_metrics.json").read_text())["metrics"] == metrics["metrics"]
