"""tools/compare_published.py on small metrics files in the real formats, and the published-results YAML itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lavis.common.published_results import PROTOCOLS, load_published
from tests.conftest import REPO
from tools.compare_published import main

YAML = REPO / "tools" / "published_results.yaml"


def caption_file(path: Path, dataset: str, split: str, **metrics: float) -> Path:
    """An evaluate.py metrics file: dataset, split, modality, metrics in [0, 1], completeness keys."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"dataset": dataset, "split": split, "modality": "image_region", "metrics": metrics,
                                "gt_items": 10, "scored_items": 10, "missing_items": 0, "incomplete": False}))
    return path


def dense_file(path: Path) -> Path:
    """tools/eval_dense_captions.py's output, ground-truth boxes as proposals."""
    metrics = {f"{m}@{k}": v for k in ("0.25", "0.5") for m, v in
               (("CIDEr", 0.5432), ("Bleu_4", 0.301), ("METEOR", 0.25), ("ROUGE_L", 0.5))}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"protocol": "vote2cap_detr", "metrics": metrics, "objects": 3,
                                "matched_objects": {"0.25": 3, "0.5": 3}, "proposals": "gt", "per_object": {}}))
    return path


def test_every_published_entry_has_a_known_metric_and_a_source():
    published = load_published(YAML)
    assert set(published) == set(PROTOCOLS)
    for protocol, metrics in published.items():
        for metric, entries in metrics.items():
            assert metric in PROTOCOLS[protocol].metrics
            for entry in entries:
                assert entry["source"].strip() and entry["system"].strip(), (protocol, metric, entry)


def test_table_prints_ours_the_published_numbers_and_their_sources(tmp_path: Path, capsys):
    run = tmp_path / "run"
    caption_file(run / "regionblip_opt2.7b_refcocog" / "refcocog_val_metrics.json", "refcocog", "val",
                 METEOR=0.1234, CIDEr=0.9876)
    caption_file(run / "regionblip_opt2.7b_refcoco" / "refcoco_test_metrics.json", "refcoco", "test",
                 CIDEr=0.611, SPICE=0.2)
    caption_file(run / "superseded" / "old" / "refcoco_test_metrics.json", "refcoco", "test", CIDEr=0.1, SPICE=0.1)
    dense_file(run / "densecap" / "scanrefer_densecap_gt_metrics.json")
    main([str(run)])
    out = capsys.readouterr().out
    assert "== refcocog_region_captioning" in out and "== scanrefer_densecap_0.5" in out
    assert "== regionblip_table1" in out
    lines = out.splitlines()
    ours = [line for line in lines if line.startswith("RefCOCOg val CIDEr") and "ours" in line]
    assert len(ours) == 1 and "98.76" in ours[0] and "refcocog_val_metrics.json" in ours[0]
    glamm = [line for line in lines if line.startswith("RefCOCOg val CIDEr") and "GLaMM (fine-tuned)" in line]
    assert len(glamm) == 1 and "106.00" in glamm[0] and "arXiv:2311.03356, CVPR 2024), Table 5" in glamm[0]
    assert any(line.startswith("RefCOCO test CIDEr") and "61.10" in line for line in lines)
    assert not any("10.00" in line and "RefCOCO test CIDEr" in line for line in lines)  # superseded/ is skipped
    dense = [line for line in lines if line.startswith("CIDEr@0.5 ") and "ours" in line]
    assert len(dense) == 1 and "54.32 gt" in dense[0]
    assert any(line.startswith("CIDEr@0.5 ") and "Vote2Cap-DETR" in line and "61.81" in line and "Table 8" in line
               for line in lines)
    assert "note: published systems caption their own detected proposals" in out


def test_protocol_option_limits_the_table_and_takes_a_single_file(tmp_path: Path, capsys):
    path = caption_file(tmp_path / "refcocog_val_metrics.json", "refcocog", "val", METEOR=0.15, CIDEr=1.0)
    main([str(path), "--protocol", "refcocog_region_captioning"])
    out = capsys.readouterr().out
    assert "== refcocog_region_captioning" in out and "== regionblip_table1" not in out
    assert "100.00" in out and "Kosmos-2" in out


