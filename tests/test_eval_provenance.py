"""Evaluation folders know what they score: every metrics file records the checkpoint (path, step, sha256) and the
model config digest; a rerun with another checkpoint or config moves the old results to superseded/, one with the
same checkpoint and config overwrites them; tools/metrics_table.py refuses a folder that mixes checkpoints. The toy
plugin model, with hand-made checkpoints whose caption lengths differ, scored by caption length (the COCO scorers
take seconds per run; tests/test_evaluate.py runs them)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from evaluate import main as evaluate_main
from lavis.common.checkpoint import checkpoint_digest
from lavis.common.config import load_config
from lavis.common.registry import MODELS, TASKS
from lavis.runners.evaluator import set_aside_superseded
from tests.conftest import write_yaml
from tests.test_evaluate import eval_config
from tests.test_incomplete_eval import metrics_file
from tools import metrics_table


@TASKS.register("toy_caption_length")
class CaptionLengthTask:
    """A metric that changes with the checkpoint: the mean caption length; writes `{stem}_predictions.json`."""

    def eval_step(self, model, batch):
        return [{"sample_id": s, "caption": c} for s, c in zip(batch["sample_ids"], model.generate(batch))]

    def finish_eval(self, results, dataset, ds_cfg, stem):
        stem.with_name(stem.name + "_predictions.json").write_text(json.dumps(results))
        return {"metrics": {"words": sum(len(r["caption"].split()) for r in results) / len(results) / 100}}


def make_checkpoint(cfg_path: Path, path: Path, step: int, words: int) -> Path:
    """A checkpoint of the toy model at `step` whose captions of set_a are `words` words long."""
    cfg = load_config(cfg_path)
    model = MODELS.get(cfg.model_arch).from_config(cfg.model)
    state = {name: value.clone() for name, value in model.trainable_state_dict().items()}
    state["length_heads.vec_a.weight"].zero_()
    state["length_heads.vec_a.bias"].fill_(words / 10)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "position": {"epoch": 0, "position": step, "global_step": step}}, path)
    return path


@pytest.fixture(params=["captioning"])
def setup(tmp_path, request):
    """(evaluate(checkpoint, *options) -> the set_a metrics, the output folder, the checkpoints of steps 4 and 9).
    The task is the parameter: captioning writes captions only (no ground truth), toy_caption_length scores."""
    data = eval_config(tmp_path, "eval")
    data["run"]["task"] = request.param
    data["datasets"]["set_a"]["eval_gt_file"] = None
    data["datasets"]["set_b"]["eval_split"] = "test"
    cfg_path = write_yaml(tmp_path / "eval.yaml", data)
    out = tmp_path / "eval"
    step4 = make_checkpoint(cfg_path, tmp_path / "train" / "checkpoint_00000004.pth", 4, words=3)
    step9 = make_checkpoint(cfg_path, tmp_path / "train9" / "checkpoint_00000009.pth", 9, words=5)

    def evaluate(checkpoint: Path | str | None, *options: str) -> dict:
        load = [f"run.load_ckpt_path={checkpoint}"] if checkpoint is not None else []
        evaluate_main(["--cfg-path", str(cfg_path), "--options", *load, *options])
        return json.loads((out / "set_a_test_metrics.json").read_text())

    return evaluate, out, step4, step9


def test_metrics_record_the_checkpoint_its_step_digest_and_the_config(setup, tmp_path):
    evaluate, out, step4, _ = setup
    metrics = evaluate(step4.parent)  # a training run folder: its latest checkpoint
    model_cfg = load_config(tmp_path / "eval.yaml").yaml.model
    config_digest = hashlib.sha256(json.dumps(OmegaConf.to_container(model_cfg), sort_keys=True).encode()).hexdigest()
    expected = {"checkpoint": {"path": str(step4.resolve()), "step": 4, "sha256": checkpoint_digest(step4)},
                "config_sha256": config_digest}
    assert metrics["provenance"] == expected
    assert json.loads((out / "set_b_test_metrics.json").read_text())["provenance"] == expected  # every dataset's
    assert json.loads((out / "eval_provenance.json").read_text())["provenance"] == expected  # the folder's

    evaluate(None, f"run.output_dir={tmp_path / 'untrained'}")
    untrained = json.loads((tmp_path / "untrained" / "set_a_test_metrics.json").read_text())
    assert untrained["provenance"] == {"checkpoint": {"path": None, "step": None, "sha256": None},
                                       "config_sha256": config_digest}


@pytest.mark.parametrize("setup", ["toy_caption_length"], indirect=True)
def test_a_rerun_with_another_checkpoint_moves_the_old_results_aside(setup, capfd):
    evaluate, out, step4, step9 = setup
    old = evaluate(step4)
    old_predictions = (out / "set_a_test_predictions.json").read_text()
    capfd.readouterr()
    new = evaluate(step9)
    assert new["provenance"]["checkpoint"]["step"] == 9 and new["metrics"] != old["metrics"]
    [aside] = (out / "superseded").iterdir()
    assert aside.name.endswith("Z_step4")
    assert sorted(p.name for p in aside.iterdir()) == [
        "eval_config.yaml", "eval_provenance.json", "set_a_test_metrics.json", "set_a_test_predictions.json",
        "set_b_test_metrics.json", "set_b_test_predictions.json"]
    assert json.loads((aside / "set_a_test_metrics.json").read_text()) == old
    assert (aside / "set_a_test_predictions.json").read_text() == old_predictions
    log = capfd.readouterr().err
    assert f"held results of checkpoint {step4.resolve()} (step 4" in log and str(aside) in log
    assert "set_a_test_metrics.json, set_a_test_predictions.json, set_b_test_metrics.json" in log

    [(row, report)] = [(r, v) for r, v in metrics_table.read_run(out).items() if r.startswith("set_a")]
    assert report["metrics"] == new["metrics"]  # only the new results are read
    assert new["metrics"] == {"words": 0.05} and old["metrics"] == {"words": 0.03}  # 5- and 3-word captions
    assert metrics_table.table({"run": metrics_table.read_run(out)}, ["words"], False).splitlines()[1].split() == [
        *row.split(), "5.0"]


def test_a_rerun_with_the_same_checkpoint_and_config_overwrites_in_place(setup, tmp_path):
    evaluate, out, step4, _ = setup
    first = evaluate(step4)
    captions = (out / "set_a_test_captions.json").read_text()
    (out / "set_a_test_captions.json").write_text("[]")  # rewritten by the rerun, not moved aside
    copy = tmp_path / "elsewhere" / "copy.pth"  # the same checkpoint, wherever it lies
    copy.parent.mkdir()
    shutil.copy(step4, copy)
    second = evaluate(copy)
    assert not (out / "superseded").exists()
    assert second["provenance"]["checkpoint"]["path"] == str(copy)
    assert second["provenance"]["checkpoint"]["sha256"] == first["provenance"]["checkpoint"]["sha256"]
    assert (out / "set_a_test_captions.json").read_text() == captions

    evaluate(copy, "model.dropout=0.2")  # the same checkpoint with another model config: aside
    [aside] = (out / "superseded").iterdir()
    assert aside.name.endswith("_step4") and json.loads((aside / "set_a_test_metrics.json").read_text()) == second


def test_results_of_unknown_provenance_are_moved_aside(tmp_path):
    current = {"checkpoint": {"path": None, "step": None, "sha256": None}, "config_sha256": "cd" * 32}
    metrics_file(tmp_path / "refcoco_test_metrics.json", "refcoco", "test", 0.6, provenance=None)  # an old run's
    (tmp_path / "gallery").mkdir()
    (tmp_path / "gallery" / "index.html").write_text("<p>the old captions</p>")
    warning = set_aside_superseded(tmp_path, current)
    [aside] = (tmp_path / "superseded").iterdir()
    assert aside.name.endswith("_unknown") and (aside / "refcoco_test_metrics.json").is_file()
    assert (aside / "gallery" / "index.html").is_file() and not (tmp_path / "gallery").exists()
    assert "without a recorded provenance" in warning and "refcoco_test_metrics.json" in warning
    assert set_aside_superseded(tmp_path, current) is None  # nothing left to move


def test_metrics_table_refuses_a_folder_that_mixes_checkpoints(tmp_path):
    run = tmp_path / "run"
    first = metrics_file(run / "refcoco_test_metrics.json", "refcoco", "test", 0.6)
    other = {"checkpoint": {"path": "/ckpts/checkpoint_00000020.pth", "step": 20, "sha256": "ef" * 32},
             "config_sha256": "cd" * 32}
    second = metrics_file(run / "scanrefer_val_metrics.json", "scanrefer", "val", 0.5, provenance=other)
    with pytest.raises(SystemExit) as refused:
        metrics_table.read_run(run)
    message = str(refused.value)
    assert str(first) in message and str(second) in message
    assert f"checkpoint {run / 'ckpt.pth'} (step 10" in message and "/ckpts/checkpoint_00000020.pth (step 20" in message

    # a group folder of links to the files of two evaluation folders: one column of two models, as eval_table1.sh
    # builds them; but not two files of one row
    group = tmp_path / "group"
    group.mkdir()
    elsewhere = metrics_file(tmp_path / "run2" / "scanrefer_val_metrics.json", "scanrefer", "val", 0.5,
                             provenance=other)
    (group / "a__refcoco_test_metrics.json").symlink_to(first)
    (group / "b__scanrefer_val_metrics.json").symlink_to(elsewhere)
    assert len(metrics_table.read_run(group)) == 2
    (group / "c__scanrefer_val_metrics.json").symlink_to(metrics_file(
        tmp_path / "run3" / "scanrefer_val_metrics.json", "scanrefer", "val", 0.4))
    with pytest.raises(SystemExit, match="both row scanrefer"):
        metrics_table.read_run(group)
    (group / "c__scanrefer_val_metrics.json").unlink()
    elsewhere.unlink()  # as a rerun moves it aside
    with pytest.raises(SystemExit, match=f"b__scanrefer_val_metrics.json links to {elsewhere}, which no longer"):
        metrics_table.read_run(group)