def test_unknown_protocol_is_a_clear_error(tmp_path: Path, capsys):
    path = caption_file(tmp_path / "refcocog_val_metrics.json", "refcocog", "val", CIDEr=1.0)
    with pytest.raises(SystemExit) as exit_info:
        main([str(path), "--protocol", "refcocog_test"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown protocol 'refcocog_test'" in err and "refcocog_region_captioning" in err


@pytest.mark.parametrize("entry, fault", [
    ("{system: X, value: 1.0}", "missing ['source']"),
    ("{system: X, value: 1.0, source: ''}", "'source' must be a non-empty string"),
    ("{system: X, value: high, source: paper}", "'value' must be a number"),
])
def test_malformed_yaml_entry_is_a_clear_error(tmp_path: Path, capsys, entry: str, fault: str):
    yaml_file = tmp_path / "published.yaml"
    yaml_file.write_text(f"refcocog_region_captioning:\n  RefCOCOg val CIDEr:\n    - {entry}\n")
    path = caption_file(tmp_path / "refcocog_val_metrics.json", "refcocog", "val", CIDEr=1.0)
    with pytest.raises(SystemExit):
        main([str(path), "--published", str(yaml_file)])
    err = capsys.readouterr().err
    assert f"{yaml_file}: refcocog_region_captioning / RefCOCOg val CIDEr entry 0: " in err and fault in err


def test_unknown_metric_in_yaml_and_two_files_for_one_metric_are_refused(tmp_path: Path, capsys):
    yaml_file = tmp_path / "published.yaml"
    yaml_file.write_text("refcocog_region_captioning:\n  RefCOCOg val BLEU:\n    - {system: X, value: 1, source: p}\n")
    path = caption_file(tmp_path / "a" / "refcocog_val_metrics.json", "refcocog", "val", CIDEr=1.0)
    with pytest.raises(SystemExit):
        main([str(path), "--published", str(yaml_file)])
    assert "unknown metric 'RefCOCOg val BLEU'" in capsys.readouterr().err
    caption_file(tmp_path / "a" / "b" / "refcocog_val_metrics.json", "refcocog", "val", CIDEr=0.5)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "a")])
    assert "both give refcocog_region_captioning / RefCOCOg val CIDEr" in capsys.readouterr().err


def test_eval_protocols_dry_run_issues_every_protocol_then_the_comparison(tmp_path: Path):
    import os
    import subprocess

    log, fake = tmp_path / "calls.log", tmp_path / "fake_python"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" "" >> "{log}"\n')
    fake.chmod(0o755)
    run_dir, out = tmp_path / "train_run", tmp_path / "out"
    nr3d = tmp_path / "nr3d_test.json"
    nr3d.write_text("[]")
    env = {**os.environ, "PYTHON": str(fake), "OUT": str(out), "NPROC": "1", "WEIGHTS": "/w", "LLM": "flant5xl",
           "NR3D_TEST": str(nr3d)}
    env.pop("FORCE", None)
    result = subprocess.run(["bash", str(REPO / "run_scripts" / "eval_protocols.sh"), str(run_dir)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    calls = [block.split("\n") for block in log.read_text().split("\n\n") if block]
    evaluations = [c for c in calls if c[:2] == ["-m", "torch.distributed.run"]]
    stems = [Path(c[c.index("--cfg-path") + 1]).stem for c in evaluations]
    assert stems == [f"regionblip_flant5xl_{cell}" for cell in ("coco", "refcoco", "refcocog", "objaverse",
                                                                "scanrefer", "nr3d", "vqav2")]
    for call, stem in zip(evaluations, stems):
        assert (REPO / "configs" / "eval" / f"{stem}.yaml").is_file()
        assert call[-2:] == [f"run.output_dir={out / stem}", f"run.load_ckpt_path={run_dir}"]
        assert "model.llm.path=/w/flan-t5-xl" in call
    dense, dense_nr3d = [c for c in calls if c[0] == str(REPO / "tools" / "eval_dense_captions.py")]
    assert dense[dense.index("--proposals") + 1] == "gt" and dense[dense.index("--ckpt") + 1] == str(run_dir)
    assert dense[dense.index("--out") + 1] == str(out / "densecap" / "scanrefer_densecap_gt_metrics.json")
    assert dense_nr3d[dense_nr3d.index("--scanrefer") + 1] == str(nr3d)
    assert dense_nr3d[dense_nr3d.index("--out") + 1] == str(out / "densecap" / "nr3d_densecap_gt_metrics.json")
    assert dense[dense.index("--cfg-path") + 1] == str(REPO / "configs" / "eval" / "regionblip_flant5xl_scanrefer.yaml")
    assert "model.blip2_checkpoint_path=/w/blip2_pretrained_flant5xl.pth" in dense
    assert calls[-1] == [str(REPO / "tools" / "compare_published.py"), str(out)]
    assert len(calls) == len(evaluations) + 3  # two dense-caption protocols, the comparison
